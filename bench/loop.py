"""Benchmark: does a selection teach the skill?  Fine-tune on each method's picks and measure held-out loss.

The pool and the targets are ``bench/quality.py``'s (a stratified sample of ``../shared/data/pool``, by default 60
rows per source file = 480 rows, and GSM8K (32 sampled), HumanEval (all 20) and MMLU (32 sampled) targets), in the
same cache folder (``cache/bench-quality`` unless ``--cache``), so the SmolLM2-135M-Instruct features that
quality.py computed are reused (features are content-addressed; with an empty cache they are computed first,
~1 s per row on 2 CPU cores, 10-15 minutes for the default inputs).

For each task the targets are split by a seeded split (``split=0.5``, seed 0) into a *selection* half, which alone
guides the methods, and an *evaluation* half, which alone measures them (``core.evaluation``).  Every method picks
the same budget (5 % of the featurised pool); each pick is fine-tuned with a fresh LoRA adapter on the base model
once per seed, beside random at the same budget (one draw per seed) and the untrained model (zero-shot).  The
measure is the held-out loss: the mean assistant-token cross-entropy of the evaluation half; where the reference
ends in a checkable answer (GSM8K numbers, MMLU letters) greedy decoding also gives an exact-match accuracy.
Units are cached by what they compute, so a second run prints the same tables and trains nothing.

The default training is shortened to fit ~40 minutes on 2 CPU cores (45 fine-tunes + 3 zero-shot units); the output
states what was reduced against ``core.config.FineTuneArguments`` and why, and an estimate before the work starts.

    python bench/loop.py [--per-source 60] [--ratio 0.05] [--seeds 3] [--epochs 1] [--max-tokens N]
                         [--generate-tokens N] [--tasks gsm8k,humaneval,mmlu] [--methods g2is,less,tsds,embedding]
                         [--variants g2is-paper,g2is+center,...] [--cache DIR]

Ends with ``figure: heldout_loss_vs_random_<task>_<method> = <method mean / random mean>`` and
``figure: zero_shot_loss_<task> = X`` lines.  Skips (exit 0, with a message) when ``../shared/data`` is absent.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

# bench/quality.py: this script's folder is on sys.path
from quality import SHARED_DATA, TARGET_SETS, VARIANTS, sample_jsonl, write_inputs

REPO = Path(__file__).resolve().parent.parent
DEFAULT_METHODS = "g2is,less,tsds,embedding"  # random is always an arm (one draw per seed, the same budget)
# One epoch instead of FineTuneArguments' 3: at ~1 s per row forward+backward, 45 fine-tunes x 22 rows (5 % of the
# 441 featurised pool rows) x 3 epochs alone would take ~50 minutes on 2 cores, before measuring anything.
DEFAULT_EPOCHS = 1
# New tokens decoded per checkable row (FineTuneArguments: 48).  MMLU's reference is "The answer is: B" (~6 tokens),
# so 12 suffice.  GSM8K's worked answers need ~50-150 tokens before "So the answer is N": at 48 tokens the check
# mostly reads a number from the middle of a cut-off chain of thought, and a 135M model solves ~1-2 % of GSM8K
# anyway (16 held-out rows: ~0 expected for every arm), while decoding costs ~1 minute per unit here (more than
# its training), so GSM8K is not decoded by default (--generate-tokens 160 turns it on for every task).
# HumanEval has no checkable answer.
DEFAULT_GENERATE = {"gsm8k": 0, "humaneval": 0, "mmlu": 12}
MMLU_SUBJECTS = 16


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _fitting_rows(path: Path, tokenizer, max_tokens: int) -> list:
    """The rows of a target file (as ingest reads them: id, group, messages, line) whose answer survives the
    features' truncation at ``max_tokens``; the others get no feature, so they can neither guide nor evaluate."""
    from core.data.readers import iter_rows
    from core.features.modeling import encode_messages

    return [row for row in iter_rows(path, on_error="skip")
            if encode_messages(tokenizer, list(row.messages), max_tokens).error is None]


