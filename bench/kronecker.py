"""LoGra-style factorised projection vs forming each LoRA module's per-example gradient, by LoRA rank.

Run from the repository root::

    python bench/kronecker.py [--ranks 8,64,128,256] [--rows 16] [--batch 8] [--repeats 3] [--model smollm2]
                              [--dim 8192] [--factor-dim 64] [--max-tokens 256]

For each LoRA rank r (q,k,v,o, alpha = 2r, lora_B given seeded values: peft starts it at zero, which would zero
every lora_A gradient), the same rows in the same length-sorted batches of ``--batch`` go once through the
batched hook computer's forward+backward (**capture**: every LoRA layer's inputs and output gradients, the
CUDA job's path; on a CPU the same code).  On those same activations, timed alone (best of ``--repeats``), the
projection stage of the targets' SGD features three ways:

1. **formed + CountSketch**: the default job path, each module's per-example gradient formed, projected, dropped;
2. **formed + Kronecker**: the same formed gradients through P_out G P_in^T (``KroneckerProjector.project_pieces``);
3. **factorised + Kronecker**: ``project_activations``, which never forms a module's gradient where projecting
   its factors costs fewer multiply-adds (the large ranks).

Reported per rank: ms/row of capture and of each projection stage (and its share of capture + stage), the
largest per-module intermediate each stage makes (formed: the [B, out, in] gradient; factorised: the projected
factors [B, T, k_out + k_in] and block), on CUDA also the measured peak allocation above the activations, the
factorised-vs-formed relative error (the same Kronecker maps: float rounding only), and the correlation of
projected pairwise cosines with the exact ones of the formed gradients, for Kronecker and for CountSketch.
The last lines are ``figure: NAME = VALUE``.
"""
from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from features import (  # bench/features.py: this script's folder is on sys.path
    SHARED_POOL,
    distortion,
    load_pool_rows,
    pairwise_cosines,
    rel_err,
    sync,
)

from core.config import LoraArguments
from core.features.gradients import HookGradientComputer, per_example_gradient
from core.features.lora import add_lora, gradient_dim, lora_parameters
from core.features.modeling import encode_messages, load_model, load_tokenizer, pick_device, resolve_model
from core.features.projection import CountSketchProjector, KroneckerProjector

ROOT = Path(__file__).resolve().parent.parent


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", default="8,64,128,256", help="LoRA ranks, comma-separated (default 8,64,128,256)")
    parser.add_argument("--rows", type=int, default=16, help="timed rows per rank (default 16)")
    parser.add_argument("--batch", type=int, default=8, help="rows per batched backward (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="each projection stage timed this often, best kept")
    parser.add_argument("--model", default="smollm2", help="'smollm2' (default), a .gguf, or a model folder")
    parser.add_argument("--dim", type=int, default=8192, help="projection dimension K (default 8192)")
    parser.add_argument("--factor-dim", type=int, default=64, help="Kronecker factor size per side (default 64)")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--pool", default=str(SHARED_POOL), help="folder of pool *.jsonl (else the demo pool)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


STAGES = ("formed_countsketch", "formed_kronecker", "factorised_kronecker")


def largest_intermediate_mib(shapes, batch: int, tokens: int, factor_dim: int, projector: KroneckerProjector) -> dict:
    """The largest tensor each stage makes for one module (float32), in MiB: what bounds its extra memory."""
    formed = max(batch * out * inp for out, inp in shapes)
    factorised = 0
    for module, (out, inp) in enumerate(shapes):
        k_out, k_in = min(out, factor_dim), min(inp, factor_dim)
        if projector.factorised_is_cheaper(module, tokens):
            factorised = max(factorised, batch * tokens * (k_out + k_in) + batch * k_out * k_in)
        else:
            factorised = max(factorised, batch * out * inp)
    return {"formed": 4 * formed / 2**20, "factorised": 4 * factorised / 2**20}


def measure_rank(rank: int, args, resolved, tokenizer, encoded: list, device: torch.device) -> dict:
    model = add_lora(load_model(resolved, device), LoraArguments(r=rank, alpha=2 * rank))
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        for name, param in lora_parameters(model):
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator).to(device) * 0.02)
    shapes = [tuple(p.shape) for _, p in lora_parameters(model)]
    D = gradient_dim(model)
    hooks = HookGradientComputer(model, tokenizer.pad_token_id)
    countsketch = CountSketchProjector(args.dim, args.seed)
    kronecker = KroneckerProjector(args.dim, args.seed, args.factor_dim, shapes)

    def formed(activations):
        return ((start, per_example_gradient(x, g).reshape(x.shape[0], -1)) for start, x, g in activations)

    stage = {
        "formed_countsketch": lambda acts: countsketch.project_pieces(formed(acts), D),
        "formed_kronecker": lambda acts: kronecker.project_pieces(formed(acts), D),
        "factorised_kronecker": lambda acts: kronecker.project_activations(iter(acts), D),
    }
    batches = [encoded[i:i + args.batch] for i in range(2, len(encoded), args.batch)]
    warm = list(hooks.module_activations(encoded[:2]))
    for name in STAGES:  # warm-up on the 2 untimed rows: hashes and factors made, kernels loaded
        stage[name](warm)
    del warm
    seconds = {name: 0.0 for name in ("capture",) + STAGES}
    peaks = {name: 0 for name in STAGES}
    outputs: dict[str, list] = {name: [] for name in STAGES}
    exact = []
    factorised_before = kronecker.factorised_modules
    for batch in batches:
        sync(device)
        started = time.perf_counter()
        activations = list(hooks.module_activations(batch))
        sync(device)
        seconds["capture"] += time.perf_counter() - started
        for name in STAGES:
            best = float("inf")
            for _ in range(args.repeats):
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                sync(device)
                started = time.perf_counter()
                result = stage[name](activations)
                sync(device)
                best = min(best, time.perf_counter() - started)
                if device.type == "cuda":
                    peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated() - base)
            seconds[name] += best
            outputs[name].append(result.cpu())
        # exact SGD gradients (outside the timing), to judge both projections' distortion
        exact.append(torch.cat([g.cpu() for _, g in formed(activations)], dim=1))
        del activations
    features = {name: torch.cat(outputs[name]) for name in STAGES}
    factorised_modules = (kronecker.factorised_modules - factorised_before) // (len(batches) * args.repeats)
    exact_cosines = pairwise_cosines(torch.cat(exact))
    del exact, model, hooks
    n = sum(len(b) for b in batches)
    longest = max(e.n_tokens for e in encoded[2:])
    return {
        "rank": rank, "D": D, "rows": n, "modules": len(shapes), "factorised_modules": factorised_modules,
        "ms_per_row": {name: 1e3 * value / n for name, value in seconds.items()},
        "cuda_peak_mib": {name: value / 2**20 for name, value in peaks.items()} if device.type == "cuda" else None,
        "largest_mib": largest_intermediate_mib(shapes, args.batch, longest, args.factor_dim, kronecker),
        "rel_err": rel_err(features["factorised_kronecker"], features["formed_kronecker"]),
        "cos_corr_kronecker": distortion(exact_cosines, features["factorised_kronecker"])[0],
        "cos_corr_countsketch": distortion(exact_cosines, features["formed_countsketch"])[0],
    }


