"""The feature job: a project's rows -> encoded chats -> warmup checkpoints -> per-example gradients -> projected chunks.

``plan_features`` works out, without loading the model weights, every cache key involved and which rows still
need work: one *feature config* per (warmup checkpoint, gradient type), keyed by a hash of everything that
changes the numbers (model weights, LoRA config, chat template, max tokens, checkpoint, gradient type,
projection kind/seed/dim/sparsity/factor dim).  Features are stored per row *content hash* under a config, so a row that
appears in two projects, or in a longer ``--limit`` later, is never computed twice.  The warmup checkpoint's
key covers the model, LoRA, template, warmup arguments and the content of the rows it trains on.

``run_features`` does the work and writes it in chunks (see ``Store.write_chunk``): a killed job resumes from
its last finished chunk, and a row that fails is recorded with its error while the job goes on.  Its parts are
shared with the Ray driver (``core.features.distributed``): ``prepare_run`` (plan, encode, warmup), ``FeatureEngine``
(a model set to a checkpoint, yielding ``FeatureChunk``s) and ``store_chunk`` (write, report, honour a cancel).
"""
from __future__ import annotations

import shutil
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from core.config import FeatureSettings, stable_hash
from core.features.gradients import GradientComputer, flat_moments, make_gradient_computer, project_features
from core.features.lora import (
    add_lora,
    apply_checkpoint,
    lora_parameters,
    read_checkpoint,
    save_checkpoint,
    train_lora,
    warmup_sample,
)
from core.features.modeling import (
    EncodedRow,
    encode_messages,
    load_model,
    load_tokenizer,
    model_key,
    pick_device,
    resolve_model,
    template_key,
)
from core.features.projection import Projector, make_projector
from core.store import FeatureRowEntry, RowKey, Store, StoredRow
from core.store.features import PERMANENT, RETRIABLE

GRADIENT_TYPES = {"pool": "adam", "targets": "sgd"}
# Bump when a code change alters the numbers of features with unchanged settings (a loss or gradient fix): every
# feature key then changes, so caches computed by the old code are not reused.  Version 1 adds nothing to the
# keys, so caches made before this constant existed stay valid.
FEATURE_CODE_VERSION = 1


@dataclass(frozen=True)
class CheckpointPlan:
    key: str
    epoch: int


@dataclass(frozen=True)
class FeatureConfig:
    key: str
    role: str
    gradient_type: str
    checkpoint: CheckpointPlan


@dataclass
class FeaturePlan:
    project: str
    settings: FeatureSettings
    device: str
    model_key: str
    template_key: str
    warmup_run_key: str
    warmup_positions: list[int]  # positions in the full pool
    warmup_hashes: list[str]  # content hashes of the rows at those positions
    checkpoints: list[CheckpointPlan]
    configs: list[FeatureConfig]
    rows: dict[str, list[RowKey]]  # role -> rows in scope (pool limited by --limit), without messages
    missing: dict[str, list[StoredRow]] = field(default_factory=dict)  # config key -> rows still to compute
    missing_checkpoints: list[CheckpointPlan] = field(default_factory=list)

    @property
    def rows_to_compute(self) -> int:
        return sum(len(v) for v in self.missing.values())

    @property
    def complete(self) -> bool:
        return not self.missing_checkpoints and self.rows_to_compute == 0

    def config_for(self, role: str, epoch: int | None = None) -> FeatureConfig:
        matches = [c for c in self.configs if c.role == role and (epoch is None or c.checkpoint.epoch == epoch)]
        return matches[-1]


def _base_description(settings: FeatureSettings, mkey: str, tkey: str) -> dict:
    return {
        "model": mkey,
        "model_spec": settings.model,
        "lora": asdict(settings.lora),
        "template": tkey,
        "max_tokens": settings.max_tokens,
        # "right" keys stay what they were before the setting existed
        **({"truncation": settings.truncation} if settings.truncation != "right" else {}),
    }


