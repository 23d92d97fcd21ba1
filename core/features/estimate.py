"""Cost estimate shown before a feature job starts: time and storage, from rows, tokens, model size and device.

Time is tokens x (forward + backward FLOPs per token, about 6 x parameters) / the device's effective rate.
The rate is the one this cache measured on the same device and model in an earlier job when there is one;
otherwise an assumption calibrated on the 2-core CPU we develop on (SmolLM2-135M, fp32, one example per
forward+backward: about 150 tokens/s, i.e. 1.2e11 FLOP/s for 2 cores) or, on CUDA, a conservative fp32 rate.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from core.features.featurize import FeaturePlan, storage_bytes
from core.features.modeling import encode_messages, parameter_count, resolve_model
from core.store import Store

CPU_FLOPS_PER_CORE = 6.0e10
CUDA_FLOPS = 2.0e13


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

    @property
    def seconds(self) -> float:
        return self.tokens / self.tokens_per_s if self.tokens else 0.0

    def text(self) -> str:
        source = "measured earlier on this machine" if self.measured else "assumed"
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
    rate, measured = training_rate(store, plan.device, plan.model_key, parameters)
    return CostEstimate(
        rows=plan.rows_to_compute,
        warmup_examples=warmup,
        tokens=tokens,
        truncated=truncated,
        parameters=parameters,
        device=plan.device,
        tokens_per_s=rate,
        measured=bool(measured),
        storage_bytes=storage_bytes(plan),
    )
