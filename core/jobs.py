"""Background jobs shared by the CLI and the app: start, watch, cancel and resume.

A job is a row in the store plus a detached worker process (``python -m core run-job ID``, in its own session
so that closing a terminal or a browser tab never stops it).  A live worker holds an exclusive ``flock`` on
``jobs/<id>.lock``; the kernel drops it when the process dies, even by ``kill -9``, so "is this job alive?" is
answered by trying the lock rather than by trusting a pid or a heartbeat.  A job whose row says running but
whose lock is free was interrupted; resuming it starts a new worker that skips every finished chunk.
Cancel is cooperative: the worker checks the job's status after each chunk it writes.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from core.config import FeatureSettings
from core.features.distributed import RayUnavailable, run_features_ray
from core.features.estimate import CostEstimate, estimate_cost, probe_throughput
from core.features.featurize import Cancelled, FeaturePlan, plan_features, run_features
from core.features.modeling import ModelError, load_tokenizer, resolve_model
from core.store import Job, Store, StoreError, cache_problem, now

ACTIVE = ("queued", "running", "cancelling")
QUEUED_GRACE_S = 60.0  # a worker has this long to take its lock after being spawned
LOW_DISK_BYTES = 16 * 2**20  # an interrupted job on a disk with less free space names it as the likely cause


@dataclass(frozen=True)
class JobView:
    """A job as a user should see it: the stored row, with ``status`` corrected for dead workers."""

    job: Job
    status: str
    alive: bool

    @property
    def resumable(self) -> bool:
        return self.status in ("interrupted", "cancelled", "failed")


def lock_path(store: Store, job_id: str) -> Path:
    return store.root / "jobs" / f"{job_id}.lock"


def log_path(store: Store, job_id: str) -> Path:
    return store.root / "jobs" / f"{job_id}.log"


def worker_alive(store: Store, job_id: str) -> bool:
    path = lock_path(store, job_id)
    if not path.exists():
        return False
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def view(store: Store, job: Job) -> JobView:
    alive = worker_alive(store, job.id)
    status = job.status
    if job.status in ACTIVE and not alive:
        waiting = job.status == "queued" and (now() - (job.updated or job.created)).total_seconds() < QUEUED_GRACE_S
        status = "queued" if waiting else "interrupted"
        if status == "interrupted" and not job.message:
            job = replace(job, message=interrupted_message(store))
    return JobView(job, status, alive)


def interrupted_message(store: Store) -> str:
    """Why a job whose worker is gone may have stopped, and what to do (the worker could not say itself)."""
    text = ("the worker stopped without finishing (killed, or the machine or app restarted): resume to continue "
            "from the last finished chunk")
    try:
        free = shutil.disk_usage(store.root).free
    except OSError:
        return text
    if free < LOW_DISK_BYTES:
        text += f"; the cache disk has only {free / 2**20:.1f} MiB free, free some space first"
    return text


def running_job(store: Store, project: str, kind: str = "features") -> JobView | None:
    """The project's newest job of ``kind`` whose worker is at it now (queued, running or cancelling), or None."""
    for job in store.jobs(project):  # newest first
        if job.kind == kind and job.status in ACTIVE:
            current = view(store, job)
            if current.status in ACTIVE:
                return current
    return None


def progress_text(current: JobView) -> str:
    """``job f-1a2b running: 120 of 340 rows (35 %), about 3 min left`` (the ETA once the job has a rate)."""
    from core.features.estimate import format_duration

    job = current.job
    share = f" ({job.done / job.total:.0%})" if job.total else ""
    eta = f", about {format_duration(job.eta_seconds)} left" if job.eta_seconds is not None else ""
    phase = f" ({job.phase})" if job.phase else ""
    return f"job {job.id} {current.status}{phase}: {job.done} of {job.total} rows{share}{eta}"


def job_view(store: Store, job_id: str) -> JobView | None:
    job = store.job(job_id)
    return view(store, job) if job else None


def spawn_worker(store: Store, job_id: str) -> int:
    """Start a detached worker process for the job and return its pid."""
    folder = store.root / "jobs"
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, G2IS_CACHE_DIR=str(store.root), PYTHONUNBUFFERED="1")
    repo_root = Path(__file__).resolve().parent.parent  # relative paths in the job's settings mean the checkout's
    with open(log_path(store, job_id), "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "core", "run-job", job_id],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(repo_root),
            env=env,
            start_new_session=True,
        )
    # The worker outlives nothing of ours, but until its parent waits for it an exited worker stays a zombie (a
    # long-running app server would collect one per job): a daemon thread reaps it as soon as it exits.
    threading.Thread(target=process.wait, name=f"reap-{job_id}", daemon=True).start()
    store.update_job(job_id, pid=process.pid)
    return process.pid


