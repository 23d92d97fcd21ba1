"""Benchmark: the kNN gradient graph (blocked torch vs faiss IndexFlatIP) and the G2IS walk (fast vs reference).

Synthetic clustered features at the paper's scale of one projected gradient: N=20,000 pool rows x 8192 dims
(float32, ~650 MB), 200 target rows drawn from 10 of the 50 clusters; budget 1% (200 rows).  Run from the repo root:

    python bench/selection.py [--rows 20000] [--dim 8192] [--reference-cap 150]

Prints timings and ratios and ends with ``figure: NAME = VALUE`` lines (whole run ~8 minutes on 2 cores, most of
it the two exact graph builds).  The reference walk
(``tests/reference_g2is.py``, plain loops straight from the spec) runs on the same inputs under a time cap; when the
cap cuts it short the ratio is projected from its picks so far and the output says so.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from core.selection.g2is import G2ISParams, core_knowledge, make_plan, result_from_events, walk_events
from core.selection.graph import build_graph, normalize_rows

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the test suite's helpers are not part of the package

from reference_g2is import reference_g2is  # noqa: E402


def clustered_features(rows: int, dim: int, clusters: int = 50, seed: int = 0, block: int = 2000, return_labels: bool = False):
    """Pool: cluster centre + 2x noise (within-cluster cosine ~0.2), random row scales, made in row blocks.
    Targets: centres of 10 clusters + 1x noise, so PCA at val_k=0.5 keeps a couple of dozen components.
    ``return_labels``: also each pool row's cluster."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim), dtype=np.float32)
    pool = np.empty((rows, dim), dtype=np.float32)
    pool_labels = np.empty(rows, dtype=np.int64)
    for start in range(0, rows, block):
        stop = min(rows, start + block)
        labels = rng.integers(0, clusters, stop - start)
        pool_labels[start:stop] = labels
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32)
        scale = rng.uniform(0.5, 2.0, (stop - start, 1)).astype(np.float32)
        pool[start:stop] = (centers[labels] + 2.0 * noise) * scale
    labels = rng.integers(0, 10, 200)
    targets = centers[labels] + 1.0 * rng.standard_normal((200, dim), dtype=np.float32)
    return (pool, targets, pool_labels) if return_labels else (pool, targets)


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    value = function(*args, **kwargs)
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=8192)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--ratio", type=float, default=0.01)
    parser.add_argument("--reference-cap", type=float, default=150.0, help="seconds per reference run")
    args = parser.parse_args()
    figures: dict[str, float] = {}

    (pool, targets), seconds = timed(clustered_features, args.rows, args.dim)
    print(f"data: pool {pool.shape} targets {targets.shape} float32 ({pool.nbytes / 2**20:.0f} MB) in {seconds:.1f} s")
    unit, seconds = timed(normalize_rows, pool)
    print(f"normalise pool: {seconds:.1f} s")

    # ---------------------------------------------------------------- graph
    torch_graph, torch_seconds = timed(build_graph, unit, k=args.k, backend="torch", normalized=True)
    print(f"graph, blocked torch exact kNN (k={args.k}, k_neg=8): {torch_seconds:.1f} s")
    faiss_graph, faiss_seconds = timed(build_graph, unit, k=args.k, backend="faiss", normalized=True)
    print(f"graph, faiss IndexFlatIP (same k, k_neg; two searches: +x and -x): {faiss_seconds:.1f} s")
    same_rows = float((torch_graph.neighbors == faiss_graph.neighbors).all(axis=1).mean())
    max_diff = float(np.abs(torch_graph.similarities - faiss_graph.similarities).max())
    differs = torch_graph.neighbors != faiss_graph.neighbors
    # Where the two disagree on an index, check it is a near-tie: exact (float64) similarities of both choices.
    rows_at, cols_at = np.nonzero(differs)
    tie_gap = 0.0
    if rows_at.size:
        a = np.einsum("ij,ij->i", unit[rows_at].astype(np.float64), unit[torch_graph.neighbors[rows_at, cols_at]].astype(np.float64))
        b = np.einsum("ij,ij->i", unit[rows_at].astype(np.float64), unit[faiss_graph.neighbors[rows_at, cols_at]].astype(np.float64))
        tie_gap = float(np.abs(a - b).max())
    print(f"agreement: {same_rows:.4%} of rows identical; {int(differs.sum())} differing entries, exact similarity gap "
          f"between the two choices at most {tie_gap:.2e}; max |similarity difference| {max_diff:.2e}")
    print(f"ratio faiss / torch: {faiss_seconds / torch_seconds:.2f}")
    figures.update(graph_torch_seconds=torch_seconds, graph_faiss_seconds=faiss_seconds,
                   graph_faiss_over_torch=faiss_seconds / torch_seconds, graph_rows_identical_fraction=same_rows,
                   graph_disagreement_max_exact_gap=tie_gap)
    del faiss_graph

    # ---------------------------------------------------------------- walk
    budget = int(args.rows * args.ratio)
    # delta=0.8 is the authors' default; delta=1.0 is the strictest; without the graph every step is a global-ranking
    # (fallback-style) step, the path where the reference re-sorts the pool and checks candidates one by one.
    configs = [("delta_0_8", {"delta": 0.8}), ("delta_1", {"delta": 1.0}),
               ("no_graph_delta_1", {"delta": 1.0, "use_graph": False})]
    knowledge, pca_seconds = timed(core_knowledge, targets)
    print(f"\nPCA of the targets (sklearn, val_k=0.5): {len(knowledge.weights)} components in {pca_seconds:.2f} s")
    figures["pca_seconds"] = pca_seconds
    for tag, walk_params in configs:
        params = G2ISParams.from_dict({"k": args.k, **walk_params})
        # Fast path after PCA: signed scores (make_plan) + the walk (its per-component sorts included).
        plan, scores_seconds = timed(make_plan, unit, knowledge, budget, params, torch_graph)
        result, walk_seconds = timed(lambda: result_from_events(plan, walk_events(plan, record_candidates=False)))
        plan._rankings.clear()  # the recorded run pays for its per-component sorts too
        events, recorded_seconds = timed(lambda: list(walk_events(plan, record_candidates=True)))
        fallbacks = sum(e.kind == "fallback" for e in events)
        candidates = sum(e.kind == "candidate" for e in events)
        fast_after_pca = scores_seconds + walk_seconds
        print(f"\nwalk {walk_params}: budget {budget}, filled {len(result.rows)}, {fallbacks} fallbacks, "
              f"{candidates} candidate events")
        print(f"  fast: scores {scores_seconds:.2f} s + walk {walk_seconds:.3f} s (record_candidates=True: "
              f"{recorded_seconds:.3f} s); with PCA {pca_seconds + fast_after_pca:.2f} s")
        # Same BLAS setting as the fast path (one thread), so the ratio measures the algorithm, not OpenBLAS threading.
        reference_timings: dict = {}
        with threadpool_limits(1, user_api="blas"):
            (reference_rows, finished), reference_seconds = timed(
                reference_g2is, pool, targets, budget, torch_graph.neighbors, time_limit_s=args.reference_cap,
                timings=reference_timings, **walk_params)
        reference_setup = reference_timings.get("setup_seconds", 0.0)
        reference_after_pca = reference_seconds - reference_setup
        projected = ""
        if finished:
            identical = reference_rows == result.rows
            print(f"  reference: {reference_seconds:.1f} s ({reference_setup:.1f} s normalisation + PCA, "
                  f"{reference_after_pca:.1f} s scores + walk); picks identical to the fast walk: {identical}")
        else:
            identical = reference_rows == result.rows[: len(reference_rows)]
            reference_after_pca *= budget / max(1, len(reference_rows))
            reference_seconds = reference_setup + reference_after_pca
            projected = " (PROJECTED)"
            print(f"  reference: stopped by the {args.reference_cap:.0f} s cap after {len(reference_rows)} of {budget} "
                  f"picks (identical so far: {identical}); PROJECTED scores + walk ~{reference_after_pca:.0f} s, "
                  "linear in picks, which understates it when later fallbacks scan further")
        speedup = reference_after_pca / fast_after_pca
        speedup_total = reference_seconds / (pca_seconds + fast_after_pca)
        print(f"  speedup reference / fast: {speedup:.1f}x after PCA (scores + walk), {speedup_total:.1f}x end to end"
              f" incl. normalisation and PCA{projected}")
        figures[f"walk_scores_seconds_{tag}"] = scores_seconds
        figures[f"walk_fast_seconds_{tag}"] = walk_seconds
        figures[f"walk_fast_recorded_seconds_{tag}"] = recorded_seconds
        figures[f"walk_reference_seconds_{tag}"] = reference_seconds
        figures[f"walk_reference_finished_{tag}"] = float(finished)
        figures[f"walk_picks_identical_{tag}"] = float(identical)
        figures[f"walk_fallbacks_{tag}"] = float(fallbacks)
        figures[f"walk_speedup_vs_reference_{tag}"] = speedup
        figures[f"walk_speedup_end_to_end_{tag}"] = speedup_total
        if tag == "delta_0_8":
            figures["walk_speedup_vs_reference"] = speedup

    print()
    for name, value in figures.items():
        print(f"figure: {name} = {value:.4g}")


if __name__ == "__main__":
    main()
