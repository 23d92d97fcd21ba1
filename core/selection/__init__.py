"""Selection: projected features -> a kNN gradient graph -> a ranked subset of the pool, per method.

graph (``build_graph``) · hubness (``hubness_stats``: is the graph hub-dominated? in-degree skew, hubs, neighbour
purity by source) · methods (``select``, ``SelectionResult``, budgets, the method registry) · g2is (the gradient
walk) · less · tsds · baselines (random, embedding) · embeddings (MiniLM) · runs (the store side: load features,
build/reuse graphs, ``run_selection``) · compare (overlaps of stored runs) · export (JSONL subsets)
"""