def start_job(store: Store, project: str, kind: str, params: dict, spawn: bool = True) -> str:
    """Record a job of ``kind`` and start its worker (unless ``spawn`` is False: the caller runs it inline)."""
    job_id = store.create_job(project, kind, params)
    if spawn:
        spawn_worker(store, job_id)
    return job_id


def start_features_job(store: Store, project: str, settings: FeatureSettings, limit: int | None = None, spawn: bool = True,
                       ray_address: str | None = None) -> str:
    """Record a features job (computed on the Ray cluster at ``ray_address`` when given) and start its worker."""
    params = {"settings": settings.to_dict(), "limit": limit}
    if ray_address:  # only then: the params of a local job stay what find_resumable compares
        params["ray"] = ray_address
    return start_job(store, project, "features", params, spawn)


def resumable_job(store: Store, project: str, kind: str, params: dict) -> JobView | None:
    """The latest unfinished job of ``kind`` in the project with these params, if it is the latest of them."""
    for job in store.jobs(project):
        if job.kind == kind and _same_params(job.params, params):
            current = view(store, job)
            if current.status in ("queued", "running", "cancelling", "interrupted", "cancelled"):
                return current
            return None
    return None


def find_resumable(store: Store, project: str, settings: FeatureSettings, limit: int | None) -> JobView | None:
    """The latest unfinished features job of this project with the same settings, if any."""
    return resumable_job(store, project, "features", {"settings": settings.to_dict(), "limit": limit})


@dataclass(frozen=True)
class FeatureRequest:
    """What asking for a project's features amounts to, before anything runs."""

    plan: FeaturePlan
    estimate: CostEstimate | None  # None when everything is cached
    resumable: JobView | None  # an unfinished job with the same settings, to resume instead of starting anew
    limit: int | None = None

    @property
    def cached(self) -> bool:
        return self.plan.complete


def request_features(store: Store, project: str, settings: FeatureSettings, limit: int | None = None) -> FeatureRequest:
    """Plan a project's features, estimate their cost and find a job to resume; records the settings."""

    tokenizer = load_tokenizer(resolve_model(settings.model))
    plan = plan_features(store, project, settings, limit, tokenizer=tokenizer)
    store.ensure_project(project, settings.to_dict())
    if plan.complete:
        return FeatureRequest(plan, None, None, limit)
    return FeatureRequest(plan, estimate_cost(store, plan, tokenizer), find_resumable(store, project, settings, limit), limit)


def measure_speed(store: Store, request: FeatureRequest, log=lambda text: None) -> FeatureRequest:
    """The request with its estimate made from this machine's speed: ``probe_throughput`` times a few of its rows
    (a model load and a few seconds) and records the rate.  The request as it is when its rate was measured with
    these settings already, or nothing is left to compute."""
    if request.cached or request.estimate.rate_source == "these settings":
        return request
    tokenizer = load_tokenizer(resolve_model(request.plan.settings.model))
    if probe_throughput(store, request.plan, tokenizer, log=log) is None:
        return request
    return replace(request, estimate=estimate_cost(store, request.plan, tokenizer))


def retriable_errors(store: Store, plan: FeaturePlan) -> int:
    """How many of the plan's rows have a retriable error under its feature configs (what a retry computes)."""
    return store.retriable_error_count(plan.project, [config.key for config in plan.configs])


def clear_retriable_errors(store: Store, request: FeatureRequest) -> tuple[int, FeatureRequest]:
    """Forget the retriable errors of the request's rows under its feature configs, so that the next job computes
    those rows again (on a bigger GPU, the CPU...); permanent errors stay.  Returns how many were cleared and the
    request planned anew (the same one when nothing was cleared)."""
    plan = request.plan
    cleared = store.clear_retriable_errors(plan.project, [config.key for config in plan.configs])
    if cleared:
        request = request_features(store, plan.project, plan.settings, request.limit)
    return cleared, request


def launch_features(store: Store, request: FeatureRequest) -> tuple[str, str]:
    """Resume the request's unfinished job or start a new one in the background: (job id, "resumed"|"started")."""
    if request.resumable is not None:
        return resume(store, request.resumable.job.id).job.id, "resumed"
    return start_features_job(store, request.plan.project, request.plan.settings, request.limit), "started"


def _same_params(left: dict, right: dict) -> bool:
    return json.dumps(left, sort_keys=True, default=str) == json.dumps(right, sort_keys=True, default=str)


