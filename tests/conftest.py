"""Shared fixtures: a tiny random Llama with a BPE tokenizer trained on the spot, and a fresh cache per test.

The tiny model is saved with ``save_pretrained`` and loaded back through the same code path as a real model
folder, so tests exercise real loading, real chat templates, real forward and backward passes.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_WITH_GENERATION_TAGS = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' + '\n' }}{% endgeneration %}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TRAINING_TEXT = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "Write a Python function that returns the sum of a list of numbers. def total(xs): return sum(xs)",
    "Summarize the paragraph in one sentence. The city council voted to build a new park downtown.",
    "What is the capital of France? The capital of France is Paris.",
    "Convert 5 kilometres to metres. 5 km = 5000 m. So the answer is 5000.",
    "Rewrite the sentence in the passive voice: The cat chased the mouse. The mouse was chased by the cat.",
]


def build_tiny_model(folder: Path, chat_template: str = CHATML, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(TRAINING_TEXT * 20, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|im_end|>", pad_token="<|endoftext|>",
        chat_template=chat_template,
    )
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_model_with_tags_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama-tags"), CHATML_WITH_GENERATION_TAGS)


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh cache folder, also seen by subprocesses through G2IS_CACHE_DIR."""
    root = tmp_path / "cache"
    monkeypatch.setenv("G2IS_CACHE_DIR", str(root))
    return root


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def chat_rows(n: int, prefix: str = "row", words: int = 12) -> list[dict]:
    """Varied small chat rows (different lengths and contents) for pipeline tests."""
    base = TRAINING_TEXT
    rows = []
    for i in range(n):
        question = f"{base[i % len(base)]} Question {prefix} {i}?"
        answer = " ".join(base[(i + 1) % len(base)].split()[: 4 + (i * 7) % words]) + f" ({i})"
        rows.append({"id": f"{prefix}-{i}", "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})
    return rows


def tiny_settings(model_dir: Path, **changes):
    """Feature settings for the tiny model: 64 tokens, a 256-d projection, a one-epoch warmup on 10 % of the pool."""
    from core.config import FeatureSettings, ProjectionArguments, WarmupArguments

    base = FeatureSettings(model=str(model_dir), max_tokens=64, projection=ProjectionArguments(dim=256),
                           warmup=WarmupArguments(fraction=0.1, epochs=1, batch_size=2), chunk_rows=16)
    return base.replace(**changes)


def make_project(folder: Path, store, n_pool: int = 40, n_targets: int = 6, project: str = "p", settings=None) -> None:
    """Ingest ``n_pool`` chat rows and ``n_targets`` target rows (groups g0, g1) into ``project``, from
    ``{project}-pool.jsonl`` and ``{project}-targets.jsonl`` written to ``folder``; store ``settings`` if given."""
    from core.data.ingest import ingest_files

    folder.mkdir(parents=True, exist_ok=True)
    targets = [dict(r, group=f"g{i % 2}") for i, r in enumerate(chat_rows(n_targets, "target"))]
    ingest_files(store, project, "pool", [write_jsonl(folder / f"{project}-pool.jsonl", chat_rows(n_pool, "pool"))])
    ingest_files(store, project, "targets", [write_jsonl(folder / f"{project}-targets.jsonl", targets)])
    if settings is not None:
        store.ensure_project(project, settings.to_dict())


def subprocess_env(cache_root: Path) -> dict:
    env = dict(os.environ, G2IS_CACHE_DIR=str(cache_root))
    return env


# ----------------------------------------------------------------------------- running as another user (nobody)
# Tests run as root, and permission bits do not stop root. So a test that needs a real "Permission denied" runs
# its check in a subprocess. That subprocess starts as root, imports everything it needs, and only then runs
# BECOME_NOBODY. Starting and importing as root matters because the interpreter (under /root) and the venv and
# editable `core` (inside the checkout) may lie where nobody cannot read, for example in a 0700 home or a
# `mktemp -d` clone. After the drop, the subprocess reads only what skip_unless_nobody_can_read was given.
# Run as an ordinary user, the subprocess stays that user, and chmod alone makes the fault.
BECOME_NOBODY = r"""
if os.geteuid() == 0:
    try:
        _nobody = pwd.getpwnam("nobody")
        os.setgroups([])
        os.setgid(_nobody.pw_gid)
        os.setuid(_nobody.pw_uid)
    except (KeyError, OSError) as _error:
        sys.exit(f"cannot become user nobody: {_error!r}")
"""

_NOBODY_CAN_READ = r"""
import os, pwd, stat, sys
""" + BECOME_NOBODY + r"""
def described(path):
    info = os.stat(path)  # needs only search permission on the folder above, checked before
    try:
        owner = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        owner = str(info.st_uid)
    return f"{path} ({stat.filemode(info.st_mode)}, owner {owner})"

for path in map(os.path.abspath, sys.argv[1:]):
    folder = os.path.dirname(path)
    above = []
    while folder not in above:
        above.append(folder)
        folder = os.path.dirname(folder)
    for folder in reversed(above):
        if not os.access(folder, os.X_OK):
            sys.exit(f"user nobody cannot read {path}: it may not enter the folder {described(folder)}")
    wanted = os.R_OK | (os.X_OK if os.path.isdir(path) else 0)
    if not os.path.exists(path) or not os.access(path, wanted):
        sys.exit(f"user nobody cannot read {described(path) if os.path.exists(path) else path + ' (missing)'}")
"""


def skip_unless_nobody_can_read(*paths: Path) -> None:
    """Skip the calling test unless user ``nobody`` can read each of ``paths``. The skip reason names the path and
    the folder that blocks it. Pass every path the subprocess reads after BECOME_NOBODY. As an ordinary user
    there is no drop, so there is nothing to check."""
    if os.geteuid() != 0:
        return
    import subprocess
    import sys

    probe = subprocess.run([sys.executable, "-c", _NOBODY_CAN_READ, *map(str, paths)], capture_output=True,
                           text=True, timeout=60)
    if probe.returncode != 0:
        why = (probe.stderr.strip().splitlines() or [f"the check exited with {probe.returncode}"])[-1]
        pytest.skip(f"{why}. This test runs as root and drops to user nobody to meet a real permission error, "
                    "so nobody must be able to read the files it makes. Let other users enter that folder "
                    "(chmod o+x), or point TMPDIR at a folder they can enter.")


EXPLORE_PROJECT = "explore"


@pytest.fixture(scope="session")
def explore_cache_template(tmp_path_factory, tiny_model_dir) -> Path:
    """A cache holding project ``explore`` with complete tiny-model features, built once per test session:
    60 pool rows from three sources (math, code, chat; 20 each) and 6 target rows in two groups."""
    from core.config import FeatureSettings, ProjectionArguments, WarmupArguments
    from core.data.ingest import ingest_files
    from core.features.featurize import run_features
    from core.store import Store

    folder = tmp_path_factory.mktemp("explore")
    store = Store(folder / "cache")
    rows = chat_rows(60, "pool")
    for i, row in enumerate(rows):
        row["source"] = ("math", "code", "chat")[i % 3]
    targets = [dict(r, group=f"g{i % 2}") for i, r in enumerate(chat_rows(6, "target"))]
    ingest_files(store, EXPLORE_PROJECT, "pool", [write_jsonl(folder / "pool.jsonl", rows)])
    ingest_files(store, EXPLORE_PROJECT, "targets", [write_jsonl(folder / "targets.jsonl", targets)])
    settings = FeatureSettings(model=str(tiny_model_dir), max_tokens=64, projection=ProjectionArguments(dim=256),
                               warmup=WarmupArguments(fraction=0.1))
    store.ensure_project(EXPLORE_PROJECT, settings.to_dict())
    run_features(store, EXPLORE_PROJECT, settings, log=lambda text: None)
    return folder / "cache"


@pytest.fixture()
def explore_project(explore_cache_template, tmp_path, monkeypatch) -> tuple[Path, str]:
    """A private copy of the ``explore`` cache (G2IS_CACHE_DIR points at it): (cache root, project name).

    Feature chunk files stay in the template (the store records absolute paths); tests only read them."""
    import shutil

    root = tmp_path / "cache"
    shutil.copytree(explore_cache_template, root, ignore=shutil.ignore_patterns("*.lock"))
    monkeypatch.setenv("G2IS_CACHE_DIR", str(root))
    return root, EXPLORE_PROJECT


# ------------------------------------------------------------------------------------------ reliability report
# Tests marked ``@pytest.mark.reliability(area, case)`` are the cases of docs/RELIABILITY.md.  Each may say what
# it observed through the ``observed`` fixture; the outcome and that text are written to
# test-artifacts/reliability.json at the end of the session, and ``python scripts/reliability_report.py``
# renders the document from it, so the report is the tests' own result, not prose written by hand.
RELIABILITY_RESULTS = REPO / "test-artifacts" / "reliability.json"
_reliability_records: dict[str, dict] = {}


@pytest.fixture()
def observed(request) -> list[str]:
    """Append one line per thing the test saw happen (e.g. the message the user got)."""
    lines: list[str] = []
    request.node._reliability_observed = lines
    return lines


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    marker = item.get_closest_marker("reliability")
    if marker is None:
        return
    report = outcome.get_result()
    if report.when == "call" or (report.when == "setup" and (report.failed or report.skipped)):
        area, case = marker.args
        skip_reason = ""
        if report.skipped and isinstance(report.longrepr, tuple):
            skip_reason = str(report.longrepr[2]).removeprefix("Skipped: ")
        _reliability_records[item.nodeid] = {
            "area": area, "case": case, "test": item.nodeid, "outcome": report.outcome,
            "observed": list(getattr(item, "_reliability_observed", [])), "skip_reason": skip_reason,
            "seconds": round(report.duration, 2),
        }


def pytest_sessionfinish(session, exitstatus):
    if not _reliability_records:
        return
    previous = {}
    if RELIABILITY_RESULTS.exists():  # a partial run updates its own cases and keeps the others
        try:
            previous = {r["test"]: r for r in json.loads(RELIABILITY_RESULTS.read_text())}
        except (ValueError, KeyError, TypeError):
            previous = {}
    previous.update(_reliability_records)
    RELIABILITY_RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RELIABILITY_RESULTS.write_text(json.dumps(sorted(previous.values(), key=lambda r: (r["area"], r["test"])), indent=1))


def wait_for(predicate, timeout: float, poll: float = 0.02, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy (returned), or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"{what} not reached within {timeout:.0f} s")


def cli_project(folder: Path, model_dir: Path, pool: list[dict], capsys, project: str = "sel") -> str:
    """Project ``project`` made through the CLI: ``pool`` and 6 target rows (groups g0, g1) ingested, features
    computed inline with the tiny model (64 tokens, a 256-d projection, a 10 % warmup); the CLI output is consumed."""
    from core.cli import main

    targets = [dict(r, group=f"g{i % 2}") for i, r in enumerate(chat_rows(6, "target"))]
    assert main(["ingest", "--project", project, "--pool", str(write_jsonl(folder / "pool.jsonl", pool)),
                 "--targets", str(write_jsonl(folder / "targets.jsonl", targets))]) == 0
    assert main(["features", "--project", project, "--model", str(model_dir), "--max-tokens", "64",
                 "--proj-dim", "256", "--warmup-fraction", "0.1", "--inline"]) == 0
    capsys.readouterr()
    return project
