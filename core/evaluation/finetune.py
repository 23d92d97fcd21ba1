"""One evaluation unit on the model: fine-tune a fresh LoRA adapter on the selected rows (or none: zero-shot),
then measure the evaluation rows -- each row's mean assistant-token cross-entropy, and greedy-decoded exact match
on the rows whose answer is checkable.

The fine-tune starts from the base model, not the warmup checkpoint of the features, and uses the features' chat
rendering and assistant-only loss (``encode_messages``, ``token_loss``) and the one LoRA trainer
(``core.features.lora.train_lora``).  On a CPU it is deterministic for a seed: the adapter's init and the row
order are the seed's, and nothing else is random (no dropout, greedy decoding).
"""
from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from core.config import FineTuneArguments
from core.evaluation.answers import CheckableAnswer, exact_match, reference_answer
from core.features.lora import add_lora, collate, token_loss, train_lora
from core.features.modeling import EncodedRow, encode_messages, encode_prompt, load_model


@dataclass(frozen=True)
class EvalExample:
    """An evaluation row as the model sees it: the whole conversation (loss on the reference answer) and, for a
    checkable row, the prompt to decode from and the answer to match."""

    row_id: str
    encoded: EncodedRow
    prompt_ids: tuple[int, ...] | None
    answer: CheckableAnswer | None


def prepare_examples(tokenizer, rows, max_tokens: int, truncation: str = "right") -> list[EvalExample]:
    """Encode the evaluation rows (``StoredRow``s); rows whose answer does not fit ``max_tokens`` are left out of
    the loss by ``heldout_losses`` (their encoding carries the error)."""
    examples = []
    for row in rows:
        answer = reference_answer(row.messages)
        prompt = encode_prompt(tokenizer, row.messages, max_tokens) if answer is not None else None
        examples.append(EvalExample(row.row_id, encode_messages(tokenizer, row.messages, max_tokens, truncation),
                                    prompt, answer))
    return examples


@torch.no_grad()
def heldout_losses(model, examples: Sequence[EvalExample], pad_id: int, progress: Callable[[], None] = lambda: None) -> list[float]:
    """Each example's mean cross-entropy over its answer tokens (NaN for a row whose answer was truncated away).
    One row per forward: no padding, and on a CPU batching gains nothing."""
    device = next(model.parameters()).device
    losses = []
    for example in examples:
        if example.encoded.error:
            losses.append(float("nan"))
        else:
            ids, attention, mask = collate([example.encoded], device, pad_id)
            losses.append(float(token_loss(model, ids, attention, mask)[0]))
        progress()
    return losses


@torch.no_grad()
def exact_matches(model, tokenizer, examples: Sequence[EvalExample], max_new_tokens: int,
                  progress: Callable[[], None] = lambda: None) -> tuple[int, int]:
    """(correct, checked): greedy-decode each checkable example's answer (at most ``max_new_tokens``) and compare
    it with the reference.  Rows without a checkable answer, or whose prompt does not fit, are not checked."""
    device = next(model.parameters()).device
    correct = checked = 0
    for example in examples:
        if example.answer is None or example.prompt_ids is None or max_new_tokens <= 0:
            continue
        ids = torch.tensor([example.prompt_ids], device=device)
        output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                do_sample=False, pad_token_id=tokenizer.pad_token_id)
        text = tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True)
        correct += exact_match(example.answer, text)
        checked += 1
        progress()
    return correct, checked


@dataclass
class UnitMeasurement:
    """What one unit measured (``core.store.EvalUnitResult`` without its key, kind and seed)."""

    row_losses: list[float]
    correct: int
    checked: int
    curve: list[float]
    seconds: float
    model: object  # the trained (peft) model, to save its adapter


def measure_unit(resolved, tokenizer, device, train_rows: Sequence[EncodedRow] | None, examples: Sequence[EvalExample],
                 args: FineTuneArguments, seed: int | None, progress: Callable[[], None] = lambda: None) -> UnitMeasurement:
    """Load the base model; fine-tune a fresh adapter seeded by ``seed`` on ``train_rows`` (None: zero-shot, no
    adapter); measure ``examples``.  ``progress()`` is called per example trained, evaluated or decoded."""
    started = time.perf_counter()
    model = load_model(resolved, device)
    curve: list[float] = []
    if train_rows is not None:
        model = add_lora(model, replace(args.lora, init_seed=seed))
        train_lora(model, list(train_rows), args, tokenizer.pad_token_id, progress=lambda done, total: progress(),
                   seed=seed, on_step=lambda step, loss: curve.append(loss))
    losses = heldout_losses(model, examples, tokenizer.pad_token_id, progress)
    correct, checked = exact_matches(model, tokenizer, examples, args.generate_tokens, progress)
    return UnitMeasurement(losses, correct, checked, curve, time.perf_counter() - started, model)


def save_adapter(model, folder: Path) -> Path:
    """Write the unit's LoRA adapter as a PEFT folder (adapter_config.json + adapter_model.safetensors), staged and
    renamed into place so a reader never sees half of one."""
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(str(staging), safe_serialization=True)
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder
