"""The evaluation job: train and measure every pending unit of a stored plan, one unit at a time.

Each finished unit is stored at once under its key (``Store.save_eval_unit``) with its adapter folder, so a
cancelled or killed job resumes at the first unit it had not finished and nothing finished is trained again.
"""
from __future__ import annotations

from collections.abc import Callable

from core import jobs
from core.evaluation.finetune import measure_unit, prepare_examples, save_adapter
from core.evaluation.plan import EvaluationPlan, Unit, load_plan
from core.features.featurize import Cancelled, Progress
from core.features.modeling import encode_messages, load_tokenizer, pick_device, resolve_model
from core.store import EvalUnitResult, Job, Store

JOB_KIND = "evaluate"


def _unit_work(unit: Unit, n_eval: int, n_checkable: int, epochs: int) -> int:
    """Progress steps of a unit: its training examples x epochs, the evaluation rows, the decoded rows."""
    return len(unit.train_ids) * epochs + n_eval + n_checkable


def run_evaluation(store: Store, evaluation_id: str, *, should_cancel: Callable[[], bool] = lambda: False,
                   report: Callable[[Progress], None] = lambda progress: None,
                   log: Callable[[str], None] = print) -> EvaluationPlan:
    """Train and measure the evaluation's pending units (the others are cached); returns its plan."""
    plan = load_plan(store, evaluation_id)
    pending = plan.pending(store)
    labels = {unit.key: f"{arm.label}" + (f", seed {unit.seed}" if unit.seed is not None else "")
              for arm in plan.arms for unit in arm.units}
    if not pending:
        log(f"evaluation {evaluation_id}: all {len(plan.units)} units cached")
        return plan
    resolved = resolve_model(plan.settings.model)
    tokenizer = load_tokenizer(resolved)
    device = pick_device(plan.settings.device)
    eval_role = "eval" if plan.rows["source"] == "eval" else "targets"
    by_id = {row.row_id: row for row in store.rows(plan.project, eval_role)}
    missing = [row_id for row_id in plan.rows["ids"] if row_id not in by_id]
    if missing:
        raise ValueError(f"{len(missing)} evaluation rows of {evaluation_id} are no longer in project {plan.project!r} "
                         f"(e.g. {missing[0]!r}: the {eval_role} rows were replaced): plan the evaluation again")
    examples = prepare_examples(tokenizer, [by_id[i] for i in plan.rows["ids"]], plan.max_tokens,
                                plan.settings.truncation)
    checkable = sum(1 for e in examples if e.answer is not None and e.prompt_ids is not None) if plan.args.generate_tokens else 0
    pool = {row.row_id: row for row in store.rows(plan.project, "pool")}
    progress = Progress(total=sum(_unit_work(u, len(examples), checkable, plan.args.epochs) for u in pending))
    log(f"evaluation {evaluation_id}: {len(pending)} of {len(plan.units)} units to run on {device.type}; "
        f"{len(examples)} evaluation rows ({checkable} checked by decoding)")

    def step() -> None:
        progress.done += 1
        if progress.done % 4 == 0:
            report(progress)
            if should_cancel():
                raise Cancelled()

    for number, unit in enumerate(pending, 1):
        progress.phase = f"{labels[unit.key]} ({number}/{len(pending)})"
        report(progress)
        if should_cancel():
            raise Cancelled()
        train = None
        if unit.kind == "finetune":
            gone = [row_id for row_id in unit.train_ids if row_id not in pool]
            if gone:
                raise ValueError(f"{len(gone)} selected rows of {labels[unit.key]} are no longer in the pool (e.g. "
                                 f"{gone[0]!r}): plan the evaluation again")
            encoded = [encode_messages(tokenizer, pool[row_id].messages, plan.max_tokens, plan.settings.truncation) for row_id in unit.train_ids]
            train = [row for row in encoded if row.error is None]  # (an answer truncated away has nothing to learn)
        measured = measure_unit(resolved, tokenizer, device, train, examples, plan.args, unit.seed, step)
        adapter = None
        if unit.kind == "finetune":
            adapter = str(save_adapter(measured.model, store.root / "adapters" / unit.key))
        losses = [loss for loss in measured.row_losses if loss == loss]  # (NaN: a row whose answer did not fit)
        mean = sum(losses) / len(losses) if losses else float("nan")
        store.save_eval_unit(EvalUnitResult(unit.key, unit.kind, unit.seed, len(train or []), mean, measured.row_losses,
                                            measured.correct, measured.checked, measured.curve, measured.seconds, adapter))
        log(f"{labels[unit.key]}: held-out loss {mean:.4f}"
            + (f", exact match {measured.correct}/{measured.checked}" if measured.checked else "")
            + f" ({measured.seconds:.0f} s)")
    progress.phase = "done"
    report(progress)
    return plan


def _run_evaluation_job(store: Store, job: Job, should_cancel, report) -> str:
    plan = run_evaluation(store, job.params["evaluation"], should_cancel=should_cancel, report=report,
                          log=lambda line: print(line, flush=True))
    return f"{len(plan.units)} units measured"


jobs.register_job_kind(JOB_KIND, _run_evaluation_job)


def launch_evaluation(store: Store, plan: EvaluationPlan, spawn: bool = True) -> tuple[str, str]:
    """Resume the evaluation's unfinished job or start a new one: (job id, "resumed"|"started")."""
    params = {"evaluation": plan.id}
    unfinished = jobs.resumable_job(store, plan.project, JOB_KIND, params)
    if unfinished is not None and spawn:
        return jobs.resume(store, unfinished.job.id).job.id, "resumed"
    return jobs.start_job(store, plan.project, JOB_KIND, params, spawn), "started"
