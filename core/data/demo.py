"""The built-in demo: a small mixed instruction pool and a grade-school math target set, shipped as two files.

The pool (``demo_data/pool.jsonl``, 320 Alpaca records) looks like a real instruction-tuning mix over seven
``DOMAINS`` in which the target skill -- grade-school math word problems solved step by step -- is a minority
(about 14 %).  The targets (``demo_data/targets.jsonl``, 16 rows in chat "messages" form with a ``group``) are
more problems of that skill, partly from templates the pool never uses.  Gradient-based selection should rank
the pool's math rows first.

Both files are package data generated, deterministically, by ``scripts/make_demo_data.py`` (which also keeps
the answer checks that ``tests/test_demo.py`` runs against them); do not edit them by hand -- change the
generator and rerun it.  Standard library only, so ``python -m core`` can write the demo files before anything
heavy is imported.
"""
from __future__ import annotations

import json
import os
import shutil
from importlib.resources import files
from pathlib import Path

DEMO_PROJECT = "demo"
DOMAINS: tuple[str, ...] = (
    "math_word_problems",
    "python_code",
    "summarization",
    "geography_qa",
    "grammar_rewrite",
    "unit_conversion",
    "creative_writing",
)
TARGET_DOMAIN = "math_word_problems"
ANSWER_PREFIX = "So the answer is"
POOL_FILENAME = "demo_pool.jsonl"  # names of the copies write_demo_files makes
TARGETS_FILENAME = "demo_targets.jsonl"
_SHIPPED = {POOL_FILENAME: "pool.jsonl", TARGETS_FILENAME: "targets.jsonl"}  # copy name -> shipped name


def _shipped(name: str):
    return files("core.data") / "demo_data" / name


def _read_jsonl(name: str) -> list[dict]:
    text = _shipped(name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def demo_pool() -> list[dict]:
    """The demo pool: ``{"id": "demo-<domain>-<k>", "source": <domain>, "instruction", "input", "output"}`` rows
    (``input`` is "" when unused), domains interleaved."""
    return _read_jsonl(_SHIPPED[POOL_FILENAME])


def demo_targets() -> list[dict]:
    """The demo targets: ``{"id": "target-math-<k>", "source": "math_word_problems", "group": <kind>,
    "messages": [user, assistant]}``; the assistant's solution ends with "So the answer is N."."""
    return _read_jsonl(_SHIPPED[TARGETS_FILENAME])


def write_demo_files(directory: str | os.PathLike) -> tuple[Path, Path]:
    """Copy the shipped files into ``directory`` as ``demo_pool.jsonl`` (Alpaca) and ``demo_targets.jsonl``
    (chat messages).

    The copies are byte-identical on every call and machine; existing files are replaced atomically.
    Returns ``(pool_path, targets_path)``.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for copy_name, shipped_name in _SHIPPED.items():
        path = folder / copy_name
        tmp = path.with_name(f".{copy_name}.{os.getpid()}.tmp")
        with _shipped(shipped_name).open("rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, path)
        paths.append(path)
    pool_path, targets_path = paths
    return pool_path, targets_path


__all__ = ["ANSWER_PREFIX", "DEMO_PROJECT", "DOMAINS", "POOL_FILENAME", "TARGETS_FILENAME", "TARGET_DOMAIN",
           "demo_pool", "demo_targets", "write_demo_files"]
