"""Benchmark: the two exact kNN-graph backends side by side at N=100,000 rows on the CPU (what ``backend="auto"`` picks).

Run from the repository root::

    python bench/graph_backends.py [--rows 100000] [--dim 1024] [--k 32] [--k-neg 8] [--backends torch,faiss]
                                   [--interleave-rounds 4] [--interleave-chunk 1000] [--interleave-dims 1024,8192]

The features are bench/selection.py's synthetic clustered unit rows (50 clusters, same seed, float32).

1. Whole builds.  Each backend in ``--backends`` (in that order; ``""`` for none) builds the whole exact graph
   (k neighbours + k_neg conflict edges per row, ``core.selection.graph.build_graph``) in its own subprocess, so
   its peak RSS is its own: the child prints its RSS before the build and its high-water mark during it (VmHWM,
   reset just before the build where Linux allows), and the parent reads each child's whole-process peak from
   ``os.wait4``.  Wall and CPU seconds of the build are printed.  Then the two graphs are compared: identical
   rows, identical neighbour sets, and for every differing entry the exact (float64) similarity gap between the
   two backends' choices (a float tie when it is ~1e-7).
2. Interleaved kernels.  A whole build takes minutes and on a shared machine the load changes between two builds,
   so both backends' search kernels then run on alternating chunks of ``--interleave-chunk`` queries against all
   N rows (order swapped every round), at each of ``--interleave-dims``; per-1,000-query seconds, scaled by N/1,000
   to a whole build, and their ratio.

Dimension: an exact 100,000 x 8,192 graph is ~1.6e14 multiply-adds, about an hour per backend on 2 cores, so the
whole builds default to 1,024 dims (~1e13) and only the interleaved chunks run at 8,192.  Each backend's cost is a
matrix product linear in D plus a top-k selection (torch ``topk`` over [block, N] score blocks, faiss's heaps)
that is O(N^2) whatever D, so at a lower D the selection weighs more.  Ends with ``figure: NAME = VALUE`` lines; the
whole run at the defaults takes ~12 minutes on 2 idle cores (much longer when they are shared).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from walk_scale import reset_peak_rss, status_gib  # bench/walk_scale.py: this script's folder is on sys.path

ARRAYS = ("neighbors", "similarities", "conflicts", "conflict_similarities")


def child(backend: str, rows: int, dim: int, k: int, k_neg: int, out: Path) -> None:
    """One backend's build in this process; prints ``RESULT {json}`` and saves the graph to ``out`` (.npz)."""
    from selection import clustered_features  # bench/ is sys.path[0] when this file runs as a script

    from core.selection.graph import build_graph, normalize_rows

    pool, _ = clustered_features(rows, dim)
    unit = normalize_rows(pool, out=pool)  # in place: one matrix in memory, as load_project_features does
    rss_before = status_gib("VmRSS")
    reset = reset_peak_rss()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    graph = build_graph(unit, k=k, k_neg=k_neg, backend=backend, normalized=True)
    seconds = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    peak = status_gib("VmHWM") if reset else None
    np.savez(out, **{name: getattr(graph, name) for name in ARRAYS})
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    print("RESULT " + json.dumps(dict(backend=backend, seconds=seconds, cpu_seconds=cpu, rss_before_gib=rss_before,
                                      build_peak_gib=peak, pool_gib=unit.nbytes / 2**30)), flush=True)


def run_child(backend: str, args, out: Path) -> dict:
    command = [sys.executable, __file__, "--child", backend, "--rows", str(args.rows), "--dim", str(args.dim),
               "--k", str(args.k), "--k-neg", str(args.k_neg), "--out", str(out)]
    load = os.getloadavg()[0]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    stdout = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{backend} child failed with exit code {process.returncode}:\n{stdout}")
    result = json.loads(next(line for line in stdout.splitlines() if line.startswith("RESULT "))[len("RESULT "):])
    result.update(process_peak_gib=usage.ru_maxrss / 2**20, load_before=load, load_after=os.getloadavg()[0])
    return result


