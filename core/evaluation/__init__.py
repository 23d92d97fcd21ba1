"""Evaluate a selection by fine-tuning on it: held-out cross-entropy, and exact match where answers are checkable.

    rows      which rows evaluate (an evaluation file, or a seeded split of the targets) and which may guide
    answers   which rows have a checkable final answer (a number, a choice letter) and whether a generation gives it
    finetune  one unit on the model: a fresh LoRA fine-tune (or none: zero-shot), then its measurements
    plan      arms (selections, random at the same budget, zero-shot) x seeds -> units keyed by what they compute
    run       the evaluation job: every pending unit, each stored as it finishes (resumable)
    report    per arm: losses per seed, mean, spread, change vs random, accuracy, a verdict in words
"""
