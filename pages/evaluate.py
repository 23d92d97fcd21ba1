"""Evaluate page: judge selections by fine-tuning on them -- stored selection runs and/or methods run now at one
budget, each beside random at the same budget and the zero-shot model -- measured by the held-out loss on the
project's evaluation file or a seeded split of its targets.  **Plan** runs the selections and shows the estimate,
**Launch** starts the background job (live progress, Cancel); a finished or partial evaluation shows its verdicts,
the held-out loss chart, the table, the training curves and each fine-tune's adapter.  A thin view over
``core.evaluation`` and ``core.views.evaluate``."""
from __future__ import annotations

import functools
import json
from dataclasses import replace

import streamlit as st

from app import session
from core import jobs
from core.config import FineTuneArguments
from core.data.projects import project_settings
from core.evaluation.plan import ALL_POOL_MAX_ROWS, estimate_evaluation, load_plan, plan_evaluation
from core.evaluation.report import evaluation_report
from core.evaluation.run import launch_evaluation
from core.features.modeling import ModelError
from core.selection.methods import DEFAULT_RATIO
from core.views.evaluate import (
    DEFAULT_SPLIT,
    EVALUATE_METHODS,
    active_evaluation_job,
    adapter_downloads,
    adapter_zip,
    curves_figure,
    evaluation_choices,
    evaluation_job,
    heldout_figure,
    job_progress_text,
    method_label,
    results_table,
    run_choices,
    setup_caption,
    status_caption,
)
from core.views.text import markdown_code, markdown_text

DEFAULTS = FineTuneArguments()  # every training default shown below is read from here

store, project = session.store(), session.project()
st.title("Evaluate selections")
st.caption("Each selection trains a fresh LoRA adapter on the base model, once per seed, beside random rows at the "
           "same budget and the untrained (zero-shot) model; all are measured by their loss on held-out rows "
           "(lower is better).")

# Plan and Launch name the evaluation to show; the selector below is a widget, so its value is set before it exists.
if "evaluate-open" in st.session_state:
    st.session_state["evaluate-shown"] = st.session_state.pop("evaluate-open")

# Drawn top to bottom, but the planning part runs last: without features it stops the script (features_or_stop),
# and past results must still show.
running_area, planning_area, results_area = st.container(), st.container(), st.container()
active = active_evaluation_job(store, project)


@st.fragment(run_every="2s")
def live_job(job_id: str) -> None:
    current = jobs.job_view(store, job_id)
    job = current.job
    st.progress(min(1.0, job.done / job.total) if job.total else 0.0, text=job_progress_text(job))
    if current.status in jobs.ACTIVE:
        if st.button("Cancel", key=f"evaluate-cancel-{job_id}",
                     help="Finished units are kept: launching the same evaluation again resumes at the next one"):
            jobs.cancel(store, job_id)
    else:
        st.rerun(scope="app")  # the job ended: redraw the page (its results) without the poller


def launch(plan) -> None:
    try:
        job_id, how = launch_evaluation(store, plan)
    except (ValueError, OSError) as error:
        st.error(f"The evaluation cannot start: {markdown_text(error)}")
        return
    st.toast(f"{how.capitalize()} evaluation job {job_id}")
    st.session_state["evaluate-open"] = plan.id
    st.rerun()


def show_job_state(evaluation_id: str, complete: bool, planned_here: bool) -> None:
    """What became of the evaluation's last job, and a button to run its pending units (unless a job runs)."""
    if complete or active is not None:
        return
    job = evaluation_job(store, project, evaluation_id)
    if job is not None and job.status == "failed":
        st.error(f"Job {markdown_code(job.job.id)} failed: {markdown_text(job.job.message or 'no message')} "
                 f"(log: {markdown_code(jobs.log_path(store, job.job.id))})")
    elif job is not None and job.resumable:
        st.info(f"Job {markdown_code(job.job.id)} {job.status}: {markdown_text(job.job.message or '')}")
    if planned_here:
        return  # its Launch button is in the planning part above
    label = "Resume" if job is not None else "Launch"
    if st.button(f"{label} the pending units", key=f"evaluate-resume-{evaluation_id}"):
        try:
            plan = load_plan(store, evaluation_id)
        except ValueError as error:
            st.error(markdown_text(error))
            return
        launch(plan)


