"""The mixed gradient instruction graph: a k-nearest-neighbour graph over the pool's gradient features by cosine.

Role in the pipeline: G2IS's walk (``core.selection.g2is``) steps from the last accepted row through that row's
neighbour list, so the graph is built once per feature set, cached, and re-used by every walk re-run.  The
authors' repo ships no graph builder (algorithms.md section 1.4): their walk reads a precomputed ``[N, k]`` index
array whose rows are sorted by descending similarity.  We build exactly that, plus, per node, its most *negative*
neighbours ("conflict edges") because "mixed" most plausibly means positive and negative edges together [I] and
the explorer shows both.

Two exact backends produce the same arrays:

* ``torch``: blocked matrix products ``X[block] @ X.T`` then ``topk``; the unit matrix is shared, not copied (on
  the CPU), and the working memory is O(block x N) with the block sized from ``memory_bytes`` (512 MiB: 447-row
  blocks at N=100,000), so it stays bounded whatever D and up to ~45 million rows (a 1-row block).  Runs on the GPU when one is present.
  ``backend="auto"`` always picks it, on the CPU as on the GPU.
* ``faiss``: ``IndexFlatIP`` (exact inner product; on unit rows that is cosine), an explicit choice only.  It
  copies the matrix into its index and searches a negated copy for the conflict lists: two more N x D float32
  matrices (+6.1 GiB at 100,000 x 8,192).

Why ``auto`` never switches to faiss (bench/graph_backends.py, bench/RESULTS.md section 4c; 2 shared CPU cores):
at N=100,000 the two kernels interleaved on the same queries took faiss 1.7x (D=1,024) and 1.9x (D=8,192) as
long as torch; whole 100,000 x 1,024 builds, run in both orders under a changing load, gave 0.67x and 1.41x wall
and 1.1x and 1.4x CPU time, with the same graph; faiss's build added 0.93 GiB of RSS to torch's 0.41 GiB.  At
20,000 x 8,192 faiss took 2.9x as long (section 4a).

Determinism: every row's neighbours are sorted by descending similarity with ties broken by the lower index (the
walk depends on this order).  A float32 matrix product can give two mathematically equal similarities values
that differ in the last bits, depending on BLAS, block layout and device, and ``topk``/faiss return tied entries in
an unspecified order (when ties straddle the k-th place, even *which* entries come back is unspecified).  So rows
whose first-pass values have near-ties (within ``tie_tol``) are re-scored exactly (float64, rounded to float32) and
re-sorted, pulling in every row within ``tie_tol`` of the k-th value when the near-tie is at the k-th place.
Duplicate rows therefore always tie and go by index.  The result is bit-for-bit repeatable for a given backend and
device; torch and faiss agree except where two similarities differ by less than float32 product rounding
(~1e-6 at D=8192) yet more than ``tie_tol``.  Zero rows stay zero after normalisation, so they have cosine 0
with everything and are ordered purely by index.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_K = 32
DEFAULT_K_NEG = 8
BACKENDS = ("auto", "torch", "faiss")
# Hubness remedies (issue 17): how each row's neighbours are ranked.  "none": by cosine (the paper's kNN).  "csls":
# by CSLS (Conneau et al. 2018), 2 cos(x, y) - r(x) - r(y) with r the mean cosine of a row's k nearest neighbours:
# a hub, close to everything, has a large r and drops down everyone's list.  "local": by local scaling (Zelnik-
# Manor & Perona 2004) of the cosine distance d, exp(-d^2 / (s(x) s(y))) with s the distance to the k-th
# neighbour.  Both re-rank the ``RESCALE_CANDIDATES`` x k nearest candidates by cosine (a hub outside them is far).
# "mutual": the mutual kNN graph (j stays in i's list only when i is in j's): a hub is kept only by the few rows it
# lists itself, so every in-degree is at most k.  Its lists are shorter than k and padded with ``NO_NEIGHBOR``.
RESCALE_MODES = ("none", "csls", "local", "mutual")
RESCALE_CANDIDATES = 4
NO_NEIGHBOR = -1  # the padding of a shortened neighbour list (similarity NaN); real neighbours come first


@dataclass(frozen=True, eq=False)
class GradientGraph:
    """kNN adjacency by cosine.  Row i of ``neighbors`` lists i's k most similar rows (self excluded), best first.
    A mutual graph lists fewer: its row i ends in ``NO_NEIGHBOR`` entries after its ``degree[i]`` real neighbours.

    ``conflicts`` lists each row's ``k_neg`` least similar rows, most negative first.  When a row has fewer than
    ``k_neg`` negative neighbours the list still has ``k_neg`` entries and the tail is non-negative; consumers that
    want true conflict edges filter on ``conflict_similarities < 0`` (``to_networkx`` does).
    """

    neighbors: np.ndarray  # int64 [N, k]
    similarities: np.ndarray  # float32 [N, k], descending per row
    conflicts: np.ndarray  # int64 [N, k_neg]
    conflict_similarities: np.ndarray  # float32 [N, k_neg], ascending per row
    k: int

    @property
    def n_nodes(self) -> int:
        return int(self.neighbors.shape[0])

    @property
    def k_neg(self) -> int:
        return int(self.conflicts.shape[1])

    @property
    def degree(self) -> np.ndarray:
        """Each row's number of real neighbours (k everywhere but in a mutual graph)."""
        return (self.neighbors != NO_NEIGHBOR).sum(axis=1)

    def neighbours_of(self, row: int) -> np.ndarray:
        """Row ``row``'s real neighbours, best first (its list without the padding)."""
        listed = self.neighbors[row]
        return listed[:int((listed != NO_NEIGHBOR).sum())]


