"""Benchmark: selection quality on real data — how many picks each method takes from the pool's on-domain sources.

A stratified sample of ``../shared/data/pool`` (the same number of rows from every source file, seeded) is the pool;
three target sets from ``../shared/data/targets`` each make one project over that same pool:

* GSM8K targets: on-domain = ``gsm8k_train`` rows and FLAN CoT AQuA rows (math word problems with a worked answer);
* HumanEval targets: on-domain = ``code_alpaca`` rows;
* MMLU targets: the issue names no source, so the on-domain rule here is our choice, stated in the output:
  multiple-choice rows (a prompt with lettered options such as ``(A) ...`` or ``A. ...`` lines), from any source.

Features are SmolLM2-135M-Instruct LoRA gradients from ``core.features.featurize`` with the project's default settings.
Features are content-addressed, so the pool (and the warmup) is computed once for all three projects, and a second
run of this script reuses everything from its cache (``cache/bench-quality`` unless ``--cache``).  On 2 idle CPU
cores the first run costs roughly one second per row (~10–15 minutes for the default 480 + 84 rows).

Every method (and G2IS under each hubness remedy, ``VARIANTS``) runs at the same budgets; one table per budget
prints each variant's on-domain share next to the random base rate (the on-domain share of the whole featurised
pool), then which variants meet issue 17's goal on every task and budget, and ``figure: NAME = VALUE`` lines.

    python bench/quality.py [--per-source 60] [--ratios 0.01,0.05] [--variants g2is-paper,less,...]
                            [--features default,left,mlp,ctx512,ckpt2 | all] [--cache DIR]

``--features`` adds the richer feature sets of issue 17 (``FEATURE_SETS``: left truncation, LoRA on the MLP too, a
512-token context, two warmup checkpoints LR-weighted), each in its own projects over the same pool and targets,
each a full feature recompute; the closing table puts every variant on every feature set side by side.

Skips (exit 0, with a message) when ``../shared/data`` is absent.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

# Lettered options on their own lines: FLAN CoT's "(A) 300", MMLU's "A. 0".
MULTIPLE_CHOICE = re.compile(r"(?m)^\s*\(?[A-E][).]\s+\S.*\n\s*\(?[B-F][).]\s+\S")

TARGET_SETS = {
    # name: (targets file, rows to sample (None = all), on-domain rule description, rule)
    "gsm8k": ("gsm8k.jsonl", 32, "gsm8k_train + flan_cot AQuA rows",
              lambda row_id, source, text: source == "gsm8k_train" or row_id.startswith("flan_cot-aqua")),
    "humaneval": ("humaneval.jsonl", None, "code_alpaca rows",
                  lambda row_id, source, text: source == "code_alpaca"),
    "mmlu": ("mmlu.jsonl", 32, "multiple-choice rows (lettered options), any source",
             lambda row_id, source, text: bool(MULTIPLE_CHOICE.search(text))),
}


def remedies(center: bool = False, rescale: str = "none", align: bool = False) -> dict:
    """Every remedy named (the "g2is" profile fills in its defaults for any left out, which is not what a variant
    means)."""
    return {"center_pool": center, "graph_rescale": rescale, "align_signs": align}


# (label, method, params): every method, and G2IS under each hubness remedy of issue 17 alone and combined.
# "g2is-paper" is the authors' Algorithm 1 on its inputs (cosine graph, PCA signs as sklearn returns them).
VARIANTS = [
    ("g2is-paper", "g2is-paper", {}),
    ("g2is+center", "g2is", remedies(center=True)),
    ("g2is+csls", "g2is", remedies(rescale="csls")),
    ("g2is+local", "g2is", remedies(rescale="local")),
    ("g2is+mutual", "g2is", remedies(rescale="mutual")),
    ("g2is+align", "g2is", remedies(align=True)),
    ("g2is+center+align", "g2is", remedies(center=True, align=True)),
    ("g2is+csls+align", "g2is", remedies(rescale="csls", align=True)),
    ("g2is+center+csls+align", "g2is", remedies(center=True, rescale="csls", align=True)),
    ("g2is+center+mutual+align", "g2is", remedies(center=True, rescale="mutual", align=True)),
    ("less", "less", {}),
    ("less-rr", "less-rr", {}),
    ("tsds-kde", "tsds-kde", {}),
    ("tsds-uniform", "tsds-uniform", {}),
    ("embedding", "embedding", {}),
    ("random", "random", {}),
]
# The richer features of issue 17, each one change to the default FeatureSettings (``--features``; "default" alone
# unless told: each other set is a full feature recompute, ~10-20 minutes on 2 cores).
FEATURE_SETS = {
    "default": {},
    "left": {"truncation": "left"},  # rows whose prompt fills max_tokens kept, truncated from the left
    "mlp": {"lora": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")},
    "ctx512": {"max_tokens": 512},
    "ckpt2": {"warmup": {"epochs": 2, "checkpoints": "all"}},  # LESS: several checkpoints, LR-weighted
}


def feature_settings(name: str):
    """The FeatureSettings of one of ``FEATURE_SETS``."""
    from dataclasses import replace

    from core.config import FeatureSettings

    base = FeatureSettings()
    change = dict(FEATURE_SETS[name])
    if "lora" in change:
        change["lora"] = replace(base.lora, target_modules=change["lora"])
    if "warmup" in change:
        change["warmup"] = replace(base.warmup, **change["warmup"])
    return base.replace(**change)


def sample_jsonl(path: Path, count: int | None, seed: int) -> list[str]:
    # split on "\n" only: str.splitlines() also splits at U+2028 and friends, which JSON strings may contain
    lines = [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
    if count is None or count >= len(lines):
        return lines
    picked = sorted(random.Random(seed).sample(range(len(lines)), count))
    return [lines[i] for i in picked]


def write_inputs(work: Path, per_source: int, seed: int) -> tuple[Path, dict[str, Path]]:
    """The stratified pool sample and the target samples, written once (same seed, same files)."""
    work.mkdir(parents=True, exist_ok=True)
    pool_path = work / f"pool_{per_source}_per_source_seed{seed}.jsonl"
    if not pool_path.exists():
        lines = []
        for source_file in sorted((SHARED_DATA / "pool").glob("*.jsonl")):
            lines += sample_jsonl(source_file, per_source, seed)
        pool_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    target_paths = {}
    for name, (file, count, _, _) in TARGET_SETS.items():
        target_paths[name] = work / f"targets_{name}_{count or 'all'}_seed{seed}.jsonl"
        if not target_paths[name].exists():
            target_paths[name].write_text("\n".join(sample_jsonl(SHARED_DATA / "targets" / file, count, seed)) + "\n",
                                          encoding="utf-8")
    return pool_path, target_paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-source", type=int, default=60, help="pool rows sampled from each source file")
    parser.add_argument("--ratios", default="0.01,0.05", help="budgets as fractions of the featurised pool (one table each)")
    parser.add_argument("--variants", help="comma-separated variant labels (default: all)")
    parser.add_argument("--features", default="default",
                        help="comma-separated feature sets, or 'all': " + ", ".join(FEATURE_SETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=REPO / "cache" / "bench-quality")
    args = parser.parse_args()
    if not (SHARED_DATA / "pool").is_dir() or not (SHARED_DATA / "targets").is_dir():
        print(f"skipped: shared data not found at {SHARED_DATA}")
        return 0
    feature_sets = list(FEATURE_SETS) if args.features == "all" else [n.strip() for n in args.features.split(",")]
    unknown = [name for name in feature_sets if name not in FEATURE_SETS]
    if unknown:
        parser.error(f"unknown feature set(s) {', '.join(unknown)}; choose from {', '.join(FEATURE_SETS)}")

    from core.data.ingest import ingest_files
    from core.features.featurize import run_features
    from core.selection.runs import load_project_features, run_selection
    from core.store import Store

    store = Store(args.cache)
    pool_path, target_paths = write_inputs(args.cache / "inputs", args.per_source, args.seed)
    figures: dict[str, float] = {}
    projects: dict[tuple[str, str], str] = {}
    for feature_set in feature_sets:
        settings = feature_settings(feature_set)
        for name, target_path in target_paths.items():
            # One project per task and feature set (a project holds one settings); rows and features are shared
            # by content hash, so the pool and its warmup are computed once per feature set.
            project = f"quality-{name}" + ("" if feature_set == "default" else f"-{feature_set}")
            projects[feature_set, name] = project
            if project not in store.projects():
                ingest_files(store, project, "pool", [pool_path], on_error="skip")
                ingest_files(store, project, "targets", [target_path], on_error="skip")
            store.ensure_project(project, settings.to_dict())
            started = time.perf_counter()
            run_features(store, project, settings, log=lambda text, p=project: print(f"  [{p}] {text}", flush=True))
            print(f"{project}: features ready in {time.perf_counter() - started:.0f} s", flush=True)

    ratios = [float(r) for r in args.ratios.split(",")]
    variants = [v for v in VARIANTS if not args.variants or v[0] in args.variants.split(",")]
    print(f"\npool: {args.per_source} rows per source file from {SHARED_DATA / 'pool'} (seed {args.seed}); "
          f"budget ratios {ratios}; feature sets: " + "; ".join(f"{n} {FEATURE_SETS[n] or '(the defaults)'}"
                                                             for n in feature_sets))
    tasks = {}
    for (feature_set, name), project in projects.items():
        rule_text, rule = TARGET_SETS[name][2:]
        features = load_project_features(store, project)
        on_domain = [rule(row_id, source, text) for row_id, source, text
                     in zip(features.pool_ids, features.pool_sources, features.pool_texts)]
        tasks[feature_set, name] = (features, on_domain, sum(on_domain) / len(on_domain), rule_text)
        suffix = "" if feature_set == "default" else f"_{feature_set}"
        figures[f"{name}_base_rate{suffix}"] = tasks[feature_set, name][2]
    shares: dict[tuple[str, str, float], dict[str, float]] = {}
    for ratio in ratios:
        print(f"\n=== budget {ratio:.0%} of the pool ===")
        for (feature_set, name), (features, on_domain, base_rate, rule_text) in tasks.items():
            print(f"\n{name}, features {feature_set}: {len(features.target_ids)} targets, {len(features.pool_ids)} "
                  f"featurised pool rows; on-domain = {rule_text}: {sum(on_domain)} rows, base rate {base_rate:.3f}")
            print(f"  {'variant':<26}{'picks':>6}{'on-domain':>11}{'x base':>8}  sources of the picks")
            for label, method, params in variants:
                started = time.perf_counter()
                run = run_selection(store, projects[feature_set, name], method, ratio=ratio, params=params,
                                    features=features, record_events=False)
                seconds = time.perf_counter() - started
                rows = run.result.rows
                share = sum(on_domain[r] for r in rows) / max(1, len(rows))
                sources = Counter(features.pool_sources[r] for r in rows).most_common(4)
                print(f"  {label:<26}{len(rows):>6}{share:>11.3f}{share / base_rate if base_rate else float('nan'):>8.2f}  "
                      + ", ".join(f"{s} {c}" for s, c in sources) + f"  ({seconds:.1f} s)", flush=True)
                shares.setdefault((feature_set, name, ratio), {})[label] = share
                suffix = "" if feature_set == "default" else f"_{feature_set}"
                figures[f"{name}_{ratio:g}_{label.replace('-', '_').replace('+', '_')}_on_domain{suffix}"] = share
    # Side by side: one row per variant, one column per task x budget, a block per feature set.
    cells = [(name, ratio) for ratio in ratios for name in TARGET_SETS]
    print("\non-domain share side by side (goal: >= LESS on the same features and >= 2x the base rate, every cell):")
    header = "".join(f"{name[:5]} {ratio:.0%}".rjust(11) for name, ratio in cells)
    for feature_set in feature_sets:
        print(f"\n  features {feature_set}\n  {'variant':<26}{header}   goal")
        for label, _, _ in variants:
            row = [shares[feature_set, name, ratio][label] for name, ratio in cells]
            met = sum(shares[feature_set, name, ratio][label] >= shares[feature_set, name, ratio].get("less", 0.0)
                      and shares[feature_set, name, ratio][label] >= 2 * tasks[feature_set, name][2]
                      for name, ratio in cells)
            print(f"  {label:<26}" + "".join(f"{v:>11.2f}" for v in row) + f"   {met}/{len(cells)}"
                  + ("  <- all" if met == len(cells) else ""))
        print(f"  {'base rate':<26}" + "".join(f"{tasks[feature_set, name][2]:>11.2f}" for name, _ in cells))
    print()
    for figure, value in figures.items():
        print(f"figure: {figure} = {value:.4f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
