"""Projection determinism (same seed -> same matrix, also in another process) and distortion."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO

from core.config import ProjectionArguments
from core.features.projection import (
    CountSketchProjector,
    KroneckerProjector,
    RademacherProjector,
    make_projector,
    splitmix64,
)


def _low_rank_gradients(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """Gradient-like vectors: a few shared directions plus noise, so pairwise cosines spread out."""
    generator = torch.Generator().manual_seed(seed)
    basis = torch.randn(8, d, generator=generator)
    weights = torch.randn(n, 8, generator=generator)
    return weights @ basis + 0.3 * torch.randn(n, d, generator=generator)


def _pairwise_cosines(x: torch.Tensor) -> np.ndarray:
    unit = torch.nn.functional.normalize(x.double(), dim=1)
    sims = (unit @ unit.T).numpy()
    return sims[np.triu_indices(len(x), 1)]


def test_splitmix64_known_values():
    # Reference values of SplitMix64 (Vigna) for state increments from seed 0: the same bits on every machine.
    first = splitmix64(np.array([0], dtype=np.uint64))[0]
    assert int(first) == 0xE220A8397B1DCDAF


# Kronecker test shapes: LoRA-like modules, (rank, in) for lora_A and (out, rank) for lora_B, 20,000 coordinates.
MODULE_SHAPES = [(40, 100), (100, 40)] * 2 + [(40, 25), (25, 40)] * 2


@pytest.mark.parametrize("kind, sparsity", [("countsketch", 1), ("countsketch", 4), ("rademacher", 1), ("kronecker", 1),
                                            ("kronecker", 4)])
def test_same_seed_same_projection_and_other_seed_differs(kind, sparsity):
    grads = _low_rank_gradients(6, 3000 if kind != "kronecker" else 20_000)  # MODULE_SHAPES' size
    args = ProjectionArguments(kind, 512, seed=7, sparsity=sparsity, factor_dim=16)
    a = make_projector(args, MODULE_SHAPES).project(grads)
    b = make_projector(args, MODULE_SHAPES).project(grads)
    assert torch.equal(a, b)
    other = make_projector(ProjectionArguments(kind, 512, seed=8, sparsity=sparsity, factor_dim=16), MODULE_SHAPES).project(grads)
    assert not torch.allclose(a, other)


def test_projection_is_identical_in_another_process(tmp_path):
    grads = _low_rank_gradients(3, 2000)
    torch.save(grads, tmp_path / "grads.pt")
    here = {
        "cs": CountSketchProjector(256, seed=3, sparsity=2).project(grads).numpy(),
        "rad": RademacherProjector(256, seed=3, block_rows=700).project(grads).numpy(),
    }
    code = (
        "import sys, numpy as np, torch; "
        "from core.features.projection import CountSketchProjector as C, RademacherProjector as R;"
        "x = torch.load(sys.argv[2], weights_only=True); np.save(sys.stdout.buffer, np.concatenate([C(256, seed=3, sparsity=2).project(x).numpy(), R(256, seed=3, block_rows=700).project(x).numpy()]))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(REPO), str(tmp_path / "grads.pt")], capture_output=True, check=True, cwd=str(REPO)).stdout
    import io

    there = np.load(io.BytesIO(out))
    assert np.array_equal(there[:3], here["cs"]) and np.array_equal(there[3:], here["rad"])


def test_hash_buckets_are_balanced_and_signs_unbiased():
    buckets, signs = CountSketchProjector(1024, seed=0).hashes(200_000)
    counts = np.bincount(buckets[0].numpy(), minlength=1024)
    assert counts.min() > 120 and counts.max() < 280  # mean 195
    assert abs(signs.numpy().mean()) < 0.01


@pytest.mark.parametrize("projector", [CountSketchProjector(2048, seed=1), CountSketchProjector(2048, seed=1, sparsity=4),
                                       RademacherProjector(2048, seed=1), KroneckerProjector(2048, 1, 32, MODULE_SHAPES)])
def test_distortion_pairwise_cosines_and_norms(projector):
    grads = _low_rank_gradients(40, 20_000)
    projected = projector.project(grads)
    original_cos, projected_cos = _pairwise_cosines(grads), _pairwise_cosines(projected)
    correlation = np.corrcoef(original_cos, projected_cos)[0, 1]
    assert correlation > 0.98
    assert np.abs(original_cos - projected_cos).max() < 0.15
    ratio = projected.norm(dim=1) / grads.norm(dim=1)
    assert ratio.min() > 0.9 and ratio.max() < 1.1


def test_rademacher_blocks_do_not_depend_on_block_boundaries_of_the_input():
    # the matrix is fixed by (seed, block index); projecting a sum equals summing projections (linearity)
    projector = RademacherProjector(128, seed=2, block_rows=300)
    a, b = _low_rank_gradients(2, 1000, seed=1)
    assert torch.allclose(projector.project(torch.stack([a + b]))[0], projector.project(torch.stack([a, b])).sum(0), atol=1e-4)


@pytest.mark.parametrize("sparsity", [1, 4])
def test_projecting_column_pieces_equals_projecting_the_whole_vector(sparsity):
    """The streamed path (one LoRA module's gradient at a time) gives the bits of the whole vector's projection."""
    grads = torch.randn(5, 3001, generator=torch.Generator().manual_seed(4))
    projector = CountSketchProjector(512, seed=9, sparsity=sparsity)
    cuts = [0, 7, 1000, 1001, 2999, 3001]
    pieces = ((start, grads[:, start:stop]) for start, stop in zip(cuts, cuts[1:]))
    streamed = projector.project_pieces(pieces, grads.shape[1])
    assert torch.equal(streamed, projector.project(grads))
    with pytest.raises(ValueError, match="no pieces"):
        projector.project_pieces(iter(()), 10)


def test_kronecker_from_activations_equals_projecting_the_formed_gradient():
    """LoGra's identity P_out (sum_t d_t x_t^T) P_in^T = sum_t (P_out d_t)(P_in x_t)^T: the factorised path (taken
    for the large-rank modules, where it is cheaper) and the formed path give the same features."""
    generator = torch.Generator().manual_seed(3)
    shapes = [(96, 80), (80, 96), (4, 80), (80, 4)]  # two rank-96 modules (factorised), two rank-4 ones (formed)
    batch, tokens = 3, 12
    activations = []
    start = 0
    for out, inp in shapes:
        inputs = torch.randn(batch, tokens, inp, generator=generator)
        output_grads = torch.randn(batch, tokens, out, generator=generator)
        output_grads[0, 9:] = 0  # padding: a shorter first example
        activations.append((start, inputs, output_grads))
        start += out * inp
    formed = torch.cat([torch.einsum("bto,bti->boi", g, x).reshape(batch, -1) for _, x, g in activations], dim=1)
    projector = KroneckerProjector(256, 5, 16, shapes, sparsity=2)
    from_activations = projector.project_activations(iter(activations), formed.shape[1])
    assert projector.factorised_modules == 2
    expected = projector.project(formed)
    assert ((from_activations - expected).norm(dim=1) / expected.norm(dim=1)).max().item() < 1e-5
    # module pieces streamed one at a time give the same bits as the whole vector
    pieces = ((int(projector.starts[m]), formed[:, projector.starts[m]:projector.starts[m + 1]]) for m in range(4))
    assert torch.equal(projector.project_pieces(pieces, formed.shape[1]), expected)


def test_kronecker_rejects_pieces_that_are_not_whole_modules():
    projector = KroneckerProjector(64, 0, 8, [(4, 10), (10, 4)])
    with pytest.raises(ValueError, match="not one whole LoRA module"):
        projector.project_pieces([(0, torch.zeros(1, 20)), (20, torch.zeros(1, 60))], 80)
    with pytest.raises(ValueError, match="has 81 coordinates but the LoRA modules 80"):
        projector.project(torch.zeros(1, 81))
    with pytest.raises(ValueError, match="needs the LoRA module shapes"):
        make_projector(ProjectionArguments("kronecker", 64))


def test_only_the_kronecker_kind_keys_on_factor_dim():
    assert "factor_dim" not in ProjectionArguments().numbers()  # the default key is what it was before the field
    assert ProjectionArguments(factor_dim=8).numbers() == ProjectionArguments().numbers()
    assert ProjectionArguments("kronecker", factor_dim=8).numbers() != ProjectionArguments("kronecker").numbers()
    with pytest.raises(ValueError, match="factor_dim must be >= 1"):
        ProjectionArguments("kronecker", factor_dim=0)
    with pytest.raises(ValueError, match="unknown projection kind 'logra'"):
        ProjectionArguments("logra")
