"""TSDS (Liu, Karbasi, Rekatsinas; NeurIPS 2024; algorithms.md 3): a sampling distribution over the pool that
balances optimal-transport alignment to the targets against diversity, then a seeded draw from it.

Role in the pipeline: a distribution-matching baseline next to G2IS and LESS.  Two variants:

* KNN-Uniform (``sigma=0``): each target spreads its 1/M mass uniformly over its K nearest pool rows, K being
  the first value at which (alpha/C) * sum_i sum_{k<=K} (d_{i,K+1} - d_{i,k}) >= (1-alpha) * M.
* KNN-KDE: mass per neighbour proportional to 1/rho_j, rho_j being a kernel density estimate, so near-duplicates
  share mass ("water-filling" over all targets with one level s).

The water-filling loop is a line-by-line port of the authors' ``tsds.py`` (heap keyed by the cumulative
sum of 1/rho, stop when (alpha/C) * total_cost >= (1-alpha) * M, leftover mass to the next neighbour).

Places where this implementation departs from, or goes beyond, the authors' code [I]:
* Exact search (faiss ``IndexFlatL2``) instead of ``IndexIVFFlat`` with nprobe=10: deterministic, and immune to
  IVF's -1 labels on small or skewed sets (algorithms.md 3.5).  Ties in distance are broken by the lower index.
* Features are L2-normalised first (``normalize=True``) so that distances live in [0, 2] and the defaults
  C=5 ("in the same scale as the norm of the embeddings") and sigma=0.75 mean the same for any feature scale;
  the authors' toy data is unit-norm and the instruction-tuning runs use LESS's normalised gradients.
* ``max_K`` and ``kde_K`` are capped at N//10 as in the authors' code; below N=20 that cap would leave fewer
  than the two neighbours the stopping rule reads, so there the cap is N instead.
* The draw is seeded (``numpy.random.default_rng(seed)``); by default it returns distinct rows (a draw without
  replacement weighted by p, under-filling when p has fewer than ``budget`` non-zero entries); the authors' draw
  with replacement (``np.random.multinomial``) is ``with_replacement=True``.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from core.selection.graph import normalize_rows
from core.selection.methods import SelectionResult, check_pool_and_targets, clip_budget, resolve_params

UNIFORM_DEFAULTS = {"alpha": 0.5, "C": 5.0, "max_K": 5000, "seed": 0, "with_replacement": False, "normalize": True}
KDE_DEFAULTS = {**UNIFORM_DEFAULTS, "sigma": 0.75, "kde_K": 1000}


@dataclass(frozen=True, eq=False)
class TSDSDistribution:
    probabilities: np.ndarray  # float64 [N], sums to 1
    neighbours_used: np.ndarray  # int64 [M]: how many of its nearest rows each target puts mass on
    level: float  # the water-filling level s at the stop
    prefetch_k: int  # MAX_K actually used
    kde_k: int  # KDE_K actually used (0 for KNN-Uniform)
    coverage: np.ndarray  # int64 [N]: number of targets putting mass on each row


def _cap(value: int, n: int) -> int:
    """The authors' min(value, N // 10), with N instead of N // 10 when that would leave fewer than 2 [I]."""
    limit = n // 10 if n // 10 >= 2 else n
    return int(min(value, limit))


