"""Feature-computation throughput and projection quality, measured side by side in one run.

Run from the repository root::

    python bench/features.py [--rows 24] [--synthetic 64] [--model smollm2|PATH] [--dim 8192] [--max-tokens 256]

On the same rows (sampled deterministically from the real pool in /work/shared/data/pool, or the built-in demo
pool when that folder is absent) and the same model (default SmolLM2-135M-Instruct, LoRA r=8 on q,k,v,o as in
``LoraArguments()``), it measures rows/s and tokens/s of

1. **ours**: what the feature job does per row, by calling ``core.features.featurize._features_for`` with the job's own
   ``make_gradient_computer`` (the per-example loop on CPU, the batched hook computer on CUDA, which streams each
   LoRA module's gradient into the projection; ``--computer hooks`` takes that path on a CPU too), the default
   ``CountSketchProjector`` and the Adam transform;
2. **LESS-style reference**: an independent batch-size-1 loop (``model(..., labels=...).loss.backward()``, the
   flat gradient read from ``p.grad``, LESS's Adam formula written out) followed by the dense blockwise
   ``RademacherProjector`` (LESS/TRAK).  LESS collects gradients and projects them every ``project_interval=16``
   rows; here all rows are projected in ONE call, the reference's most favourable setting (a dense projection
   costs mostly the regeneration of its matrix, paid once per call), and the cost at LESS's interval of 16 is
   derived from the measured parts;
3. **plain batched forward+backward** (batch 8, length-sorted, one backward of the summed loss, no per-example
   gradient, no projection): the floor of the work, an upper bound on throughput.

Tokens counted are the tokens each row's forward pass runs over (its encoded length after truncation to
``--max-tokens``; the job's throughput counter counts the same).  Tokenisation is done beforehand for all three,
as the job does.  Every variant is warmed up on 2 rows that are not timed.  The model's LoRA state is a "quick
state": one real AdamW warmup step (``core.features.lora.train_lora``) on 4 other rows, which gives non-zero lora_B
(so lora_A gets gradients) and real Adam moments for the Adam transform.

It checks that ours and the reference give the same *unprojected* per-example gradient (relative error; on CPU
also the batched hook computer used on CUDA), and measures projection distortion: the Pearson correlation
between the exact pairwise cosines of the unprojected vectors and those after projection to ``--dim`` with
our CountSketch, a dense Gaussian N(0, 1/K) matrix and the dense Rademacher matrix, on (a) the real Adam
features of the timed rows (exactly the vectors the job projects), (b) their raw SGD gradients (what targets
project) and (c) ``--synthetic`` gradient-like vectors of the same dimension D (shared low-rank directions plus
noise, scaled per coordinate by the real gradients' RMS, so that cosines spread and coordinates are heavy-tailed).
The dense matrices are generated block by block once and applied to all inputs in the same pass; the
reference's share of that pass (matrix generation + its own matmuls) is timed separately and is its
projection time.

The last lines are ``figure: NAME = VALUE``.
"""
from __future__ import annotations

import argparse
import glob
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from core.config import FeatureSettings, LoraArguments, ProjectionArguments, WarmupArguments
from core.data.readers import read_rows
from core.features.featurize import _features_for
from core.features.gradients import HookGradientComputer, LoopGradientComputer, flat_moments, make_gradient_computer
from core.features.lora import add_lora, collate, gradient_dim, lora_parameters, token_loss, train_lora
from core.features.modeling import encode_messages, load_model, load_tokenizer, pick_device, resolve_model
from core.features.projection import CountSketchProjector, RademacherProjector, _stream_key, make_projector

ROOT = Path(__file__).resolve().parent.parent