def normalize_rows(features: np.ndarray, block_bytes: int = 32 * 2**20, out: np.ndarray | None = None) -> np.ndarray:
    """L2-normalised float32 copy of ``features``; all-zero rows stay zero (cosine 0 with everything).
    ``out=features`` (a float32 array) normalises in place: the same bits without a second matrix.

    Shared by the graph, G2IS, LESS and TSDS so that every method sees bit-identical unit rows.  Done in row
    blocks with float64 norms so a 20,000 x 8192 matrix needs no float64 copy of itself; a block's float64 copy
    is kept to ``block_bytes`` (blocks of 8,192 rows x 8,192 dims, 512 MB, ran 5-7x slower: memory traffic).
    """
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"features must be a 2-D array [rows, dim], got shape {features.shape}")
    block_rows = max(1, block_bytes // (8 * max(1, features.shape[1])))
    if out is None:
        out = np.empty(features.shape, dtype=np.float32)
    elif out.shape != features.shape or out.dtype != np.float32:
        raise ValueError(f"out must be a float32 array of shape {features.shape}, got {out.dtype} {out.shape}")
    for start in range(0, features.shape[0], block_rows):
        block = np.asarray(features[start:start + block_rows], dtype=np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))
        safe = np.where(norms > 0, norms, 1.0)
        out[start:start + block_rows] = block / safe[:, None]
    return out