def plan_features(store: Store, project: str, settings: FeatureSettings, limit: int | None = None, tokenizer=None) -> FeaturePlan:
    resolved = resolve_model(settings.model)
    tokenizer = tokenizer or load_tokenizer(resolved)
    mkey, tkey = model_key(resolved), template_key(tokenizer)
    device = pick_device(settings.device)
    pool = store.row_keys(project, "pool")
    targets = store.row_keys(project, "targets")
    if not pool:
        raise ValueError(f"project {project!r} has no pool rows: run `python -m core ingest --project {project} --pool FILE`")
    if not targets:
        raise ValueError(f"project {project!r} has no target rows: run `python -m core ingest --project {project} --targets FILE`")
    base = _base_description(settings, mkey, tkey)
    positions = warmup_sample(len(pool), settings.warmup, on_cpu=device.type == "cpu")
    warmup_hashes = [pool[i].content_hash for i in positions]
    code = [["code", FEATURE_CODE_VERSION]] if FEATURE_CODE_VERSION > 1 else []
    run_key = stable_hash([base, asdict(settings.warmup), warmup_hashes] + code)
    epochs = settings.warmup.epochs
    wanted = [epochs] if settings.warmup.checkpoints == "last" or epochs == 0 else list(range(1, epochs + 1))
    checkpoints = [CheckpointPlan(stable_hash([run_key, epoch]), epoch) for epoch in wanted]
    projection = settings.projection.numbers()
    configs = []
    for checkpoint in checkpoints:
        for role, gradient_type in GRADIENT_TYPES.items():
            numbers = [base, checkpoint.key, gradient_type, projection, settings.adam_eps if gradient_type == "adam" else None]
            # bf16 gives other numbers on CUDA (on CPU the same, but a Ray run's workers may be GPUs): its own key.
            if settings.precision != "float32":  # (float32 keys stay what they were before the setting existed)
                numbers.append(settings.precision)
            numbers += code
            configs.append(FeatureConfig(stable_hash(numbers), role, gradient_type, checkpoint))
    rows = {"pool": pool[:limit] if limit else pool, "targets": targets}
    plan = FeaturePlan(project, settings, device.type, mkey, tkey, run_key, positions, warmup_hashes, checkpoints,
                       configs, rows)
    refresh_plan(store, plan)
    return plan


def refresh_plan(store: Store, plan: FeaturePlan) -> None:
    """Recompute what is missing (rows without a feature or a recorded error; checkpoints not on disk)."""
    plan.missing_checkpoints = [c for c in plan.checkpoints if store.checkpoint(c.key) is None]
    todo_hashes: dict[str, list[str]] = {}
    for config in plan.configs:
        finished = store.finished_hashes(config.key)
        todo_hashes[config.key] = list(dict.fromkeys(
            row.content_hash for row in plan.rows[config.role] if row.content_hash not in finished))
    # Messages only for the rows still to compute (none once the features are complete).
    full: dict[str, dict[str, StoredRow]] = {}
    for role in ("pool", "targets"):
        wanted = [h for config in plan.configs if config.role == role for h in todo_hashes[config.key]]
        full[role] = store.rows_by_hash(plan.project, role, wanted) if wanted else {}
    plan.missing = {config.key: [full[config.role][h] for h in todo_hashes[config.key]] for config in plan.configs}


def learning_rate_weights(store: Store, plan: FeaturePlan) -> dict[str, float]:
    """LESS's checkpoint weights: each checkpoint's mean learning rate, normalised to sum to 1."""
    rates = {c.key: (store.checkpoint(c.key) or {}).get("learning_rate") or 0.0 for c in plan.checkpoints}
    total = sum(rates.values())
    if total <= 0:
        return {key: 1.0 / len(rates) for key in rates}
    return {key: rate / total for key, rate in rates.items()}


# --------------------------------------------------------------------------------------------- running


@dataclass
class Progress:
    """What a job reports: rows (and warmup examples) done out of total, and the rate of this run."""

    total: int
    done: int = 0
    errors: int = 0
    phase: str = "starting"
    started: float = field(default_factory=time.monotonic)
    done_at_start: int = 0
    tokens: int = 0

    @property
    def rate(self) -> float | None:
        elapsed = time.monotonic() - self.started
        return (self.done - self.done_at_start) / elapsed if elapsed > 0 and self.done > self.done_at_start else None

    def fields(self) -> dict:
        return {"done": self.done, "total": self.total, "errors": self.errors, "phase": self.phase, "rate": self.rate}

    def add(self, chunk: FeatureChunk) -> None:
        self.done += chunk.rows
        self.errors += len(chunk.errors)
        self.tokens += chunk.tokens


class Cancelled(Exception):
    pass


ERROR_RATE_LIMIT = 0.2  # a chunk with more than this fraction of rows failing with retriable errors stops the job
ERROR_RATE_MIN_ROWS = 5  # ... when at least this many of its rows failed


