"""The built-in demo data: the shipped files are the generator's output, correct (answers checked, code run),
and readable by the pipeline."""
from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from core.data import demo
from core.data.readers import read_rows

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "make_demo_data.py"
SHIPPED = ROOT / "core" / "data" / "demo_data"


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_demo_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there (sys.path is left alone)
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


def _read(name: str) -> list[dict]:
    return [json.loads(line) for line in (SHIPPED / name).read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def shipped_pool() -> list[dict]:
    return _read("pool.jsonl")


@pytest.fixture(scope="module")
def shipped_targets() -> list[dict]:
    return _read("targets.jsonl")


@pytest.fixture(scope="module")
def pool_checks() -> dict[str, dict]:
    """The generator's pool records, with their private answer-check fields, by id."""
    return {r["id"]: r for r in gen._pool_records()}


@pytest.fixture(scope="module")
def target_checks() -> dict[str, dict]:
    return {r["id"]: r for r in gen._target_records()}


def test_shipped_files_are_the_generators_output():
    result = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_flags_a_stale_file(tmp_path):
    gen.write_files(tmp_path)
    assert gen.check_files(tmp_path) == []
    (tmp_path / "targets.jsonl").write_text("{}\n")
    assert gen.check_files(tmp_path) == ["targets.jsonl"]
    assert gen.main(["--check", "--out", str(tmp_path)]) == 1


def test_shipped_files_match_the_generators_records(shipped_pool, shipped_targets, pool_checks, target_checks):
    assert shipped_pool == [gen._public(r) for r in pool_checks.values()]
    assert shipped_targets == [gen._public(r) for r in target_checks.values()]
    assert demo.demo_pool() == shipped_pool and demo.demo_targets() == shipped_targets


def test_pool_and_targets_are_deterministic_and_byte_identical(tmp_path):
    assert gen.demo_pool() == gen.demo_pool()
    assert gen.demo_targets() == gen.demo_targets()
    first = demo.write_demo_files(tmp_path / "a")
    second = demo.write_demo_files(tmp_path / "b")
    assert [p.name for p in first] == [demo.POOL_FILENAME, demo.TARGETS_FILENAME]
    for a, b, shipped in zip(first, second, ("pool.jsonl", "targets.jsonl")):
        assert a.read_bytes() == b.read_bytes() == (SHIPPED / shipped).read_bytes()
    assert gen.demo_pool(seed=1) != gen.demo_pool(seed=0)


def test_pool_mixes_domains_with_math_as_a_minority(shipped_pool):
    pool = shipped_pool
    assert len(pool) == 320
    counts = Counter(row["source"] for row in pool)
    assert set(counts) == set(demo.DOMAINS)
    assert counts[demo.TARGET_DOMAIN] == 44
    assert counts[demo.TARGET_DOMAIN] / len(pool) < 0.15  # the skill to find is a minority of the pool
    assert len({row["id"] for row in pool}) == len(pool)
    assert len({(row["instruction"], row["input"]) for row in pool}) == len(pool)
    # domains interleave: the first 40 rows already hold every domain
    assert {row["source"] for row in pool[:40]} == set(demo.DOMAINS)


def test_math_answers_are_the_computed_values(shipped_pool, shipped_targets, pool_checks, target_checks):
    checks = {**pool_checks, **target_checks}
    math_rows = [row for row in shipped_pool + shipped_targets if row["source"] == demo.TARGET_DOMAIN]
    assert len(math_rows) == 44 + 16
    for row in math_rows:
        answer = checks[row["id"]]["_answer"]
        text = row["output"] if "output" in row else row["messages"][-1]["content"]
        assert text.endswith(f"{demo.ANSWER_PREFIX} {answer}."), text


def test_code_answers_run_and_pass_their_cases(shipped_pool, pool_checks):
    checked = 0
    for row in shipped_pool:
        check = pool_checks[row["id"]].get("_check")
        if not check:
            continue
        block = re.search(r"```python\n(.*?)```", row[check["where"]], re.S)
        assert block, row
        namespace: dict = {}
        exec(block.group(1), namespace)  # our own generated code, not user input
        function = namespace[check["function"]]
        for args, expected in check["cases"]:
            got = function(*args)
            if isinstance(expected, float):
                assert math.isclose(got, expected, rel_tol=1e-9), (row["instruction"], args)
            else:
                assert got == expected, (row["instruction"], args)
        checked += 1
    assert checked >= 30


def test_unit_conversions_state_the_computed_number(shipped_pool, pool_checks):
    for row in shipped_pool:
        if row["source"] == "unit_conversion":
            answer = gen._fmt(pool_checks[row["id"]]["_answer"])
            assert re.search(rf"(?<![\d.]){re.escape(answer)}(?![\d])", row["output"].replace(",", "")), row


def test_targets_are_new_problems_in_messages_form_with_groups(shipped_pool, shipped_targets):
    targets = shipped_targets
    assert len(targets) == 16
    pool_text = {row["instruction"] for row in shipped_pool} | {row["input"] for row in shipped_pool}
    for row in targets:
        user, assistant = row["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        assert user["content"].removesuffix(" Show your work.") not in pool_text
        assert row["group"]
    assert len({row["group"] for row in targets}) >= 3


def test_demo_files_read_cleanly_through_the_format_readers(tmp_path, shipped_pool):
    pool_path, targets_path = demo.write_demo_files(tmp_path)
    pool, pool_reports = read_rows([pool_path])
    targets, target_reports = read_rows([targets_path])
    assert (pool_reports[0].format, target_reports[0].format) == ("alpaca", "messages")
    assert len(pool) == 320 and len(targets) == 16
    assert [row.row_id for row in pool] == [row["id"] for row in shipped_pool]
    assert {row.source for row in pool} == set(demo.DOMAINS)
    assert all(row.group for row in targets)