def show_report(evaluation_id: str, planned_id: str | None) -> None:
    try:
        report = evaluation_report(store, evaluation_id)
    except ValueError as error:  # e.g. removed by another session meanwhile
        st.error(markdown_text(error))
        return
    st.caption(markdown_text(setup_caption(report)))
    st.caption(markdown_text(status_caption(report)))
    for note in report.notes:
        st.caption(markdown_text(note))
    show_job_state(evaluation_id, report.complete, evaluation_id == planned_id)
    st.markdown("\n".join(f"- {markdown_text(verdict)}" for verdict in report.verdicts()))
    st.plotly_chart(heldout_figure(report), key="evaluate-heldout")
    st.dataframe(results_table(report), hide_index=True)
    st.markdown("**Training loss per unit**")
    st.plotly_chart(curves_figure(report), key="evaluate-curves")
    downloads = adapter_downloads(report)
    if downloads:
        st.markdown("**Adapters**")
        st.caption("Each fine-tune's LoRA adapter, a PEFT folder zipped: "
                   "peft's `PeftModel.from_pretrained` loads the unzipped folder onto the base model.")
        columns = st.columns(3)
        for number, download in enumerate(downloads):
            columns[number % 3].download_button(
                download.label, functools.partial(adapter_zip, download.folder), file_name=download.file_name,
                mime="application/zip", key=f"evaluate-adapter-{download.file_name}", on_click="ignore",
                icon=":material/download:")


