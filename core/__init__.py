"""G2IS Explorer: choose instruction-tuning data with gradients.  The subpackages are the pipeline, top-down:

    data/       instruction files -> normalised rows in the store (records, readers, ingest, projects, demo)
    features/   rows -> per-example LoRA gradients -> projected features (modeling, lora, gradients, projection,
                featurize, distributed, estimate)
    selection/  features -> kNN graph -> a ranked subset per method (graph, methods, g2is, less, tsds, baselines,
                embeddings, runs, compare, export)
    store/      the DuckDB catalogue and feature chunk files: the only package that speaks SQL
    views/      what the pages show (data, map, graph, walk, compare, text); pages import views, never the reverse
    config (settings dataclasses), jobs (background workers), cli (``python -m core`` / ``g2is``)

Nothing here imports Streamlit; the app in ``app/`` and ``pages/`` is a thin view over this package.
docs/ARCHITECTURE.md says what flows between the stages and where state lives.
"""
