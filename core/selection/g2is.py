"""G2IS: Gradient-based Graph Instruction Selection (Zhao et al., ACL 2025), Algorithm 1 as in algorithms.md 1.3-1.6.

Role in the pipeline: given the pool's Adam-aware gradient features, the targets' SGD gradient features and the
kNN gradient graph (``core.selection.graph``), pick ``budget`` pool rows.  Steps:

1. Core knowledge: sklearn PCA on the *raw* target features (``core_knowledge``); component weights
   w_v = ratio_v / sum(ratio); per-component budgets by largest remainder (``component_budgets``).
2. For every component v in PCA order, with one global excluded set X shared by all components:
   anchor = first row of the top-``anchor_candidates`` list (signed t_i . k_v, descending) not in X, else the
   global argmax over rows not in X; then walk: from the last accepted row s*, take the first of its graph
   neighbours (best first) that is not in X, has no negative dot with a row already picked for *this* component
   (no-conflict) and keeps |cos(acc + t_z, k_v)| >= delta * |cos(acc, k_v)| (consistency); if none, fall back to
   the global ranking by t_i . k_v and take its first row meeting both constraints; if none, the component ends
   under-filled ("better fewer than wrong").

The walk is a generator of typed events (``walk_events``) so the explorer can replay every decision, and so that
the selection is by construction exactly the rows that ``Anchor`` and accepted ``Candidate`` events name.
``run_g2is`` consumes the stream into a ``SelectionResult``.

The walk itself is hand-written (there is no library for it); it is checked against a plain loop transcription of
the spec in ``tests/reference_g2is.py``.  Speed comes from doing each step's checks for all candidates at once:
the conflict check is one matrix product (picked rows x candidates), the consistency check one row-wise norm, and
the fallback ranking is sorted once per component and scanned in growing chunks, skipping excluded rows lazily.
All decisions are taken in float64 on the float32 unit rows, so rounding cannot flip a verdict between this and
the reference except on exact mathematical ties.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar

import numpy as np
from sklearn.decomposition import PCA

from core.selection.graph import DEFAULT_K, RESCALE_MODES, GradientGraph, build_graph, normalize_rows
from core.selection.methods import SelectionResult, check_pool_and_targets, clip_budget, resolve_params


# --------------------------------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class G2ISParams:
    val_k: float = 0.5  # cumulative explained variance kept by PCA (authors' default, pca_mode=variance)
    n_components: int | None = None  # a fixed component count instead of val_k
    delta: float = 0.8  # consistency threshold (authors' --ways)
    anchor_candidates: int = 1000  # length of the per-component anchor list (hard-coded 1000 by the authors)
    k: int = DEFAULT_K  # graph degree when the graph is built here; unspecified by the authors [I]
    graph_backend: str = "auto"
    conflict_check: bool = True  # ablation: False disables the no-conflict constraint
    local_steps_only: bool = False  # ablation: True = no fallback, a component ends when the local walk is stuck
    use_graph: bool = True  # ablation: False = every step goes to the global ranking (anchors / ranking only)
    record_candidates: bool = True  # emit an event per rejected candidate (False keeps large runs light)
    # Remedies for what the walk walks on (issue 17). Off here, as in the authors' Algorithm 1; the "g2is" profile
    # turns on DEFAULT_REMEDIES (below), "g2is-paper" keeps them off:
    center_pool: bool = False  # walk (graph, scores, checks) on the unit pool rows minus their mean, re-normalised
    graph_rescale: str = "none"  # the graph's neighbours: "none" (cosine kNN), "csls", "local" or "mutual" (graph.py)
    align_signs: bool = False  # flip each PCA component to a non-negative dot with the mean target gradient

    def __post_init__(self):
        if self.n_components is None:
            if isinstance(self.val_k, bool) or not (isinstance(self.val_k, (int, float)) and 0 < self.val_k < 1):
                raise ValueError(f"val_k must be a fraction of explained variance in (0, 1), got {self.val_k!r}; "
                                 "use n_components for a fixed count")
        elif isinstance(self.n_components, bool) or not isinstance(self.n_components, int) or self.n_components < 1:
            raise ValueError(f"n_components must be a positive integer, got {self.n_components!r}")
        if not (isinstance(self.delta, (int, float)) and 0 < self.delta <= 1):
            raise ValueError(f"delta must lie in (0, 1] (the authors assert 0 < ways <= 1), got {self.delta!r}")
        if not isinstance(self.anchor_candidates, int) or self.anchor_candidates < 1:
            raise ValueError(f"anchor_candidates must be a positive integer, got {self.anchor_candidates!r}")
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"graph k must be a positive integer, got {self.k!r}")
        if self.graph_rescale not in RESCALE_MODES:
            raise ValueError(f"graph_rescale must be one of {RESCALE_MODES}, got {self.graph_rescale!r}")

    @classmethod
    def from_dict(cls, params: dict | None) -> G2ISParams:
        defaults = {f.name: f.default for f in fields(cls)}
        return cls(**resolve_params(defaults, params, "g2is"))


_BLAS_CONTROLLER = None


def _one_blas_thread():
    """A scoped single-thread BLAS limit for the walk's thin products ([picked, D] x [D, candidates]).

    Measured on the 2-core box: OpenBLAS's threading makes such products 5-50x slower than one thread (a 20 x 32
    product over D=8192 took 49 ms threaded, 0.9 ms single).  The limit is process-wide while it lasts, so it is
    held only around each product, never across a ``yield``.
    """
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _BLAS_CONTROLLER = ThreadpoolController()
    return _BLAS_CONTROLLER.limit(limits=1, user_api="blas")


# ------------------------------------------------------------------------------------------------ core knowledge
@dataclass(frozen=True, eq=False)
class CoreKnowledge:
    components: np.ndarray  # float64 [K, D], unit rows, PCA order
    weights: np.ndarray  # float64 [K], ratio_v / sum(ratio), sums to 1
    explained_variance_ratio: np.ndarray  # float64 [K], share of the total target variance per kept component
    cumulative_curve: np.ndarray  # float64 [min(M, D)], cumulative explained variance of all components (for plots)
    how: str  # "pca", or why PCA was not possible ("single target row", "targets have zero variance")


def core_knowledge(target_features: np.ndarray, val_k: float = 0.5, n_components: int | None = None,
                   align_signs: bool = False) -> CoreKnowledge:
    """PCA "core knowledge" of the raw target features, as the authors' ``gradient_walk.py``.

    sklearn's PCA centres the data, so components are variance directions around the mean target gradient
    (algorithms.md 1.3).  A float ``val_k`` keeps the fewest components whose cumulative explained variance
    reaches it (sklearn's rule).  We run PCA in float64 with the deterministic full SVD [I: the authors pass
    whatever dtype their tensors have, and sklearn's "auto" solver may pick the randomised one].

    With one target row, or rows without variance, PCA has nothing to decompose; the single component is then
    the normalised (mean) target vector with weight 1 [I: the authors' code would fail there].

    ``align_signs``: a PCA component's sign is arbitrary (sklearn fixes it by an SVD convention), yet the anchors
    and the fallback rank rows by the *signed* score t_i . k_v, so half the time a component points away from
    the targets.  Flipping each to a non-negative dot with the mean target gradient makes "towards the targets"
    the direction every component walks (a remedy of issue 17; off in the authors' Algorithm 1).
    """
    targets = np.asarray(target_features, dtype=np.float64)
    m, d = targets.shape
    mean = targets.mean(axis=0)
    centred_energy = float(np.square(targets - mean).sum())
    if m == 1 or centred_energy <= 1e-12 * max(1.0, float(np.square(targets).sum())):
        norm = float(np.linalg.norm(mean))
        if norm == 0:
            raise ValueError("target features are all zero: there is no direction to select towards")
        how = "single target row" if m == 1 else "targets have zero variance"
        one = np.ones(1)
        return CoreKnowledge((mean / norm)[None, :], one, one.copy(), one.copy(), how)
    # The whole cumulative-variance curve is only for display: the eigenvalues of the small [M, M] Gram matrix of the
    # centred targets give it without a second SVD of the [M, D] matrix (which costs seconds at D=8192).
    centred = targets - mean
    eigenvalues = np.clip(np.linalg.eigvalsh(centred @ centred.T)[::-1][: min(m, d)], 0, None)
    curve = np.cumsum(eigenvalues) / eigenvalues.sum()
    if n_components is not None and n_components > min(m, d):
        raise ValueError(f"n_components={n_components} exceeds min(target rows, dim) = {min(m, d)}")
    # One BLAS thread: measured 0.3 s instead of 3-8 s for 200 x 8192 on the 2-core box (see _one_blas_thread).
    with _one_blas_thread():
        pca = PCA(n_components=n_components if n_components is not None else float(val_k), svd_solver="full")
        pca.fit(targets)
    ratio = np.asarray(pca.explained_variance_ratio_, dtype=np.float64)
    components = np.asarray(pca.components_, dtype=np.float64)
    # sklearn's components are unit already; normalise row by row anyway, as the authors do, in plain 1-D calls
    # so the reference implementation gets bit-identical vectors.
    for v in range(components.shape[0]):
        components[v] = components[v] / np.linalg.norm(components[v])
        if align_signs and float(components[v] @ mean) < 0:
            components[v] = -components[v]
    total = ratio.sum()
    weights = ratio / total if total > 0 else np.full(ratio.shape, 1.0 / ratio.shape[0])
    return CoreKnowledge(components, weights, ratio, curve, "pca")


def component_budgets(weights: np.ndarray, budget: int) -> list[int]:
    """Split ``budget`` by ``weights`` with the largest-remainder (Hamilton) method; sums exactly to ``budget``.

    Hand-written (a few lines, no library does it): floor every quota, then give the leftover rows one each to the
    largest fractional remainders; equal remainders go to the earlier component (stable sort) [I: unspecified].
    """
    weights = np.asarray(weights, dtype=np.float64)
    quotas = weights * budget
    base = np.floor(quotas).astype(np.int64)
    leftover = int(budget - base.sum())
    order = np.argsort(-(quotas - base), kind="stable")
    while leftover > 0:  # leftover < K except for float dust; loop to be safe
        take = order[: min(leftover, len(order))]
        base[take] += 1
        leftover -= len(take)
    return [int(b) for b in base]


# ----------------------------------------------------------------------------------------------------- events
def _fmt(x: float) -> str:
    return f"{x:.2f}".replace("-", "\u2212") if abs(x) >= 0.01 or x == 0 else f"{x:.2g}".replace("-", "\u2212")


class _Event:
    kind: ClassVar[str] = ""

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}

    def describe(self) -> str:  # pragma: no cover - every subclass overrides
        raise NotImplementedError


@dataclass(frozen=True)
class ComponentStart(_Event):
    component: int
    weight: float
    budget: int
    explained_variance: float  # this component's explained-variance ratio
    kind: ClassVar[str] = "component_start"

    def describe(self) -> str:
        return (f"component {self.component}: weight {self.weight:.3f} (explains {self.explained_variance:.1%} of the "
                f"target variance), budget {self.budget}")


@dataclass(frozen=True)
class Anchor(_Event):
    component: int
    row: int
    rank: int  # 1-based position in the signed ranking by t_i . k_v (== position in the anchor list when in it)
    skipped: int  # rows ranked above it that were skipped because already taken
    from_global_argmax: bool  # the anchor list was used up, so this is the global argmax over the rest
    score: float  # signed t_row . k_v
    kind: ClassVar[str] = "anchor"

    def describe(self) -> str:
        where = "global argmax (anchor list used up)" if self.from_global_argmax else f"anchor list rank {self.rank}"
        skipped = f", {self.skipped} taken row(s) skipped" if self.skipped else ""
        return f"anchor: row {self.row} from the {where}{skipped}, similarity {_fmt(self.score)}"


@dataclass(frozen=True)
class Candidate(_Event):
    component: int
    row: int
    from_row: int  # the walk's current node s* (the last accepted row)
    phase: str  # "local" (s*'s neighbour list) or "fallback" (global ranking)
    verdict: str  # "taken" | "conflict" | "inconsistent" | "accepted"
    position: int  # 1-based: place in s*'s neighbour list (local) or rank in the global ranking (fallback)
    edge_similarity: float | None = None  # cos(s*, row), local phase
    conflict_row: int | None = None  # the picked row with the most negative dot (verdict "conflict")
    conflict_dot: float | None = None
    old_similarity: float | None = None  # |cos(acc, k_v)| before this candidate
    new_similarity: float | None = None  # |cos(acc + t_row, k_v)|
    delta: float | None = None
    kind: ClassVar[str] = "candidate"

    @property
    def ratio(self) -> float | None:
        if self.old_similarity is None or self.new_similarity is None or self.old_similarity == 0:
            return None
        return self.new_similarity / self.old_similarity

    def to_dict(self) -> dict:
        return {**super().to_dict(), "ratio": self.ratio}

    def describe(self) -> str:
        if self.verdict == "taken":
            return f"rejected: row {self.row} is already selected"
        if self.verdict == "conflict":
            return f"rejected: conflicts with row {self.conflict_row}, dot {_fmt(self.conflict_dot)}"
        if self.verdict == "inconsistent":
            return (f"rejected: similarity would fall to {self.ratio:.2f} of its previous value, "
                    f"below \u03b4={self.delta:g}")
        if self.phase == "local":
            return f"accepted: edge similarity {_fmt(self.edge_similarity)}, running similarity {_fmt(self.new_similarity)}"
        return f"accepted: global rank {self.position}, running similarity {_fmt(self.new_similarity)}"


@dataclass(frozen=True)
class Fallback(_Event):
    component: int
    from_row: int
    reason: str  # "stuck": no neighbour of from_row passes; "no_graph": the graph is switched off
    kind: ClassVar[str] = "fallback"

    def describe(self) -> str:
        if self.reason == "no_graph":
            return "fallback to global ranking (graph disabled)"
        return f"fallback to global ranking: no neighbour of row {self.from_row} passes"


@dataclass(frozen=True)
class ComponentEnd(_Event):
    component: int
    filled: int
    budget: int
    under_filled: bool
    reason: str
    fallbacks: int = 0
    kind: ClassVar[str] = "component_end"

    def describe(self) -> str:
        state = f"under-filled: {self.reason}" if self.under_filled else self.reason
        return f"component {self.component} done: {self.filled} of {self.budget} ({state})"


WalkEvent = ComponentStart | Anchor | Candidate | Fallback | ComponentEnd


# ------------------------------------------------------------------------------------------------------- plan
@dataclass(eq=False)
class WalkPlan:
    """Everything the walk reads, computed once; re-run the walk with other switches via ``with_params``."""

    train: np.ndarray  # float32 [N, D] unit (or zero) rows
    knowledge: CoreKnowledge
    budget: int
    budgets: list[int]  # per component, sums to budget
    scores: np.ndarray  # float64 [N, K]: signed t_i . k_v
    graph: GradientGraph | None
    params: G2ISParams
    _rankings: dict = field(default_factory=dict, repr=False)

    def ranking(self, component: int) -> np.ndarray:
        """All rows by descending signed score for one component, ties by lower index; sorted once, cached."""
        if component not in self._rankings:
            self._rankings[component] = np.argsort(-self.scores[:, component], kind="stable")
        return self._rankings[component]

    def with_params(self, **changes) -> WalkPlan:
        """The same plan with other walk switches (delta, ablations); PCA-shaping params cannot change here."""
        params = G2ISParams.from_dict({**asdict(self.params), **changes})
        if (params.val_k, params.n_components, params.k) != (self.params.val_k, self.params.n_components, self.params.k):
            raise ValueError("val_k, n_components and k shape the plan: call prepare_walk again")
        return WalkPlan(self.train, self.knowledge, self.budget, self.budgets, self.scores, self.graph, params,
                        self._rankings)


def prepare_walk(
    pool_features: np.ndarray,
    target_features: np.ndarray,
    budget: int,
    params: G2ISParams | dict | None = None,
    graph: GradientGraph | None = None,
    *,
    pool_is_unit: bool = False,
) -> WalkPlan:
    """PCA, budgets, signed scores and (when needed and not given) the graph.

    ``pool_is_unit=True`` says ``pool_features`` already went through ``core.selection.graph.normalize_rows``, which saves a
    copy of a large pool.
    """
    params = params if isinstance(params, G2ISParams) else G2ISParams.from_dict(params)
    train = np.ascontiguousarray(pool_features, dtype=np.float32) if pool_is_unit else normalize_rows(pool_features)
    if params.center_pool:
        train = centred_rows(train)
    knowledge = core_knowledge(target_features, params.val_k, params.n_components, params.align_signs)
    return make_plan(train, knowledge, budget, params, graph)


def centred_rows(unit: np.ndarray) -> np.ndarray:
    """The unit rows minus their mean, re-normalised (a new array): removes the direction every gradient shares,
    which makes a few rows close to all others (issue 17 measured the largest in-degree fall from 358 to 166)."""
    mean = unit.mean(axis=0, dtype=np.float64).astype(np.float32)
    return normalize_rows(unit - mean)


def make_plan(
    train: np.ndarray, knowledge: CoreKnowledge, budget: int, params: G2ISParams, graph: GradientGraph | None = None
) -> WalkPlan:
    """A plan from unit pool rows and given core knowledge (``prepare_walk`` minus normalisation and PCA).

    Also the way to walk along hand-chosen directions (tests, "what if" views in the explorer)."""
    if knowledge.components.shape[1] != train.shape[1]:
        raise ValueError(f"dimension mismatch: components have {knowledge.components.shape[1]} columns, "
                         f"the pool has {train.shape[1]}")
    budgets = component_budgets(knowledge.weights, budget)
    scores = np.empty((train.shape[0], knowledge.components.shape[0]), dtype=np.float64)
    with _one_blas_thread():  # thin [rows, D] x [D, K] products: faster on one thread (see _one_blas_thread)
        for start in range(0, train.shape[0], 4096):  # float64 products without a float64 copy of the pool
            scores[start:start + 4096] = train[start:start + 4096].astype(np.float64) @ knowledge.components.T
    if params.use_graph:
        if graph is None:
            graph = build_graph(train, k=params.k, backend=params.graph_backend, normalized=True,
                                rescale=params.graph_rescale)
        elif graph.n_nodes != train.shape[0]:
            raise ValueError(f"the graph has {graph.n_nodes} nodes but the pool has {train.shape[0]} rows")
    return WalkPlan(train, knowledge, int(budget), budgets, scores, graph, params)


# ------------------------------------------------------------------------------------------------------- walk
def _abs_cos(acc: np.ndarray, direction: np.ndarray) -> float:
    """|cos(acc, direction)| for a unit direction; 0 for a zero acc (a zero anchor points nowhere)."""
    norm = float(np.linalg.norm(acc))
    return abs(float(np.dot(acc, direction))) / norm if norm > 0 else 0.0


class _ComponentWalk:
    """State of one component's walk: picked rows (float64, for the conflict product), acc, |cos(acc, k_v)|."""

    def __init__(self, train: np.ndarray, direction: np.ndarray, capacity: int, delta: float, conflict_check: bool):
        self.train, self.direction, self.delta, self.conflict_check = train, direction, delta, conflict_check
        self.picked = np.empty((capacity, train.shape[1]), dtype=np.float64)
        self.rows: list[int] = []
        self.acc = np.zeros(train.shape[1], dtype=np.float64)
        self.old = 0.0

    def accept(self, row: int) -> None:
        vector = self.train[row].astype(np.float64)
        self.picked[len(self.rows)] = vector
        self.rows.append(row)
        self.acc += vector
        self.old = _abs_cos(self.acc, self.direction)

    def consistency(self, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(new |cos(acc + t_z, k_v)| per candidate, passes-consistency mask)."""
        summed = self.train[candidates].astype(np.float64) + self.acc
        norms = np.sqrt(np.einsum("ij,ij->i", summed, summed))
        with _one_blas_thread():
            dots = np.abs(summed @ self.direction)
        new = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
        return new, ~(new < self.delta * self.old)

    def conflicts(self, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(conflict mask, most negative dot, the picked row giving it) per candidate: one matrix product."""
        if not self.conflict_check or not self.rows or len(candidates) == 0:
            zeros = np.zeros(len(candidates))
            return np.zeros(len(candidates), bool), zeros, np.full(len(candidates), -1, np.int64)
        with _one_blas_thread():
            dots = self.picked[: len(self.rows)] @ self.train[candidates].astype(np.float64).T  # [picked, candidates]
        worst = dots.argmin(axis=0)
        worst_dot = dots[worst, np.arange(len(candidates))]
        return worst_dot < 0, worst_dot, np.asarray(self.rows, dtype=np.int64)[worst]


def walk_events(plan: WalkPlan, record_candidates: bool | None = None) -> Iterator[WalkEvent]:
    """Run Algorithm 1 and yield every decision as an event.  The selection is the rows of ``Anchor`` events and of
    ``Candidate`` events with verdict "accepted", in order.  ``record_candidates=False`` (default: the plan's
    param) leaves out rejected-candidate events only."""
    p = plan.params
    record = p.record_candidates if record_candidates is None else record_candidates
    train = plan.train
    n, dim = train.shape
    excluded = np.zeros(n, dtype=bool)
    graph = plan.graph if p.use_graph else None
    # Growing fallback chunks: the first passing row is usually near the top, but at delta=1 scans can cover most
    # of the pool; cap the chunk so the float64 [chunk, D] temporaries stay ~16 MB.
    max_chunk = int(max(64, min(4096, 2**21 // max(1, dim))))
    for v, b_v in enumerate(plan.budgets):
        direction = plan.knowledge.components[v]
        yield ComponentStart(v, float(plan.knowledge.weights[v]), int(b_v), float(plan.knowledge.explained_variance_ratio[v]))
        if b_v == 0:
            yield ComponentEnd(v, 0, 0, False, "zero budget")
            continue
        if excluded.all():
            yield ComponentEnd(v, 0, int(b_v), True, "pool exhausted")
            continue
        ranking = plan.ranking(v)
        scores = plan.scores[:, v]
        open_from = 0  # every ranking[:open_from] is excluded; exclusion only grows, so this only moves forward
        while excluded[ranking[open_from]]:
            open_from += 1
        walk = _ComponentWalk(train, direction, b_v, p.delta, p.conflict_check)
        anchor = int(ranking[open_from])
        walk.accept(anchor)
        excluded[anchor] = True
        yield Anchor(v, anchor, open_from + 1, open_from, open_from >= min(p.anchor_candidates, n), float(scores[anchor]))
        last, fallbacks, end_reason = anchor, 0, None
        while len(walk.rows) < b_v:
            accepted: Candidate | None = None
            if graph is not None:
                neighbours = graph.neighbours_of(last)  # (shorter than k in a mutual graph)
                taken = excluded[neighbours]
                new, consistent = walk.consistency(neighbours)
                conflict, worst_dot, worst_row = walk.conflicts(neighbours)
                passing = np.flatnonzero(~taken & ~conflict & consistent)
                stop = int(passing[0]) + 1 if passing.size else len(neighbours)
                if record:
                    for j in range(stop - (1 if passing.size else 0)):
                        yield _rejection(v, int(neighbours[j]), last, "local", j + 1, float(graph.similarities[last, j]),
                                         bool(taken[j]), bool(conflict[j]), float(worst_dot[j]), int(worst_row[j]),
                                         walk.old, float(new[j]), p.delta)
                if passing.size:
                    j = int(passing[0])
                    row, old = int(neighbours[j]), walk.old
                    walk.accept(row)
                    excluded[row] = True
                    accepted = Candidate(v, row, last, "local", "accepted", j + 1,
                                         edge_similarity=float(graph.similarities[last, j]),
                                         old_similarity=old, new_similarity=walk.old, delta=p.delta)
                elif p.local_steps_only:
                    end_reason = "local walk stuck (local_steps_only)"
                    break
            elif p.local_steps_only:
                end_reason = "local walk stuck (local_steps_only, no graph)"
                break
            if accepted is None:
                fallbacks += 1
                yield Fallback(v, last, "stuck" if graph is not None else "no_graph")
                while open_from < n and excluded[ranking[open_from]]:
                    open_from += 1
                cursor, chunk = open_from, 64
                while accepted is None and cursor < n:
                    window = ranking[cursor:cursor + chunk]
                    open_at = np.flatnonzero(~excluded[window])
                    candidates = window[open_at]
                    if candidates.size:
                        old = walk.old
                        new, consistent = walk.consistency(candidates)
                        if record:
                            conflict, worst_dot, worst_row = walk.conflicts(candidates)
                            passing = np.flatnonzero(~conflict & consistent)
                        else:
                            # Only consistent rows can be accepted, so only they need the (costlier) conflict product.
                            passing = np.empty(0, np.int64)
                            maybe = np.flatnonzero(consistent)
                            for start in range(0, maybe.size, 64):
                                sub = maybe[start:start + 64]
                                sub_conflict = walk.conflicts(candidates[sub])[0]
                                if (~sub_conflict).any():
                                    passing = sub[~sub_conflict][:1]
                                    break
                        stop = int(passing[0]) + 1 if passing.size else candidates.size
                        if record:
                            for j in range(stop - (1 if passing.size else 0)):
                                yield _rejection(v, int(candidates[j]), last, "fallback", cursor + int(open_at[j]) + 1,
                                                 None, False, bool(conflict[j]), float(worst_dot[j]), int(worst_row[j]),
                                                 old, float(new[j]), p.delta)
                        if passing.size:
                            j = int(passing[0])
                            row = int(candidates[j])
                            walk.accept(row)
                            excluded[row] = True
                            accepted = Candidate(v, row, last, "fallback", "accepted", cursor + int(open_at[j]) + 1,
                                                 old_similarity=old, new_similarity=walk.old, delta=p.delta)
                    cursor += chunk
                    chunk = min(chunk * 2, max_chunk)
                if accepted is None:
                    end_reason = "pool exhausted" if excluded.all() else "no candidate satisfies both constraints"
                    break
            yield accepted
            last = accepted.row
        filled = len(walk.rows)
        yield ComponentEnd(v, filled, int(b_v), filled < b_v, end_reason or "budget met", fallbacks)


def _rejection(component, row, from_row, phase, position, edge_similarity, taken, conflict, worst_dot, worst_row,
               old, new, delta) -> Candidate:
    """A rejected candidate's event; the verdict is the first failing rule in the spec's order."""
    if taken:
        return Candidate(component, row, from_row, phase, "taken", position, edge_similarity)
    if conflict:
        return Candidate(component, row, from_row, phase, "conflict", position, edge_similarity,
                         conflict_row=worst_row, conflict_dot=worst_dot)
    return Candidate(component, row, from_row, phase, "inconsistent", position, edge_similarity,
                     old_similarity=old, new_similarity=new, delta=delta)


# -------------------------------------------------------------------------------------------------- entry points
def result_from_events(plan: WalkPlan, events, on_event: Callable | None = None) -> SelectionResult:
    rows, scores, reasons, notes = [], [], [], []
    knowledge = plan.knowledge
    if knowledge.how != "pca":
        notes.append(f"PCA not possible ({knowledge.how}): one component, the normalised mean target vector")
    else:
        notes.append(f"PCA kept {len(knowledge.weights)} component(s), cumulative explained variance "
                     f"{knowledge.explained_variance_ratio.sum():.3f}")
    notes.append(f"component budgets: {plan.budgets}")
    for event in events:
        if on_event is not None:
            on_event(event)
        if isinstance(event, Anchor):
            rows.append(event.row)
            reasons.append(f"component {event.component} anchor" + (" (global argmax)" if event.from_global_argmax else f" (rank {event.rank})"))
        elif isinstance(event, Candidate) and event.verdict == "accepted":
            rows.append(event.row)
            if event.phase == "local":
                reasons.append(f"component {event.component} walk from row {event.from_row} (edge {event.edge_similarity:.2f})")
            else:
                reasons.append(f"component {event.component} fallback rank {event.position}")
        else:
            if isinstance(event, ComponentEnd) and event.under_filled:
                notes.append(f"component {event.component} under-filled: {event.filled} of {event.budget} ({event.reason})")
            continue
        scores.append(float(plan.scores[rows[-1], event.component]))
    if len(rows) < plan.budget:
        notes.append(f"under-filled: {len(rows)} of {plan.budget}")
    return SelectionResult("g2is", asdict(plan.params), rows, scores, reasons, notes, plan.budget)


def run_g2is(
    pool_features: np.ndarray,
    target_features: np.ndarray,
    budget: int,
    params: G2ISParams | dict | None = None,
    graph: GradientGraph | None = None,
    on_event: Callable | None = None,
    pool_is_unit: bool = False,
) -> SelectionResult:
    """Prepare, walk, and collect.  Without ``on_event`` nobody sees rejected candidates, so they are not built."""
    plan = prepare_walk(pool_features, target_features, budget, params, graph, pool_is_unit=pool_is_unit)
    record = plan.params.record_candidates and on_event is not None
    return result_from_events(plan, walk_events(plan, record_candidates=record), on_event)


# The profiles (issue 17).  G2ISParams' own defaults are the authors' Algorithm 1 (every remedy off), which the
# walk's rule-by-rule tests and the reference comparison pin.  "g2is-paper" is exactly that; "g2is", the product's
# default, adds the remedies that met the goal on every target set and budget of bench/quality.py (README,
# "Selection quality"): centring the pool and aligning the PCA signs.  A run records every remedy either way.
PAPER_REMEDIES = {"center_pool": False, "graph_rescale": "none", "align_signs": False}
DEFAULT_REMEDIES = {"center_pool": True, "graph_rescale": "none", "align_signs": True}
PROFILES = {"g2is": DEFAULT_REMEDIES, "g2is-paper": PAPER_REMEDIES}
G2IS_METHODS = tuple(PROFILES)
PROFILE_DEFAULTS = {method: {**{f.name: f.default for f in fields(G2ISParams)}, **remedies}
                    for method, remedies in PROFILES.items()}
DEFAULTS = PROFILE_DEFAULTS["g2is"]  # the g2is method's defaults (core.selection.compare.default_params)
PAPER_DEFAULTS = PROFILE_DEFAULTS["g2is-paper"]


def profile_params(method: str, params: dict | None) -> dict:
    """``params`` with the profile's remedies filled in: "g2is" takes its defaults where the caller names none,
    "g2is-paper" refuses any remedy (it is the published algorithm)."""
    params = dict(params or {})
    remedies = PROFILES[method]
    if method == "g2is-paper":
        clash = sorted(name for name, value in remedies.items() if name in params and params[name] != value)
        if clash:
            raise ValueError(f"g2is-paper is the authors' Algorithm 1: it takes no remedy ({', '.join(clash)}); "
                             "use g2is")
    return {**remedies, **params}


def select_g2is_paper(pool_features, target_features, budget, params=None, **context) -> SelectionResult:
    """``select("g2is-paper", ...)``: G2IS with the remedies off (``PAPER_REMEDIES``); its other parameters (δ,
    val_k, k, the ablations) are free as in ``g2is``."""
    result = _select(pool_features, target_features, budget, profile_params("g2is-paper", params), **context)
    result.method = "g2is-paper"
    return result


def select_g2is(pool_features, target_features, budget, params=None, **context) -> SelectionResult:
    """``select("g2is", ...)``: the default profile (``DEFAULT_REMEDIES`` unless ``params`` names them)."""
    if not isinstance(params, G2ISParams):  # (an explicit G2ISParams is taken as it is)
        params = profile_params("g2is", params)
    return _select(pool_features, target_features, budget, params, **context)


def _select(pool_features, target_features, budget, params, *, graph=None, on_event=None,
            pool_is_unit: bool = False) -> SelectionResult:
    """Validates inputs, clips the budget, runs the walk."""
    pool, targets = check_pool_and_targets(pool_features, target_features)
    budget, budget_notes = clip_budget(pool.shape[0], budget)
    result = run_g2is(pool, targets, budget, params, graph, on_event, pool_is_unit=pool_is_unit)
    result.notes[:0] = budget_notes
    return result
