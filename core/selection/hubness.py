"""Hubness diagnostics of a kNN graph: how evenly the rows are shared out as neighbours.

Role in the pipeline: G2IS's walk (``core.selection.g2is``) steps through the neighbour lists of
``core.selection.graph``.  In high-dimensional spaces a few points ("hubs") turn up in the k-nearest-neighbour lists
of very many others while many points ("anti-hubs") are in nobody's list (Radovanović, Nanopoulos and Ivanović,
"Hubs in Space: Popular Nearest Neighbors in High-Dimensional Data", JMLR 11, 2010).  A walk along such a graph keeps
reaching the same few rows, so the Graph page and ``python -m core graph --stats`` show these numbers before anyone
trusts a walk.  Pure numpy/scipy on the ``[N, k]`` neighbour array (and optionally the rows' sources): no store.

Definitions (``neighbors`` row i lists i's k neighbours, self excluded):

* in-degree, the paper's k-occurrence N_k(x): how many rows list x among their k neighbours.  Every row gives out
  k slots, so the mean in-degree is exactly k; in an unbiased graph every row's in-degree is about k.
* skewness: the paper's S_{N_k}, the third standardised moment of the in-degree distribution
  (``scipy.stats.skew``, biased estimator, as in the paper).  Large and positive: a long tail of hubs.  A graph in
  which every in-degree is equal (a ring) has no tail, and its 0/0 moment ratio is taken as 0.
* neighbour slots: the listed entries of ``neighbors`` (N * k; fewer in a mutual graph).  ``top_percent_share``
  is the share of them held by the ``ceil(1% of N)`` rows of highest in-degree (their fair share:
  ``top_percent_rows / N``); ``top_ten_share`` the same for the 10 highest.
* anti-hubs: rows of in-degree 0, nobody's neighbour (a walk can reach them only as an anchor).
* neighbour purity of a source: the share of a row's neighbours that come from the row's own source, averaged
  over that source's rows, shown next to the source's share of the pool.  The share is the chance level of a graph
  that ignores sources (exactly: (rows - 1) / (N - 1), since a row is not its own neighbour).  Purity far below it
  means the source's rows are pulled towards other sources' rows, e.g. to hubs.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import skew

from core.selection.graph import NO_NEIGHBOR

# The verdict's thresholds.  In an unbiased graph (each row as likely as any other to be a neighbour) the in-degree is
# about Poisson(k): skewness 1 / sqrt(k) (0.18 at the default k=32, 0.35 at k=8), and the top 1% of rows hold at most
# about 1.5x (k=32) to 2x (k=8) their 1% of the slots, even in a 60-row pool where "the top 1%" is its single
# most-listed row.
# Skewness above 1.0 is 3x to 6x the unbiased value at those k: a tail of hubs, not sampling noise.
HUB_SKEWNESS = 1.0
# The top 1% holding 3x their fair share or more is out of reach of chance at k >= 8 and is what makes a walk go
# through the same rows.  It, not skewness, decides "hub-dominated": one moderate hub in a large pool can push the
# skewness into the tens (the third moment weighs a single outlier cubed) while taking a negligible share of the slots.
# A row is listed at most N - 1 times, so the factor cannot exceed (N - 1) / k: a pool of N <= 3k + 1 rows (the demo's
# 60 rows at k=32) is never called hub-dominated, only skewed.
HUB_DOMINATED_SHARE_FACTOR = 3.0
TOP_PERCENT = 0.01  # "the top 1% of rows"
TOP_COUNT = 10  # "the top 10 rows"


@dataclass(frozen=True)
class SourcePurity:
    """How a source's rows choose their neighbours (see the module docstring)."""

    rows: int
    pool_share: float  # rows / N: the chance level of purity
    purity: float  # mean over the source's rows of (own-source neighbours / k); nan when k == 0
    mean_in_degree: float  # k for every source in an unbiased graph