class ErrorRateExceeded(RuntimeError):
    """Too many rows of one chunk failed with retriable errors: something is wrong with the run, not the rows."""


@dataclass
class RowFailure:
    """Why one row's gradient could not be computed (a retriable error), with the traceback when there was one."""

    message: str
    traceback: str = ""


@dataclass
class FeatureChunk:
    """One chunk of a feature config's rows, computed but not yet stored: what ``Store.write_chunk`` takes.

    A plain value (numpy, dataclasses, strings), so that a Ray worker can compute it and return it to the
    process that owns the store."""

    matrix: np.ndarray  # [len(entries), projection dim] float32
    entries: list[FeatureRowEntry]
    errors: list[tuple[str, str, str]]  # (content hash, why the row has no feature, PERMANENT or RETRIABLE)

    @property
    def rows(self) -> int:
        return len(self.entries) + len(self.errors)

    @property
    def tokens(self) -> int:
        return sum(entry.n_tokens for entry in self.entries)


def _encode_all(tokenizer, rows: list[StoredRow], settings: FeatureSettings) -> dict[str, EncodedRow]:
    return {row.content_hash: encode_messages(tokenizer, row.messages, settings.max_tokens, settings.truncation)
            for row in rows}


@dataclass
class PreparedRun:
    """A feature job after planning, encoding and the warmup: what is left is computing ``plan.missing``."""

    plan: FeaturePlan
    progress: Progress
    encoded: dict[str, EncodedRow]  # content hash -> encoded row, for every missing (and warmup) row
    pad_id: int
    device: torch.device
    model: Any | None  # the LoRA model, when this process loaded one (always for a local run)


def prepare_run(
    store: Store,
    project: str,
    settings: FeatureSettings,
    limit: int | None,
    job_id: str,
    should_cancel: Callable[[], bool],
    report: Callable[[Progress], None],
    log: Callable[[str], None],
    load_for_features: bool = True,
) -> PreparedRun:
    """Plan, encode the rows still to compute, and train the warmup checkpoints that are missing.

    Shared by the local job and the Ray driver, so a checkpoint is trained once, here, and stored like any
    other.  With ``load_for_features=False`` (the Ray driver) the model is loaded only if a warmup has to run."""
    resolved = resolve_model(settings.model)
    tokenizer = load_tokenizer(resolved)
    plan = plan_features(store, project, settings, limit, tokenizer=tokenizer)
    warmup_by_hash = store.rows_by_hash(project, "pool", plan.warmup_hashes) if plan.missing_checkpoints else {}
    warmup_rows = [warmup_by_hash[h] for h in plan.warmup_hashes] if plan.missing_checkpoints else []
    warmup_units = len(warmup_rows) * settings.warmup.epochs if plan.missing_checkpoints else 0
    progress = Progress(total=warmup_units + plan.rows_to_compute)
    needs_model = load_for_features or bool(plan.missing_checkpoints)
    progress.phase = "loading model" if needs_model else "encoding rows"
    report(progress)
    device = torch.device(plan.device)
    if plan.complete:
        return PreparedRun(plan, progress, {}, tokenizer.pad_token_id, device, None)

    model = add_lora(load_model(resolved, device), settings.lora) if needs_model else None
    encoded = _encode_all(tokenizer, [r for rows in plan.missing.values() for r in rows] + warmup_rows, settings)
    if plan.missing_checkpoints:
        _run_warmup(store, plan, model, [encoded[r.content_hash] for r in warmup_rows], tokenizer.pad_token_id,
                    job_id, progress, report, should_cancel, log)
        progress.done = warmup_units
    return PreparedRun(plan, progress, encoded, tokenizer.pad_token_id, device, model)


