"""Which rows evaluate a selection, and which target rows may guide it: never the same rows.

Either the project has an evaluation file (role ``eval``, ingested beside pool and targets), whose rows must not
also be target rows, or the targets are split by a seeded, recorded split: a selection half that guides the
selection methods and an evaluation half that measures the fine-tunes.  The split is made within each target
group, so every group is on both sides.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from core.config import stable_hash
from core.store import Store, StoredRow


class EvaluationOverlap(ValueError):
    """Rows that guided a selection would also evaluate it: refused (the message says which and what to do)."""


@dataclass(frozen=True)
class EvaluationRows:
    """The rows that evaluate, the target rows that may guide the selections, and how they were chosen."""

    source: str  # "eval": the project's evaluation file; "split": a split of the targets
    rows: list[StoredRow]  # the evaluation rows
    guide_ids: list[str]  # the target rows a selection may use (all targets, or the split's selection half)
    split: dict | None  # {"fraction", "seed"} of a split
    left_out: tuple[str, ...] = ()  # rows set aside before splitting: their answer does not fit max tokens

    @property
    def guide_key(self) -> str:
        """Names the guiding target rows: a selection run records it, so an evaluation can tell which rows guided it."""
        return stable_hash(sorted(self.guide_ids))

    def record(self) -> dict:
        """What an evaluation stores about its rows."""
        record = {"source": self.source, "split": self.split, "ids": [row.row_id for row in self.rows],
                  "guide_rows": len(self.guide_ids), "guide_key": self.guide_key}
        if self.left_out:
            record["left_out"] = list(self.left_out)
        return record

    def describe(self) -> str:
        if self.source == "split":
            return (f"{len(self.rows)} target rows held out by a seeded split (fraction {self.split['fraction']}, "
                    f"seed {self.split['seed']}); the other {len(self.guide_ids)} guide the selections")
        return f"{len(self.rows)} rows of the evaluation file; all {len(self.guide_ids)} target rows guide the selections"


def split_targets(targets: list[StoredRow], fraction: float, seed: int = 0) -> tuple[list[StoredRow], list[StoredRow]]:
    """(guide half, evaluation half): ``fraction`` of each target group (at least one row of a group of two or
    more) is held out, chosen by a permutation seeded with ``seed``; order within each half is the targets' order."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the evaluation split must be a fraction between 0 and 1 (got {fraction})")
    groups: dict[str | None, list[int]] = {}
    for position, row in enumerate(targets):
        groups.setdefault(row.group, []).append(position)
    held: set[int] = set()
    rng = np.random.default_rng(seed)
    for group in sorted(groups, key=lambda g: (g is None, str(g))):
        positions = groups[group]
        count = min(len(positions) - 1, max(1, round(fraction * len(positions)))) if len(positions) > 1 else 0
        held.update(positions[i] for i in rng.permutation(len(positions))[:count])
    guide = [row for i, row in enumerate(targets) if i not in held]
    evaluation = [row for i, row in enumerate(targets) if i in held]
    return guide, evaluation


def evaluation_rows(store: Store, project: str, split: float | None = None, seed: int = 0,
                    usable: Callable[[StoredRow], bool] | None = None) -> EvaluationRows:
    """The project's evaluation rows: a split of its targets when ``split`` is given, else its evaluation file.
    Rows for which ``usable`` is false (an answer cut off by max tokens: such a target has no feature to guide
    with, and no answer to measure) are set aside first and recorded in ``left_out``.
    Raises ``ValueError`` when there are none, ``EvaluationOverlap`` when evaluation rows are also targets."""
    targets = store.rows(project, "targets")
    if not targets:
        raise ValueError(f"project {project!r} has no target rows: run `python -m core ingest --project {project} "
                         "--targets FILE`")
    left_out: list[str] = []
    if split is not None:
        if usable is not None:
            left_out = [row.row_id for row in targets if not usable(row)]
            targets = [row for row in targets if usable(row)]
        guide, held = split_targets(targets, split, seed)
        if not held or not guide:
            raise ValueError(f"the split of {len(targets)} target rows leaves one side empty: add target rows or "
                             "upload an evaluation file (ingest --eval FILE)")
        return EvaluationRows("split", held, [row.row_id for row in guide], {"fraction": split, "seed": seed},
                              tuple(left_out))
    rows = store.rows(project, "eval")
    if not rows:
        raise ValueError(f"project {project!r} has no evaluation rows: upload an evaluation file (`python -m core "
                         f"ingest --project {project} --eval FILE`, or the Data page) or split the targets "
                         "(--eval-split 0.5)")
    target_hashes = {row.content_hash: row.row_id for row in targets}
    shared = [(row.row_id, target_hashes[row.content_hash]) for row in rows if row.content_hash in target_hashes]
    if shared:
        examples = ", ".join(f"{eval_id} = target {target_id}" for eval_id, target_id in shared[:3])
        raise EvaluationOverlap(
            f"{len(shared)} of {len(rows)} evaluation rows are also target rows ({examples}): rows that guide a "
            "selection cannot evaluate it; remove them from the evaluation file or use --eval-split")
    if usable is not None:
        left_out = [row.row_id for row in rows if not usable(row)]
        rows = [row for row in rows if usable(row)]
        if not rows:
            raise ValueError(f"no row of project {project!r}'s evaluation file has an answer within max tokens")
    return EvaluationRows("eval", rows, [row.row_id for row in targets], None, tuple(left_out))


def check_guided_by(evaluation: EvaluationRows, run: dict) -> None:
    """Refuse a stored selection run that was guided by rows which now evaluate it: a run made with a split
    records the key of its guiding rows (``params["targets"]``); a run without one was guided by every target."""
    guide = (run["params"].get("targets") or {}).get("guide_key")
    if evaluation.source == "split" and guide != evaluation.guide_key:
        raise EvaluationOverlap(
            f"run {run['id']} ({run['method']}) was guided by {'other target rows' if guide else 'every target row'}"
            f", including rows of this evaluation's held-out half: run the method again on the selection half "
            f"(--methods {run['method']} with the same --eval-split and --split-seed), or evaluate on an evaluation "
            "file")


def check_trains_apart(evaluation: EvaluationRows, train_rows: list[StoredRow], label: str) -> None:
    """Refuse training rows that are evaluation rows too (the same content): the loss would measure memorising."""
    held = {row.content_hash: row.row_id for row in evaluation.rows}
    shared = [(row.row_id, held[row.content_hash]) for row in train_rows if row.content_hash in held]
    if shared:
        examples = ", ".join(f"pool {pool_id} = evaluation {eval_id}" for pool_id, eval_id in shared[:3])
        raise EvaluationOverlap(f"{label}: {len(shared)} selected pool rows are also evaluation rows ({examples}): "
                                "remove them from the pool or the evaluation rows")
