"""An evaluation's results: per arm the held-out loss of each seed, their mean and spread, the change against
random at the same budget, the exact-match accuracy, and a verdict in words -- beside zero-shot.

The spread is the sample standard deviation over seeds; the change against random compares means.  A change
smaller than the larger of the two arms' spreads is called what it is: within the seeds' spread.
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field

from core.evaluation.plan import Arm, load_plan
from core.store import EvalUnitResult, Store


@dataclass
class ArmResult:
    label: str
    method: str
    budget: int
    run_ids: list[str | None]
    params: dict
    seeds: list[int | None]
    losses: list[float | None]  # per seed; None while the unit is pending
    accuracies: list[float | None]
    curves: list[list[float]]
    unit_keys: list[str]
    adapters: list[str | None]
    mean: float | None = None
    spread: float | None = None  # sample standard deviation over seeds (0 for one seed)
    vs_random: float | None = None  # (mean - random's mean) / random's mean
    accuracy: float | None = None  # mean over seeds, where the rows are checkable
    verdict: str = ""

    @property
    def complete(self) -> bool:
        return all(loss is not None for loss in self.losses)


@dataclass
class EvaluationReport:
    id: str
    project: str
    eval_rows: dict  # the evaluation rows' record (source, split, ids, guide rows): EvaluationRows.record()
    args: dict
    arms: list[ArmResult]
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return all(arm.complete for arm in self.arms)

    @property
    def zero_shot(self) -> ArmResult:
        return next(arm for arm in self.arms if arm.method == "zero-shot")

    def arm(self, label: str) -> ArmResult:
        return next(arm for arm in self.arms if arm.label == label)

    def verdicts(self) -> list[str]:
        return [arm.verdict for arm in self.arms if arm.verdict]

    def lines(self) -> list[dict]:
        """One line per arm, as the CLI prints it and the Evaluate page tabulates it."""
        lines = []
        for arm in self.arms:
            losses = ", ".join("pending" if x is None else f"{x:.4f}" for x in arm.losses)
            lines.append({
                "selection": arm.label, "rows": arm.budget, "seeds": len(arm.losses),
                "held-out loss": None if arm.mean is None else round(arm.mean, 4),
                "spread": None if arm.spread is None else round(arm.spread, 4),
                "vs random": None if arm.vs_random is None else f"{100 * arm.vs_random:+.1f} %",
                "exact match": None if arm.accuracy is None else f"{100 * arm.accuracy:.1f} %",
                "per seed": losses})
        return lines

    def table(self) -> str:
        """The results as a plain-text table followed by the verdicts."""
        lines = self.lines()
        columns = list(lines[0]) if lines else []
        cells = [[("-" if line[c] is None else str(line[c])) for c in columns] for line in lines]
        widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
        text = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
        text += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
        return "\n".join([f"evaluation {self.id} on {self.rows_description}", *text, "", *self.verdicts()])

    @property
    def rows_description(self) -> str:
        record = self.eval_rows
        if record["source"] == "split":
            return (f"{len(record['ids'])} held-out target rows (split {record['split']['fraction']}, seed "
                    f"{record['split']['seed']}; {record['guide_rows']} rows guided the selections)")
        return f"{len(record['ids'])} rows of the evaluation file"

    def to_dict(self) -> dict:
        return {"id": self.id, "project": self.project, "evaluation_rows": self.eval_rows, "training": self.args,
                "complete": self.complete, "zero_shot_loss": self.zero_shot.mean,
                "zero_shot_accuracy": self.zero_shot.accuracy, "notes": self.notes,
                "arms": [{k: v for k, v in asdict(arm).items() if k != "curves"} for arm in self.arms]}


def _arm_result(arm: Arm, units: dict[str, EvalUnitResult]) -> ArmResult:
    done = [units.get(unit.key) for unit in arm.units]
    result = ArmResult(
        arm.label, arm.method, arm.budget, list(arm.run_ids), arm.params, [unit.seed for unit in arm.units],
        [u.heldout_loss if u else None for u in done], [u.accuracy if u else None for u in done],
        [u.curve if u else [] for u in done], [unit.key for unit in arm.units], [u.adapter if u else None for u in done])
    losses = [loss for loss in result.losses if loss is not None]
    if losses:
        result.mean = statistics.fmean(losses)
        result.spread = statistics.stdev(losses) if len(losses) > 1 else 0.0
    accuracies = [a for a in result.accuracies if a is not None]
    result.accuracy = statistics.fmean(accuracies) if accuracies else None
    return result


def _verdict(arm: ArmResult, random: ArmResult | None) -> str:
    if arm.mean is None:
        return f"{arm.label}: pending"
    seeds = f"{len([x for x in arm.losses if x is not None])} seed(s)"
    if arm.method == "zero-shot":
        return f"zero-shot (no training): held-out loss {arm.mean:.4f}"
    if arm.vs_random is None:
        return f"{arm.label}: held-out loss {arm.mean:.4f} ({seeds}, spread ±{arm.spread:.4f})"
    spread = 100 * arm.spread / arm.mean
    noise = max(arm.spread or 0.0, random.spread or 0.0)
    within = " (within the seeds' spread)" if abs(arm.mean - random.mean) <= noise else ""
    return f"{arm.label}: held-out loss {100 * arm.vs_random:+.1f} % vs random ({seeds}, spread ±{spread:.1f} %){within}"


def evaluation_report(store: Store, evaluation_id: str) -> EvaluationReport:
    """The evaluation's results so far (pending units show as None)."""
    plan = load_plan(store, evaluation_id)
    units = store.eval_units([unit.key for unit in plan.units])
    arms = [_arm_result(arm, units) for arm in plan.arms]
    randoms = {arm.budget: arm for arm in arms if arm.method == "random"}
    for arm in arms:
        random = randoms.get(arm.budget)
        if arm.method not in ("zero-shot", "random") and arm.mean is not None and random and random.mean is not None:
            arm.vs_random = (arm.mean - random.mean) / random.mean
        arm.verdict = _verdict(arm, random)
    return EvaluationReport(plan.id, plan.project, plan.rows, plan.args.to_dict(), arms, plan.notes)


def run_evaluations(store: Store, run_id: str) -> list[tuple[str, ArmResult]]:
    """Every evaluation result of a selection run: (evaluation id, its arm), newest first (Compare and Export show them)."""
    run = store.selection_run(run_id)
    if run is None:
        return []
    found = []
    for record in store.evaluations(run["project"]):
        if any(run_id in arm["run_ids"] for arm in record["arms"]):
            report = evaluation_report(store, record["id"])
            found += [(record["id"], arm) for arm in report.arms if run_id in arm.run_ids]
    return found
