"""Evaluations by fine-tuning (``EvaluationTables``): what an evaluation compares, and each trained unit's result.

An *evaluation* names its arms (a selection, or random at the same budget, each with one unit per seed), the
zero-shot unit and the rows that evaluate them.  A *unit* is one fine-tune (or the untrained model) measured on
those rows, stored under a key of everything that changes its numbers, so two evaluations that share a unit
(the same rows, model, settings, evaluation rows and seed) train it once.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from core.store.connection import Connection, now


@dataclass(frozen=True)
class EvalUnitResult:
    """One unit's measurements: the mean held-out cross-entropy (and each evaluation row's), the exact-match count
    over the checkable rows, and the training-loss curve (one value per optimizer step; empty for zero-shot)."""

    key: str
    kind: str  # "finetune" or "zero-shot"
    seed: int | None
    n_train: int
    heldout_loss: float
    row_losses: list[float]
    correct: int
    checked: int  # checkable evaluation rows that were decoded
    curve: list[float]
    seconds: float
    adapter: str | None  # the PEFT adapter folder of a fine-tune

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.checked if self.checked else None


_UNIT_COLUMNS = ("key", "kind", "seed", "n_train", "heldout_loss", "row_losses", "correct", "checked", "curve",
                 "seconds", "adapter")


class EvaluationTables(Connection):
    """Tables evaluations and eval_units."""

    def save_evaluation(self, evaluation_id: str, project: str, params: dict, arms: list[dict], eval_rows: dict) -> None:
        """Record (or re-record: same id, same content) an evaluation's plan."""
        with self._transaction() as con:
            con.execute("DELETE FROM evaluations WHERE id = ?", [evaluation_id])
            con.execute("INSERT INTO evaluations VALUES (?, ?, ?, ?, ?, ?)",
                        [evaluation_id, project, json.dumps(params), json.dumps(arms), json.dumps(eval_rows), now()])

    def evaluation(self, evaluation_id: str) -> dict | None:
        with self._connect() as con:
            row = con.execute("SELECT id, project, params, arms, eval_rows, created FROM evaluations WHERE id = ?",
                              [evaluation_id]).fetchone()
        return _evaluation(row) if row else None

    def evaluations(self, project: str) -> list[dict]:
        """The project's evaluations, newest first."""
        with self._connect() as con:
            rows = con.execute("SELECT id, project, params, arms, eval_rows, created FROM evaluations "
                               "WHERE project = ? ORDER BY created DESC", [project]).fetchall()
        return [_evaluation(row) for row in rows]

    def save_eval_unit(self, result: EvalUnitResult) -> None:
        with self._transaction() as con:
            con.execute("DELETE FROM eval_units WHERE key = ?", [result.key])
            con.execute("INSERT INTO eval_units VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [result.key, result.kind, result.seed, result.n_train, result.heldout_loss,
                         list(result.row_losses), result.correct, result.checked, list(result.curve), result.seconds,
                         result.adapter, now()])

    def eval_units(self, keys: list[str]) -> dict[str, EvalUnitResult]:
        """The finished units among ``keys``: key -> result."""
        if not keys:
            return {}
        with self._connect() as con:
            rows = con.execute(f"SELECT {', '.join(_UNIT_COLUMNS)} FROM eval_units WHERE key IN (SELECT unnest(?))",
                               [list(keys)]).fetchall()
        return {row[0]: EvalUnitResult(*row[:5], list(row[5] or []), row[6], row[7], list(row[8] or []), *row[9:])
                for row in rows}


def _evaluation(row) -> dict:
    evaluation_id, project, params, arms, eval_rows, created = row
    return {"id": evaluation_id, "project": project, "params": json.loads(params), "arms": json.loads(arms),
            "eval_rows": json.loads(eval_rows), "created": created}
