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

from collections.abc import Iterator, Sequence
from typing import Protocol

import torch

from core.features.lora import collate, lora_parameters, token_loss
from core.features.modeling import EncodedRow


def per_example_gradient(inputs: torch.Tensor, output_grads: torch.Tensor) -> torch.Tensor:
    """A Linear layer's per-example weight gradient [B, out, in] from its inputs [B, T, in] and output gradients
    [B, T, out]: the sum over tokens of their outer products, in float32 (padded tokens have zero output gradient)."""
    return torch.einsum("bto,bti->boi", output_grads.float(), inputs.float())


class GradientComputer(Protocol):
    batched: bool  # whether the job should feed it batches of rows (else one row at a time)

    def gradients(self, rows: Sequence[EncodedRow]) -> torch.Tensor: ...


class LoopGradientComputer:
    batched = False  # it loops over a batch's rows anyway

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

    def __init__(self, model, pad_id: int, autocast: torch.dtype | None = None, batched: bool = True):
        self.model, self.pad_id = model, pad_id
        self.batched = batched  # False: the job feeds it one row at a time (on a CPU, where batches only cost memory)
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
        return torch.cat([piece for _, piece in self.gradient_pieces(rows)], dim=1)

    def gradient_pieces(self, rows: Sequence[EncodedRow]) -> Iterator[tuple[int, torch.Tensor]]:
        """The batch's per-example gradients one LoRA module at a time: ``(first coordinate, [B, n])``.

        One forward+backward for the batch (done before the first piece), then each module's per-example
        product is made only when asked for, so a consumer that projects and drops each piece never holds the
        full [B, D] gradient (for large ranks it is the dominant memory: LoGra's point; see ``project_features``)."""
        for start, inputs, output_grads in self.module_activations(rows):
            yield start, per_example_gradient(inputs, output_grads).reshape(len(rows), -1)

    def module_activations(self, rows: Sequence[EncodedRow]) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """Each LoRA module's ``(first coordinate, inputs [B, T, in], output gradients [B, T, out])`` for the
        batch, whose per-example gradient is ``einsum('bto,bti->boi')`` of the two: what a factorised projection
        (``projection.KroneckerProjector.project_activations``) takes instead of the gradient."""
        captured = self._capture(rows)
        start = 0
        for name, param in self.params:
            inputs, output_grads = captured.pop(name)  # the activations go as soon as their module is consumed
            yield start, inputs, output_grads
            start += param.numel()

    def _capture(self, rows: Sequence[EncodedRow]) -> dict[str, list]:
        """Each LoRA Linear's input activations and output gradients for the batch: {name: [inputs, grads]}."""
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
        return captured


PRECISIONS = {"float32": None, "bf16": torch.bfloat16}


def make_gradient_computer(model, pad_id: int, device: torch.device, precision: str = "float32",
                           activations: bool = False) -> GradientComputer:
    """The batched hook computer on CUDA (``precision="bf16"``: under bf16 autocast), the loop on CPU (where
    bf16 matmuls are slower than float32, so the loop always runs in float32).  ``activations``: a projection
    that takes activations (the factorised one) wants the hook computer on the CPU too (fed one row at a time)."""
    if device.type == "cuda":
        return HookGradientComputer(model, pad_id, autocast=PRECISIONS[precision])
    if activations:
        return HookGradientComputer(model, pad_id, batched=False)
    return LoopGradientComputer(model, pad_id)


def project_features(computer: GradientComputer, rows: Sequence[EncodedRow], projector, exp_avg: torch.Tensor | None,
                     exp_avg_sq: torch.Tensor | None, eps: float = 1e-8) -> torch.Tensor:
    """Projected features of a batch: Adam-aware (``adam_features``) when the checkpoint's moments are given, else
    the plain SGD gradient, projected to ``projector.dim``.

    With a computer that yields its gradient module by module (``gradient_pieces``, the batched CUDA path) and a
    projector that takes pieces (``project_pieces``, the sparse JL), each module's piece is transformed and
    projected on its own, so at most one module's per-example gradient exists at a time -- the same numbers as
    the full gradient (Adam's formula is element-wise, the sparse JL coordinate-wise).

    The factorised projection (``KroneckerProjector``, LoGra) goes further for SGD features (the targets): it
    takes each module's activations and output gradients and never forms even one module's gradient where
    that is cheaper.  Adam-aware features m'/sqrt(v' + eps) are non-linear in the gradient, so they are formed
    module by module, made Adam-aware, and projected by the same Kronecker maps: both kinds land in one space.  Other computers or projectors: the whole gradient."""
    activations_of = getattr(computer, "module_activations", None)
    pieces_of = getattr(computer, "gradient_pieces", None)
    if pieces_of is None or not hasattr(projector, "project_pieces"):
        grads = computer.gradients(rows)
        if exp_avg is not None:
            grads = adam_features(grads, exp_avg, exp_avg_sq, eps=eps)
        return projector.project(grads)
    dim = sum(p.numel() for _, p in computer.params)  # (the computers that stream pieces list their parameters)
    if exp_avg is None and activations_of is not None and hasattr(projector, "project_activations"):
        return projector.project_activations(activations_of(rows), dim)

    def pieces():
        for start, piece in pieces_of(rows):
            if exp_avg is not None:
                stop = start + piece.shape[1]
                piece = adam_features(piece, exp_avg[start:stop], exp_avg_sq[start:stop], eps=eps)
            yield start, piece

    return projector.project_pieces(pieces(), dim)


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