SHARED_POOL = Path("/work/shared/data/pool")
LESS_PROJECT_INTERVAL = 16  # LESS collect_grad_reps: gradients are projected every 16 examples


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=24, help="timed rows per variant (default 24)")
    parser.add_argument("--model", default="smollm2", help="model spec: 'smollm2' (default), a .gguf, or a model folder")
    parser.add_argument("--dim", type=int, default=8192, help="projection dimension K (default 8192)")
    parser.add_argument("--max-tokens", type=int, default=256, help="truncate rows to this many tokens (default 256)")
    parser.add_argument("--synthetic", type=int, default=64, help="synthetic gradient-like vectors for the distortion test (default 64)")
    parser.add_argument("--plain-batch", type=int, default=8, help="batch size of the plain batched variant (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="row sampling seed (default 0)")
    parser.add_argument("--pool", default=str(SHARED_POOL), help="folder of pool .jsonl files (default /work/shared/data/pool)")
    parser.add_argument("--no-distortion", action="store_true", help="skip the dense projections and the distortion test")
    parser.add_argument("--computer", choices=("job", "hooks"), default="job", help="ours' gradient computer: the "
                        "job's choice for the device (default), or the batched hook computer (the CUDA path) anywhere")
    return parser.parse_args()


# ------------------------------------------------------------------------------------------------ helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def load_pool_rows(folder: str):
    files = sorted(glob.glob(os.path.join(folder, "*.jsonl")))
    if files:
        rows, _ = read_rows(files, on_error="skip")
        return rows, f"{len(rows)} rows of {len(files)} real pool files in {folder}"
    from core.data.demo import write_demo_files

    print(f"[data] no pool files in {folder}: falling back to the built-in demo pool")
    with tempfile.TemporaryDirectory() as tmp:
        pool_path, _ = write_demo_files(tmp)
        rows, _ = read_rows([pool_path], on_error="skip")
    return rows, f"{len(rows)} rows of the built-in demo pool (core.data.demo.demo_pool)"


def pairwise_cosines(x: torch.Tensor) -> np.ndarray:
    x = x.float()
    n = x / x.norm(dim=1, keepdim=True).clamp(min=1e-30)
    c = (n @ n.T).double().cpu().numpy()
    return c[np.triu_indices(len(c), 1)]


def distortion(exact: np.ndarray, projected: torch.Tensor) -> tuple[float, float]:
    """(Pearson correlation, RMS error) of the projected pairwise cosines against the exact ones."""
    approx = pairwise_cosines(projected)
    return float(np.corrcoef(exact, approx)[0, 1]), float(np.sqrt(np.mean((approx - exact) ** 2)))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(Frobenius relative error over all rows, worst per-row relative error)."""
    a, b = a.double().cpu(), b.double().cpu()
    total = float((a - b).norm() / b.norm())
    per_row = float(((a - b).norm(dim=1) / b.norm(dim=1).clamp(min=1e-300)).max())
    return total, per_row


def gaussian_block(seed: int, index: int, rows: int, dim: int) -> torch.Tensor:
    """Rows of a dense N(0, 1/K) matrix, regenerated per block from the seed (the Gaussian counterpart)."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int(_stream_key(seed + 7919, index)) & 0x7FFFFFFFFFFFFFFF)
    return torch.randn(rows, dim, generator=generator) / math.sqrt(dim)


class RecordingComputer:
    """Passes through to the job's gradient computer and keeps the unprojected gradients it returned."""

    def __init__(self, inner):
        self.inner, self.kept = inner, []

    def gradients(self, rows):
        grads = self.inner.gradients(rows)
        self.kept.append(grads.detach())
        return grads


def less_style_gradient(model, params, row, device) -> torch.Tensor:
    """LESS's per-example gradient: HF loss with labels (-100 outside the answer), backward, read p.grad."""
    for _, p in params:
        p.grad = None
    ids = torch.tensor([row.input_ids], device=device)
    labels = ids.clone()
    labels[0, ~torch.tensor(row.loss_mask, device=device)] = -100
    model(input_ids=ids, labels=labels).loss.backward()
    return torch.cat([p.grad.reshape(-1) for _, p in params])


def less_adam(grad, avg, avg_sq, beta1=0.9, beta2=0.999, eps=1e-8):
    """LESS obtain_gradients_with_adam, written out."""
    updated_avg = beta1 * avg + (1 - beta1) * grad
    updated_avg_sq = beta2 * avg_sq + (1 - beta2) * grad**2
    return updated_avg / torch.sqrt(updated_avg_sq + eps)


def fmt_rate(x: float) -> str:
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


# ------------------------------------------------------------------------------------------------ main


def main() -> int:
    args = parse_args()
    t_start = time.perf_counter()
    device = pick_device("auto")
    print(f"[setup] torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, os.cpu_count {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f} (other processes on these cores slow every variant alike)")

    settings = FeatureSettings(model=args.model, max_tokens=args.max_tokens, projection=ProjectionArguments(dim=args.dim))
    resolved = resolve_model(args.model)
    t = time.perf_counter()
    tokenizer = load_tokenizer(resolved)
    model = add_lora(load_model(resolved, device), LoraArguments())
    pad_id = tokenizer.pad_token_id
    params = lora_parameters(model)
    D, K = gradient_dim(model), args.dim
    print(f"[setup] model {resolved.name} loaded in {time.perf_counter() - t:.1f} s; LoRA {LoraArguments()}; gradient dim D = {D:,}; K = {K}")

    # ---- rows: deterministic sample; 4 for the quick AdamW state, 2 for warm-up, N timed
    t = time.perf_counter()
    pool, origin = load_pool_rows(args.pool)
    order = list(range(len(pool)))
    random.Random(args.seed).shuffle(order)
    picked, encoded = [], {}
    for i in order:
        row = pool[i]
        if row.content_hash in encoded:
            continue
        enc = encode_messages(tokenizer, row.messages, args.max_tokens)
        if enc.error:
            continue
        encoded[row.content_hash] = enc
        picked.append(row)
        if len(picked) == args.rows + 6:
            break
    state_rows, warm_rows, rows = picked[:4], picked[4:6], picked[6:]
    if len(rows) < 2:
        print("[data] not enough usable rows; nothing to measure")
        return 0
    n_tokens = [encoded[r.content_hash].n_tokens for r in rows]
    full = [encoded[r.content_hash].full_length for r in rows]
    total_tokens = sum(n_tokens)
    sources = sorted({r.source for r in rows})
    print(f"[data] {origin}; picked {len(rows)} timed rows (seed {args.seed}) in {time.perf_counter() - t:.1f} s")
    print(f"[data] tokens per row: mean {np.mean(n_tokens):.0f}, min {min(n_tokens)}, max {max(n_tokens)}, total {total_tokens}; "
          f"{sum(f > args.max_tokens for f in full)} truncated to {args.max_tokens}; sources: {', '.join(sources)}")

    # ---- quick state: one real AdamW step (LESS warmup code) -> non-zero lora_B and real Adam moments
    t = time.perf_counter()
    state = {}

    def save_epoch(epoch, step, lr, optimizer):
        state["moments"] = {
            n: (optimizer.state[p]["exp_avg"].detach().clone(), optimizer.state[p]["exp_avg_sq"].detach().clone())
            for n, p in params
        }

    train_lora(model, [encoded[r.content_hash] for r in state_rows], WarmupArguments(batch_size=4, epochs=1), pad_id, save_epoch)
    exp_avg, exp_avg_sq = flat_moments(model, state["moments"])
    exp_avg, exp_avg_sq = exp_avg.to(device), exp_avg_sq.to(device)
    print(f"[setup] quick state: 1 AdamW step on 4 rows in {time.perf_counter() - t:.1f} s "
          f"(|m| mean {exp_avg.abs().mean():.2e}, v mean {exp_avg_sq.mean():.2e})")



    # The three variants run interleaved, group by group (groups of --plain-batch rows in length order, the
    # variant order rotating), so that a change in the load from other processes hits all of them alike.
    job_computer = (make_gradient_computer(model, pad_id, device) if args.computer == "job"
                    else HookGradientComputer(model, pad_id))
    # The loop returns whole gradients anyway, so recording them for the checks costs ours nothing.  The batched
    # computer streams module pieces into the projection, which recording would undo: there the unprojected
    # gradients of the same batches are computed again after the timing.
    recording = not job_computer.batched
    computer = RecordingComputer(job_computer) if recording else job_computer
    projector = make_projector(settings.projection)
    batch_size = settings.batch_size if job_computer.batched else 1
    weights = [p for _, p in params]
    ours_feat, ours_grad, ref_grad, ref_feat = {}, {}, {}, {}
    padded = 0

    def run_ours(group):  # 1. what the job does (_compute_config's batching: 1 row on CPU, sorted batches on CUDA)
        for start in range(0, len(group), batch_size):
            batch = group[start : start + batch_size]
            before = len(computer.kept) if recording else 0
            results = _features_for(batch, encoded, computer, projector, exp_avg, exp_avg_sq, settings)
            grads = torch.cat(computer.kept[before:]) if recording else None
            for i, (row, result) in enumerate(zip(batch, results)):
                if not isinstance(result, np.ndarray):  # a RowFailure
                    raise RuntimeError(f"ours failed on a row: {result.message}")
                ours_feat[row.content_hash] = result
                if recording:
                    ours_grad[row.content_hash] = grads[i]

    def run_reference(group):  # 2. LESS-style batch-1 loop + LESS's Adam (the projection is timed below)
        for row in group:
            grad = less_style_gradient(model, params, encoded[row.content_hash], device)
            ref_grad[row.content_hash] = grad.clone()
            ref_feat[row.content_hash] = less_adam(grad, exp_avg, exp_avg_sq)
        for p in weights:
            p.grad = None

    def run_plain(group):  # 3. plain batched forward+backward of the summed loss
        ids, attention, loss_mask = collate([encoded[r.content_hash] for r in group], device, pad_id)
        token_loss(model, ids, attention, loss_mask).sum().backward()
        for p in weights:
            p.grad = None

    variants = [("ours", run_ours), ("ref_grad", run_reference), ("plain", run_plain)]
    for _, run in variants:  # warm-up on 2 rows (ours: also the CountSketch hashes)
        run(warm_rows)
    ours_feat.clear(), ours_grad.clear(), ref_grad.clear(), ref_feat.clear()
    if recording:
        computer.kept.clear()
    timings = {name: 0.0 for name, _ in variants}
    by_length = sorted(rows, key=lambda r: encoded[r.content_hash].n_tokens)
    groups = [by_length[i : i + args.plain_batch] for i in range(0, len(by_length), args.plain_batch)]
    for index, group in enumerate(groups):
        padded += len(group) * max(encoded[r.content_hash].n_tokens for r in group)
        for name, run in variants[index % 3 :] + variants[: index % 3]:
            sync(device)
            t = time.perf_counter()
            run(group)
            sync(device)
            timings[name] += time.perf_counter() - t
        if recording:
            computer.kept.clear()
        print(f"[timing] group {index + 1}/{len(groups)} ({len(group)} rows): " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()), flush=True)
    if not recording:  # ours' unprojected gradients, untimed: the same batches through the same computer
        for group in groups:
            for start in range(0, len(group), batch_size):
                batch = group[start : start + batch_size]
                grads = job_computer.gradients([encoded[r.content_hash] for r in batch])
                ours_grad.update((row.content_hash, grad) for row, grad in zip(batch, grads))
    ours_grads = torch.stack([ours_grad[r.content_hash] for r in rows])
    ours_proj = torch.from_numpy(np.stack([ours_feat[r.content_hash] for r in rows]))
    ref_grads = torch.stack([ref_grad[r.content_hash] for r in rows])
    ref_feats = torch.stack([ref_feat[r.content_hash] for r in rows])
    del ours_grad, ref_grad, ref_feat
    print(f"[ours] {type(job_computer).__name__} (batch {batch_size}) + CountSketch + Adam via core.features.featurize._features_for: {timings['ours']:.1f} s")
    print(f"[reference] batch-1 loop, HF labels loss, LESS Adam: {timings['ref_grad']:.1f} s (projection timed below)")
    print(f"[plain] batch {args.plain_batch}, length-sorted, one backward of the summed loss: {timings['plain']:.1f} s "
          f"({padded - total_tokens} padding tokens on top of {total_tokens})")

    agree_total, agree_row = rel_err(ours_grads, ref_grads)
    print(f"[check] unprojected gradients, ours vs reference: relative error {agree_total:.2e} (worst row {agree_row:.2e})")
    hook_err = None
    if not job_computer.batched:
        sub = [encoded[r.content_hash] for r in rows[:4]]
        t = time.perf_counter()
        hook_grads = HookGradientComputer(model, pad_id).gradients(sub)
        hook_err, hook_row = rel_err(hook_grads, ours_grads[: len(sub)])
        print(f"[check] batched hook computer (the CUDA path) on {len(sub)} rows vs ours (loop): relative error {hook_err:.2e} "
              f"(worst row {hook_row:.2e}; {time.perf_counter() - t:.1f} s, not timed as a variant)")
        del hook_grads
    else:
        loop = LoopGradientComputer(model, pad_id).gradients([encoded[r.content_hash] for r in rows[:4]])
        hook_err, _ = rel_err(ours_grads[:4], loop)
        print(f"[check] ours (hooks) vs LoopGradientComputer on 4 rows: relative error {hook_err:.2e}")
    feat_err, _ = rel_err(ours_proj, projector.project(ref_feats).cpu())
    print(f"[check] ours' projected features vs CountSketch(reference Adam features): relative error {feat_err:.2e}")

    # float64 ground truth on one row: how far each float32 gradient is from the exact one
    truth_row = [encoded[rows[0].content_hash]]
    t = time.perf_counter()
    model.double()
    truth = LoopGradientComputer(model, pad_id).gradients(truth_row).double()  # the loop on a float64 model
    f64_ours, _ = rel_err(ours_grads[:1], truth)
    f64_ref, _ = rel_err(ref_grads[:1], truth)
    print(f"[check] vs a float64 model on row 0: ours (token_loss, CE over [B,V,T]) {f64_ours:.2e}, "
          f"reference (HF loss, CE over [N,V]) {f64_ref:.2e} ({time.perf_counter() - t:.1f} s)")
    del model, computer, job_computer, truth
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # ---- 4. dense projections (reference timing + distortion) in one pass over the blocks
    cs = CountSketchProjector(K, 0, 1)
    cs.project(ours_grads[:1].cpu())  # hashes for D on the CPU
    one = ours_grads[:1].cpu().float()
    samples = []
    for _ in range(5):
        t = time.perf_counter()
        cs.project(one)
        samples.append(time.perf_counter() - t)
    cs_one = float(np.median(samples))

    real_feats = ref_feats.float().cpu()
    real_raw = ref_grads.float().cpu()
    synthetic = None
    if args.synthetic >= 3 and not args.no_distortion:
        g = torch.Generator().manual_seed(1234)
        scale = real_raw.pow(2).mean(0).sqrt()
        scale = scale + 0.01 * scale.mean()
        rank = 8
        basis = torch.randn(rank, D, generator=g)
        mix = torch.randn(args.synthetic, rank, generator=g) * torch.rand(args.synthetic, 1, generator=g).mul(1.5)
        synthetic = (mix @ basis + torch.randn(args.synthetic, D, generator=g)) * scale
        del basis

    rad = RademacherProjector(K, 0)
    ref_proj_time = gen_rad = gen_gauss = mm_one_rad = mm_one_gauss = 0.0
    n_blocks = 0
    if not args.no_distortion:
        others = torch.cat([real_raw] + ([synthetic] if synthetic is not None else []))  # rows Rademacher also projects
        gauss_in = torch.cat([real_feats, others])
        real_feats_dev = real_feats.to(device)
        rad_ref = torch.zeros(len(real_feats), K)
        rad_other = torch.zeros(len(others), K)
        gauss_out = torch.zeros(len(gauss_in), K)
        t_pass = time.perf_counter()
        for index, start in enumerate(range(0, D, rad.block_rows)):
            stop = min(start + rad.block_rows, D)
            t0 = time.perf_counter()
            block = rad.block(index, stop - start)
            dev_block = block.to(device)
            t1 = time.perf_counter()
            rad_ref += (real_feats_dev[:, start:stop] @ dev_block).cpu()  # exactly RademacherProjector.project's step
            sync(device)
            t2 = time.perf_counter()
            _ = real_feats_dev[:1, start:stop] @ dev_block
            sync(device)
            t3 = time.perf_counter()
            rad_other += others[:, start:stop] @ block
            t4 = time.perf_counter()
            gblock = gaussian_block(0, index, stop - start, K)
            t5 = time.perf_counter()
            gauss_out += gauss_in[:, start:stop] @ gblock
            t6 = time.perf_counter()
            _ = gauss_in[:1, start:stop] @ gblock
            t7 = time.perf_counter()
            ref_proj_time += t2 - t0
            gen_rad += t1 - t0
            mm_one_rad += t3 - t2
            gen_gauss += t5 - t4
            mm_one_gauss += t7 - t6
            n_blocks += 1
            del block, dev_block, gblock
        pass_time = time.perf_counter() - t_pass
        # check the fused pass is the projector's own result (first two blocks, one row)
        head = min(D, 2 * rad.block_rows)
        check = RademacherProjector(K, 0).project(real_feats[:1, :head])
        partial = sum(real_feats[:1, s : min(s + rad.block_rows, head)] @ rad.block(i, min(s + rad.block_rows, head) - s)
                      for i, s in enumerate(range(0, head, rad.block_rows)))
        assert torch.allclose(check, partial, rtol=1e-5, atol=1e-6), "fused pass differs from RademacherProjector.project"
        print(f"[dense pass] {n_blocks} blocks of {rad.block_rows} x {K} in {pass_time:.1f} s: Rademacher generation {gen_rad:.1f} s, "
              f"Gaussian generation {gen_gauss:.1f} s; the reference's share (its {len(real_feats)} rows) = {ref_proj_time:.1f} s")
        timings["ref_proj"] = ref_proj_time
    else:
        t = time.perf_counter()
        rad_ref = rad.project(real_feats.to(device)).cpu()
        timings["ref_proj"] = time.perf_counter() - t
        gen_rad = timings["ref_proj"]  # upper bound, for the single-gradient estimate
        print(f"[dense pass] skipped distortion; reference projection call: {timings['ref_proj']:.1f} s")
    timings["ref"] = timings["ref_grad"] + timings["ref_proj"]

    # ---- results: throughput
    n = len(rows)
    rate = {k: n / timings[k] for k in ("ours", "ref", "plain")}
    tok = {k: total_tokens / timings[k] for k in ("ours", "ref", "plain")}
    per_row_proj_16 = gen_rad / LESS_PROJECT_INTERVAL + (timings["ref_proj"] - gen_rad) / n
    ref_rate_16 = 1.0 / (timings["ref_grad"] / n + per_row_proj_16)
    ref_grad_rate = n / timings["ref_grad"]
    print()
    print(f"Throughput on {n} rows, {total_tokens} tokens ({device}, D = {D:,}, K = {K}); measured side by side in this run")
    print(f"{'variant':<58}{'s':>8}{'rows/s':>9}{'tok/s':>8}{'vs ours':>9}")
    table = [
        ("ours: job loop + CountSketch + Adam (_features_for)", timings["ours"], rate["ours"], tok["ours"]),
        ("LESS-style: batch-1 loop + Adam + dense Rademacher", timings["ref"], rate["ref"], tok["ref"]),
        ("  of which the batch-1 gradient loop + Adam", timings["ref_grad"], ref_grad_rate, total_tokens / timings["ref_grad"]),
        (f"  of which the Rademacher projection (1 call, {n} rows)", timings["ref_proj"], n / timings["ref_proj"], total_tokens / timings["ref_proj"]),
        (f"plain batched fwd+bwd, batch {args.plain_batch} (no per-example grads)", timings["plain"], rate["plain"], tok["plain"]),
    ]
    for name, secs, r, tk in table:
        print(f"{name:<58}{secs:>8.1f}{fmt_rate(r):>9}{fmt_rate(tk):>8}{r / rate['ours']:>8.2f}x")
    print(f"ours is {rate['ours'] / rate['ref']:.2f}x the LESS-style reference's rows/s and "
          f"{rate['ours'] / rate['plain']:.2f}x plain batched fwd+bwd's rows/s")
    print(f"(derived, not measured: with LESS's project_interval of {LESS_PROJECT_INTERVAL} the reference would pay "
          f"{per_row_proj_16:.1f} s of projection per row -> {ref_rate_16:.3g} rows/s; ours / reference = {rate['ours'] / ref_rate_16:.2f}x)")

    # ---- results: projection
    print()
    print("Time to project ONE gradient (D -> K):")
    print(f"  CountSketch (ours)     {cs_one * 1e3:8.1f} ms   (measured, median of 5 calls; hashes cached per job)")
    rad_one = gen_rad + mm_one_rad
    gauss_one = gen_gauss + mm_one_gauss
    if not args.no_distortion:
        print(f"  dense Rademacher       {rad_one:8.1f} s    (matrix generation {gen_rad:.1f} s + 1-row matmuls {mm_one_rad:.2f} s, measured per block)")
        print(f"  dense Gaussian         {gauss_one:8.1f} s    (matrix generation {gen_gauss:.1f} s + 1-row matmuls {mm_one_gauss:.2f} s)")
        print(f"  amortised in the reference's {n}-row call: {timings['ref_proj'] / n:.2f} s per gradient")

    figures = {
        "rows": n,
        "tokens": total_tokens,
        "gradient_dim": D,
        "ours_rows_per_s": rate["ours"],
        "ours_tokens_per_s": tok["ours"],
        "less_reference_rows_per_s": rate["ref"],
        "less_reference_tokens_per_s": tok["ref"],
        "less_reference_gradient_only_rows_per_s": ref_grad_rate,
        "speedup_vs_less_reference": rate["ours"] / rate["ref"],
        "speedup_vs_less_reference_interval16_derived": rate["ours"] / ref_rate_16,
        "plain_batched_rows_per_s": rate["plain"],
        "plain_batched_tokens_per_s": tok["plain"],
        "ours_vs_plain_batched": rate["ours"] / rate["plain"],
        "gradient_agreement_rel_err": agree_total,
        "ours_vs_float64_rel_err": f64_ours,
        "reference_vs_float64_rel_err": f64_ref,
    }
    if hook_err is not None:
        figures["hook_vs_loop_rel_err"] = hook_err
    figures["countsketch_ms_per_gradient"] = cs_one * 1e3

    if not args.no_distortion:
        print()
        print(f"Projection distortion: Pearson corr (and RMS error) of pairwise cosines after projection vs exact, K = {K}")
        sets = [("real Adam features (what the job projects)", "", real_feats, ours_proj, rad_ref, gauss_out[: len(real_feats)])]
        cs_raw = cs.project(real_raw)
        lo = len(real_feats)
        sets.append(("real raw SGD gradients (what targets project)", "_raw", real_raw, cs_raw, rad_other[: len(real_raw)],
                     gauss_out[lo : lo + len(real_raw)]))
        if synthetic is not None:
            cs_syn = cs.project(synthetic)
            sets.append((f"synthetic gradient-like vectors ({len(synthetic)})", "_synthetic", synthetic, cs_syn,
                         rad_other[len(real_raw):], gauss_out[lo + len(real_raw):]))
        print(f"{'vectors':<48}{'pairs':>7}{'exact cos mean+-sd':>20}{'CountSketch':>16}{'Gaussian':>16}{'Rademacher':>16}")
        for name, suffix, exact_in, cs_out, rad_out, g_out in sets:
            exact = pairwise_cosines(exact_in)
            results = [distortion(exact, out) for out in (cs_out, g_out, rad_out)]
            cells = "".join(f"{c:>9.4f} ({e:.3f})" for c, e in results)
            print(f"{name:<48}{len(exact):>7}{exact.mean():>12.3f} +-{exact.std():.3f}{cells}")
            for label, (c, _e) in zip(("countsketch", "gaussian", "rademacher"), results):
                figures[f"{label}_cosine_corr{suffix}"] = c
        ratios = (ours_proj.norm(dim=1) / real_feats.norm(dim=1)).numpy()
        print(f"CountSketch norm ratio on the real Adam features: {ratios.min():.3f}..{ratios.max():.3f}")
        figures["rademacher_s_per_gradient_alone"] = rad_one
        figures["gaussian_s_per_gradient_alone"] = gauss_one
        figures["rademacher_s_per_gradient_in_reference_call"] = timings["ref_proj"] / n

    print()
    print(f"[total] {time.perf_counter() - t_start:.0f} s; load average now {os.getloadavg()[0]:.1f}")
    for name, value in figures.items():
        value = int(value) if isinstance(value, int) else (f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4g}")
        print(f"figure: {name} = {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