@dataclass(frozen=True, eq=False)
class HubnessStats:
    """Hubness of one kNN graph: in-degrees and the numbers derived from them (definitions in the module docstring)."""

    n: int
    k: int
    in_degree: np.ndarray  # int64 [N]: the k-occurrence of each row
    skewness: float
    max_in_degree: int
    top_percent_rows: int  # ceil(1% of N), at least 1 (0 for an empty graph)
    top_percent_share: float  # share of the N * k neighbour slots held by those rows
    top_ten_share: float  # share held by the 10 rows of highest in-degree
    anti_hub_share: float  # share of rows of in-degree 0
    purity_by_source: dict[str, SourcePurity] = field(default_factory=dict)  # largest source first; empty w/o sources

    @property
    def empty(self) -> bool:
        """No neighbour slots at all (no rows, or k = 0): nothing to diagnose."""
        return self.n == 0 or self.k == 0

    @property
    def top_percent_factor(self) -> float:
        """``top_percent_share`` over the fair share of those rows (1.0 in an exactly regular graph)."""
        return self.top_percent_share / (self.top_percent_rows / self.n) if not self.empty else 0.0

    @property
    def hub_dominated(self) -> bool:
        return not self.empty and self.top_percent_factor >= HUB_DOMINATED_SHARE_FACTOR

    @property
    def level(self) -> str:
        """'empty', 'hub-dominated', 'skewed' (a tail of hubs that holds few slots) or 'balanced'."""
        if self.empty:
            return "empty"
        if self.hub_dominated:
            return "hub-dominated"
        return "skewed" if self.skewness > HUB_SKEWNESS else "balanced"

    def top_hubs(self, count: int = TOP_COUNT) -> list[tuple[int, int]]:
        """The ``count`` rows of highest in-degree as (row index, in-degree), ties by the lower index."""
        order = np.argsort(-self.in_degree, kind="stable")[:max(count, 0)]
        return [(int(row), int(self.in_degree[row])) for row in order]

    def verdict(self) -> str:
        """The diagnosis in plain words, one paragraph."""
        if self.empty:
            return "empty: the graph has no neighbour lists (k = 0), so there is nothing to diagnose."
        rows = "row" if self.top_percent_rows == 1 else f"{self.top_percent_rows:,} rows"
        slots = (f"the top 1% of rows (the top {rows}) fill {_percent(self.top_percent_share)} of all neighbour "
                 f"slots, {self.top_percent_factor:.1f}x their fair share of {_percent(self.top_percent_rows / self.n)}")
        anti = (f"{_percent(self.anti_hub_share)} of rows are nobody's neighbour" if self.anti_hub_share
                else "every row is somebody's neighbour")
        tail = (f"in-degree skewness {self.skewness:.2f} (an unbiased graph: about {1 / math.sqrt(self.k):.2f}); "
                f"the most-listed row is a neighbour of {self.max_in_degree:,} of the other {self.n - 1:,} rows "
                f"(unbiased: about k = {self.k})")
        if self.level == "hub-dominated":
            return (f"hub-dominated: {slots}; {anti}; {tail}. A walk along these neighbour lists mostly reaches the "
                    "same few rows.")
        if self.level == "skewed":
            return f"skewed: {tail}, but {slots}; {anti}."
        return f"balanced: {slots}; {anti}; {tail}."


def _percent(share: float) -> str:
    """38%, or 0.4% for small shares (which would round to a misleading 0%)."""
    return f"{share:.0%}" if share >= 0.1 or share == 0 else f"{share:.1%}"

def hubness_stats(neighbors: np.ndarray, sources: Sequence[str] | None = None) -> HubnessStats:
    """Hubness of the kNN graph whose row i lists i's neighbours (``GradientGraph.neighbors``: [N, k] indices into
    the same N rows), with neighbour purity per source when ``sources`` (one per row; None counts as "") is given."""
    neighbors = np.asarray(neighbors)
    if neighbors.ndim != 2 or not (neighbors.size == 0 or np.issubdtype(neighbors.dtype, np.integer)):
        raise ValueError(f"neighbors must be an [N, k] integer array, got shape {neighbors.shape} {neighbors.dtype}")
    n, k = neighbors.shape
    listed = neighbors != NO_NEIGHBOR  # a mutual graph's lists are padded
    if neighbors.size and (neighbors[listed].min(initial=0) < 0 or neighbors.max() >= n):
        raise ValueError(f"neighbour indices must lie in 0..{n - 1} (or be {NO_NEIGHBOR}, no neighbour)")
    if sources is not None and len(sources) != n:
        raise ValueError(f"{len(sources)} sources for {n} rows")
    in_degree = np.bincount(neighbors[listed], minlength=n).astype(np.int64)
    slots = int(listed.sum())
    # A constant in-degree has zero variance: scipy answers nan (0/0); it has no tail, so 0.
    skewness = float(skew(in_degree)) if n and np.ptp(in_degree) > 0 else 0.0
    descending = np.sort(in_degree)[::-1]
    top_percent_rows = max(1, math.ceil(TOP_PERCENT * n)) if n else 0
    return HubnessStats(
        n=n, k=k, in_degree=in_degree, skewness=skewness, max_in_degree=int(descending[0]) if n else 0,
        top_percent_rows=top_percent_rows,
        top_percent_share=float(descending[:top_percent_rows].sum() / slots) if slots else 0.0,
        top_ten_share=float(descending[:TOP_COUNT].sum() / slots) if slots else 0.0,
        anti_hub_share=float((in_degree == 0).mean()) if n else 0.0,
        purity_by_source=_purity_by_source(neighbors, in_degree, sources) if sources is not None and n else {},
    )


def _purity_by_source(neighbors: np.ndarray, in_degree: np.ndarray, sources: Sequence[str]) -> dict[str, SourcePurity]:
    names, codes = np.unique(np.array([source or "" for source in sources], dtype=object), return_inverse=True)
    n, k = neighbors.shape
    rows = np.bincount(codes, minlength=len(names))
    # Per row: the share of its neighbours with its own source; then the mean over each source's rows (that have
    # neighbours: a mutual graph's row may have none).
    listed = neighbors != NO_NEIGHBOR
    degree = listed.sum(axis=1)
    own_count = ((codes[np.where(listed, neighbors, 0)] == codes[:, None]) & listed).sum(axis=1)
    has = degree > 0
    own = np.divide(own_count, degree, out=np.zeros(n), where=has)
    with np.errstate(invalid="ignore", divide="ignore"):
        purity = (np.bincount(codes, weights=own, minlength=len(names))
                  / np.bincount(codes, weights=has.astype(np.float64), minlength=len(names)))
    mean_in = np.bincount(codes, weights=in_degree, minlength=len(names)) / rows
    order = sorted(range(len(names)), key=lambda s: (-rows[s], str(names[s])))
    return {str(names[s]): SourcePurity(int(rows[s]), float(rows[s] / n), float(purity[s]), float(mean_in[s]))
            for s in order}