def _exact_knn(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(squared L2 distances, indices) of each query's k nearest base rows, ascending, ties by lower index."""
    import faiss

    index = faiss.IndexFlatL2(base.shape[1])
    index.add(np.ascontiguousarray(base, dtype=np.float32))
    # One extra neighbour shows whether ties straddle the k-th place; such rows are redone exactly (rare).
    take = min(k + 1, base.shape[0])
    squared, indices = index.search(np.ascontiguousarray(queries, dtype=np.float32), take)
    order = np.lexsort((indices, squared), axis=-1)
    squared, indices = np.take_along_axis(squared, order, 1), np.take_along_axis(indices, order, 1).astype(np.int64)
    if take > k:
        for row in np.flatnonzero(squared[:, k - 1] == squared[:, k]):
            full = np.square(base - queries[row]).sum(axis=1, dtype=np.float32)
            exact = np.lexsort((np.arange(base.shape[0]), full))[:k]
            squared[row, :k], indices[row, :k] = full[exact], exact
    return np.maximum(squared[:, :k], 0.0), indices[:, :k]


def tsds_distribution(
    pool_features: np.ndarray,
    target_features: np.ndarray,
    *,
    alpha: float = 0.5,
    C: float = 5.0,
    sigma: float = 0.0,
    max_K: int = 5000,
    kde_K: int = 1000,
    normalize: bool = True,
    pool_is_unit: bool = False,
) -> TSDSDistribution:
    """TSDS's sampling distribution p over the pool (``sigma=0``: KNN-Uniform; ``sigma>0``: KNN-KDE)."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if not C > 0:
        raise ValueError(f"C must be positive, got {C}")
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0 (0 = KNN-Uniform), got {sigma}")
    if max_K < 2 or kde_K < 1:
        raise ValueError(f"max_K must be >= 2 and kde_K >= 1, got max_K={max_K}, kde_K={kde_K}")
    if normalize and not pool_is_unit:
        pool = normalize_rows(pool_features)
    else:  # unit already, or raw by request (a unit pool cannot be un-normalised: run_selection refuses that)
        pool = np.ascontiguousarray(pool_features, dtype=np.float32)
    queries = normalize_rows(target_features) if normalize else np.ascontiguousarray(target_features, dtype=np.float32)
    n, m = pool.shape[0], queries.shape[0]
    if n == 1:
        one = np.ones(1)
        return TSDSDistribution(one, np.ones(m, np.int64), 1.0, 1, 0, np.array([m], np.int64))
    prefetch_k = _cap(max_K, n)
    squared, top_indices = _exact_knn(pool, queries, prefetch_k)
    top_dists = np.sqrt(squared.astype(np.float64))

    kde_k = 0
    if sigma == 0:
        top_kdes = np.ones(top_indices.shape, dtype=np.float64)
    else:
        union = np.unique(top_indices)
        kde_k = min(_cap(kde_K, n), union.size)
        kde_squared, _ = _exact_knn(pool[union], pool[union], kde_k)  # includes the point itself, so rho >= 1
        kernel = np.maximum(0.0, 1.0 - kde_squared.astype(np.float64) / sigma**2)
        density = kernel.sum(axis=1)
        top_kdes = density[np.searchsorted(union, top_indices)]

    # Water-filling, ported from the authors' loop (tsds.py); comments there: "if we increase s by any positive
    # amount, the 0, 1, ..., curr_k has to transport probability mass to curr_k + 1".
    last_k = [0] * m
    heap = [(1.0 / top_kdes[j][0], 0, j) for j in range(m)]
    heapq.heapify(heap)
    dist_weighted_sum = [top_dists[j][0] / top_kdes[j][0] for j in range(m)]
    level = 0.0
    cost = np.zeros(m)
    total_cost = 0.0
    while heap:
        count, k, j = heapq.heappop(heap)
        level = count
        total_cost -= cost[j]
        cost[j] = top_dists[j][k + 1] * count - dist_weighted_sum[j]
        total_cost += cost[j]
        if alpha / C * total_cost >= (1 - alpha) * m:
            break
        last_k[j] = k
        if k < prefetch_k - 2:
            count += 1.0 / top_kdes[j][k + 1]
            heapq.heappush(heap, (count, k + 1, j))
            dist_weighted_sum[j] += top_dists[j][k + 1] / top_kdes[j][k + 1]

    probabilities = np.zeros(n)
    coverage = np.zeros(n, dtype=np.int64)
    used = np.zeros(m, dtype=np.int64)
    for j in range(m):
        mass = 1.0 / m / level / top_kdes[j][: last_k[j] + 1]
        np.add.at(probabilities, top_indices[j][: last_k[j] + 1], mass)
        leftover = max(1.0 / m - float(mass.sum()), 0.0)
        probabilities[top_indices[j][last_k[j] + 1]] += leftover
        reached = top_indices[j][: last_k[j] + 2] if leftover > 0 else top_indices[j][: last_k[j] + 1]
        coverage[np.unique(reached)] += 1
        used[j] = reached.size
    probabilities /= probabilities.sum()  # float dust only; the masses add up to 1 by construction
    return TSDSDistribution(probabilities, used, float(level), prefetch_k, kde_k, coverage)


def _select(variant: str, defaults: dict, pool_features, target_features, budget, params,
            pool_is_unit: bool = False) -> SelectionResult:
    resolved = resolve_params(defaults, params, variant)
    if pool_is_unit and not resolved["normalize"]:
        raise ValueError(f"{variant} with normalize=False needs the raw pool features; these are L2-normalised "
                         "(the app and the CLI always give TSDS normalised features)")
    pool, targets = check_pool_and_targets(pool_features, target_features)
    budget, notes = clip_budget(pool.shape[0], budget)
    sigma = resolved.get("sigma", 0.0)
    dist = tsds_distribution(pool, targets, alpha=resolved["alpha"], C=resolved["C"], sigma=sigma,
                             max_K=resolved["max_K"], kde_K=resolved.get("kde_K", 1000), normalize=resolved["normalize"],
                             pool_is_unit=pool_is_unit)
    rng = np.random.default_rng(resolved["seed"])
    p = dist.probabilities
    if resolved["with_replacement"]:
        counts = rng.multinomial(budget, p)
        rows = np.repeat(np.arange(p.shape[0]), counts)  # index order, as the authors save them
        notes.append(f"drawn with replacement: {np.unique(rows).size} distinct rows among {budget}")
    else:
        support = int(np.count_nonzero(p))
        size = min(budget, support)
        rows = rng.choice(p.shape[0], size=size, replace=False, p=p)
        if size < budget:
            notes.append(f"under-filled: {size} of {budget} (the distribution has mass on only {support} rows)")
    notes.append(f"neighbours used per target: min {dist.neighbours_used.min()}, max {dist.neighbours_used.max()} "
                 f"(prefetch K={dist.prefetch_k}{f', KDE K={dist.kde_k}' if dist.kde_k else ''})")
    reasons = [f"sampling probability {p[r]:.3g}, near {dist.coverage[r]} target row(s)" for r in rows]
    return SelectionResult(variant, resolved, [int(r) for r in rows], [float(p[r]) for r in rows], reasons, notes, budget)


def select_tsds_uniform(pool_features, target_features, budget, params=None, *, pool_is_unit: bool = False) -> SelectionResult:
    """``select("tsds-uniform", ...)``: KNN-Uniform (sigma = 0)."""
    return _select("tsds-uniform", UNIFORM_DEFAULTS, pool_features, target_features, budget, params, pool_is_unit)


def select_tsds_kde(pool_features, target_features, budget, params=None, *, pool_is_unit: bool = False) -> SelectionResult:
    """``select("tsds-kde", ...)``: KNN-KDE."""
    return _select("tsds-kde", KDE_DEFAULTS, pool_features, target_features, budget, params, pool_is_unit)