def compare(unit_rows, a: dict, b: dict, index: str, values: str) -> dict:
    """Agreement of one neighbour list (``index``/``values`` arrays) between two graphs."""
    ia, ib = a[index], b[index]
    same_rows = float((ia == ib).all(axis=1).mean())
    same_sets = float((np.sort(ia, axis=1) == np.sort(ib, axis=1)).all(axis=1).mean())
    differs = ia != ib
    rows_at, cols_at = np.nonzero(differs)
    gap = 0.0
    if rows_at.size:
        unit = unit_rows()
        query = unit[rows_at].astype(np.float64)
        exact_a = np.einsum("ij,ij->i", query, unit[ia[rows_at, cols_at]].astype(np.float64))
        exact_b = np.einsum("ij,ij->i", query, unit[ib[rows_at, cols_at]].astype(np.float64))
        gap = float(np.abs(exact_a - exact_b).max())
    max_diff = float(np.abs(a[values] - b[values]).max()) if a[values].size else 0.0
    return dict(same_rows=same_rows, same_sets=same_sets, differing=int(differs.sum()), gap=gap, max_diff=max_diff)


def interleaved(rows: int, dim: int, k: int, k_neg: int, chunk: int, rounds: int) -> dict:
    """Both backends' search kernels on alternating chunks of ``chunk`` queries against the full pool (ABBA order).

    A whole build takes minutes, and on a shared machine the load can change between the two builds; alternating
    chunks of a few seconds each puts both backends under the same load.  The kernels are those of
    ``core.selection.graph``: torch's blocked ``X[block] @ X.T``, self masked, ``topk`` of +s and -s (block from
    the same 512 MiB budget); faiss's two ``IndexFlatIP.search`` calls (+x, -x).  The exact re-scoring of near-ties
    (``_finish_rows``, the same for both, ~0.5 % of the torch time here) is left out.
    """
    import faiss
    import torch
    from selection import clustered_features

    from core.selection.graph import normalize_rows

    pool, _ = clustered_features(rows, dim)
    unit = normalize_rows(pool, out=pool)
    all_rows = torch.from_numpy(unit)
    block = int(max(1, min(rows, 512 * 2**20 // (12 * rows))))
    index = faiss.IndexFlatIP(dim)
    index.add(unit)

    def torch_chunk(start: int) -> None:
        for first in range(start, start + chunk, block):
            last = min(start + chunk, first + block)
            scores = all_rows[first:last] @ all_rows.T
            local = torch.arange(last - first)
            for sign, count in ((1.0, k), (-1.0, k_neg)):
                masked = scores.clone() if sign > 0 else -scores
                masked[local, local + first] = -torch.inf
                torch.topk(masked, count + 1, dim=1, largest=True, sorted=True)

    def faiss_chunk(start: int) -> None:
        queries = unit[start:start + chunk]
        index.search(queries, k + 2)
        index.search(np.ascontiguousarray(-queries), k_neg + 2)

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    totals = {"torch": [0.0, 0.0], "faiss": [0.0, 0.0]}
    kernels = {"torch": torch_chunk, "faiss": faiss_chunk}
    for round_ in range(rounds):
        start = (round_ * chunk) % max(1, rows - chunk)
        for name in (("torch", "faiss") if round_ % 2 == 0 else ("faiss", "torch")):
            wall, used = time.perf_counter(), cpu()
            kernels[name](start)
            totals[name][0] += time.perf_counter() - wall
            totals[name][1] += cpu() - used
    queries = chunk * rounds
    return {name: dict(seconds_per_1000=1000 * wall / queries, cpu_per_1000=1000 * used / queries)
            for name, (wall, used) in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--k-neg", type=int, default=8)
    parser.add_argument("--backends", default="torch,faiss", help="comma-separated, run in this order")
    parser.add_argument("--interleave-rounds", type=int, default=4,
                        help="rounds of alternating query chunks after the whole builds (0: none)")
    parser.add_argument("--interleave-chunk", type=int, default=1000, help="queries per backend per round")
    parser.add_argument("--interleave-dims", default="1024,8192",
                        help="comma-separated dims for the interleaved kernels (8192: the projected gradient's)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.rows, args.dim, args.k, args.k_neg, args.out)
        return

    backends = [name.strip() for name in args.backends.split(",") if name.strip()]
    tag = f"{args.rows // 1000}k" if args.rows % 1000 == 0 else str(args.rows)
    print(f"exact cosine kNN graph of clustered unit rows, k={args.k}, k_neg={args.k_neg}, CPU, {os.cpu_count()} cores")
    if backends:
        print(f"whole builds, {args.rows:,} x {args.dim:,} (float32, {args.rows * args.dim * 4 / 2**30:.2f} GiB), "
              "each backend in its own subprocess:")
    figures: dict[str, float] = {}
    results: dict[str, dict] = {}
    graphs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="graph-backends-") as folder:
        for backend in backends:
            out = Path(folder) / f"{backend}.npz"
            result = run_child(backend, args, out)
            results[backend] = result
            with np.load(out) as saved:
                graphs[backend] = {name: saved[name] for name in ARRAYS}
            peak = result["build_peak_gib"]
            peak_text = f"{peak:.2f} GiB" if peak is not None else "n/a (VmHWM could not be reset)"
            print(f"{backend}: {result['seconds']:.1f} s wall, {result['cpu_seconds']:.1f} s CPU; RSS {result['rss_before_gib']:.2f}"
                  f" GiB before the build (pool {result['pool_gib']:.2f} GiB), peak during it {peak_text}, process peak "
                  f"{result['process_peak_gib']:.2f} GiB; load average {result['load_before']:.1f} -> {result['load_after']:.1f}")
            figures[f"graph_{backend}_seconds_{tag}"] = result["seconds"]
            figures[f"graph_{backend}_cpu_seconds_{tag}"] = result["cpu_seconds"]
            if peak is not None:
                figures[f"graph_{backend}_build_peak_rss_gib_{tag}"] = peak
                figures[f"graph_{backend}_build_added_rss_gib_{tag}"] = peak - result["rss_before_gib"]
            figures[f"graph_{backend}_process_peak_rss_gib_{tag}"] = result["process_peak_gib"]

    if "torch" in results and "faiss" in results:
        cache: list = []

        def unit_rows():  # the same features again, only if some entry differs
            if not cache:
                from selection import clustered_features

                from core.selection.graph import normalize_rows
                pool, _ = clustered_features(args.rows, args.dim)
                cache.append(normalize_rows(pool, out=pool))
            return cache[0]

        for label, index, values in (("neighbours", "neighbors", "similarities"),
                                     ("conflicts", "conflicts", "conflict_similarities")):
            agree = compare(unit_rows, graphs["torch"], graphs["faiss"], index, values)
            print(f"agreement, {label}: {agree['same_rows']:.4%} of rows identical (order too), {agree['same_sets']:.4%} "
                  f"same sets; {agree['differing']} differing entries, exact similarity gap between the two choices at "
                  f"most {agree['gap']:.2e}; max |similarity difference| {agree['max_diff']:.2e}")
            figures[f"graph_{label}_rows_identical_fraction_{tag}"] = agree["same_rows"]
            figures[f"graph_{label}_sets_identical_fraction_{tag}"] = agree["same_sets"]
            figures[f"graph_{label}_disagreement_max_exact_gap_{tag}"] = agree["gap"]
        ratio = results["faiss"]["seconds"] / results["torch"]["seconds"]
        cpu_ratio = results["faiss"]["cpu_seconds"] / results["torch"]["cpu_seconds"]
        print(f"ratio faiss / torch: {ratio:.2f} wall, {cpu_ratio:.2f} CPU time")
        figures[f"graph_faiss_over_torch_{tag}"] = ratio
        figures[f"graph_faiss_over_torch_cpu_{tag}"] = cpu_ratio

    dims = [int(d) for d in args.interleave_dims.split(",") if d.strip()] if args.interleave_rounds > 0 else []
    for dim in dims:
        rates = interleaved(args.rows, dim, args.k, args.k_neg, args.interleave_chunk, args.interleave_rounds)
        print(f"interleaved kernels at {args.rows:,} x {dim:,}: {args.interleave_rounds} rounds x {args.interleave_chunk} "
              f"queries per backend against all {args.rows:,} rows, alternating order (load average now "
              f"{os.getloadavg()[0]:.1f}):")
        suffix = f"{tag}_d{dim}"
        for name, rate in rates.items():
            print(f"  {name}: {rate['seconds_per_1000']:.2f} s wall, {rate['cpu_per_1000']:.2f} s CPU per 1,000 queries "
                  f"(x {args.rows / 1000:g}: ~{rate['seconds_per_1000'] * args.rows / 1000:.0f} s for the whole pool)")
            figures[f"graph_{name}_interleaved_seconds_per_1000_queries_{suffix}"] = rate["seconds_per_1000"]
        ratio = rates["faiss"]["seconds_per_1000"] / rates["torch"]["seconds_per_1000"]
        cpu_ratio = rates["faiss"]["cpu_per_1000"] / rates["torch"]["cpu_per_1000"]
        print(f"  ratio faiss / torch, interleaved: {ratio:.2f} wall, {cpu_ratio:.2f} CPU time")
        figures[f"graph_faiss_over_torch_interleaved_{suffix}"] = ratio
        figures[f"graph_faiss_over_torch_interleaved_cpu_{suffix}"] = cpu_ratio

    print()
    for name, value in figures.items():
        print(f"figure: {name} = {value:.4g}")


if __name__ == "__main__":
    main()
