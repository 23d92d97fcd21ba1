"""LESS matching (Xia et al., ICML 2024; algorithms.md 2.4): score each pool row by its cosine to the targets.

Role in the pipeline: the strongest non-graph baseline G2IS is compared against, and the scorer behind the
``embedding`` baseline too (same aggregation on sentence embeddings).  Per checkpoint c the score matrix is
S_c = unit(pool_c) @ unit(targets_c).T; the checkpoints are summed with weights w_c (LESS uses each epoch's
average learning rate, renormalised to sum to 1); within each target group (LESS's "subtask": an MMLU subject,
a BBH task) the scores are averaged over that group's target rows, and a row's score is its maximum over groups.
The top ``budget`` rows by score are selected, ties broken by the lower index.

LESS reshapes the targets into equal-size consecutive blocks (``N_SUBTASKS``); explicit labels are the general
form of that and do not need equal sizes [I].
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.selection.graph import normalize_rows
from core.selection.methods import (
    SelectionResult,
    check_features,
    check_groups,
    clip_budget,
    ranked_top,
    resolve_params,
)

DEFAULTS = {"checkpoint_weights": None}


@dataclass(frozen=True, eq=False)
class LessScores:
    scores: np.ndarray  # float32 [N]: max over groups of the group-mean weighted cosine
    best_group: np.ndarray  # int64 [N]: the group attaining the max (first one on ties)
    group_means: np.ndarray  # float32 [N, G]
    group_names: list[str]
    checkpoint_weights: list[float]


def _as_checkpoints(name: str, features) -> list[np.ndarray]:
    """A single matrix (the common case) or a list with one matrix per checkpoint."""
    if isinstance(features, np.ndarray) or (features is not None and not isinstance(features, (list, tuple))):
        return [features]
    if features is None or len(features) == 0:
        raise ValueError(f"no {name}: got {features!r}")
    if np.asarray(features[0]).ndim == 1:  # a nested list of rows is one matrix, not a list of checkpoints
        return [features]
    return list(features)


def checkpoint_weights_for(count: int, weights: Sequence[float] | None) -> np.ndarray:
    """Weights renormalised to sum to 1 (LESS's CHECKPOINT_WEIGHTS are average LRs, renormalised); default equal."""
    if weights is None:
        return np.full(count, 1.0 / count)
    array = np.asarray(weights, dtype=np.float64)
    if array.shape != (count,):
        raise ValueError(f"{array.size} checkpoint weights given for {count} checkpoint(s)")
    if not np.isfinite(array).all() or (array < 0).any() or array.sum() <= 0:
        raise ValueError(f"checkpoint weights must be finite, non-negative and not all zero, got {list(array)}")
    return array / array.sum()


def less_scores(
    pool_features,
    target_features,
    checkpoint_weights: Sequence[float] | None = None,
    target_groups: Sequence[str | None] | None = None,
    block_rows: int = 8192,
    pool_is_unit: bool = False,
) -> LessScores:
    """LESS influence scores.  ``pool_features`` / ``target_features``: one [N, D] / [M, D] array, or equal-length
    lists of them (one per checkpoint; D may differ between checkpoints).  ``pool_is_unit``: the pool rows went
    through ``normalize_rows`` already."""
    pools = _as_checkpoints("pool features", pool_features)
    targets = _as_checkpoints("target features", target_features)
    if len(pools) != len(targets):
        raise ValueError(f"{len(pools)} pool checkpoint(s) but {len(targets)} target checkpoint(s)")
    pools = [check_features(f"pool features (checkpoint {c})", p) for c, p in enumerate(pools)]
    n = pools[0].shape[0]
    targets_unit = []
    for c, (pool, target) in enumerate(zip(pools, targets)):
        if pool.shape[0] != n:
            raise ValueError(f"checkpoint {c} has {pool.shape[0]} pool rows, checkpoint 0 has {n}")
        if target is not None and np.asarray(target).ndim == 2 and np.asarray(target).shape[0] == 0:
            raise ValueError(f"no target features: checkpoint {c} has 0 target rows")
        target = check_features(f"target features (checkpoint {c})", target, dim=pool.shape[1])
        if targets_unit and target.shape[0] != targets_unit[0].shape[0]:
            raise ValueError(f"checkpoint {c} has {target.shape[0]} target rows, checkpoint 0 has {targets_unit[0].shape[0]}")
        targets_unit.append(normalize_rows(target))
    weights = checkpoint_weights_for(len(pools), checkpoint_weights)
    m = targets_unit[0].shape[0]
    group_ids, group_names = check_groups(target_groups, m)
    # [M, G] averaging matrix: a product gives all group means at once.
    averaging = np.zeros((m, len(group_names)), dtype=np.float32)
    averaging[np.arange(m), group_ids] = 1.0
    averaging /= averaging.sum(axis=0, keepdims=True)
    group_means = np.empty((n, len(group_names)), dtype=np.float32)
    for start in range(0, n, block_rows):
        stop = min(n, start + block_rows)
        block = np.zeros((stop - start, m), dtype=np.float32)
        for weight, pool, target_unit in zip(weights, pools, targets_unit):
            unit = pool[start:stop] if pool_is_unit else normalize_rows(pool[start:stop])
            block += np.float32(weight) * (unit @ target_unit.T)
        group_means[start:stop] = block @ averaging
    best = group_means.argmax(axis=1)  # first maximum on ties
    scores = group_means[np.arange(n), best]
    return LessScores(scores, best.astype(np.int64), group_means, group_names, [float(w) for w in weights])


ROUND_ROBIN_DEFAULTS = {"checkpoint_weights": None, "per": "target"}


def weighted_cosines(pool_features, target_features, checkpoint_weights: Sequence[float] | None = None,
                     pool_is_unit: bool = False) -> tuple[np.ndarray, list[float]]:
    """[N, M] checkpoint-weighted cosines of every pool row to every target row, and the weights used."""
    identity = [f"t{i}" for i in range(np.asarray(_as_checkpoints("target features", target_features)[0]).shape[0])]
    scored = less_scores(pool_features, target_features, checkpoint_weights, identity, pool_is_unit=pool_is_unit)
    return scored.group_means, scored.checkpoint_weights  # (each target its own group: its means are its cosines)


def select_less_round_robin(pool_features, target_features, budget, params=None, *, target_groups=None,
                            pool_is_unit: bool = False) -> SelectionResult:
    """``select("less-rr", ...)``: round-robin LESS ("A Critical Look at Targeted Instruction Selection", 2026):
    each target row in turn (``per="target"``), or each target group in turn (``per="group"``, LESS's group-mean
    score), takes its best row not taken yet, until the budget is met.  Unlike the top-k, no target whose rows
    score highest for every target crowds the others out; the paper found it strongest at small budgets."""
    resolved = resolve_params(ROUND_ROBIN_DEFAULTS, params, "less-rr")
    if resolved["per"] not in ("target", "group"):
        raise ValueError(f"less-rr: per must be 'target' or 'group', not {resolved['per']!r}")
    if resolved["per"] == "group":
        scored = less_scores(pool_features, target_features, resolved["checkpoint_weights"], target_groups,
                             pool_is_unit=pool_is_unit)
        columns, names, weights = scored.group_means, scored.group_names, scored.checkpoint_weights
    else:
        columns, weights = weighted_cosines(pool_features, target_features, resolved["checkpoint_weights"], pool_is_unit)
        names = [f"target {i}" for i in range(columns.shape[1])]
    n = columns.shape[0]
    budget, notes = clip_budget(n, budget)
    # Each column's rows best first (stable: ties by the lower index), consumed with a cursor per column.
    orders = np.argsort(-columns, axis=0, kind="stable")
    cursors = np.zeros(columns.shape[1], dtype=np.int64)
    taken = np.zeros(n, dtype=bool)
    rows, scores, reasons = [], [], []
    turn = 0
    while len(rows) < budget:
        column = turn % columns.shape[1]
        turn += 1
        while taken[orders[cursors[column], column]]:
            cursors[column] += 1
        row = int(orders[cursors[column], column])
        taken[row] = True
        rows.append(row)
        scores.append(float(columns[row, column]))
        reasons.append(f"turn of {names[column]}: its best remaining row, cosine {columns[row, column]:.2f}")
    resolved["checkpoint_weights"] = weights
    notes.append(f"round robin over {columns.shape[1]} {'target groups' if resolved['per'] == 'group' else 'target rows'}")
    return SelectionResult("less-rr", resolved, rows, scores, reasons, notes, budget)


def select_less(pool_features, target_features, budget, params=None, *, target_groups=None,
                pool_is_unit: bool = False) -> SelectionResult:
    """``select("less", ...)``: the top ``budget`` rows by LESS score."""
    resolved = resolve_params(DEFAULTS, params, "less")
    scored = less_scores(pool_features, target_features, resolved["checkpoint_weights"], target_groups,
                         pool_is_unit=pool_is_unit)
    budget, notes = clip_budget(scored.scores.shape[0], budget)
    rows = ranked_top(scored.scores, budget)
    reasons = [f"best group '{scored.group_names[scored.best_group[r]]}', mean cosine {scored.scores[r]:.2f}" for r in rows]
    resolved["checkpoint_weights"] = scored.checkpoint_weights
    if len(scored.checkpoint_weights) > 1:
        notes.append(f"{len(scored.checkpoint_weights)} checkpoints, weights {[round(w, 4) for w in scored.checkpoint_weights]}")
    notes.append(f"{len(scored.group_names)} target group(s): max over group means")
    return SelectionResult("less", resolved, [int(r) for r in rows], [float(scored.scores[r]) for r in rows],
                           reasons, notes, budget)
