"""Seeded random projections of flat per-example gradients to a few thousand coordinates.

Three projectors share one interface, ``project(grads[B, D]) -> [B, K] float32``:

* ``CountSketchProjector`` (default): a sparse Johnson-Lindenstrauss transform with ``s`` non-zeros per input
  coordinate (s=1 is CountSketch).  It costs O(s * D) per example and keeps no matrix, only hashes.
* ``RademacherProjector``: LESS/TRAK's dense +-1/sqrt(K) matrix, generated block by block from the seed and never
  stored whole (460,800 x 8192 floats would be 14 GiB).  Kept as an option and as the LESS-style reference.
* ``KroneckerProjector``: LoGra's factorised projection.  A LoRA module's per-example gradient is a sum of outer
  products, G = sum_t d_t x_t^T (output gradient d_t, input x_t), so P_out G P_in^T = sum_t (P_out d_t)(P_in x_t)^T
  can be had from the layer's activations without ever forming G (``project_activations``).  That is cheaper
  than forming G once the LoRA rank is large; each module takes whichever way costs fewer multiply-adds, and
  both give the same numbers.  The modules' small blocks are folded into ``dim`` by a CountSketch.  It needs
  the module shapes, so ``make_projector`` takes them.

Determinism across runs and machines: the sparse hashes come from SplitMix64, plain integer arithmetic that gives
the same bits everywhere.  We write it by hand (numpy has no stateless counter-based hash) because numpy's and
torch's generators promise stable streams only within a version.  The dense blocks use torch's CPU Mersenne
Twister seeded per block from the same hash; torch is pinned, and blocks are always drawn on the CPU.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

import numpy as np
import torch

from core.config import ProjectionArguments
from core.features.gradients import per_example_gradient

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def splitmix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser over a uint64 array (wrapping arithmetic is the point, so silence overflow)."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return z ^ (z >> np.uint64(31))


def _stream_key(seed: int, stream: int) -> np.uint64:
    return splitmix64(np.array([(seed & 0xFFFFFFFF) << 32 | (stream & 0xFFFFFFFF)], dtype=np.uint64))[0]


def _seeded_signs(seed: int, stream: int, rows: int, cols: int) -> torch.Tensor:
    """A seeded [rows, cols] float32 matrix of +-1, drawn on the CPU (the same bits on every machine, see above)."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int(_stream_key(seed, stream)) & 0x7FFFFFFFFFFFFFFF)
    packed = torch.randint(0, 256, (rows, (cols + 7) // 8), dtype=torch.uint8, generator=generator)
    bits = (packed.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1  # 8 signs per random byte
    return bits.reshape(rows, -1)[:, :cols].to(torch.float32) * 2.0 - 1.0


class Projector(Protocol):
    dim: int

    def project(self, grads: torch.Tensor) -> torch.Tensor: ...


class CountSketchProjector:
    """Sparse JL: coordinate i goes to bucket h_j(i) of block j with sign s_j(i), for j < sparsity, scaled 1/sqrt(s)."""

    def __init__(self, dim: int, seed: int = 0, sparsity: int = 1):
        if dim % sparsity:
            raise ValueError("dim must be a multiple of sparsity")
        self.dim, self.seed, self.sparsity = dim, seed, sparsity
        self._hashes: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def hashes(self, input_dim: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Bucket indices [s, D] (int64) and signs [s, D] (float32) for a D-dimensional input."""
        key = (input_dim, str(device))
        if key not in self._hashes:
            block = self.dim // self.sparsity
            coords = np.arange(input_dim, dtype=np.uint64)
            buckets = np.empty((self.sparsity, input_dim), dtype=np.int64)
            signs = np.empty((self.sparsity, input_dim), dtype=np.float32)
            for j in range(self.sparsity):
                h = splitmix64(coords ^ _stream_key(self.seed, j))
                buckets[j] = (h >> np.uint64(1)) % np.uint64(block) + np.uint64(j * block)
                signs[j] = 1.0 - 2.0 * (h & np.uint64(1)).astype(np.float32)
            self._hashes[key] = (torch.from_numpy(buckets).to(device), torch.from_numpy(signs).to(device))
        return self._hashes[key]

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        return self.project_pieces([(0, grads)], grads.shape[1])

    def project_pieces(self, pieces: Iterable[tuple[int, torch.Tensor]], input_dim: int) -> torch.Tensor:
        """The projection of a ``input_dim``-dimensional input given as consecutive column pieces
        ``(start, values[B, n])``, each consumed (and free to go) before the next is made.

        A sparse JL sends each coordinate to its own buckets, so adding piece by piece gives the projection of the
        whole vector, with the additions in the same order (bit-identical on the CPU): a batch's full per-example
        gradient [B, D] never has to exist (``HookGradientComputer.gradient_pieces`` yields one LoRA module's)."""
        out = None
        for start, values in pieces:
            values = values.to(torch.float32)
            if out is None:
                out = torch.zeros(values.shape[0], self.dim, dtype=torch.float32, device=values.device)
            buckets, signs = self.hashes(input_dim, values.device)
            stop = start + values.shape[1]
            for j in range(self.sparsity):
                out.index_add_(1, buckets[j, start:stop], values * signs[j, start:stop])
        if out is None:
            raise ValueError("nothing to project: no pieces")
        if self.sparsity > 1:
            out /= math.sqrt(self.sparsity)
        return out


class RademacherProjector:
    """Dense +-1/sqrt(K) projection, generated in row blocks of ``block_rows`` input coordinates (LESS/TRAK-style)."""

    def __init__(self, dim: int, seed: int = 0, block_rows: int = 4096):
        self.dim, self.seed, self.block_rows = dim, seed, block_rows

    def block(self, index: int, rows: int) -> torch.Tensor:
        """Rows ``[index*block_rows, index*block_rows + rows)`` of the matrix, on the CPU, float32."""
        return _seeded_signs(self.seed, index, rows, self.dim) / math.sqrt(self.dim)

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        grads = grads.to(torch.float32)
        out = torch.zeros(grads.shape[0], self.dim, dtype=torch.float32, device=grads.device)
        for index, start in enumerate(range(0, grads.shape[1], self.block_rows)):
            stop = min(start + self.block_rows, grads.shape[1])
            out += grads[:, start:stop] @ self.block(index, stop - start).to(grads.device)
        return out


# The Kronecker factors' random streams start here, clear of the fold's CountSketch streams (0 .. sparsity-1).
_FACTOR_STREAMS = 1 << 20


class KroneckerProjector:
    """LoGra-style: module m's gradient G_m [out, in] -> P_out G_m P_in^T, flattened, folded into ``dim`` coordinates.

    P_out is [min(out, k), out] and P_in [min(in, k), in] (k = ``factor_dim``), seeded +-1/sqrt(rows) matrices;
    a side no larger than k is kept as it is (LoGra does the same), so a rank-8 LoRA's rank side is exact.
    ``shapes`` are the modules' weight shapes in gradient-coordinate order (``lora.lora_parameters``)."""

    def __init__(self, dim: int, seed: int, factor_dim: int, shapes: Sequence[tuple[int, int]], sparsity: int = 1):
        if not shapes:
            raise ValueError("the Kronecker projection needs the LoRA module shapes")
        self.dim, self.seed, self.factor_dim = dim, seed, factor_dim
        self.shapes = [(int(out), int(inp)) for out, inp in shapes]
        self.starts = np.cumsum([0] + [out * inp for out, inp in self.shapes])  # module m's first gradient coordinate
        blocks = [min(out, factor_dim) * min(inp, factor_dim) for out, inp in self.shapes]
        self.block_starts = np.cumsum([0] + blocks)  # module m's first coordinate in the folded-from space
        self.fold = CountSketchProjector(dim, seed, sparsity)
        self._factors: dict[tuple[int, str], tuple[torch.Tensor | None, torch.Tensor | None]] = {}
        self.factorised_modules = 0  # how many modules went the factorised way (for tests and benchmarks)

    def factors(self, module: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(P_out, P_in) of a module on ``device``; None for a side kept as it is."""
        key = (module, str(device))
        if key not in self._factors:
            out, inp = self.shapes[module]
            sides = []
            for side, size in enumerate((out, inp)):
                rows = min(size, self.factor_dim)
                stream = _FACTOR_STREAMS + 2 * module + side
                sides.append(None if rows == size else (_seeded_signs(self.seed, stream, rows, size) / math.sqrt(rows)).to(device))
            self._factors[key] = (sides[0], sides[1])
        return self._factors[key]

    def _module_at(self, start: int, width: int) -> int:
        module = int(np.searchsorted(self.starts, start))
        if module >= len(self.shapes) or self.starts[module] != start or self.starts[module + 1] - start != width:
            raise ValueError(f"a piece at coordinate {start} of width {width} is not one whole LoRA module")
        return module

    def _block(self, module: int, gradient: torch.Tensor) -> torch.Tensor:
        """P_out G P_in^T for a batch of formed gradients [B, out, in] -> [B, k_out * k_in]."""
        p_out, p_in = self.factors(module, gradient.device)
        if p_out is not None:
            gradient = torch.matmul(p_out, gradient)
        if p_in is not None:
            gradient = torch.matmul(gradient, p_in.T)
        return gradient.reshape(gradient.shape[0], -1)

    def factorised_is_cheaper(self, module: int, tokens: int) -> bool:
        """Multiply-adds per example: forming G (T*out*in, then the two projections) vs projecting the factors
        (T*out*k_out + T*in*k_in for the projections, T*k_out*k_in for the product)."""
        out, inp = self.shapes[module]
        k_out, k_in = min(out, self.factor_dim), min(inp, self.factor_dim)
        formed = tokens * out * inp + (k_out * out * inp if k_out < out else 0) + (k_out * inp * k_in if k_in < inp else 0)
        factorised = tokens * ((out * k_out if k_out < out else 0) + (inp * k_in if k_in < inp else 0) + k_out * k_in)
        return factorised < formed

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        pieces = ((int(self.starts[m]), grads[:, self.starts[m]:self.starts[m + 1]]) for m in range(len(self.shapes)))
        return self.project_pieces(pieces, grads.shape[1])

    def project_pieces(self, pieces: Iterable[tuple[int, torch.Tensor]], input_dim: int) -> torch.Tensor:
        """As ``CountSketchProjector.project_pieces``, each piece being one whole module's flat gradient."""
        self._check_dim(input_dim)

        def blocks() -> Iterator[tuple[int, torch.Tensor]]:
            for start, values in pieces:
                module = self._module_at(start, values.shape[1])
                out, inp = self.shapes[module]
                yield int(self.block_starts[module]), self._block(module, values.float().reshape(-1, out, inp))

        return self.fold.project_pieces(blocks(), int(self.block_starts[-1]))

    def project_activations(self, activations: Iterable[tuple[int, torch.Tensor, torch.Tensor]], input_dim: int) -> torch.Tensor:
        """The projection of per-example gradients given as each module's ``(start, inputs [B, T, in],
        output_grads [B, T, out])`` (``HookGradientComputer.module_activations``); padded tokens carry zero
        output gradients and so add nothing.  Equal to forming G first, up to float rounding."""
        self._check_dim(input_dim)

        def blocks() -> Iterator[tuple[int, torch.Tensor]]:
            for start, inputs, output_grads in activations:
                out, inp = output_grads.shape[-1], inputs.shape[-1]
                module = self._module_at(start, out * inp)
                if self.factorised_is_cheaper(module, inputs.shape[1]):
                    self.factorised_modules += 1
                    p_out, p_in = self.factors(module, inputs.device)
                    if p_out is not None:
                        output_grads = output_grads.float() @ p_out.T
                    if p_in is not None:
                        inputs = inputs.float() @ p_in.T
                    block = per_example_gradient(inputs, output_grads).reshape(inputs.shape[0], -1)
                else:
                    block = self._block(module, per_example_gradient(inputs, output_grads))
                yield int(self.block_starts[module]), block

        return self.fold.project_pieces(blocks(), int(self.block_starts[-1]))

    def _check_dim(self, input_dim: int) -> None:
        if input_dim != self.starts[-1]:
            raise ValueError(f"the gradient has {input_dim} coordinates but the LoRA modules {self.starts[-1]}")


def make_projector(args: ProjectionArguments, shapes: Sequence[tuple[int, int]] | None = None) -> Projector:
    """The projector ``args`` describe; "kronecker" also needs the LoRA modules' weight shapes, in order."""
    if args.kind == "countsketch":
        return CountSketchProjector(args.dim, args.seed, args.sparsity)
    if args.kind == "kronecker":
        if shapes is None:
            raise ValueError("the Kronecker projection needs the LoRA module shapes")
        return KroneckerProjector(args.dim, args.seed, args.factor_dim, shapes, args.sparsity)
    return RademacherProjector(args.dim, args.seed)
