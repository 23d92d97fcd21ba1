"""Seeded random projections of flat per-example gradients to a few thousand coordinates.

Two projectors share one interface, ``project(grads[B, D]) -> [B, K] float32``:

* ``CountSketchProjector`` (default): a sparse Johnson-Lindenstrauss transform with ``s`` non-zeros per input
  coordinate (s=1 is CountSketch).  It costs O(s * D) per example and keeps no matrix, only hashes.
* ``RademacherProjector``: LESS/TRAK's dense +-1/sqrt(K) matrix, generated block by block from the seed and never
  stored whole (460,800 x 8192 floats would be 14 GiB).  Kept as an option and as the LESS-style reference.

Determinism across runs and machines: the sparse hashes come from SplitMix64, plain integer arithmetic that gives
the same bits everywhere.  We write it by hand (numpy has no stateless counter-based hash) because numpy's and
torch's generators promise stable streams only within a version.  The dense blocks use torch's CPU Mersenne
Twister seeded per block from the same hash; torch is pinned, and blocks are always drawn on the CPU.
"""
from __future__ import annotations

import math
from typing import Iterable, Protocol

import numpy as np
import torch

from core.config import ProjectionArguments

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
        generator = torch.Generator(device="cpu")
        generator.manual_seed(int(_stream_key(self.seed, index)) & 0x7FFFFFFFFFFFFFFF)
        packed = torch.randint(0, 256, (rows, (self.dim + 7) // 8), dtype=torch.uint8, generator=generator)
        bits = (packed.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1  # 8 signs per random byte
        signs = bits.reshape(rows, -1)[:, : self.dim].to(torch.float32) * 2.0 - 1.0
        return signs / math.sqrt(self.dim)

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        grads = grads.to(torch.float32)
        out = torch.zeros(grads.shape[0], self.dim, dtype=torch.float32, device=grads.device)
        for index, start in enumerate(range(0, grads.shape[1], self.block_rows)):
            stop = min(start + self.block_rows, grads.shape[1])
            out += grads[:, start:stop] @ self.block(index, stop - start).to(grads.device)
        return out


def make_projector(args: ProjectionArguments) -> Projector:
    if args.kind == "countsketch":
        return CountSketchProjector(args.dim, args.seed, args.sparsity)
    return RademacherProjector(args.dim, args.seed)
