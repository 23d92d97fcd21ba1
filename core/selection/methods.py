"""Data selection: one interface over every method that turns pool and target features into a ranked subset.

Role in the pipeline: after ``featurize`` has written projected gradient features for the pool (Adam-aware) and
the targets (plain SGD), a selection method picks ``budget`` pool rows.  Every method answers with the same
``SelectionResult`` (rows in selection order, a score and a short human reason per row, notes) so the store, the
CLI and the app treat them alike.

Methods (``select(method, ...)``):

    g2is          gradient walk over the kNN gradient graph, per PCA component of the targets (core.selection.g2is)
    g2is-paper    the same walk exactly as the authors' Algorithm 1: every hubness remedy off (.g2is)
    less          LESS matching: checkpoint-weighted cosine, mean per target group, max over groups (.less)
    less-rr       round-robin LESS: each target row (or group) in turn takes its best row not yet taken (.less)
    tsds-uniform  TSDS KNN-Uniform: optimal-transport alignment with a uniform diversity regulariser (.tsds)
    tsds-kde      TSDS KNN-KDE: the same with kernel-density down-weighting of near-duplicates (.tsds)
    random        seeded permutation (.baselines)
    embedding     cosine of MiniLM sentence embeddings of the texts, LESS-style aggregation (.baselines)

Features come in raw (un-normalised) float32 [rows, dim]; each method normalises what it needs itself, because
G2IS's PCA must see the raw target features (algorithms.md section 1.3).  The method modules are imported lazily
so that choosing ``random`` does not pay for faiss or sentence-transformers.
"""
from __future__ import annotations

import importlib
import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class SelectionResult:
    method: str
    params: dict  # every parameter the run used, defaults filled in (JSON-safe)
    rows: list[int]  # pool indices in selection order
    scores: list[float]  # one per row; its meaning depends on the method (see each module)
    reasons: list[str]  # one short human reason per row
    notes: list[str] = field(default_factory=list)  # run-level remarks, e.g. "under-filled: 7 of 10"
    budget: int = 0  # the budget asked for (after clipping to the pool)

    def to_dict(self) -> dict:
        return asdict(self)


# method name -> (module, function, defaults): the function has the signature of ``select`` minus ``method``; the
# defaults are the module's parameter dataclass or dict of defaults (``core.selection.compare.default_params``).
METHODS: dict[str, tuple[str, str, str]] = {
    "g2is": ("core.selection.g2is", "select_g2is", "DEFAULTS"),
    "g2is-paper": ("core.selection.g2is", "select_g2is_paper", "PAPER_DEFAULTS"),
    "less": ("core.selection.less", "select_less", "DEFAULTS"),
    "less-rr": ("core.selection.less", "select_less_round_robin", "ROUND_ROBIN_DEFAULTS"),
    "tsds-uniform": ("core.selection.tsds", "select_tsds_uniform", "UNIFORM_DEFAULTS"),
    "tsds-kde": ("core.selection.tsds", "select_tsds_kde", "KDE_DEFAULTS"),
    "random": ("core.selection.baselines", "select_random", "RANDOM_DEFAULTS"),
    "embedding": ("core.selection.baselines", "select_embedding", "EMBEDDING_DEFAULTS"),
}


DEFAULT_RATIO = 0.05  # the budget the app and the CLI propose when the user names none: 5 % of the pool


def budget_from(n_pool: int, ratio: float | None = None, budget: int | None = None) -> tuple[int, list[str]]:
    """The number of rows to select and any notes about it.  Give exactly one of ``ratio`` and ``budget``.

    ``ratio`` becomes ``int(n_pool * ratio)`` (truncation, as G2IS's ``train_k`` does), and must lie in (0, 1].
    A ``budget`` larger than the pool is clipped to the pool, with a note saying so.
    """
    if isinstance(n_pool, bool) or not isinstance(n_pool, numbers.Integral) or n_pool < 1:
        raise ValueError(f"the pool must have at least one row, got n_pool={n_pool!r}")
    if (ratio is None) == (budget is None):
        raise ValueError("give exactly one of ratio (a fraction of the pool) and budget (a row count)")
    notes: list[str] = []
    if ratio is not None:
        if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not np.isfinite(ratio):
            raise ValueError(f"ratio must be a number in (0, 1], got {ratio!r}")
        if not 0 < ratio <= 1:
            raise ValueError(f"ratio must lie in (0, 1], got {ratio}")
        value = int(n_pool * ratio)
        if value < 1:
            raise ValueError(f"ratio {ratio} of a {n_pool}-row pool selects {n_pool * ratio:.3g} rows, which rounds down to 0")
        return value, notes
    if isinstance(budget, bool) or not isinstance(budget, numbers.Integral):
        raise ValueError(f"budget must be a whole number of rows, got {budget!r}")
    if budget < 1:
        raise ValueError(f"budget must be at least 1 row, got {budget}")
    if budget > n_pool:
        notes.append(f"budget {budget} exceeds the pool of {n_pool} rows: clipped to {n_pool}")
        return int(n_pool), notes
    return int(budget), notes