def _sorted_topk(values: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row of a (values, indices) candidate set by descending value, ties by lower index."""
    order = np.lexsort((indices, -values), axis=-1)
    return np.take_along_axis(values, order, -1), np.take_along_axis(indices, order, -1)


def _canonical_values(unit: np.ndarray, row: int, candidates: np.ndarray, sign: float) -> np.ndarray:
    """sign * cos(row, candidates) in float64, rounded to float32.

    A product of two float32 numbers is exact in float64 and the float64 sum is ~1e-12 off, so this is the
    correctly rounded float32 cosine whatever BLAS, block layout or device computed the first pass: equal rows get
    equal values, and the index tie rule then decides.
    """
    values = unit[candidates].astype(np.float64) @ unit[row].astype(np.float64)
    return (sign * values).astype(np.float32)


def _finish_rows(
    unit: np.ndarray,
    rows: np.ndarray,
    values: np.ndarray,
    indices: np.ndarray,
    count: int,
    sign: float,
    tie_tol: float,
    full_row,
) -> tuple[np.ndarray, np.ndarray]:
    """Final ``count`` neighbours per row from a first-pass candidate set (self already removed).

    ``values`` are ``sign * cosine`` from a float32 matrix product (``sign=-1`` for conflict lists), ``indices``
    their rows, at least ``count`` and usually ``count + 1`` per row.  Rows with near-ties (adjacent values within
    ``tie_tol``, i.e. possibly equal up to float32 rounding) are re-scored exactly so that equal similarities
    really compare equal and go to the lower index.  When the near-tie sits at the k-th place, the candidate set
    itself may be wrong, so every row of the pool within ``tie_tol`` of the k-th value (``full_row(r)`` gives the
    first-pass values of the whole row, self at -inf) joins the re-scored set.
    """
    values, indices = _sorted_topk(values, indices.astype(np.int64))
    gaps = values[:, :-1] - values[:, 1:]
    inner = (gaps[:, : count - 1] <= tie_tol).any(axis=1) if count > 1 else np.zeros(len(rows), bool)
    boundary = gaps[:, count - 1] <= tie_tol if values.shape[1] > count else np.zeros(len(rows), bool)
    out_val, out_idx = values[:, :count].copy(), indices[:, :count].copy()
    for r in np.flatnonzero(inner | boundary):
        row = int(rows[r])
        if not unit[row].any():  # a zero row: cosine 0 with everything, so neighbours are simply the lowest indices
            others = np.arange(min(count + 1, unit.shape[0]), dtype=np.int64)
            out_idx[r] = others[others != row][:count]
            out_val[r] = 0.0
            continue
        if boundary[r]:
            first_pass = full_row(r)
            candidates = np.flatnonzero(first_pass >= values[r, count - 1] - tie_tol)
        else:
            candidates = indices[r]
        exact = _canonical_values(unit, row, candidates, sign)
        exact, candidates = _sorted_topk(exact[None, :], candidates[None, :].astype(np.int64))
        out_val[r], out_idx[r] = exact[0, :count], candidates[0, :count]
    return out_val, out_idx


def resolve_backend(backend: str) -> str:
    """The backend ``build_graph`` runs for ``backend``: ``"auto"`` is ``"torch"`` (on CPU and GPU alike, see the
    module docstring), an explicit ``"torch"`` or ``"faiss"`` is kept.  For callers that record which one ran."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto', 'torch' or 'faiss', got {backend!r}")
    return "torch" if backend == "auto" else backend


