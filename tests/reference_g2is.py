"""A plain, loop-by-loop transcription of G2IS Algorithm 1 (algorithms.md 1.3-1.5), the yardstick for the fast walk.

Used by tests/test_selection.py (identical picks on random inputs) and bench/selection.py (speed ratio).  It is
written straight from the spec, with no vectorisation and no caching: every score is one ``np.dot``, every
fallback re-sorts the remaining pool, every constraint is checked one pair at a time.

Shared with the fast implementation on purpose: the row normalisation (``core.selection.graph.normalize_rows``, tested on its
own) and sklearn's PCA call (also on one BLAS thread), so that both start from bit-identical unit vectors and
components.  All dot products
are float64 on the float32 unit rows, as in the fast walk; only exact mathematical ties could then be decided
differently by rounding.
"""
from __future__ import annotations

import math
import time

import numpy as np
from sklearn.decomposition import PCA
from threadpoolctl import threadpool_limits

from core.selection.graph import normalize_rows


def _abs_cos(vector: np.ndarray, direction: np.ndarray) -> float:
    norm = float(np.linalg.norm(vector))
    return abs(float(np.dot(vector, direction))) / norm if norm > 0 else 0.0


def reference_g2is(
    pool_features: np.ndarray,
    target_features: np.ndarray,
    budget: int,
    neighbors: np.ndarray | None,
    *,
    val_k: float = 0.5,
    n_components: int | None = None,
    delta: float = 0.8,
    anchor_candidates: int = 1000,
    conflict_check: bool = True,
    local_steps_only: bool = False,
    use_graph: bool = True,
    time_limit_s: float | None = None,
    timings: dict | None = None,
) -> tuple[list[int], bool]:
    """(selected rows in order, finished).  ``finished`` is False when ``time_limit_s`` ran out first.
    ``timings``, when given, receives "setup_seconds" (normalisation, PCA, budgets) for the benchmark."""
    started = time.perf_counter()
    deadline = None if time_limit_s is None else started + time_limit_s
    train = normalize_rows(pool_features)
    n = train.shape[0]

    # Core knowledge: PCA on the raw targets; one row -> the normalised row itself.
    targets = np.asarray(target_features, dtype=np.float64)
    if targets.shape[0] == 1:
        components = [targets[0] / np.linalg.norm(targets[0])]
        weights = [1.0]
    else:
        pca = PCA(n_components=n_components if n_components is not None else float(val_k), svd_solver="full")
        with threadpool_limits(1, user_api="blas"):  # the fast path fits on one BLAS thread: same numerics
            pca.fit(targets)
        components = [np.asarray(c, dtype=np.float64) / np.linalg.norm(np.asarray(c, dtype=np.float64))
                      for c in pca.components_]
        total = float(sum(pca.explained_variance_ratio_))
        weights = [float(r) / total for r in pca.explained_variance_ratio_]

    # Largest remainder: floor the quotas, hand out what is left to the largest remainders, earlier first on ties.
    quotas = [w * budget for w in weights]
    budgets = [math.floor(q) for q in quotas]
    left = budget - sum(budgets)
    by_remainder = sorted(range(len(quotas)), key=lambda v: (-(quotas[v] - budgets[v]), v))
    for v in by_remainder[:left]:
        budgets[v] += 1

    if timings is not None:
        timings["setup_seconds"] = time.perf_counter() - started
    excluded: set[int] = set()
    selected: list[int] = []
    for v, direction in enumerate(components):
        if budgets[v] == 0:
            continue
        score = [float(np.dot(train[i].astype(np.float64), direction)) for i in range(n)]
        topk = sorted(range(n), key=lambda i: (-score[i], i))[:anchor_candidates]

        anchor = None
        for i in topk:
            if i not in excluded:
                anchor = i
                break
        if anchor is None:
            best = None
            for i in range(n):
                if i not in excluded and (best is None or score[i] > score[best]):
                    best = i
            if best is None:
                break  # pool exhausted
            anchor = best
        picked = [anchor]
        excluded.add(anchor)
        selected.append(anchor)
        acc = train[anchor].astype(np.float64)

        while len(picked) < budgets[v]:
            if deadline is not None and time.perf_counter() > deadline:
                return selected, False
            old = _abs_cos(acc, direction)

            def passes(z: int) -> bool:
                t_z = train[z].astype(np.float64)
                if conflict_check:
                    for s in picked:
                        if float(np.dot(train[s].astype(np.float64), t_z)) < 0:
                            return False
                new = _abs_cos(acc + t_z, direction)
                return not (new < delta * old)

            chosen = None
            if use_graph:
                for z in neighbors[picked[-1]]:
                    z = int(z)
                    if z in excluded:
                        continue
                    if passes(z):
                        chosen = z
                        break
            if chosen is None and not local_steps_only:
                remaining = sorted((i for i in range(n) if i not in excluded), key=lambda i: (-score[i], i))
                for z in remaining:
                    if passes(z):
                        chosen = z
                        break
            if chosen is None:
                break  # under-fill this component
            picked.append(chosen)
            excluded.add(chosen)
            selected.append(chosen)
            acc = acc + train[chosen].astype(np.float64)
    return selected, True