def check_features(name: str, features: Any, *, dim: int | None = None) -> np.ndarray:
    """``features`` as a float32 [rows, dim] array, or a ValueError that says what is wrong with it."""
    if features is None:
        raise ValueError(f"no {name}: got None")
    array = np.asarray(features)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [rows, dim], got shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError(f"no {name}: the array has 0 rows (shape {array.shape})")
    if array.shape[1] == 0:
        raise ValueError(f"{name} have dimension 0")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(f"dimension mismatch: {name} have {array.shape[1]} columns, the pool has {dim}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real numbers, got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    for start in range(0, array.shape[0], 4096):  # blockwise so a 20k x 8192 pool needs no full boolean copy
        block = array[start:start + 4096]
        if not np.isfinite(block).all():
            bad = start + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
            raise ValueError(f"{name} contain non-finite values (NaN or inf), first in row {bad}")
    return array


def check_pool_and_targets(pool_features: Any, target_features: Any) -> tuple[np.ndarray, np.ndarray]:
    pool = check_features("pool features", pool_features)
    if target_features is None:
        raise ValueError("no target features: got None; this method needs the targets' features")
    target_array = np.asarray(target_features)
    if target_array.ndim == 2 and target_array.shape[0] == 0:
        raise ValueError(f"no target features: the target array has 0 rows (shape {target_array.shape})")
    targets = check_features("target features", target_array, dim=pool.shape[1])
    return pool, targets


def resolve_params(defaults: dict, params: dict | None, method: str) -> dict:
    """Defaults overlaid with ``params``; unknown names are an error (a typo must not silently do nothing)."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(f"unknown parameter(s) for {method}: {unknown}; known: {sorted(defaults)}")
    return {**defaults, **params}


def ranked_top(scores: np.ndarray, budget: int) -> np.ndarray:
    """Indices of the ``budget`` highest scores, descending, ties broken by the lower index (stable sort)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:budget]


def select(
    method: str,
    pool_features: Any,
    target_features: Any,
    budget: int,
    params: dict | None = None,
    **context: Any,
) -> SelectionResult:
    """Run one selection method.  ``budget`` is a row count (see ``budget_from`` for ratios).

    ``context`` carries what is not a tunable parameter: ``graph`` (a ``core.selection.graph.GradientGraph``) and
    ``on_event`` (a callable receiving each walk event) for g2is; ``target_groups`` (one label per target row)
    for less and embedding; ``pool_texts`` / ``target_texts`` for embedding, which ignores the features;
    ``pool_is_unit=True`` (every method) when the pool rows went through ``core.selection.graph.normalize_rows`` already, so
    no method makes its own normalised copy of a large pool.
    """
    if method not in METHODS:
        raise ValueError(f"unknown selection method {method!r}; choose one of {sorted(METHODS)}")
    module_name, function_name, _ = METHODS[method]
    function = getattr(importlib.import_module(module_name), function_name)
    return function(pool_features, target_features, budget, params, **context)


def clip_budget(n_pool: int, budget: int) -> tuple[int, list[str]]:
    """``budget_from(n_pool, budget=budget)``, for the method modules."""
    return budget_from(n_pool, budget=budget)


def check_groups(target_groups: Sequence[str | None] | None, n_targets: int) -> tuple[np.ndarray, list[str]]:
    """Group id per target row and the group names, in order of first appearance.

    ``None`` for the whole list means one group of all targets; a ``None`` entry puts that row in an
    "(ungrouped)" group.
    """
    if target_groups is None:
        return np.zeros(n_targets, dtype=np.int64), ["all targets"]
    labels = list(target_groups)
    if len(labels) != n_targets:
        raise ValueError(f"target_groups has {len(labels)} labels but there are {n_targets} target rows")
    names: list[str] = []
    ids = np.empty(n_targets, dtype=np.int64)
    lookup: dict[str, int] = {}
    for row, label in enumerate(labels):
        name = "(ungrouped)" if label is None else str(label)
        if name not in lookup:
            lookup[name] = len(names)
            names.append(name)
        ids[row] = lookup[name]
    return ids, names
