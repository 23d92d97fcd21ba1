"""Cost estimate shown before a feature job starts: time and storage, from rows, tokens, model size and device.

Time is tokens / the rate at which this machine computes features, in tokens per second.  The rate is, in order:
the one this cache measured for the same device, model and speed settings (LoRA, projection, precision:
``speed_key``), which every feature job records after each chunk (so an interrupted job has measured it too);
then one measured for the model and device under other settings; else a *probe*, ``probe_throughput``: a few real
rows of the project timed through the job's own code (``python -m core features`` runs it before it promises a
time; the Features page offers it), recorded like a job's rate.  Only when none of these exists is the rate
assumed: forward + backward FLOPs per token (about 6 x parameters) at a rate calibrated on the 2-core CPU we
develop on (SmolLM2-135M, fp32, one example per forward+backward: about 150 tokens/s), or on CUDA a conservative
fp32 rate.  On a busy machine the assumption was 8x too optimistic (issue 19: 35 minutes against 4 promised).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from core.features.featurize import FeaturePlan, record_rate, speed_key, storage_bytes
from core.features.modeling import encode_messages, parameter_count, resolve_model
from core.store import Store

CPU_FLOPS_PER_CORE = 6.0e10
CUDA_FLOPS = 2.0e13
PROBE_ROWS = 3  # rows a probe times (after one untimed row: the first backward allocates what later ones reuse)


@dataclass(frozen=True)
class CostEstimate:
    rows: int  # feature rows to compute (pool rows x checkpoints + target rows x checkpoints)
    warmup_examples: int
    tokens: int
    truncated: int
    parameters: int
    device: str
    tokens_per_s: float
    measured: bool
    storage_bytes: int
    rate_source: str = "assumed"  # "these settings", "other settings" (measured) or "assumed" (throughput_for)

    @property
    def seconds(self) -> float:
        return self.tokens / self.tokens_per_s if self.tokens else 0.0

    def text(self) -> str:
        source = RATE_SOURCES.get(self.rate_source, self.rate_source)
        return (
            f"{self.rows} feature rows + {self.warmup_examples} warmup examples, {self.tokens:,} tokens "
            f"({self.truncated} rows truncated) on {self.device}: about {format_duration(self.seconds)} "
            f"at {self.tokens_per_s:,.0f} tokens/s ({source}); storage {self.storage_bytes / 2**20:,.1f} MiB"
        )


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def training_rate(store: Store, device: str, model_key: str, parameters: int) -> tuple[float, bool]:
    """Tokens per second of one-example forward+backward passes on ``device``: (rate, measured).  The rate this
    cache measured for the model there, else the assumption of the module docstring."""
    measured = store.throughput(device, model_key)
    if measured:
        return measured, True
    if device == "cuda":
        return CUDA_FLOPS / (6 * parameters), False
    return CPU_FLOPS_PER_CORE * min(os.cpu_count() or 2, 16) / (6 * parameters), False


RATE_SOURCES = {
    "these settings": "measured on this machine with these settings",
    "other settings": "measured on this machine with other settings",
    "assumed": "assumed, not measured on this machine",
}


def throughput_for(store: Store, plan: FeaturePlan, parameters: int) -> tuple[float, str]:
    """(tokens/s, one of ``RATE_SOURCES``) for the plan's model, device and settings: see the module docstring."""
    exact = store.throughput(plan.device, speed_key(plan.model_key, plan.settings))
    if exact:
        return exact, "these settings"
    rate, measured = training_rate(store, plan.device, plan.model_key, parameters)
    return rate, "other settings" if measured else "assumed"


def probe_throughput(store: Store, plan: FeaturePlan, tokenizer, rows: int = PROBE_ROWS,
                     log=lambda text: None) -> float | None:
    """Time a few real rows of the plan (rows still to compute, of the pool first) through the feature job's own
    engine on its device, record the rate (``record_rate``) and return it; None when no row is left to compute.

    Plain SGD features of a fresh LoRA, so no warmup has to run first: the Adam-aware transform adds an
    elementwise step, noise next to a backward pass.  Costs a model load plus ``rows + 1`` rows (10-20 s for
    SmolLM2 on 2 CPU cores)."""
    import torch

    from core.features.featurize import FeatureEngine, _features_for
    from core.features.lora import add_lora
    from core.features.modeling import load_model

    settings = plan.settings
    picked, encoded = [], {}  # rows still to compute (StoredRow, what the job's engine reads), pool first
    for config in sorted(plan.configs, key=lambda c: c.role != "pool"):
        for row in plan.missing[config.key]:
            if len(picked) > rows:
                break
            if row.content_hash not in encoded:
                encoded[row.content_hash] = encode_messages(tokenizer, row.messages, settings.max_tokens,
                                                            settings.truncation)
                if encoded[row.content_hash].error is None:
                    picked.append(row)
    if not picked:
        return None
    log(f"measuring this machine's speed on {len(picked)} rows of the project...")
    device = torch.device(plan.device)
    model = add_lora(load_model(resolve_model(settings.model), device), settings.lora)
    engine = FeatureEngine.build(model, tokenizer.pad_token_id, device, settings, log)
    _features_for(picked[:1], encoded, engine.computer, engine.projector, None, None, settings)  # untimed
    timed = picked[1:] or picked
    started = time.perf_counter()
    for row in timed:
        _features_for([row], encoded, engine.computer, engine.projector, None, None, settings)
    elapsed = time.perf_counter() - started
    rate = sum(encoded[row.content_hash].n_tokens for row in timed) / max(elapsed, 1e-9)
    record_rate(store, plan.device, plan.model_key, settings, rate)
    log(f"measured {rate:,.0f} tokens/s ({len(timed)} rows in {elapsed:.1f} s)")
    return rate


def estimate_cost(store: Store, plan: FeaturePlan, tokenizer) -> CostEstimate:
    settings = plan.settings
    lengths = {}
    for rows in plan.missing.values():
        for row in rows:
            if row.content_hash not in lengths:
                encoded = encode_messages(tokenizer, row.messages, settings.max_tokens, settings.truncation)
                lengths[row.content_hash] = (encoded.n_tokens, encoded.truncated)
    tokens = sum(lengths[r.content_hash][0] for rows in plan.missing.values() for r in rows)
    truncated = sum(1 for n, t in lengths.values() if t)
    warmup = 0
    if plan.missing_checkpoints and settings.warmup.epochs:
        pool = plan.rows["pool"]
        mean_tokens = tokens / max(1, len(lengths)) if lengths else settings.max_tokens / 2
        warmup = min(len(plan.warmup_positions), len(pool) if pool else 0) * settings.warmup.epochs
        tokens += int(warmup * mean_tokens)
    parameters = parameter_count(resolve_model(settings.model))
    rate, source = throughput_for(store, plan, parameters)
    return CostEstimate(
        rows=plan.rows_to_compute,
        warmup_examples=warmup,
        tokens=tokens,
        truncated=truncated,
        parameters=parameters,
        device=plan.device,
        tokens_per_s=rate,
        measured=source != "assumed",
        storage_bytes=storage_bytes(plan),
        rate_source=source,
    )