def _run_warmup(store: Store, plan: FeaturePlan, model, warmup_rows: list[EncodedRow], pad_id: int, job_id: str,
                progress: Progress, report, should_cancel, log) -> None:
    """Train the warmup and store the planned checkpoints (each renamed into place once complete)."""
    settings = plan.settings
    progress.phase = "warmup"
    trainable = [row for row in warmup_rows if row.error is None]
    wanted = {c.epoch: c for c in plan.checkpoints}
    log(f"warmup: {len(trainable)} rows x {settings.warmup.epochs} epoch(s), lr {settings.warmup.learning_rate}")

    def save_epoch(epoch, step, learning_rate, optimizer):
        if epoch not in wanted:
            return
        checkpoint = wanted[epoch]
        target = store.checkpoint_dir(checkpoint.key)
        staging = target.with_name(target.name + f".tmp-{job_id}")
        shutil.rmtree(staging, ignore_errors=True)
        save_checkpoint(staging, model, optimizer, {"epoch": epoch, "step": step, "learning_rate": learning_rate, "run_key": plan.warmup_run_key})
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        store.add_checkpoint(checkpoint.key, plan.warmup_run_key, epoch, step, learning_rate, target)

    def warmup_progress(done, total):
        progress.done = done
        if done % max(1, settings.warmup.batch_size) == 0:
            report(progress)
        if should_cancel():
            raise Cancelled()

    if settings.warmup.epochs == 0:
        save_epoch(0, 0, 0.0, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad]))
    else:
        train_lora(model, trainable, settings.warmup, pad_id, save_epoch, warmup_progress, seed=settings.warmup.seed)


def prepare_config(store: Store, plan: FeaturePlan, config: FeatureConfig, job_id: str, log: Callable[[str], None]) -> None:
    """Before a config's first chunk of this job: register it, and clear what an earlier killed job left behind."""
    settings = plan.settings
    store.register_feature_config(
        config.key, config.gradient_type, config.checkpoint.key, settings.projection.dim, settings.storage_dtype,
        {**_base_description(settings, plan.model_key, plan.template_key), "role": config.role,
         "epoch": config.checkpoint.epoch, "projection": asdict(settings.projection)},
    )
    store.remove_orphan_chunks(config.key, job_id)
    dropped = store.drop_damaged_chunks(config.key)  # planning counted their rows as missing
    if dropped:
        log(f"{config.role}: {dropped} rows in damaged or missing chunk files are computed again")


def config_phase(config: FeatureConfig) -> str:
    return f"{config.role} features ({config.gradient_type}, checkpoint epoch {config.checkpoint.epoch})"


def store_chunk(store: Store, config: FeatureConfig, job_id: str, chunk: FeatureChunk, settings: FeatureSettings,
                progress: Progress, report: Callable[[Progress], None], should_cancel: Callable[[], bool]) -> None:
    """Write one finished chunk (with the job's progress in the same transaction), report, then honour a cancel."""
    progress.add(chunk)
    store.write_chunk(config.key, job_id, chunk.matrix, chunk.entries, chunk.errors, settings.storage_dtype,
                      (job_id, progress.fields()))
    report(progress)
    if should_cancel():
        raise Cancelled()


def speed_key(model_key: str, settings: FeatureSettings) -> str:
    """The throughput record of a model under the settings that change its speed (LoRA modules and rank, the
    projection, precision); tokens per second barely depend on max tokens or on the rows."""
    return f"{model_key}|" + stable_hash([asdict(settings.lora), settings.projection.numbers(), settings.precision])


def record_rate(store: Store, device: str, model_key: str, settings: FeatureSettings, tokens_per_s: float) -> None:
    """Remember a measured feature rate (``core.features.estimate`` reads it) for these settings and, what the
    evaluation's estimate reads, for the model."""
    store.record_throughput(device, speed_key(model_key, settings), tokens_per_s)
    store.record_throughput(device, model_key, tokens_per_s)


def run_features(
    store: Store,
    project: str,
    settings: FeatureSettings,
    limit: int | None = None,
    job_id: str = "inline",
    should_cancel: Callable[[], bool] = lambda: False,
    report: Callable[[Progress], None] = lambda progress: None,
    log: Callable[[str], None] = print,
) -> FeaturePlan:
    """Compute every missing feature of the plan; resumable at chunk granularity."""

    run = prepare_run(store, project, settings, limit, job_id, should_cancel, report, log)
    plan, progress = run.plan, run.progress
    if plan.complete:
        return plan
    engine = FeatureEngine.build(run.model, run.pad_id, run.device, settings, log)
    progress.done_at_start, progress.started = progress.done, time.monotonic()
    tokens_started = time.monotonic()
    for config in plan.configs:
        todo = plan.missing[config.key]
        if not todo:
            continue
        prepare_config(store, plan, config, job_id, log)
        engine.use_checkpoint(config.gradient_type, *read_checkpoint(store.checkpoint(config.checkpoint.key)["path"]))
        progress.phase = config_phase(config)
        report(progress)
        for chunk in engine.chunks(todo, run.encoded, settings):
            store_chunk(store, config, job_id, chunk, settings, progress, report, should_cancel)
            # After every chunk, not once at the end: an interrupted or resumed job has measured the rate too.
            if progress.tokens:
                record_rate(store, plan.device, plan.model_key, settings,
                            progress.tokens / max(1e-9, time.monotonic() - tokens_started))
    refresh_plan(store, plan)
    return plan