def plan_section() -> None:
    index = session.features_or_stop(project, "Evaluating a selection", allow_partial_key="evaluate-allow-partial")
    counts = store.row_counts(project)
    n_pool = len(index.pool_ids)
    runs = run_choices(store, project)
    left, right = st.columns(2)
    picked = left.multiselect("Stored selection runs", list(runs), format_func=runs.get, key="evaluate-runs",
                              placeholder="none (optional)" if runs else "no stored run (Walk or Compare make them)",
                              help="Each is judged at its own size, beside random at the same size.")
    methods = right.multiselect("Methods to run now", EVALUATE_METHODS, default=EVALUATE_METHODS[:1],
                                format_func=method_label, key="evaluate-methods",
                                help="Run on the rows that may guide a selection (with a split: its selection "
                                     "half), at the budget below; stored like any selection run.")
    sizing: dict = {}
    if methods or not picked:
        kind_column, value_column = st.columns([2, 3])
        kind = kind_column.radio("Budget as", ["fraction of the pool", "number of rows"], horizontal=True,
                                 key="evaluate-budget-kind")
        if kind == "fraction of the pool":
            ratio = value_column.number_input("Fraction", min_value=0.001, max_value=1.0, value=DEFAULT_RATIO,
                                              step=0.01, format="%.3f", key="evaluate-ratio")
            sizing = {"ratio": float(ratio)}
        else:
            budget = value_column.number_input("Rows", min_value=1, max_value=n_pool, value=min(100, n_pool), step=1,
                                               key="evaluate-rows")
            sizing = {"budget": int(budget)}

    has_eval_file = counts["eval"] > 0
    source = st.radio("Evaluation rows", ["eval", "split"], index=0 if has_eval_file else 1, horizontal=True,
                      key="evaluate-rows-source",
                      format_func={"eval": f"the evaluation file ({counts['eval']} rows)",
                                   "split": "a split of the targets"}.get)
    split, split_seed = None, 0
    if source == "eval" and not has_eval_file:
        st.warning("The project has no evaluation file: upload one under Evaluation files on the Data page, or "
                   "evaluate on a split of the targets.")
        session.page_link("data.py", "Upload an evaluation file on the Data page", ":material/table:")
    elif source == "split":
        fraction_column, seed_column = st.columns([3, 1])
        split = fraction_column.slider("Held-out fraction of each target group", 0.05, 0.95, DEFAULT_SPLIT, 0.05,
                                       key="evaluate-split",
                                       help="These target rows evaluate; the others guide the selections run now. "
                                            "A stored run qualifies only if it was made on the same split.")
        split_seed = int(seed_column.number_input("Split seed", min_value=0, value=0, step=1, key="evaluate-split-seed"))
    all_pool = False
    if counts["pool"] <= ALL_POOL_MAX_ROWS:
        all_pool = st.checkbox("Also train on every pool row", key="evaluate-all-pool",
                               help="An upper reference: what the whole pool gives (costs a fine-tune on all "
                                    f"{counts['pool']} rows per seed).")

    settings = project_settings(store, project)
    with st.expander("Training settings", expanded=False):
        columns = st.columns(4)
        seeds = columns[0].number_input("Seeds", min_value=1, value=DEFAULTS.seeds, step=1, key="evaluate-seeds",
                                        help="Each seed: its own adapter init, row order and random draw")
        epochs = columns[1].number_input("Epochs", min_value=1, value=DEFAULTS.epochs, step=1, key="evaluate-epochs")
        learning_rate = columns[2].number_input("Learning rate", min_value=1e-8, value=DEFAULTS.learning_rate,
                                                step=1e-5, format="%.1e", key="evaluate-lr")
        batch_size = columns[3].number_input("Rows per step", min_value=1, value=DEFAULTS.batch_size, step=1,
                                             key="evaluate-batch", help="Gradient accumulation: examples per optimizer step")
        columns = st.columns(4)
        lora_r = columns[0].number_input("LoRA rank r", min_value=1, value=DEFAULTS.lora.r, step=1, key="evaluate-lora-r")
        lora_alpha = columns[1].number_input("LoRA alpha", min_value=1, value=DEFAULTS.lora.alpha, step=1,
                                             key="evaluate-lora-alpha")
        max_tokens = columns[2].number_input("Max tokens", min_value=8, value=DEFAULTS.max_tokens, step=1,
                                             key="evaluate-max-tokens", placeholder=f"features' ({settings.max_tokens})",
                                             help="Empty: the features' max tokens (the same rendering)")
        generate_tokens = columns[3].number_input("Generate tokens", min_value=0, value=DEFAULTS.generate_tokens, step=1,
                                                  key="evaluate-generate",
                                                  help="Greedy decoding for exact match on rows with a checkable "
                                                       "answer; 0 turns accuracy off (decoding is slow on a CPU)")
    try:
        args = replace(DEFAULTS, lora=replace(DEFAULTS.lora, r=int(lora_r), alpha=int(lora_alpha)),
                       learning_rate=float(learning_rate), epochs=int(epochs), batch_size=int(batch_size),
                       seeds=int(seeds), max_tokens=None if max_tokens is None else int(max_tokens),
                       generate_tokens=int(generate_tokens))
    except ValueError as error:
        st.error(f"Training settings: {markdown_text(error)}")
        return
    if not picked and not methods:
        st.info("Pick stored selection runs and/or methods to run now.")
        return

    request = {"runs": list(picked), "methods": list(methods), **sizing, "split": split, "split_seed": split_seed,
               "all_pool": all_pool, "args": args, "allow_partial": index.partial}
    request_key = json.dumps({**request, "project": project, "args": args.to_dict()}, sort_keys=True)
    if st.button("Plan", type="primary", key="evaluate-plan", disabled=source == "eval" and not has_eval_file,
                 help="Runs the selections still to run and estimates the fine-tunes; nothing trains yet"):
        try:
            with st.spinner("Planning: running the selections and loading the tokenizer..."):
                plan = plan_evaluation(store, project, **request)
                estimate = estimate_evaluation(store, plan)
        except (ValueError, ModelError, OSError) as error:  # EvaluationOverlap and FeaturesMissing are ValueErrors
            st.error(f"Cannot plan this evaluation: {markdown_text(error)}")
            return
        st.session_state["evaluate-planned"] = {"key": request_key, "plan": plan, "estimate": estimate.text()}
        st.session_state["evaluate-open"] = plan.id
        st.rerun()

    planned = st.session_state.get("evaluate-planned")
    if planned is None or planned["key"] != request_key:
        return
    plan = planned["plan"]
    st.markdown(f"Evaluation {markdown_code(plan.id)}: " + ", ".join(markdown_text(arm.label) for arm in plan.arms))
    for note in plan.notes:
        st.caption(markdown_text(note))
    if not plan.pending(store):
        st.success("Every unit of this evaluation is finished and cached: its results are below.")
    else:
        st.info("Estimate: " + markdown_text(planned["estimate"]))
        if st.button("Launch", type="primary", key="evaluate-launch"):
            launch(plan)


with running_area:
    if active is not None:
        st.subheader("Running evaluation")
        st.caption(f"Job {markdown_code(active.job.id)} of evaluation "
                   f"{markdown_code(active.job.params.get('evaluation', '?'))}")
        live_job(active.job.id)

planned_now = st.session_state.get("evaluate-planned")
planned_id = planned_now["plan"].id if planned_now and planned_now["plan"].project == project else None
with results_area:
    choices = evaluation_choices(store, project)
    if choices:
        st.subheader("Results")
        if st.session_state.get("evaluate-shown") not in choices:
            st.session_state.pop("evaluate-shown", None)  # (another project's, or gone): the newest instead
        shown = st.selectbox("Evaluation (newest first)", list(choices), format_func=choices.get, key="evaluate-shown")
        show_report(shown, planned_id)
    else:
        st.info("No evaluation in this project yet: plan one above.")

with planning_area:
    st.subheader("New evaluation")
    if active is not None:
        st.info("An evaluation job is running (above): plan the next one when it has ended.")
    else:
        plan_section()