def resume(store: Store, job_id: str) -> JobView:
    current = job_view(store, job_id)
    if current is None:
        raise ValueError(f"no job {job_id!r}")
    if current.alive:
        return current
    store.update_job(job_id, status="queued", message=None, finished=None)
    spawn_worker(store, job_id)
    return job_view(store, job_id)


def cancel(store: Store, job_id: str) -> None:
    store.request_cancel(job_id)


def wait(store: Store, job_id: str, timeout: float | None = None, poll: float = 0.5) -> JobView:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        current = job_view(store, job_id)
        if current.status not in ACTIVE:
            return current
        if deadline is not None and time.monotonic() > deadline:
            return current
        time.sleep(poll)


@contextmanager
def _hold_lock(store: Store, job_id: str):
    path = lock_path(store, job_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RuntimeError(f"job {job_id} is already running in another process") from None
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _log_line(text: str, stream=None) -> None:
    """Print to the job's log; a log that cannot be written (a full disk) must not stop the job."""
    try:
        print(text, file=stream or sys.stdout, flush=True)
    except OSError:
        pass


def failure_message(store: Store, error: BaseException) -> str:
    """What a failed job tells the user: the message of our own errors, the disk's problem in plain words."""

    if isinstance(error, (StoreError, ModelError, RayUnavailable)):
        return str(error)
    if isinstance(error, OSError):
        problem = cache_problem(store.root, error.filename or store.root, error)
        if problem:
            return problem
    return f"{type(error).__name__}: {error}"


JobRunner = Callable[[Store, Job, Callable[[], bool], Callable[[Any], None]], str]
"""The body of one kind of job: ``runner(store, job, should_cancel, report) -> message when done``.  ``report``
takes a progress object with ``fields()``; a cancel is honoured by raising ``Cancelled``."""

JOB_RUNNERS: dict[str, JobRunner] = {}


def register_job_kind(kind: str, runner: JobRunner) -> None:
    """Make ``run_job`` run jobs of ``kind`` with ``runner``.  Stages above this module (the evaluation) register
    their kind when imported; the worker process (``python -m core run-job``) imports them all through the CLI."""
    JOB_RUNNERS[kind] = runner


def _run_features_job(store: Store, job: Job, should_cancel, report) -> str:
    settings = FeatureSettings.from_dict(job.params["settings"])
    if job.params.get("ray"):  # computed on a Ray cluster; this process is its driver (core/features/distributed.py)
        plan = run_features_ray(
            store, job.project, settings, job.params.get("limit"), address=job.params["ray"], job_id=job.id,
            should_cancel=should_cancel, report=report, log=_log_line,
        )
    else:
        plan = run_features(
            store, job.project, settings, job.params.get("limit"), job_id=job.id,
            should_cancel=should_cancel, report=report, log=_log_line,
        )
    missing = plan.rows_to_compute
    return "all features cached" if not missing else f"{missing} rows still missing"


register_job_kind("features", _run_features_job)


def run_job(store: Store, job_id: str) -> int:
    """Body of a worker process (or of an inline run): executes the job and records how it ended."""

    job = store.job(job_id)
    if job is None:
        print(f"no job {job_id}", file=sys.stderr)
        return 2
    with _hold_lock(store, job_id):
        if store.job(job_id).status == "cancelling":
            store.update_job(job_id, status="cancelled", finished=now())
            return 0
        store.update_job(job_id, status="running", pid=os.getpid(), started=now(), message=None)

        def should_cancel() -> bool:
            return store.job(job_id).status == "cancelling"

        def report(progress) -> None:
            store.update_job(job_id, **progress.fields())

        try:
            runner = JOB_RUNNERS.get(job.kind)
            if runner is None:
                raise ValueError(f"job {job_id} is of kind {job.kind!r}, which this worker cannot run "
                                 f"(known: {', '.join(sorted(JOB_RUNNERS))})")
            message = runner(store, job, should_cancel, report)
        except Cancelled:
            store.update_job(job_id, status="cancelled", finished=now(), message="cancelled by the user; resume to continue")
            return 0
        except Exception as error:  # the job fails; the message and the log say why
            _log_line(traceback.format_exc(), sys.stderr)
            try:
                store.update_job(job_id, status="failed", finished=now(), message=failure_message(store, error))
            except StoreError as second:  # e.g. the disk is still full: the view reports the job interrupted
                _log_line(f"could not record the failure: {second}", sys.stderr)
            return 1
        store.update_job(job_id, status="done", finished=now(), phase="done", message=message)
        return 0
