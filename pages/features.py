"""Features page: the project's rows and feature sets, the cost estimate, and the background feature job
(launch, live progress with rows/s and ETA, cancel, resume, past jobs).  A thin view over ``core.jobs``."""
from __future__ import annotations

import streamlit as st

from app import session
from core import jobs
from core.demo import DEMO_PROJECT
from core.estimate import format_duration
from core.modeling import ModelError
from core.projects import project_settings, project_status

store, project = session.store(), session.project()
st.title("Gradient features")

settings = project_settings(store, project)
status = project_status(store, project)
rows = status["rows"]
st.markdown(f"Project **{project}**: {rows['pool']} pool rows, {rows['targets']} target rows. "
            f"Model `{settings.model}`, LoRA r={settings.lora.r}, max {settings.max_tokens} tokens, "
            f"projection {settings.projection.kind} to {settings.projection.dim} dimensions.")

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
    try:
        with st.spinner("Planning (loads the tokenizer; the first SmolLM2 use converts the model, ~40 s)..."):
            request = jobs.request_features(store, project, settings)
    except (ModelError, ValueError) as error:
        st.error(str(error))
        request = None
    if request is not None and request.cached:
        st.success("All features are computed and cached.")
    elif request is not None:
        st.info("Estimate: " + request.estimate.text())
        label = "Resume job" if request.resumable else "Compute features"
        if st.button(label, type="primary"):
            job_id, how = jobs.launch_features(store, request)
            st.toast(f"{how.capitalize()} job {job_id}")
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
        cols[2].markdown(f"{j['done']}/{j['total']} {j['phase'] or ''}  \n{j['message'] or ''}")
        if j["status"] in ("interrupted", "cancelled", "failed") and cols[3].button("Resume", key=f"resume-{j['id']}"):
            jobs.resume(store, j["id"])
            st.rerun()
