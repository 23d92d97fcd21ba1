"""Per-example LoRA gradients and the Adam-aware transform that turns them into pool features.

Two gradient computers share one interface, ``gradients(rows) -> [B, D]`` (flat, float32, coordinates in the
order of ``lora.lora_parameters``), each gradient being that of the example's mean assistant-token loss:

* ``LoopGradientComputer``: one forward+backward per example.  On CPU this is the fastest and leanest
  (environment.md section 3: batching gives nothing there and costs 3-10x the memory).
* ``HookGradientComputer``: one batched forward+backward; forward hooks on every ``lora_A``/``lora_B`` Linear keep
  its input, a tensor hook on its output keeps the output gradient, and the per-example weight gradient is their
  product summed over tokens (``einsum('bto,bti->boi')``).  No per-example backward.  Used on CUDA, optionally
  under bf16 autocast (``precision="bf16"``; equal to the float32 path within the tolerance tests/test_gradients.py
  states: cosine >= 0.99 per example).

``adam_features`` applies LESS's formula Gamma = m' / sqrt(v' + eps) with m' = b1 m + (1-b1) g and
v' = b2 v + (1-b2) g^2, m and v being the warmup checkpoint's Adam moments (no bias correction, as LESS).
Target rows keep their plain SGD gradient.
"""
from __future__ import annotations

from typing import Protocol, Sequence

import torch

from core.lora import collate, lora_parameters, token_loss
from core.modeling import EncodedRow


class GradientComputer(Protocol):
    def gradients(self, rows: Sequence[EncodedRow]) -> torch.Tensor: ...


class LoopGradientComputer:
    def __init__(self, model, pad_id: int):
        self.model, self.pad_id = model, pad_id
        self.params = lora_parameters(model)
        self.device = self.params[0][1].device

    def gradients(self, rows: Sequence[EncodedRow]) -> torch.Tensor:
        out = []
        for row in rows:
            for _, param in self.params:
                param.grad = None
            ids, attention, loss_mask = collate([row], self.device, self.pad_id)
            token_loss(self.model, ids, attention, loss_mask).sum().backward()
            out.append(torch.cat([p.grad.reshape(-1) for _, p in self.params]).float())
        for _, param in self.params:
            param.grad = None
        return torch.stack(out)


class HookGradientComputer:
    """Batched per-example gradients of LoRA Linear weights from activations x output-gradients."""

    def __init__(self, model, pad_id: int, autocast: torch.dtype | None = None):
        self.model, self.pad_id = model, pad_id
        self.params = lora_parameters(model)
        self.device = self.params[0][1].device
        # bf16 autocast runs the model's matmuls in bfloat16 (tensor cores on a GPU); the captured activations and
        # output gradients are then bf16 and the per-example product is taken in float32.  The loss stays float32.
        self.autocast = autocast
        param_names = {id(p): n for n, p in self.params}
        self.linears: dict[str, torch.nn.Linear] = {}
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and id(module.weight) in param_names:
                if module.bias is not None and module.bias.requires_grad:
                    raise ValueError("LoRA layers with trainable biases are not supported by the hook computer")
                self.linears[param_names[id(module.weight)]] = module
        missing = set(param_names.values()) - set(self.linears)
        if missing:
            raise ValueError(f"trainable parameters outside LoRA Linear layers: {sorted(missing)[:3]}")

    def gradients(self, rows: Sequence[EncodedRow]) -> torch.Tensor:
        captured: dict[str, list] = {name: [None, None] for name in self.linears}

        def make_hook(name):
            def forward_hook(module, inputs, output):
                captured[name][0] = inputs[0].detach()

                def keep_grad(grad):
                    captured[name][1] = grad.detach()

                output.register_hook(keep_grad)

            return forward_hook

        handles = [module.register_forward_hook(make_hook(name)) for name, module in self.linears.items()]
        try:
            ids, attention, loss_mask = collate(rows, self.device, self.pad_id)
            with torch.autocast(self.device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None):
                # The sum of per-example mean losses: each example's gradient is exactly its own loss's gradient.
                losses = token_loss(self.model, ids, attention, loss_mask)
                weight_params = [p for _, p in self.params]
                torch.autograd.grad(losses.sum(), weight_params)  # fires the tensor hooks; parameter grads unused
        finally:
            for handle in handles:
                handle.remove()
        pieces = []
        for name, _ in self.params:
            inputs, output_grads = captured[name]
            per_example = torch.einsum("bto,bti->boi", output_grads.float(), inputs.float())
            pieces.append(per_example.reshape(len(rows), -1))
        return torch.cat(pieces, dim=1)


PRECISIONS = {"float32": None, "bf16": torch.bfloat16}


def make_gradient_computer(model, pad_id: int, device: torch.device, precision: str = "float32") -> GradientComputer:
    """The batched hook computer on CUDA (``precision="bf16"``: under bf16 autocast), the loop on CPU (where
    bf16 matmuls are slower than float32, so the loop always runs in float32)."""
    if device.type == "cuda":
        return HookGradientComputer(model, pad_id, autocast=PRECISIONS[precision])
    return LoopGradientComputer(model, pad_id)


def flat_moments(model, moments: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam's exp_avg and exp_avg_sq flattened in gradient-coordinate order."""
    names = [name for name, _ in lora_parameters(model)]
    exp_avg = torch.cat([moments[n][0].reshape(-1).float() for n in names])
    exp_avg_sq = torch.cat([moments[n][1].reshape(-1).float() for n in names])
    return exp_avg, exp_avg_sq


def adam_features(
    grads: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.Tensor:
    """Gamma = m' / sqrt(v' + eps): the update direction Adam would take for this example (LESS, eq. 2)."""
    beta1, beta2 = betas
    exp_avg = exp_avg.to(grads.device)
    exp_avg_sq = exp_avg_sq.to(grads.device)
    m = beta1 * exp_avg + (1 - beta1) * grads
    v = beta2 * exp_avg_sq + (1 - beta2) * grads.pow(2)
    return m / torch.sqrt(v + eps)
