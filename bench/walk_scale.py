"""Benchmark: the G2IS walk at the issue's scale, N=100,000 pool rows x 8,192 dimensions with a 1% budget.

Run from the repository root::

    python bench/walk_scale.py [--rows 100000] [--dim 8192] [--ratio 0.01] [--k 32] [--record-delta 1.0]

The pool is bench/selection.py's synthetic clustered gradient features (50 clusters, float32, 3.3 GB at the
default size; 200 targets from 10 clusters).  What a user waits for after pressing "Run walk" is timed step by step:
normalising the pool, PCA of the targets (sklearn), the signed component scores (``make_plan``) and the walk itself,
once without and once with per-candidate event recording (what the Walk page stores to replay).  Then a
delta=1 walk (``--record-delta``: every candidate checked, over a million events at 100,000 rows) is recorded with
its rejected candidates into a real store in a temporary folder, as ``run_selection`` does (``WalkRecorder``: a
batch of ``--record-batch`` events per short transaction); its peak RSS (the process's high-water mark, reset
just before it where Linux allows, so it includes the pool in memory) and the RSS it added are printed.

The exact kNN graph of 100,000 x 8,192 rows costs ~1.6e14 multiply-adds, about an hour on 2 CPU cores (bench/selection.py
times the exact builders at 20,000 rows; on a GPU ``core.selection.graph`` builds it in tiles).  It is built once per feature
set and cached, so it is not part of a walk; here it is built exactly *within* each synthetic cluster (the clusters
are nearly orthogonal, so a row's k nearest neighbours lie in its own cluster; conflict edges are then the most
negative ones within the cluster) and its build time is printed apart.  The walk's own cost depends on N, k and the
budget, not on which rows the edges name.  Ends with ``figure: NAME = VALUE`` lines.
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from selection import clustered_features, timed  # bench/selection.py: this script's folder is on sys.path

from core.selection.g2is import G2ISParams, core_knowledge, make_plan, result_from_events, walk_events
from core.selection.graph import GradientGraph, build_graph, normalize_rows
from core.selection.runs import WALK_EVENT_BATCH, WalkRecorder
from core.store import Store


def within_cluster_graph(unit: np.ndarray, labels: np.ndarray, k: int) -> GradientGraph:
    """Exact kNN inside each cluster, indices mapped back to pool rows."""
    n = unit.shape[0]
    neighbors = np.empty((n, k), np.int64)
    similarities = np.empty((n, k), np.float32)
    conflicts = np.empty((n, 8), np.int64)
    conflict_similarities = np.empty((n, 8), np.float32)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        part = build_graph(unit[members], k=k, backend="torch", normalized=True)
        neighbors[members] = members[part.neighbors]
        similarities[members] = part.similarities
        conflicts[members] = members[part.conflicts]
        conflict_similarities[members] = part.conflict_similarities
    return GradientGraph(neighbors, similarities, conflicts, conflict_similarities, k)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def status_gib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) of this process; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def record_walk_into_store(plan, batch: int) -> dict:
    """The walk with every rejected candidate, its events written to a fresh store in batches as it goes."""
    with tempfile.TemporaryDirectory(prefix="walk-record-") as root:
        store = Store(root)
        plan._rankings.clear()
        rss_before = status_gib("VmRSS") or peak_rss_gb()
        reset = reset_peak_rss()
        started = time.perf_counter()
        recorder = WalkRecorder(store, "g2is", batch)
        result = result_from_events(plan, walk_events(plan, record_candidates=True), recorder)
        ranked = [(row, f"row{row}", score, reason) for row, score, reason in zip(result.rows, result.scores, result.reasons)]
        run_id = recorder.finish("bench", "g2is", result.params, "bench", plan.budget, ranked, result.notes,
                                 time.perf_counter() - started)
        seconds = time.perf_counter() - started
        peak = (status_gib("VmHWM") if reset else None) or peak_rss_gb()
        stored = store.walk_event_count(run_id)
        assert stored == recorder.count, (stored, recorder.count)
        assert [r["id"] for r in store.selection_runs("bench")] == [run_id]
        db_gib = store.path.stat().st_size / 2**30
    return dict(events=recorder.count, filled=len(result.rows), seconds=seconds, write_seconds=recorder.write_seconds,
                rss_before=rss_before, peak=peak, peak_reset=reset, db_gib=db_gib)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=8192)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--ratio", type=float, default=0.01)
    parser.add_argument("--record-delta", type=float, default=1.0,
                        help="delta of the walk recorded into a store with every candidate (default 1.0)")
    parser.add_argument("--record-batch", type=int, default=WALK_EVENT_BATCH,
                        help=f"walk events per store transaction (default {WALK_EVENT_BATCH:,})")
    args = parser.parse_args()
    figures: dict[str, float] = {}

    (pool, targets, labels), seconds = timed(clustered_features, args.rows, args.dim, return_labels=True)
    print(f"data: pool {pool.shape} float32 ({pool.nbytes / 2**30:.1f} GiB), targets {targets.shape}, in {seconds:.0f} s")
    # In place, as core.selection.runs.load_project_features does: the walk reads unit rows only.
    unit, normalize_seconds = timed(normalize_rows, pool, out=pool)
    del pool
    print(f"normalise pool: {normalize_seconds:.1f} s")
    graph, graph_seconds = timed(within_cluster_graph, unit, labels, args.k)
    print(f"graph (exact within each of {len(np.unique(labels))} clusters, k={args.k}, k_neg=8; built once per feature "
          f"set and cached, not part of a walk): {graph_seconds:.0f} s")

    budget = int(args.rows * args.ratio)
    params = G2ISParams.from_dict({"k": args.k, "delta": 0.8})
    knowledge, pca_seconds = timed(core_knowledge, targets)
    plan, scores_seconds = timed(make_plan, unit, knowledge, budget, params, graph)
    result, walk_seconds = timed(lambda: result_from_events(plan, walk_events(plan, record_candidates=False)))
    plan._rankings.clear()  # the recorded run pays for its per-component sorts too
    events, recorded_seconds = timed(lambda: list(walk_events(plan, record_candidates=True)))
    total = normalize_seconds + pca_seconds + scores_seconds + recorded_seconds
    print(f"walk, budget {budget} ({args.ratio:.0%}): filled {len(result.rows)}, {len(knowledge.weights)} components, "
          f"{len(events):,} events, {sum(e.kind == 'fallback' for e in events)} fallbacks")
    print(f"  PCA {pca_seconds:.2f} s, scores {scores_seconds:.2f} s, walk {walk_seconds:.3f} s "
          f"(recording every event: {recorded_seconds:.3f} s)")
    print(f"  a walk from features already in memory: {total:.1f} s (normalisation {normalize_seconds:.1f} s included); "
          f"peak memory {peak_rss_gb():.1f} GiB")
    figures.update(rows=args.rows, dim=args.dim, budget=budget, normalize_seconds=normalize_seconds,
                   pca_seconds=pca_seconds, scores_seconds=scores_seconds, walk_seconds=walk_seconds,
                   walk_recorded_seconds=recorded_seconds, walk_total_seconds=total,
                   within_cluster_graph_seconds=graph_seconds, peak_rss_gib=peak_rss_gb())

    recorded = record_walk_into_store(plan.with_params(delta=args.record_delta), args.record_batch)
    print(f"walk with delta={args.record_delta:g} recorded into a store with every candidate, "
          f"{args.record_batch:,} events per transaction: {recorded['events']:,} events, filled {recorded['filled']}, "
          f"{recorded['seconds']:.1f} s ({recorded['write_seconds']:.1f} s of it batch writes), database "
          f"{recorded['db_gib']:.2f} GiB")
    print(f"  RSS {recorded['rss_before']:.2f} GiB before it, peak {recorded['peak']:.2f} GiB during it "
          f"(+{recorded['peak'] - recorded['rss_before']:.2f} GiB)"
          + ("" if recorded["peak_reset"] else "; the process's peak since it started (no /proc/self/clear_refs)"))
    figures.update(walk_record_delta=args.record_delta, walk_record_events=recorded["events"],
                   walk_record_seconds=recorded["seconds"], walk_record_write_seconds=recorded["write_seconds"],
                   walk_record_peak_rss_gib=recorded["peak"],
                   walk_record_rss_growth_gib=recorded["peak"] - recorded["rss_before"])
    print()
    for name, value in figures.items():
        print(f"figure: {name} = {value}" if isinstance(value, int) else f"figure: {name} = {value:.4g}")


if __name__ == "__main__":
    main()