@dataclass
class BatchSize:
    """How many examples go into one batched backward (the CUDA path): at most ``value`` rows, and, once a batch
    has run out of GPU memory, at most ``tokens`` padded tokens (rows x the batch's longest row), half of what
    failed.  Rows are sorted by length, so short rows keep large batches while long rows get small ones: the GPU's
    out-of-memory errors find the batch size, and no setting has to be tuned per model or card."""

    value: int
    log: Callable[[str], None] = print
    tokens: int | None = None

    def fits(self, rows: int, longest: int) -> bool:
        return rows <= self.value and (self.tokens is None or rows * longest <= self.tokens)

    def halve(self, failed: int, longest: int) -> None:
        """After ``failed`` rows of up to ``longest`` tokens did not fit: half as many padded tokens from now on."""
        cap = max(longest, failed * longest // 2)
        if self.tokens is None or cap < self.tokens:
            self.tokens = cap
            self.log(f"out of GPU memory with a batch of {failed} rows x {longest} tokens: continuing with at most "
                     f"{cap} padded tokens per batch ({max(1, cap // max(1, longest))} rows of this length)")


@dataclass
class FeatureEngine:
    """A LoRA model and what turns its per-example gradients into projected features, set to one checkpoint.

    The local job and every Ray worker compute through this, so both give the same numbers."""

    model: Any
    computer: GradientComputer
    projector: Projector
    size: BatchSize
    exp_avg: torch.Tensor | None = None  # the checkpoint's flat Adam moments, for "adam" features
    exp_avg_sq: torch.Tensor | None = None

    @classmethod
    def build(cls, model, pad_id: int, device: torch.device, settings: FeatureSettings, log: Callable[[str], None]) -> FeatureEngine:
        shapes = [tuple(param.shape) for _, param in lora_parameters(model)]
        projector = make_projector(settings.projection, shapes)
        computer = make_gradient_computer(model, pad_id, device, settings.precision,
                                          activations=hasattr(projector, "project_activations"))
        size = BatchSize(settings.batch_size if computer.batched else 1, log)
        return cls(model, computer, projector, size)

    def use_checkpoint(self, gradient_type: str, weights: dict[str, torch.Tensor], moments: dict[str, torch.Tensor]) -> None:
        """Load a checkpoint's LoRA weights (``lora.read_checkpoint``'s tensors); keep its moments for Adam features."""
        by_name = apply_checkpoint(self.model, weights, moments)
        self.exp_avg, self.exp_avg_sq = flat_moments(self.model, by_name) if gradient_type == "adam" else (None, None)

    def chunks(self, todo: Sequence[RowKey | StoredRow], encoded: Mapping[str, EncodedRow],
               settings: FeatureSettings) -> Iterator[FeatureChunk]:
        """The features of ``todo`` in chunks of ``settings.chunk_rows`` rows or ``chunk_seconds`` seconds.

        A chunk's clock restarts when the caller asks for the next one, so the time spent storing a chunk
        does not count against the next."""
        # On CUDA, similar lengths share a batch (less padding); on CPU the loop keeps the stored order.
        order = sorted(todo, key=lambda r: encoded[r.content_hash].n_tokens) if self.size.value > 1 else todo
        features: list[np.ndarray] = []
        entries: list[FeatureRowEntry] = []
        errors: list[tuple[str, str, str]] = []
        first_traceback: list[str] = []  # of the chunk's first retriable error
        chunk_started = time.monotonic()

        def chunk() -> FeatureChunk:
            _check_error_rate(entries, errors, first_traceback)
            matrix = np.stack(features) if features else np.zeros((0, settings.projection.dim), np.float32)
            return FeatureChunk(matrix, entries, errors)

        position = 0
        while position < len(order):
            batch = []
            longest = 0
            while position < len(order):
                row = order[position]
                enc = encoded[row.content_hash]
                if enc.error:
                    errors.append((row.content_hash, enc.error, PERMANENT))
                    position += 1
                    continue
                if batch and not self.size.fits(len(batch) + 1, max(longest, enc.n_tokens)):
                    break
                batch.append(row)
                longest = max(longest, enc.n_tokens)
                position += 1
            if batch:
                results = _features_for(batch, encoded, self.computer, self.projector, self.exp_avg, self.exp_avg_sq,
                                        settings, self.size)
                for row, result in zip(batch, results):
                    if isinstance(result, RowFailure):
                        if not first_traceback:
                            first_traceback.append(result.traceback or result.message)
                        errors.append((row.content_hash, result.message, RETRIABLE))
                        continue
                    enc = encoded[row.content_hash]
                    entries.append(FeatureRowEntry(row.content_hash, len(features), float(np.linalg.norm(result)), enc.n_tokens, enc.truncated))
                    features.append(result)
            if len(entries) + len(errors) >= settings.chunk_rows or time.monotonic() - chunk_started >= settings.chunk_seconds:
                yield chunk()
                features, entries, errors = [], [], []
                first_traceback.clear()
                chunk_started = time.monotonic()
        if entries or errors:
            yield chunk()


def _check_error_rate(entries: Sequence, errors: Sequence[tuple[str, str, str]], first_traceback: Sequence[str]) -> None:
    """Raise ``ErrorRateExceeded`` when more than ``ERROR_RATE_LIMIT`` of a chunk's rows (and at least
    ``ERROR_RATE_MIN_ROWS``) failed with retriable errors, instead of filling the cache with errors."""
    rows = len(entries) + len(errors)
    failed = [e for e in errors if e[2] == RETRIABLE]
    if len(failed) >= ERROR_RATE_MIN_ROWS and len(failed) > ERROR_RATE_LIMIT * rows:
        first = first_traceback[0] if first_traceback else failed[0][1]
        raise ErrorRateExceeded(
            f"{len(failed)} of {rows} rows of a chunk failed (more than {ERROR_RATE_LIMIT:.0%}): the job stops "
            f"rather than record them as errors; the first error: {failed[0][1]}\n{first}")


def _features_for(batch, encoded, computer, projector, exp_avg, exp_avg_sq, settings, size: BatchSize | None = None) -> list:
    """Projected features of a batch; a ``RowFailure`` in place of a row whose gradient could not be computed.

    A CUDA out-of-memory error halves ``size`` (for this batch and every later one) and goes on in smaller
    batches; a single example that still does not fit is recorded as that row's error."""
    size = size or BatchSize(len(batch))
    rows = [encoded[r.content_hash] for r in batch]
    try:
        projected = project_features(computer, rows, projector, exp_avg, exp_avg_sq, settings.adam_eps).cpu().numpy()
    except torch.cuda.OutOfMemoryError:  # (a RuntimeError: caught first) retried below, once the frames are gone
        projected = None
        oom_traceback = traceback.format_exc() if len(batch) == 1 else ""
    except (RuntimeError, ValueError) as error:
        if len(batch) > 1:  # find the culprit row by row rather than failing the whole batch
            return [r for row in batch for r in _features_for([row], encoded, computer, projector, exp_avg, exp_avg_sq, settings, size)]
        return [RowFailure(f"gradient failed: {error}", traceback.format_exc())]
    if projected is None:
        torch.cuda.empty_cache()  # the failed batch's tensors are free now that the exception is gone
        if len(batch) == 1:
            return [RowFailure(f"out of GPU memory even for a single example ({rows[0].n_tokens} tokens): lower "
                               "--max-tokens", oom_traceback)]
        size.halve(len(batch), max(row.n_tokens for row in rows))
        out, start = [], 0
        while start < len(batch):  # the cap may shrink again inside
            part = [batch[start]]
            longest = rows[start].n_tokens
            while start + len(part) < len(batch):
                following = rows[start + len(part)].n_tokens
                if not size.fits(len(part) + 1, max(longest, following)):
                    break
                part.append(batch[start + len(part)])
                longest = max(longest, following)
            out += _features_for(part, encoded, computer, projector, exp_avg, exp_avg_sq, settings, size)
            start += len(part)
        return out
    out = []
    for vector in projected:
        out.append(vector if np.isfinite(vector).all() else RowFailure("non-finite gradient (loss overflow)"))
    return out


def storage_bytes(plan: FeaturePlan) -> int:
    width = 2 if plan.settings.storage_dtype == "float16" else 4
    return plan.rows_to_compute * plan.settings.projection.dim * width
