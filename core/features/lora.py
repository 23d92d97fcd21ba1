"""Seeded peft LoRA adapters, the one AdamW LoRA trainer (``train_lora``), and the LESS-style warmup that uses it
to produce checkpoints with their Adam moments (the evaluation's fine-tunes use the same trainer).

The warmup is a short AdamW LoRA run on a seeded sample of the pool.  After each epoch it saves a checkpoint:
the LoRA weights, AdamW's ``exp_avg``/``exp_avg_sq`` per parameter (what the Adam-aware pool features need),
and the epoch's mean learning rate (LESS weights checkpoints by it).  Everything is written with safetensors;
nothing on disk is ever unpickled.
"""
from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import load_file, save_file

from core.config import LoraArguments, WarmupArguments
from core.features.modeling import EncodedRow, ModelError


def add_lora(model, args: LoraArguments):
    """Wrap ``model`` with a LoRA adapter whose random init is fixed by ``args.init_seed``."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=args.r,
        lora_alpha=args.alpha,
        target_modules=list(args.target_modules),
        lora_dropout=0.0,  # dropout would make per-example gradients random
        bias="none",
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.init_seed)
        try:
            peft_model = get_peft_model(model, config)
        except ValueError as error:
            raise ModelError(f"LoRA target modules {list(args.target_modules)} do not fit this model: {error}") from error
    peft_model.eval()
    return peft_model


def lora_parameters(model) -> list[tuple[str, torch.nn.Parameter]]:
    """Trainable LoRA parameters sorted by name: this order defines the flat gradient's coordinates."""
    return sorted(((n, p) for n, p in model.named_parameters() if p.requires_grad), key=lambda item: item[0])


def gradient_dim(model) -> int:
    return sum(p.numel() for _, p in lora_parameters(model))


def token_loss(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Per-example mean cross-entropy over the masked (assistant) tokens: shape [batch]."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    if logits.dtype in (torch.float16, torch.bfloat16):  # the loss itself is always taken in full precision
        logits = logits.float()
    targets = input_ids[:, 1:]
    weights = loss_mask[:, 1:].to(logits.dtype)
    # Flat [tokens, vocab] layout: cross_entropy over a transposed [B, V, T] view is ~2.5x slower on CPU and
    # 10x less accurate in float32 (bench/features.py measured both against a float64 model).
    batch, steps, vocab = logits.shape
    losses = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1), reduction="none").view(batch, steps)
    return (losses * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def collate(rows: Sequence[EncodedRow], device, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded batch: padding comes after the real tokens, so causal attention never sees it."""
    length = max(row.n_tokens for row in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), length), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : row.n_tokens] = torch.tensor(row.input_ids)
        attention[i, : row.n_tokens] = 1
        loss_mask[i, : row.n_tokens] = torch.tensor(row.loss_mask)
    return ids.to(device), attention.to(device), loss_mask.to(device)


@dataclass(frozen=True)
class Checkpoint:
    """A saved warmup state: LoRA weights + Adam moments on disk, and the epoch's learning rate."""

    key: str
    epoch: int
    step: int
    learning_rate: float  # mean LR over the epoch's optimizer steps
    path: str

    def load_into(self, model) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Set the model's LoRA weights from this checkpoint; return {param name: (exp_avg, exp_avg_sq)}."""
        return apply_checkpoint(model, *read_checkpoint(self.path), origin=self.path)


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A checkpoint folder's tensors: (LoRA weights, Adam moments as ``NAME::exp_avg`` / ``NAME::exp_avg_sq``).

    Kept apart from ``apply_checkpoint`` so that a process without the files (a Ray worker on another node)
    can be sent the tensors instead of a path."""
    folder = Path(path)
    return load_file(str(folder / "adapter.safetensors")), load_file(str(folder / "optimizer.safetensors"))


def apply_checkpoint(model, weights: dict[str, torch.Tensor], moments: dict[str, torch.Tensor],
                     origin: str = "the checkpoint") -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Set the model's LoRA weights from ``read_checkpoint``'s tensors; return {param name: (exp_avg, exp_avg_sq)}."""
    params = dict(lora_parameters(model))
    if set(weights) != set(params):
        raise ModelError(f"checkpoint {origin} does not match the model's LoRA parameters")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(weights[name].to(param.device))
    return {name: (moments[f"{name}::exp_avg"], moments[f"{name}::exp_avg_sq"]) for name in params}


def save_checkpoint(folder: Path, model, optimizer: torch.optim.Optimizer, meta: dict) -> None:
    """Write a checkpoint into ``folder`` (the caller renames it into place, so readers never see half of one)."""
    folder.mkdir(parents=True, exist_ok=True)
    params = lora_parameters(model)
    save_file({name: p.detach().cpu().contiguous() for name, p in params}, str(folder / "adapter.safetensors"))
    moments = {}
    for name, param in params:
        state = optimizer.state.get(param, {})
        for moment in ("exp_avg", "exp_avg_sq"):  # (zero moments before any step: each its own tensor, as
            # safetensors refuses tensors that share memory -- a 0-epoch warmup hit that)
            value = state[moment] if moment in state else torch.zeros_like(param, device="cpu")
            moments[f"{name}::{moment}"] = value.detach().cpu().contiguous()
    save_file(moments, str(folder / "optimizer.safetensors"))
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))


