"""Gradient correctness on the tiny model: loop vs summed-loss autograd vs finite differences, hooks vs loop,
the Adam-aware formula vs a hand computation, and the assistant-only loss mask."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import chat_rows

from core.config import LoraArguments
from core.features.gradients import HookGradientComputer, LoopGradientComputer, adam_features, project_features
from core.features.lora import add_lora, collate, gradient_dim, lora_parameters, token_loss
from core.features.modeling import encode_messages, load_model, load_tokenizer, resolve_model
from core.features.projection import CountSketchProjector, KroneckerProjector


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    resolved = resolve_model(str(tiny_model_dir))
    tokenizer = load_tokenizer(resolved)
    model = add_lora(load_model(resolved), LoraArguments(r=4, alpha=8, target_modules=("q_proj", "v_proj")))
    # peft starts lora_B at zero, which makes every lora_A gradient zero; give B values so both factors are tested.
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        for name, param in lora_parameters(model):
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    rows = [encode_messages(tokenizer, r["messages"], 64) for r in chat_rows(6)]
    return model, tokenizer, rows


def test_lora_dimension_and_seeded_init(tiny_model_dir):
    resolved = resolve_model(str(tiny_model_dir))
    first = add_lora(load_model(resolved), LoraArguments(r=4, alpha=8, target_modules=("q_proj", "v_proj"), init_seed=3))
    second = add_lora(load_model(resolved), LoraArguments(r=4, alpha=8, target_modules=("q_proj", "v_proj"), init_seed=3))
    third = add_lora(load_model(resolved), LoraArguments(r=4, alpha=8, target_modules=("q_proj", "v_proj"), init_seed=4))
    # 2 layers x (q: A 4x64 + B 64x4, v: A 4x64 + B 32x4)
    assert gradient_dim(first) == 2 * ((4 * 64 + 64 * 4) + (4 * 64 + 32 * 4))
    a1 = dict(lora_parameters(first))
    a2 = dict(lora_parameters(second))
    a3 = dict(lora_parameters(third))
    name = next(n for n in a1 if "lora_A" in n)
    assert torch.equal(a1[name], a2[name])
    assert not torch.equal(a1[name], a3[name])


def test_loop_gradients_sum_to_autograd_of_summed_loss(tiny):
    model, tokenizer, rows = tiny
    per_example = LoopGradientComputer(model, tokenizer.pad_token_id).gradients(rows)
    params = [p for _, p in lora_parameters(model)]
    total = None
    for row in rows:
        ids, attention, mask = collate([row], "cpu", tokenizer.pad_token_id)
        loss = token_loss(model, ids, attention, mask).sum()
        total = loss if total is None else total + loss
    summed = torch.cat([g.reshape(-1) for g in torch.autograd.grad(total, params)])
    assert per_example.shape == (len(rows), summed.numel())
    assert torch.allclose(per_example.sum(0), summed, rtol=1e-5, atol=1e-7)
    assert per_example.abs().sum() > 0


def test_loop_gradient_matches_finite_differences(tiny):
    model, tokenizer, rows = tiny
    row = rows[2]
    model64 = model.double()  # float64 so that the differences measure the gradient, not rounding
    try:
        grad = LoopGradientComputer(model64, tokenizer.pad_token_id).gradients([row])[0].double()
        ids, attention, mask = collate([row], "cpu", tokenizer.pad_token_id)
        params = lora_parameters(model64)
        offsets, start = [], 0
        for _, p in params:
            offsets.append(start)
            start += p.numel()
        eps = 1e-3  # HF Llama computes RoPE in float32, so smaller steps drown in that rounding
        checked = 0
        for (name, param), offset in zip(params, offsets):
            for flat_index in (0, param.numel() // 2, param.numel() - 1):
                coordinate = offset + flat_index
                with torch.no_grad():
                    original = param.view(-1)[flat_index].item()
                    param.view(-1)[flat_index] = original + eps
                    up = token_loss(model64, ids, attention, mask).item()
                    param.view(-1)[flat_index] = original - eps
                    down = token_loss(model64, ids, attention, mask).item()
                    param.view(-1)[flat_index] = original
                numeric = (up - down) / (2 * eps)
                assert math.isclose(numeric, grad[coordinate].item(), rel_tol=2e-3, abs_tol=5e-6), (name, flat_index)
                checked += 1
        assert checked == 3 * len(params)
    finally:
        model.float()


def test_hook_gradients_equal_the_loop(tiny):
    model, tokenizer, rows = tiny
    loop = LoopGradientComputer(model, tokenizer.pad_token_id).gradients(rows)
    hooks = HookGradientComputer(model, tokenizer.pad_token_id).gradients(rows)  # one padded batch of 6 lengths
    assert len({r.n_tokens for r in rows}) > 1  # padding is really exercised
    relative = (hooks - loop).norm(dim=1) / loop.norm(dim=1)
    assert relative.max().item() < 1e-4


def test_streamed_projected_features_equal_the_whole_gradient_path(tiny):
    """The batched path projects Adam features one LoRA module at a time, never holding the batch's full [B, D]
    gradient; the numbers equal transforming and projecting the whole per-example gradient of the loop."""
    model, tokenizer, rows = tiny
    projector = CountSketchProjector(256, seed=5)
    dim = gradient_dim(model)
    generator = torch.Generator().manual_seed(2)
    exp_avg = torch.randn(dim, generator=generator) * 1e-3
    exp_avg_sq = torch.rand(dim, generator=generator) * 1e-6
    hooks = HookGradientComputer(model, tokenizer.pad_token_id)
    widest = []
    pieces_of = hooks.gradient_pieces

    def recording_pieces(batch):
        for start, piece in pieces_of(batch):
            widest.append(piece.shape[1])
            yield start, piece

    hooks.gradient_pieces = recording_pieces
    for moments in ((exp_avg, exp_avg_sq), (None, None)):
        widest.clear()
        streamed = project_features(hooks, rows, projector, *moments)
        loop = LoopGradientComputer(model, tokenizer.pad_token_id).gradients(rows)
        whole = projector.project(adam_features(loop, *moments) if moments[0] is not None else loop)
        assert streamed.shape == (len(rows), 256)
        assert ((streamed - whole).norm(dim=1) / whole.norm(dim=1)).max().item() < 1e-4
        assert len(widest) == len(lora_parameters(model)) and max(widest) < dim  # one module at a time


def test_factorised_kronecker_features_equal_projecting_the_loop_gradient(tiny):
    """LoGra-style projection on a real backward: SGD features come from each LoRA layer's activations and output
    gradients without forming any module's gradient (factor_dim 2 < rank 4 makes that the cheaper way here);
    Adam-aware features are formed module by module.  Both equal the loop's whole gradient, projected by the
    same Kronecker maps (tolerance: 1e-4 relative, float32 rounding)."""
    model, tokenizer, rows = tiny
    shapes = [tuple(p.shape) for _, p in lora_parameters(model)]
    dim = gradient_dim(model)
    generator = torch.Generator().manual_seed(6)
    exp_avg = torch.randn(dim, generator=generator) * 1e-3
    exp_avg_sq = torch.rand(dim, generator=generator) * 1e-6
    loop = LoopGradientComputer(model, tokenizer.pad_token_id).gradients(rows)
    hooks = HookGradientComputer(model, tokenizer.pad_token_id)
    for moments in ((None, None), (exp_avg, exp_avg_sq)):
        projector = KroneckerProjector(128, 3, 2, shapes)
        features = project_features(hooks, rows, projector, *moments)
        whole = projector.project(adam_features(loop, *moments) if moments[0] is not None else loop)
        assert ((features - whole).norm(dim=1) / whole.norm(dim=1)).max().item() < 1e-4
        assert projector.factorised_modules == (len(shapes) if moments[0] is None else 0)


def test_bf16_autocast_hook_gradients_stay_within_the_stated_tolerance(tiny):
    """The CUDA path's bf16 option, run here under CPU autocast (the same code): every per-example gradient keeps
    cosine >= 0.99 with the float32 loop, and bf16 really changed the numbers (else the test proves nothing)."""
    model, tokenizer, rows = tiny
    loop = LoopGradientComputer(model, tokenizer.pad_token_id).gradients(rows)
    bf16 = HookGradientComputer(model, tokenizer.pad_token_id, autocast=torch.bfloat16).gradients(rows)
    cosine = torch.nn.functional.cosine_similarity(bf16, loop, dim=1)
    assert cosine.min().item() >= 0.99, cosine
    assert ((bf16 - loop).norm(dim=1) / loop.norm(dim=1)).max().item() > 1e-4  # not the float32 result


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_hook_gradients_on_cuda_equal_the_cpu_loop(tiny_model_dir):
    resolved = resolve_model(str(tiny_model_dir))
    tokenizer = load_tokenizer(resolved)
    rows = [encode_messages(tokenizer, r["messages"], 64) for r in chat_rows(6)]
    cpu = add_lora(load_model(resolved), LoraArguments())
    gpu = add_lora(load_model(resolved, "cuda"), LoraArguments())
    loop = LoopGradientComputer(cpu, tokenizer.pad_token_id).gradients(rows)
    gpu_hooks = HookGradientComputer(gpu, tokenizer.pad_token_id)
    hooks = gpu_hooks.gradients(rows).cpu()
    assert ((hooks - loop).norm(dim=1) / loop.norm(dim=1).clamp(min=1e-12)).max() < 1e-4
    # the factorised projection on the GPU equals projecting the CPU loop's gradient (the factors are drawn on
    # the CPU, so both devices use the same maps)
    shapes = [tuple(p.shape) for _, p in lora_parameters(cpu)]
    projector = KroneckerProjector(128, 3, 2, shapes)
    factorised = project_features(gpu_hooks, rows, projector, None, None).cpu()
    assert projector.factorised_modules > 0
    expected = projector.project(loop)
    assert ((factorised - expected).norm(dim=1) / expected.norm(dim=1).clamp(min=1e-12)).max() < 1e-4


def test_adam_feature_matches_hand_computation():
    g = torch.tensor([[0.5, -2.0, 0.0, 1e-3]])
    m = torch.tensor([0.1, 0.2, -0.3, 0.0])
    v = torch.tensor([0.01, 0.04, 0.09, 0.0])
    expected = []
    for gi, mi, vi in zip(g[0].tolist(), m.tolist(), v.tolist()):
        m_new = 0.9 * mi + 0.1 * gi
        v_new = 0.999 * vi + 0.001 * gi * gi
        expected.append(m_new / math.sqrt(v_new + 1e-8))
    got = adam_features(g, m, v)
    assert torch.allclose(got[0], torch.tensor(expected), rtol=1e-5)


def test_loss_mask_covers_exactly_the_assistant_turns(tiny_model_dir):
    tokenizer = load_tokenizer(resolve_model(str(tiny_model_dir)))
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": "Rome."},
    ]
    encoded = encode_messages(tokenizer, messages, 256)
    trained = [t for t, m in zip(encoded.input_ids, encoded.loss_mask) if m]
    text = tokenizer.decode(trained)
    assert text == "Paris.<|im_end|>\nRome.<|im_end|>\n"
    assert not encoded.truncated and encoded.error is None


def test_left_truncation_keeps_the_first_answer_whole(tiny_model_dir):
    tokenizer = load_tokenizer(resolve_model(str(tiny_model_dir)))
    answer = "Paris is the capital."
    long_prompt = [{"role": "user", "content": "word " * 200 + "capital of France?"}, {"role": "assistant", "content": answer}]
    assert encode_messages(tokenizer, long_prompt, 32).error  # right truncation: no answer left
    left = encode_messages(tokenizer, long_prompt, 32, "left")
    whole = encode_messages(tokenizer, long_prompt, 10**6)
    assert left.error is None and left.n_tokens == 32 and left.start == whole.n_tokens - 32
    assert left.input_ids == whole.input_ids[-32:]  # the window ends where the row ends: the answer is intact
    assert [t for t, m in zip(left.input_ids, left.loss_mask) if m] == [t for t, m in zip(whole.input_ids, whole.loss_mask) if m]
    assert not left.loss_mask[0]
    # A row whose first answer fits is encoded exactly as by right truncation, even when later turns are cut.
    fits = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]
    assert encode_messages(tokenizer, fits, 32, "left") == encode_messages(tokenizer, fits, 32)
    # An answer longer than the window keeps a quarter window of prompt before it and is cut on the right.
    long_both = [{"role": "user", "content": "word " * 100}, {"role": "assistant", "content": "say " * 100}]
    both = encode_messages(tokenizer, long_both, 32, "left")
    first_answer = next(i for i, m in enumerate(encode_messages(tokenizer, long_both, 10**6).loss_mask) if m)
    assert both.error is None and both.start == first_answer - 8 and sum(both.loss_mask) == 24
    with pytest.raises(ValueError, match="truncation"):
        encode_messages(tokenizer, fits, 32, "middle")


def test_generation_tags_and_prefix_masking_agree(tiny_model_dir, tiny_model_with_tags_dir):
    plain = load_tokenizer(resolve_model(str(tiny_model_dir)))
    tagged = load_tokenizer(resolve_model(str(tiny_model_with_tags_dir)))
    messages = chat_rows(1)[0]["messages"]
    a = encode_messages(plain, messages, 256)
    b = encode_messages(tagged, messages, 256)
    assert a.input_ids == b.input_ids
    assert a.loss_mask == b.loss_mask
    assert sum(a.loss_mask) > 0


def test_truncation_is_reported_and_prompt_only_rows_fail(tiny_model_dir):
    tokenizer = load_tokenizer(resolve_model(str(tiny_model_dir)))
    long_answer = [{"role": "user", "content": "Say a lot."}, {"role": "assistant", "content": "word " * 200}]
    encoded = encode_messages(tokenizer, long_answer, 32)
    assert encoded.n_tokens == 32 and encoded.truncated and encoded.error is None and any(encoded.loss_mask)
    long_prompt = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]
    failed = encode_messages(tokenizer, long_prompt, 32)
    assert failed.error and "max_tokens=32" in failed.error