def _pick_device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _topk_torch(
    unit: np.ndarray, k: int, k_neg: int, device: torch.device, memory_bytes: int, tie_tol: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n = unit.shape[0]
    all_rows = torch.from_numpy(unit).to(device)
    # Each step holds the [block, N] score block, a copy with self masked and topk's workspace: ~3 x 4 bytes a cell.
    block = int(max(1, min(n, memory_bytes // max(1, 12 * n))))
    neighbors = np.empty((n, k), dtype=np.int64)
    similarities = np.empty((n, k), dtype=np.float32)
    conflicts = np.empty((n, k_neg), dtype=np.int64)
    conflict_sims = np.empty((n, k_neg), dtype=np.float32)
    for start in range(0, n, block):
        stop = min(n, start + block)
        scores = all_rows[start:stop] @ all_rows.T
        local = torch.arange(stop - start, device=device)
        for sign, count, out_idx, out_val in ((1.0, k, neighbors, similarities), (-1.0, k_neg, conflicts, conflict_sims)):
            if count == 0:
                continue
            masked = scores.clone() if sign > 0 else -scores  # bottom-k of s is top-k of -s, same tie rule
            masked[local, local + start] = -torch.inf  # exclude self
            take = min(count + 1, n - 1)  # one extra entry shows near-ties at the k-th place
            values, indices = torch.topk(masked, take, dim=1, largest=True, sorted=True)
            head_val, head_idx = _finish_rows(
                unit, np.arange(start, stop), values.cpu().numpy(), indices.cpu().numpy(), count, sign, tie_tol,
                lambda r, masked=masked: masked[r].cpu().numpy(),
            )
            out_idx[start:stop] = head_idx
            out_val[start:stop] = head_val * np.float32(sign)
            del masked
        del scores
    return neighbors, similarities, conflicts, conflict_sims


def _topk_faiss(unit: np.ndarray, k: int, k_neg: int, tie_tol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    import faiss

    n, dim = unit.shape
    index = faiss.IndexFlatIP(dim)
    index.add(unit)
    results = []
    for sign, count in ((1.0, k), (-1.0, k_neg)):
        if count == 0:
            results += [np.empty((n, 0), np.int64), np.empty((n, 0), np.float32)]
            continue
        queries = unit if sign > 0 else -unit  # most negative x.y == largest (-x).y
        # count + 1 real neighbours (one to see near-ties at the k-th place) + self, which may or may not come back.
        take = min(count + 2, n)
        values, indices = index.search(np.ascontiguousarray(queries), take)
        # Push self (present at most once per row) to the end of each row, keep the first count + 1 entries.
        is_self = indices == np.arange(n)[:, None]
        order = np.argsort(is_self, axis=1, kind="stable")[:, : min(count + 1, n - 1)]
        indices = np.take_along_axis(indices, order, 1)
        values = np.take_along_axis(values, order, 1)

        def full_row(r, queries=queries):
            row_values = unit @ queries[r]
            row_values[r] = -np.inf
            return row_values

        out_val, out_idx = _finish_rows(unit, np.arange(n), values, indices, count, sign, tie_tol, full_row)
        results += [out_idx, out_val * np.float32(sign)]
    return results[0], results[1], results[2], results[3]


def build_graph(
    features: np.ndarray,
    k: int = DEFAULT_K,
    k_neg: int = DEFAULT_K_NEG,
    backend: str = "auto",
    *,
    normalized: bool = False,
    device: str | torch.device | None = None,
    memory_bytes: int = 512 * 2**20,
    tie_tol: float = 1e-6,
    rescale: str = "none",
) -> GradientGraph:
    """Exact cosine kNN graph of the rows of ``features`` [N, D].

    ``rescale`` ("none", "csls", "local"; see ``RESCALE_MODES``) re-ranks each row's nearest candidates to reduce
    hubness; ``similarities`` still hold the cosines of the neighbours kept, listed in the rescaled order.

    ``k`` and ``k_neg`` are clipped to N-1 (N=1 gives empty neighbour lists).  ``normalized=True`` says the rows
    are already unit (or zero) so no normalised copy is made.  ``backend``: ``"auto"`` (torch, see
    ``resolve_backend``), ``"torch"`` or ``"faiss"``.  ``memory_bytes`` bounds the torch score block.
    ``tie_tol``: first-pass similarities closer than this are re-scored exactly before the index tie rule applies.
    """
    backend = resolve_backend(backend)
    if k < 0 or k_neg < 0:
        raise ValueError(f"k and k_neg must be >= 0, got k={k}, k_neg={k_neg}")
    unit = np.ascontiguousarray(features, dtype=np.float32) if normalized else normalize_rows(features)
    if unit.ndim != 2 or unit.shape[0] == 0:
        raise ValueError(f"features must be a non-empty 2-D array, got shape {unit.shape}")
    n = unit.shape[0]
    k, k_neg = min(k, n - 1), min(k_neg, n - 1)
    if k == 0 and k_neg == 0:
        empty_i, empty_f = np.empty((n, 0), np.int64), np.empty((n, 0), np.float32)
        return GradientGraph(empty_i, empty_f, empty_i.copy(), empty_f.copy(), 0)
    if rescale not in RESCALE_MODES:
        raise ValueError(f"rescale must be one of {RESCALE_MODES}, got {rescale!r}")
    wide = k if rescale in ("none", "mutual") else min(n - 1, RESCALE_CANDIDATES * k)
    if backend == "torch":
        arrays = _topk_torch(unit, wide, k_neg, _pick_device(device), memory_bytes, tie_tol)
    else:
        arrays = _topk_faiss(unit, wide, k_neg, tie_tol)
    if rescale == "mutual":
        arrays = (*mutual_neighbors(arrays[0], arrays[1]), arrays[2], arrays[3])
    elif rescale != "none":
        arrays = (*rescaled_neighbors(arrays[0], arrays[1], k, rescale), arrays[2], arrays[3])
    return GradientGraph(*arrays, k=k)


def rescaled_neighbors(candidates: np.ndarray, cosines: np.ndarray, k: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` best neighbours among its ``candidates`` (descending ``cosines``, [N, C], C >= k) by the
    hubness-reducing score of ``mode`` ("csls" or "local"; see ``RESCALE_MODES``); ties by the lower index.
    Returns (neighbours [N, k], their cosines)."""
    cosines64 = cosines.astype(np.float64)
    if mode == "csls":
        r = cosines64[:, :k].mean(axis=1)  # mean cosine of each row's k nearest neighbours
        score = 2 * cosines64 - r[:, None] - r[candidates]
    else:
        distance = 1.0 - cosines64
        scale = np.maximum(distance[:, k - 1], 1e-12)  # distance to the k-th nearest neighbour
        score = np.exp(-np.square(distance) / (scale[:, None] * scale[candidates]))
    # Best score first; equal scores by the lower row index (lexsort: last key is the primary one).
    order = np.lexsort((candidates, -score), axis=1)[:, :k]
    return np.take_along_axis(candidates, order, 1), np.take_along_axis(cosines, order, 1)


def mutual_neighbors(neighbors: np.ndarray, similarities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mutual kNN graph of a kNN graph's lists: each row keeps, in order, the neighbours that list it too; the
    rest of its row is ``NO_NEIGHBOR`` (similarity NaN).  Vectorised on sorted pair codes (i * N + j), not by hand
    per row: O(N k log(N k))."""
    n, k = neighbors.shape
    rows = np.repeat(np.arange(n, dtype=np.int64), k)
    codes = rows * n + neighbors.ravel()
    reverse = neighbors.ravel() * n + rows
    mutual = np.isin(reverse, codes).reshape(n, k)
    # Stable: the kept neighbours stay in their order, ahead of the dropped ones.
    order = np.argsort(~mutual, axis=1, kind="stable")
    kept = np.take_along_axis(mutual, order, 1)
    out_neighbors = np.where(kept, np.take_along_axis(neighbors, order, 1), NO_NEIGHBOR).astype(np.int64)
    out_similarities = np.where(kept, np.take_along_axis(similarities, order, 1), np.nan).astype(np.float32)
    return out_neighbors, out_similarities


def to_networkx(graph: GradientGraph, nodes=None, *, directed: bool = False, include_conflicts: bool = True):
    """The graph as networkx, edges carrying ``weight`` (cosine) and ``kind`` ("similar" / "conflict").

    ``nodes`` restricts it to a subset (only edges with both ends inside are kept; every listed node is present).
    Undirected by default: kNN lists are asymmetric, but cosine is symmetric, so an edge found from either end has
    the same weight; when a pair is both a "similar" and a listed conflict edge (tiny pools) "similar" is kept.
    Only strictly negative conflict entries become conflict edges.
    """
    import networkx as nx

    result = nx.DiGraph() if directed else nx.Graph()
    if nodes is None:
        keep = np.arange(graph.n_nodes)
    else:
        keep = np.unique(np.asarray(list(nodes), dtype=np.int64))
        if keep.size and (keep[0] < 0 or keep[-1] >= graph.n_nodes):
            raise ValueError(f"node ids must lie in [0, {graph.n_nodes}), got {keep[0]}..{keep[-1]}")
    member = np.zeros(graph.n_nodes, dtype=bool)
    member[keep] = True
    result.add_nodes_from(int(i) for i in keep)
    for i in keep:
        for j, sim in zip(graph.neighbors[i], graph.similarities[i]):
            if j != NO_NEIGHBOR and member[j]:
                result.add_edge(int(i), int(j), weight=float(sim), kind="similar")
    if include_conflicts:
        for i in keep:
            for j, sim in zip(graph.conflicts[i], graph.conflict_similarities[i]):
                if member[j] and sim < 0 and not result.has_edge(int(i), int(j)):
                    result.add_edge(int(i), int(j), weight=float(sim), kind="conflict")
    return result