def main() -> int:
    args = parse_args()
    device = pick_device("auto")
    print(f"[setup] torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    resolved = resolve_model(args.model)
    tokenizer = load_tokenizer(resolved)
    pool, origin = load_pool_rows(args.pool)
    order = list(range(len(pool)))
    random.Random(args.seed).shuffle(order)
    encoded = []
    for i in order:
        enc = encode_messages(tokenizer, pool[i].messages, args.max_tokens)
        if not enc.error:
            encoded.append(enc)
        if len(encoded) == args.rows + 2:
            break
    # length-sorted batches after the 2 warm-up rows, as the job batches on CUDA
    encoded = encoded[:2] + sorted(encoded[2:], key=lambda e: e.n_tokens)
    tokens = [e.n_tokens for e in encoded[2:]]
    print(f"[data] {origin}; {len(tokens)} timed rows, tokens mean {np.mean(tokens):.0f} (max {max(tokens)}), "
          f"batches of {args.batch}; K = {args.dim}, factor dim {args.factor_dim}")
    results = []
    for rank in (int(r) for r in args.ranks.split(",")):
        started = time.perf_counter()
        result = measure_rank(rank, args, resolved, tokenizer, encoded, device)
        results.append(result)
        ms, largest = result["ms_per_row"], result["largest_mib"]
        print(f"\n[r={rank}] D = {result['D']:,}; {result['factorised_modules']} of {result['modules']} modules "
              f"factorised; {time.perf_counter() - started:.0f} s")
        print(f"  capture (forward+backward with hooks) {ms['capture']:9.1f} ms/row")
        for name in STAGES:
            share = ms[name] / (ms["capture"] + ms[name])
            peak = f", CUDA peak +{result['cuda_peak_mib'][name]:.0f} MiB" if result["cuda_peak_mib"] else ""
            size = largest["factorised"] if name == "factorised_kronecker" else largest["formed"]
            print(f"  {name:<22} {ms[name]:9.1f} ms/row ({100 * share:4.1f}% of capture + stage); "
                  f"largest intermediate {size:7.1f} MiB{peak}")
        print(f"  factorised vs formed Kronecker: rel err {result['rel_err'][0]:.2e} (worst row {result['rel_err'][1]:.2e}); "
              f"cosine corr with exact: kronecker {result['cos_corr_kronecker']:.4f}, countsketch {result['cos_corr_countsketch']:.4f}")

    print("\nfigure lines (per rank r):")
    for result in results:
        r, ms, largest = result["rank"], result["ms_per_row"], result["largest_mib"]
        figures = {
            f"r{r}_factorised_modules": result["factorised_modules"],
            f"r{r}_factorised_over_formed_kronecker_time": ms["factorised_kronecker"] / ms["formed_kronecker"],
            f"r{r}_factorised_kronecker_over_formed_countsketch_time": ms["factorised_kronecker"] / ms["formed_countsketch"],
            f"r{r}_countsketch_share_of_capture_plus_stage": ms["formed_countsketch"] / (ms["capture"] + ms["formed_countsketch"]),
            f"r{r}_largest_intermediate_factorised_over_formed": largest["factorised"] / largest["formed"],
            f"r{r}_factorised_vs_formed_rel_err": result["rel_err"][0],
            f"r{r}_cosine_corr_kronecker": result["cos_corr_kronecker"],
            f"r{r}_cosine_corr_countsketch": result["cos_corr_countsketch"],
        }
        if result["cuda_peak_mib"]:
            peak = result["cuda_peak_mib"]
            figures[f"r{r}_cuda_peak_factorised_over_formed_countsketch"] = peak["factorised_kronecker"] / max(peak["formed_countsketch"], 1e-9)
        for name, value in figures.items():
            print(f"figure: {name} = {value:.4g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
