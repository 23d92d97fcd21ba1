"""The built-in demo data: deterministic, correct (answers checked, code run), and readable by the pipeline."""
from __future__ import annotations

import math
import re
from collections import Counter

from core.data import demo
from core.data.formats import read_rows


def test_pool_and_targets_are_deterministic_and_byte_identical(tmp_path):
    assert demo.demo_pool() == demo.demo_pool()
    assert demo.demo_targets() == demo.demo_targets()
    first = demo.write_demo_files(tmp_path / "a")
    second = demo.write_demo_files(tmp_path / "b")
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes()
    assert demo.demo_pool(seed=1) != demo.demo_pool(seed=0)


def test_pool_mixes_domains_with_math_as_a_minority():
    pool = demo.demo_pool()
    assert len(pool) == 320
    counts = Counter(row["source"] for row in pool)
    assert set(counts) == set(demo.DOMAINS)
    assert counts[demo.TARGET_DOMAIN] == 44
    assert counts[demo.TARGET_DOMAIN] / len(pool) < 0.15  # the skill to find is a minority of the pool
    assert len({row["id"] for row in pool}) == len(pool)
    assert len({(row["instruction"], row["input"]) for row in pool}) == len(pool)
    # domains interleave: the first 40 rows already hold every domain
    assert {row["source"] for row in pool[:40]} == set(demo.DOMAINS)


def test_math_answers_are_the_computed_values():
    records = demo._pool_records() + demo._target_records()
    math = [r for r in records if "_answer" in r and r["source"] == demo.TARGET_DOMAIN]
    assert len(math) == 44 + 16
    for record in math:
        text = record["output"] if "output" in record else record["messages"][-1]["content"]
        assert text.endswith(f"{demo.ANSWER_PREFIX} {record['_answer']}."), text


def test_code_answers_run_and_pass_their_cases():
    checked = 0
    for record in demo._pool_records():
        check = record.get("_check")
        if not check:
            continue
        block = re.search(r"```python\n(.*?)```", record[check["where"]], re.S)
        assert block, record
        namespace: dict = {}
        exec(block.group(1), namespace)  # our own generated code, not user input
        function = namespace[check["function"]]
        for args, expected in check["cases"]:
            got = function(*args)
            if isinstance(expected, float):
                assert math.isclose(got, expected, rel_tol=1e-9), (record["instruction"], args)
            else:
                assert got == expected, (record["instruction"], args)
        checked += 1
    assert checked >= 30


def test_unit_conversions_state_the_computed_number():
    for record in demo._pool_records():
        if record["source"] == "unit_conversion":
            assert re.search(rf"(?<![\d.]){re.escape(demo._fmt(record['_answer']))}(?![\d])", record["output"].replace(",", "")), record


def test_targets_are_new_problems_in_messages_form_with_groups():
    targets = demo.demo_targets()
    assert len(targets) == 16
    pool_text = {row["instruction"] for row in demo.demo_pool()} | {row["input"] for row in demo.demo_pool()}
    for row in targets:
        user, assistant = row["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        assert user["content"].removesuffix(" Show your work.") not in pool_text
        assert row["group"]
    assert len({row["group"] for row in targets}) >= 3


def test_demo_files_read_cleanly_through_the_format_readers(tmp_path):
    pool_path, targets_path = demo.write_demo_files(tmp_path)
    pool, pool_reports = read_rows([pool_path])
    targets, target_reports = read_rows([targets_path])
    assert (pool_reports[0].format, target_reports[0].format) == ("alpaca", "messages")
    assert len(pool) == 320 and len(targets) == 16
    assert [row.row_id for row in pool] == [row["id"] for row in demo.demo_pool()]
    assert {row.source for row in pool} == set(demo.DOMAINS)
    assert all(row.group for row in targets)