def loop_targets(work: Path, sampled: dict[str, Path], tokenizer, max_tokens: int, seed: int) -> tuple[dict[str, Path], list[str]]:
    """Each task's target file for this benchmark, and notes on where it differs from quality.py's sample.

    * rows whose answer does not fit ``max_tokens`` are left out: they have no feature, and
      ``plan_evaluation`` refuses a split whose guiding half holds such a row (``with_targets``: FeaturesMissing);
    * MMLU: quality.py's 32 sampled rows fall in 27 subjects (the rows' ``meta.subject`` is their target group),
      and the split holds out rows within each group (a one-row group stays wholly on the guiding side), so only
      5 of 32 would evaluate.  Here MMLU is MMLU_SUBJECTS subjects x 2 rows (seeded, from the full dev file), so the
      split holds out one row of every subject: a real half.
    """
    paths, notes = {}, []
    for task, path in sampled.items():
        if task == "mmlu":
            rows = _fitting_rows(SHARED_DATA / "targets" / TARGET_SETS[task][0], tokenizer, max_tokens)
            by_subject: dict[str, list] = {}
            for row in rows:
                by_subject.setdefault(row.group, []).append(row)
            rng = random.Random(seed)
            subjects = sorted(rng.sample(sorted(s for s, group in by_subject.items() if len(group) >= 2), MMLU_SUBJECTS))
            picked = [row for subject in subjects for row in sorted(rng.sample(by_subject[subject], 2), key=lambda r: r.line)]
            source = (SHARED_DATA / "targets" / TARGET_SETS[task][0]).read_text(encoding="utf-8").split("\n")
            out = work / f"loop_targets_{task}_{MMLU_SUBJECTS}x2_fit{max_tokens}_seed{seed}.jsonl"
            notes.append(f"mmlu: {MMLU_SUBJECTS} subjects x 2 rows (seed {seed}) instead of quality.py's 32 rows in 27 "
                         "subjects, whose per-subject split would hold out only 5 rows")
        else:
            rows = _fitting_rows(path, tokenizer, max_tokens)
            picked = rows
            source = path.read_text(encoding="utf-8").split("\n")
            total = len(sample_jsonl(path, None, seed))
            out = work / f"loop_targets_{task}_fit{max_tokens}_seed{seed}.jsonl" if len(rows) < total else path
            if len(rows) < total:
                notes.append(f"{task}: {total - len(rows)} of {total} sampled targets left out (answer cut at "
                             f"{max_tokens} tokens: no feature)")
        if out != path and not out.exists():
            out.write_text("\n".join(source[row.line - 1] for row in picked) + "\n", encoding="utf-8")
        paths[task] = out
    return paths, notes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-source", type=int, default=60, help="pool rows sampled from each source file")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pool and target samples")
    parser.add_argument("--ratio", type=float, default=0.05, help="budget as a fraction of the featurised pool")
    parser.add_argument("--seeds", type=int, default=3, help="fine-tune seeds per arm (random: one draw per seed)")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="tokens per row in training and evaluation (default: the features' max tokens, 256)")
    parser.add_argument("--generate-tokens", type=int, default=None,
                        help="new tokens decoded per checkable row, for every task (default: per task, "
                             + ", ".join(f"{t} {n}" for t, n in DEFAULT_GENERATE.items()) + "); 0: no accuracy")
    parser.add_argument("--split", type=float, default=0.5, help="fraction of the targets held out to evaluate")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--tasks", default=",".join(TARGET_SETS), help="comma-separated: " + ",".join(TARGET_SETS))
    parser.add_argument("--methods", default=DEFAULT_METHODS,
                        help="comma-separated selection methods (random is always run beside them)")
    parser.add_argument("--variants", default="",
                        help="comma-separated labels of bench/quality.py's VARIANTS run as more arms, e.g. the G2IS "
                             "remedies g2is-paper,g2is+center,g2is+mutual (labelled as there)")
    parser.add_argument("--cache", type=Path, default=REPO / "cache" / "bench-quality")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on 2 cores shared with other work, 2 threads collapse)")
    parser.add_argument("--plan-only", action="store_true", help="plan and estimate, train nothing")
    args = parser.parse_args()
    # Before torch is imported (by core): its OpenMP pool takes the thread count from the environment.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    if not (SHARED_DATA / "pool").is_dir() or not (SHARED_DATA / "targets").is_dir():
        print(f"skipped: shared data not found at {SHARED_DATA}")
        return 0
    tasks = _names(args.tasks)
    unknown = [task for task in tasks if task not in TARGET_SETS]
    if unknown or not tasks:
        parser.error(f"unknown task(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(TARGET_SETS)}")
    methods = [m for m in _names(args.methods) if m != "random"]
    by_label = {label: (label, method, params) for label, method, params in VARIANTS}
    unknown = [label for label in _names(args.variants) if label not in by_label]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(by_label)}")
    variants = [by_label[label] for label in _names(args.variants)]

    import torch

    from core.config import FeatureSettings, FineTuneArguments
    from core.data.ingest import ingest_files
    from core.data.readers import iter_rows
    from core.evaluation.plan import estimate_evaluation, plan_evaluation
    from core.evaluation.report import evaluation_report
    from core.evaluation.run import run_evaluation
    from core.features.estimate import format_duration
    from core.features.featurize import run_features
    from core.features.modeling import load_tokenizer, resolve_model
    from core.store import Store

    torch.set_num_threads(args.threads)
    started_all = time.perf_counter()
    store = Store(args.cache)
    pool_path, sampled = write_inputs(args.cache / "inputs", args.per_source, args.seed)
    settings = FeatureSettings()
    tokenizer = load_tokenizer(resolve_model(settings.model))
    target_paths, target_notes = loop_targets(args.cache / "inputs", {t: sampled[t] for t in tasks}, tokenizer,
                                              settings.max_tokens, args.seed)
    # One project per task and pool sample (the name says which, so another --per-source never reuses a project
    # ingested from a different pool); features are shared with quality.py's projects by content hash.
    projects = {task: f"loop-{task}-{args.per_source}ps-seed{args.seed}" for task in tasks}
    started = time.perf_counter()
    for task in tasks:
        project = projects[task]
        if project not in store.projects():
            ingest_files(store, project, "pool", [pool_path], on_error="skip")
        wanted = [row.row_id for row in iter_rows(target_paths[task], on_error="skip")]
        if sorted(row.row_id for row in store.rows(project, "targets")) != sorted(wanted):
            ingest_files(store, project, "targets", [target_paths[task]], on_error="skip")
        store.ensure_project(project, settings.to_dict())
        run_features(store, project, settings, log=lambda text, p=project: print(f"  [{p}] {text}", flush=True))
    features_seconds = time.perf_counter() - started
    print(f"features ready in {features_seconds:.0f} s (cached features cost nothing)")

    defaults = FineTuneArguments()
    training = {}
    for task in tasks:
        generate = args.generate_tokens if args.generate_tokens is not None else DEFAULT_GENERATE[task]
        training[task] = replace(defaults, epochs=args.epochs, seeds=args.seeds, max_tokens=args.max_tokens,
                                 generate_tokens=generate)
    print(f"\npool: {args.per_source} rows per source file from {SHARED_DATA / 'pool'} (seed {args.seed}); budget "
          f"ratio {args.ratio}; targets split {args.split} (seed {args.split_seed}): one half guides the selections, "
          "the other half evaluates the fine-tunes")
    for note in target_notes:
        print(f"targets: {note}")
    print(f"torch threads: {torch.get_num_threads()} (--threads; measured on these 2 shared cores: a 226-token forward+"
          "backward 1.4 s with 1 thread, 12-19 s with 2 while another process was busy)")
    print(f"fine-tune: fresh LoRA r={defaults.lora.r} alpha={defaults.lora.alpha} on the base model, lr "
          f"{defaults.learning_rate}, {defaults.batch_size} examples per step, {args.seeds} seeds, max tokens "
          f"{args.max_tokens or settings.max_tokens}")
    reduced = []
    if args.epochs != defaults.epochs:
        reduced.append(f"epochs {args.epochs} (FineTuneArguments: {defaults.epochs})")
    for task in tasks:
        tokens = training[task].generate_tokens
        if tokens != defaults.generate_tokens and task != "humaneval":  # (HumanEval has no checkable answer)
            reduced.append(f"{task} decodes {tokens or 'no'} new tokens per checkable row"
                           + (" (no exact match)" if not tokens else "")
                           + f" (FineTuneArguments: {defaults.generate_tokens})")
    if reduced:
        print("changed from the library defaults to fit ~40 minutes on 2 CPU cores: " + "; ".join(reduced))
        print("  (why: at ~1-1.5 s per row forward+backward, 45 fine-tunes x ~22 rows x 3 epochs alone are ~50-70 "
              "minutes; MMLU's answer is ~6 tokens; GSM8K's worked answers need 50-150 tokens, ~1 minute of decoding "
              "per unit, for an accuracy a 135M model leaves at ~0 for every arm)")

    plans = {}
    total_estimate = 0.0
    for task in tasks:
        started = time.perf_counter()
        plan = plan_evaluation(store, projects[task], methods=methods, variants=variants, ratio=args.ratio, split=args.split,
                               split_seed=args.split_seed, args=training[task])
        plans[task] = plan
        estimate = estimate_evaluation(store, plan)
        total_estimate += estimate.seconds
        print(f"{task}: plan {plan.id} ({time.perf_counter() - started:.0f} s, selections included): "
              f"{len(plan.rows['ids'])} evaluation rows, {plan.rows['guide_rows']} guide rows; {estimate.text()}")
        for note in plan.notes:
            print(f"  note: {note}")
    print(f"estimate for all tasks: about {format_duration(total_estimate)}")
    if args.plan_only:
        return 0

    started = time.perf_counter()
    for task in tasks:
        run_evaluation(store, plans[task].id, log=lambda line, t=task: print(f"  [{t}] {line}", flush=True))
    training_seconds = time.perf_counter() - started

    figures: dict[str, float] = {}
    for task in tasks:
        report = evaluation_report(store, plans[task].id)
        units = store.eval_units([key for arm in report.arms for key in arm.unit_keys])
        random_arm = next(arm for arm in report.arms if arm.method == "random")
        zero = report.zero_shot
        print(f"\n{task}: {report.rows_description}; budget {random_arm.budget} rows; "
              f"{training[task].epochs} epoch(s), {training[task].generate_tokens} decoded tokens")
        print(f"  {'method':<26}{'held-out loss':>21}{'vs random':>11}{'exact match':>14}  per-seed losses")
        for arm in report.arms:
            checked = sum(units[k].checked for k in arm.unit_keys if k in units)
            correct = sum(units[k].correct for k in arm.unit_keys if k in units)
            loss = "-" if arm.mean is None else f"{arm.mean:.4f} ± {arm.spread:.4f}"
            versus = "-" if arm.vs_random is None else f"{100 * arm.vs_random:+.1f} %"
            accuracy = f"{100 * arm.accuracy:.1f} % ({correct}/{checked})" if arm.accuracy is not None else "-"
            seeds = ", ".join("pending" if x is None else f"{x:.4f}" for x in arm.losses)
            # a variant arm goes by its quality.py label (several share a method), a method arm by its method
            name = arm.label if arm.label in by_label else arm.method
            print(f"  {name:<26}{loss:>21}{versus:>11}{accuracy:>14}  {seeds}")
            if arm.method not in ("random", "zero-shot") and arm.mean is not None and random_arm.mean:
                figure = name.replace("-", "_").replace("+", "_")
                figures[f"heldout_loss_vs_random_{task}_{figure}"] = arm.mean / random_arm.mean
        print("  " + "\n  ".join(report.verdicts()))
        if zero.mean is not None:
            figures[f"zero_shot_loss_{task}"] = zero.mean
    print(f"\nwall time: {time.perf_counter() - started_all:.0f} s in all; features {features_seconds:.0f} s, "
          f"fine-tunes and measurements {training_seconds:.0f} s (estimate was {format_duration(total_estimate)})")
    print()
    for figure, value in figures.items():
        print(f"figure: {figure} = {value:.4f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