def warmup_sample(n_pool: int, args: WarmupArguments, on_cpu: bool) -> list[int]:
    """Seeded sample of pool positions for the warmup (fraction of the pool, at least min_rows, capped on CPU)."""
    count = max(args.min_rows, round(args.fraction * n_pool)) if args.fraction > 0 else 0
    if on_cpu:
        count = min(count, args.max_rows_cpu)
    count = min(count, n_pool)
    return sorted(random.Random(args.seed).sample(range(n_pool), count))


class TrainingSchedule(Protocol):
    """What ``train_lora`` reads of its arguments: ``WarmupArguments`` and ``FineTuneArguments`` both are one."""

    learning_rate: float
    epochs: int
    batch_size: int
    warmup_ratio: float
    weight_decay: float


def train_lora(
    model,
    rows: Sequence[EncodedRow],
    args: TrainingSchedule,
    pad_id: int,
    save_epoch: Callable[[int, int, float, torch.optim.Optimizer], None] = lambda *_: None,
    progress: Callable[[int, int], None] = lambda done, total: None,
    seed: int = 0,
    on_step: Callable[[int, float], None] = lambda step, loss: None,
) -> None:
    """AdamW on the LoRA parameters with a linear schedule (rows shuffled by ``seed`` each epoch);
    ``save_epoch(epoch, step, mean_lr, optimizer)`` after each epoch, ``on_step(step, mean loss of its batch)``
    after each optimizer step.  The warmup of the features and the fine-tunes of ``core.evaluation`` use it."""
    from transformers import get_linear_schedule_with_warmup

    device = next(model.parameters()).device
    params = [p for _, p in lora_parameters(model)]
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=args.weight_decay)
    steps_per_epoch = max(1, -(-len(rows) // args.batch_size))
    total_steps = steps_per_epoch * args.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, round(args.warmup_ratio * total_steps), total_steps)
    order = list(range(len(rows)))
    shuffler = random.Random(seed)
    step, done = 0, 0
    model.train()
    try:
        for epoch in range(1, args.epochs + 1):
            shuffler.shuffle(order)
            epoch_lrs = []
            for start in range(0, len(order), args.batch_size):
                batch = [rows[i] for i in order[start : start + args.batch_size]]
                batch_loss = 0.0
                for row in batch:  # one example per forward: fastest on CPU, and no padding in the loss
                    ids, attention, loss_mask = collate([row], device, pad_id)
                    loss = token_loss(model, ids, attention, loss_mask).sum() / len(batch)
                    loss.backward()
                    batch_loss += float(loss.detach())
                    done += 1
                    progress(done, len(rows) * args.epochs)
                epoch_lrs.append(scheduler.get_last_lr()[0])
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                on_step(step, batch_loss)
            save_epoch(epoch, step, sum(epoch_lrs) / max(1, len(epoch_lrs)), optimizer)
    finally:
        model.eval()
        optimizer.zero_grad(set_to_none=True)
