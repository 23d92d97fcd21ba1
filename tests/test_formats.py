"""Tests for core/data/records.py and core/data/readers.py: the four instruction formats, every documented
error, ids, streaming.

Every test writes real files under tmp_path and reads them through the public API.
"""
from __future__ import annotations

import hashlib
import json
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.data import readers
from core.data.readers import ReadReport, iter_rows, read_rows
from core.data.records import (
    FORMATS,
    BadRowsError,
    FormatError,
    Row,
    RowError,
    RowProblem,
    content_hash_of,
    detect_format,
    normalise,
)

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

# ---------------------------------------------------------------------------------------------------------
# helpers


def chat(user: str, assistant: str, **extra) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}], **extra}


def good(i: int, **extra) -> dict:
    """A distinct valid messages-format record."""
    return chat(f"Question {i}?", f"Answer {i}.", **extra)


def user_assistant(user: str, assistant: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def jsonl_bytes(lines: list) -> bytes:
    """Each item is a record (dumped as JSON), a raw str line, or raw bytes (written as given)."""
    out = []
    for item in lines:
        if isinstance(item, bytes):
            out.append(item)
        elif isinstance(item, str):
            out.append(item.encode("utf-8"))
        else:
            out.append(json.dumps(item, ensure_ascii=False).encode("utf-8"))
    return b"\n".join(out) + b"\n"


def json_array_bytes(records: list, indent: int | None = 2) -> bytes:
    return json.dumps(records, indent=indent, ensure_ascii=False).encode("utf-8")


def nonblank_lines(data: bytes) -> int:
    """Non-blank lines as the reader defines them (blank = only JSON whitespace; broken UTF-8 is not blank)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    count = 0
    for raw in data.split(b"\n"):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            count += 1
            continue
        if text.strip(" \t\r\n"):
            count += 1
    return count


def read_all(path, **kwargs) -> tuple[list[Row], ReadReport]:
    report = ReadReport(file=str(path), format=None)
    rows = list(iter_rows(path, report=report, **kwargs))
    return rows, report


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------------------------------------
# 1. the four formats, from .jsonl and from .json


ALPACA_FULL = {
    "instruction": "Translate to French.",
    "input": "Good morning",
    "output": "Bonjour",
    "system": "You are a translator.",
    "history": [["Hi", "Hello! How can I help?"], ["Can you translate?", "Yes."]],
}
ALPACA_FULL_MESSAGES = [
    {"role": "system", "content": "You are a translator."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Can you translate?"},
    {"role": "assistant", "content": "Yes."},
    {"role": "user", "content": "Translate to French.\n\nGood morning"},
    {"role": "assistant", "content": "Bonjour"},
]

SHAREGPT = {
    "system": "Be brief.",
    "conversations": [
        {"from": "human", "value": "a"},
        {"from": "gpt", "value": "b"},
        {"from": "user", "value": "c"},
        {"from": "chatgpt", "value": "d"},
        {"from": "Human", "value": "e"},
        {"from": "model", "value": "f"},
        {"from": "user", "value": "g"},
        {"from": "assistant", "value": " h "},
    ],
}
SHAREGPT_MESSAGES = [{"role": "system", "content": "Be brief."}] + [
    {"role": role, "content": text}
    for role, text in zip(["user", "assistant"] * 4, ["a", "b", "c", "d", "e", "f", "g", " h "])
]

FORMAT_CASES = [
    ("alpaca", ALPACA_FULL, ALPACA_FULL_MESSAGES),
    ("alpaca", {"instruction": "Name a colour.", "input": "", "output": "Blue."}, user_assistant("Name a colour.", "Blue.")),
    ("alpaca", {"instruction": "Name a colour.", "input": " \n", "output": "Blue."}, user_assistant("Name a colour.", "Blue.")),
    ("alpaca", {"instruction": "Name a colour.", "input": None, "output": "Blue.", "system": ""},
     user_assistant("Name a colour.", "Blue.")),
    ("sharegpt", SHAREGPT, SHAREGPT_MESSAGES),
    ("sharegpt", {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
     [{"role": "system", "content": "S"}] + user_assistant("q", "a")),
    ("messages", chat("Hi", "Hello"), user_assistant("Hi", "Hello")),
    ("messages", {"messages": [
        {"role": "system", "content": [{"type": "text", "text": "Sys"}]},
        {"role": "user", "content": [{"type": "text", "text": "Look:"}, {"type": "text", "text": "two parts"}], "name": "x"},
        {"role": "assistant", "content": "Seen."},
    ]}, [{"role": "system", "content": "Sys"}, {"role": "user", "content": "Look:\ntwo parts"}, {"role": "assistant", "content": "Seen."}]),
    ("prompt_completion", {"prompt": "2+2=", "completion": " 4"}, user_assistant("2+2=", " 4")),
    ("prompt_completion", {
        "prompt": [{"role": "system", "content": "Math."}, {"role": "user", "content": "2+2?"}],
        "completion": [{"role": "assistant", "content": "4"}],
    }, [{"role": "system", "content": "Math."}] + user_assistant("2+2?", "4")),
]


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
@pytest.mark.parametrize("fmt,record,expected", FORMAT_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(FORMAT_CASES)])
def test_format_is_detected_and_normalised(tmp_path, suffix, fmt, record, expected):
    other = json.loads(json.dumps(record))  # a second, different record of the same format
    text_field = {"alpaca": "output", "prompt_completion": "completion"}.get(fmt)
    if text_field and isinstance(other[text_field], str):
        other[text_field] += " (second)"
    elif fmt == "sharegpt":
        other["conversations"][-1]["value"] += " (second)"
    else:
        key = "messages" if fmt == "messages" else "completion"
        other[key][-1]["content"] = "(second)"
    data = jsonl_bytes([record, other]) if suffix == ".jsonl" else json_array_bytes([record, other])
    path = write(tmp_path / f"data{suffix}", data)

    rows, report = read_all(path)
    assert detect_format(record) == fmt
    assert report.format == fmt and report.rows == 2 and report.errors == []
    assert [dict(m) for m in rows[0].messages] == expected
    assert normalise(record, fmt) == expected
    assert rows[0].format == fmt and rows[0].file == str(path) and rows[0].source == "data"
    expected_lines = [1, 2] if suffix == ".jsonl" else [2, 2 + json.dumps(record, indent=2).count("\n") + 1]
    assert [row.line for row in rows] == expected_lines


def test_json_array_element_lines_follow_pretty_printing(tmp_path):
    records = [good(i) for i in range(5)]
    records[2]["meta"] = {"deep": {"deeper": [1, 2, 3]}}
    path = write(tmp_path / "arr.json", json_array_bytes(records, indent=4))
    rows, _ = read_all(path)
    expected, line = [], 2
    for record in records:
        expected.append(line)
        line += json.dumps(record, indent=4).count("\n") + 1
    assert [row.line for row in rows] == expected
    minified = write(tmp_path / "min.json", json_array_bytes(records, indent=None))
    assert [row.line for row in read_all(minified)[0]] == [1] * 5


def test_content_is_kept_exactly(tmp_path):
    record = chat("  padded question \n", "\tanswer with tabs\t\n")
    rows, _ = read_all(write(tmp_path / "x.jsonl", jsonl_bytes([record])))
    assert rows[0].messages[0]["content"] == "  padded question \n"
    assert rows[0].messages[1]["content"] == "\tanswer with tabs\t\n"


def test_detect_format_precedence():
    assert detect_format({"messages": [], "conversations": [], "instruction": "", "output": ""}) == "messages"
    assert detect_format({"conversations": [], "instruction": "", "output": ""}) == "sharegpt"
    assert detect_format({"instruction": "", "output": "", "prompt": "", "completion": ""}) == "alpaca"
    assert detect_format({"prompt": "", "completion": ""}) == "prompt_completion"
    assert detect_format({"instruction": "only"}) is None
    assert detect_format({"text": "x"}) is None
    assert set(FORMATS) == {"alpaca", "sharegpt", "messages", "prompt_completion"}


def test_normalise_raises_row_problem():
    with pytest.raises(RowProblem, match='alpaca: "output" must be a non-empty string'):
        normalise({"instruction": "x", "output": " "}, "alpaca")
    assert issubclass(RowProblem, ValueError)


# ---------------------------------------------------------------------------------------------------------
# 2. malformed input: one row error each, exact reason and line, in fail and skip mode


@dataclass
class BadRowCase:
    name: str
    data: bytes
    line: int
    reason: str  # substring; "{file}" / "{earlier}" are replaced by the paths
    good_rows: int
    suffix: str = ".jsonl"
    earlier: bytes | None = None  # read first, into the same `seen` (cross-file duplicates)


def lines(*items) -> bytes:
    return jsonl_bytes(list(items))


BAD_ROW_CASES = [
    BadRowCase("invalid_json", lines(good(1), "{'user': 1}"), 2,
               "invalid JSON: Expecting property name enclosed in double quotes (column 2)", 1),
    BadRowCase("truncated_line", lines(good(1), '{"messages": [{"role": "user", "content": "x"}', good(2)), 2,
               "invalid JSON: Expecting ',' delimiter", 2),
    BadRowCase("array_line", lines(good(1), "[1, 2]"), 2, "expected a JSON object, got array", 1),
    BadRowCase("number_line_after_blank", lines(good(1), "", "   ", "42"), 4, "expected a JSON object, got number", 1),
    BadRowCase("string_line", lines(good(1), '"hello"'), 2, "expected a JSON object, got string", 1),
    BadRowCase("null_line", lines(good(1), "null"), 2, "expected a JSON object, got null", 1),
    BadRowCase("bool_line", lines(good(1), "true"), 2, "expected a JSON object, got boolean", 1),
    BadRowCase("missing_output", lines({"instruction": "a", "output": "b"}, {"instruction": "Do it"}), 2,
               'alpaca: missing "output" (this file is alpaca, detected at line 1)', 1),
    BadRowCase("empty_output", lines({"instruction": "a", "output": ""}, {"instruction": "a", "output": "b"}), 1,
               'alpaca: "output" must be a non-empty string', 1),
    BadRowCase("whitespace_output", lines({"instruction": "a", "output": "b"}, {"instruction": "c", "output": " \n\t"}), 2,
               'alpaca: "output" must be a non-empty string', 1),
    BadRowCase("alpaca_bad_history", lines({"instruction": "a", "output": "b"},
                                           {"instruction": "c", "output": "d", "history": [["q", "a"], ["only q"]]}), 2,
               'alpaca: "history" item 2 must be a [question, answer] pair of strings', 1),
    BadRowCase("alpaca_empty_history_answer", lines({"instruction": "c", "output": "d", "history": [["q", "  "]]}, {"instruction": "a", "output": "b"}), 1,
               'empty assistant answer in "history" item 1', 1),
    BadRowCase("whitespace_answer", lines(good(1), chat("q", "  \n ")), 2, "empty assistant answer in turn 2", 1),
    BadRowCase("empty_user", lines(good(1), chat("", "a")), 2, "empty user message in turn 1", 1),
    BadRowCase("last_turn_user", lines(good(1), {"messages": user_assistant("q", "a") + [{"role": "user", "content": "more?"}]}), 2,
               'last message must be from the assistant (got "user")', 1),
    BadRowCase("no_user", lines(good(1), {"messages": [{"role": "assistant", "content": "a"}]}), 2, "no user message", 1),
    BadRowCase("empty_messages", lines(good(1), {"messages": []}), 2, 'messages: "messages" must be a non-empty list of messages', 1),
    BadRowCase("unknown_sharegpt_role",
               lines({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}, {"from": "bot", "value": "x"}]},
                     {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "b"}]}), 1,
               'sharegpt: turn 3 has unknown role "bot"', 1),
    BadRowCase("sharegpt_role_content_keys",
               lines({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
                     {"conversations": [{"role": "user", "content": "q"}]}), 2,
               'sharegpt: turn 1 must be an object with "from" and "value" (found keys: "role", "content")', 1),
    BadRowCase("sharegpt_empty_value",
               lines({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
                     {"conversations": [{"from": "human", "value": " "}, {"from": "gpt", "value": "a"}]}), 2,
               'sharegpt: turn 1 "value" must be a non-empty string', 1),
    BadRowCase("sharegpt_system_not_first",
               lines({"conversations": [{"from": "human", "value": "q"}, {"from": "system", "value": "s"}, {"from": "gpt", "value": "a"}]},
                     {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}), 1,
               "system message must be the first turn (found in turn 2)", 1),
    BadRowCase("messages_system_not_first",
               lines(good(1), {"messages": user_assistant("q", "a") + [{"role": "system", "content": "s"}, {"role": "assistant", "content": "b"}]}), 2,
               "system message must be the first turn (found in turn 3)", 1),
    BadRowCase("messages_unknown_role", lines(good(1), {"messages": [{"role": "tool", "content": "x"}]}), 2,
               'messages: turn 1 has unknown role "tool"', 1),
    BadRowCase("non_text_part",
               lines(good(1), {"messages": [{"role": "user", "content": [{"type": "text", "text": "see"},
                                                                         {"type": "image_url", "image_url": {"url": "x"}}]},
                                            {"role": "assistant", "content": "ok"}]}), 2,
               'messages: turn 1 has a non-text content part ("image_url")', 1),
    BadRowCase("content_not_string", lines(good(1), {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}]}), 2,
               'messages: turn 1 "content" must be a string or a list of text parts', 1),
    BadRowCase("prompt_completion_mixed", lines({"prompt": "p", "completion": "c"}, {"prompt": "p", "completion": [{"role": "assistant", "content": "c"}]}), 2,
               'prompt_completion: "prompt" and "completion" must both be strings or both be lists of messages', 1),
    BadRowCase("prompt_completion_conversational_ends_with_user",
               lines({"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "user", "content": "c"}]}, {"prompt": "p", "completion": "c"}), 1,
               'last message must be from the assistant (got "user")', 1),
    BadRowCase("id_is_list", lines(good(1), good(2, id=[1])), 2, '"id" must be a non-empty string or integer', 1),
    BadRowCase("id_empty", lines(good(1, id=""), good(2)), 1, '"id" must be a non-empty string or integer', 1),
    BadRowCase("id_bool", lines(good(1), good(2, id=True)), 2, '"id" must be a non-empty string or integer', 1),
    BadRowCase("id_null", lines(good(1), good(2, id=None)), 2, '"id" must be a non-empty string or integer', 1),
    BadRowCase("duplicate_id_in_file", lines(good(1, id="a"), good(2, id="b"), good(3, id="a")), 3,
               "duplicate id 'a' (first seen at {file}:1)", 2),
    BadRowCase("duplicate_int_and_str_id", lines(good(1, id=7), good(2, id="7")), 2, "duplicate id '7' (first seen at {file}:1)", 1),
    BadRowCase("duplicate_id_across_files", lines(good(5), good(2, id="a")), 2, "duplicate id 'a' (first seen at {earlier}:2)", 1,
               earlier=lines(good(0), good(1, id="a"))),
    BadRowCase("duplicate_content", lines(good(1), good(2), good(1)), 3, "duplicate row: same content as {file}:1", 2),
    BadRowCase("duplicate_content_across_files", lines(good(1)), 1, "duplicate row: same content as {earlier}:1", 0,
               earlier=lines(good(1))),
    BadRowCase("invalid_utf8", lines(good(1), b'{"messages": "\xff\xfe"}'), 2, "line is not valid UTF-8 (byte offset 14)", 1),
    BadRowCase("lone_surrogate", lines(good(1), '{"messages": [{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "a"}]}'), 2,
               "text in turn 1 is not valid Unicode (unpaired surrogate)", 1),
    BadRowCase("bom_in_middle", lines(good(1), "\ufeff" + json.dumps(good(2))), 2, "invalid JSON: Unexpected UTF-8 BOM", 1),
    BadRowCase("deep_nesting", lines(good(1), '{"meta": ' + "[" * 100_000 + "]" * 100_000 + "}"), 2, "invalid JSON: nested too deeply", 1),
    BadRowCase("too_many_digits", lines(good(1), '{"id": ' + "9" * 5000 + "}"), 2, "invalid JSON: Exceeds the limit", 1),
    BadRowCase("mixed_formats", lines(good(1), {"instruction": "a", "output": "b"}), 2,
               "record is in alpaca format but this file is messages (detected at line 1)", 1),
    BadRowCase("unknown_keys_later", lines(good(1), {"text": "hi"}), 2, 'messages: missing "messages" (this file is messages', 1),
    BadRowCase("unknown_keys_first", lines({"text": "hi"}, good(1)), 1, 'record matches no known format (keys: "text")', 1),
    # .json arrays
    BadRowCase("json_element_not_object", json_array_bytes([good(1), 42, good(2)]), 14, "expected a JSON object, got number", 2, ".json"),
    BadRowCase("json_truncated_array", b'[\n  {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},\n  {"messages": [\n',
               3, "truncated JSON: the file ends inside this record", 1, ".json"),
    BadRowCase("json_truncated_inside_string", b'[\n  {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},\n\n  {"messages": [{"role": "user", "content": "q u',
               4, "truncated JSON: the file ends inside this record", 1, ".json"),
    BadRowCase("json_missing_closing_bracket", b'[\n' + json.dumps(good(1)).encode() + b'\n', 3,
               "truncated JSON array: the file ends before the closing ']'", 1, ".json"),
    BadRowCase("json_syntax_error", b'[\n' + json.dumps(good(1)).encode() + b',\n{"messages"\n  5},\n' + json.dumps(good(2)).encode() + b"\n]", 3,
               "invalid JSON: Expecting ':' delimiter (line 4); the rest of the file was not read", 1, ".json"),
    BadRowCase("json_missing_comma", b'[\n' + json.dumps(good(1)).encode() + b'\n' + json.dumps(good(2)).encode() + b"\n]", 3,
               "invalid JSON: expected ',' or ']' after the record starting at line 2", 1, ".json"),
    BadRowCase("json_trailing_comma", b'[\n' + json.dumps(good(1)).encode() + b',\n]\n', 3,
               "invalid JSON: trailing comma before the closing ']'", 1, ".json"),
    BadRowCase("json_extra_data", json_array_bytes([good(1)], indent=None) + b"\n[]", 2,
               "invalid JSON: extra data after the closing ']'", 1, ".json"),
    BadRowCase("json_invalid_utf8", b'[\n' + json.dumps(good(1)).encode() + b',\n  {"messages": [{"role": "user",\n "content": "caf\xe9"},'
               b' {"role": "assistant", "content": "a"}]},\n' + json.dumps(good(2)).encode() + b"\n]", 3,
               "record is not valid UTF-8 (line 4, byte offset 16)", 2, ".json"),
]


def _read_case(tmp_path: Path, case: BadRowCase, on_error: str):
    seen: dict[str, tuple[str, int]] = {}
    earlier = None
    if case.earlier is not None:
        earlier = write(tmp_path / f"earlier{case.suffix}", case.earlier)
        rows, report = read_all(earlier, seen=seen)
        assert report.errors == []
    path = write(tmp_path / f"{case.name}{case.suffix}", case.data)
    reason = case.reason.format(file=path, earlier=earlier)
    report = ReadReport(file=str(path), format=None)
    rows: list[Row] = []
    raised = None
    try:
        for row in iter_rows(path, report=report, on_error=on_error, seen=seen):
            rows.append(row)
    except BadRowsError as error:
        raised = error
    return path, reason, rows, report, raised


@pytest.mark.parametrize("case", BAD_ROW_CASES, ids=[case.name for case in BAD_ROW_CASES])
def test_bad_row_fail_mode(tmp_path, case):
    path, reason, rows, report, raised = _read_case(tmp_path, case, "fail")
    assert raised is not None, "fail mode must raise BadRowsError"
    assert [(e.file, e.line) for e in raised.errors] == [(str(path), case.line)]
    assert reason in raised.errors[0].reason
    assert f"{path}:{case.line}: " in str(raised)
    assert reason in str(raised)
    assert raised.errors == report.errors


@pytest.mark.parametrize("case", BAD_ROW_CASES, ids=[case.name for case in BAD_ROW_CASES])
def test_bad_row_skip_mode(tmp_path, case):
    path, reason, rows, report, raised = _read_case(tmp_path, case, "skip")
    assert raised is None
    assert len(rows) == case.good_rows == report.rows
    assert len(report.errors) == 1
    error = report.errors[0]
    assert (error.file, error.line) == (str(path), case.line) and reason in error.reason
    assert str(error) == f"{path}:{case.line}: {error.reason}"
    if case.suffix == ".jsonl":  # nothing dropped silently
        assert len(rows) + len(report.errors) == nonblank_lines(case.data)


@dataclass
class BadFileCase:
    name: str
    filename: str
    data: bytes | None  # None: do not create it
    reason: str
    make_dir: bool = False


BAD_FILE_CASES = [
    BadFileCase("json_top_level_object", "d.json", json.dumps(good(1)).encode(), "expected a JSON array of records, found an object at line 1"),
    BadFileCase("jsonl_that_is_an_object_per_line_json", "d.json", lines(good(1), good(2)), "rename it to .jsonl"),
    BadFileCase("zero_bytes_jsonl", "d.jsonl", b"", "file is empty"),
    BadFileCase("zero_bytes_json", "d.json", b"", "file is empty"),
    BadFileCase("whitespace_only_jsonl", "d.jsonl", b"  \n\n\t \r\n", "file is empty"),
    BadFileCase("whitespace_only_json", "d.json", b" \n \n", "file is empty"),
    BadFileCase("bom_only", "d.jsonl", b"\xef\xbb\xbf\n", "file is empty"),
    BadFileCase("empty_json_array", "d.json", b"[ ]", "the JSON array is empty"),
    BadFileCase("txt_extension", "d.txt", b"a,b\n1,2\n",
                "unsupported file type '.txt': use .jsonl, .json, .parquet, .csv or .tsv"),
    BadFileCase("no_extension", "data", b"{}", "unsupported file type (no extension)"),
    BadFileCase("missing_file", "nope.jsonl", None, "file not found"),
    BadFileCase("directory", "dir.jsonl", None, "is a directory", make_dir=True),
    BadFileCase("unknown_format", "d.jsonl", lines({"text": "a", "label": 1}, {"text": "b", "label": 0}),
                'no record is in a known instruction format. The first record has keys: "text", "label"'),
    BadFileCase("unknown_format_lists_expected", "d.json", json_array_bytes([{"question": "q", "answer": "a"}]),
                'alpaca ("instruction", "output"); sharegpt ("conversations"); messages ("messages"); prompt_completion ("prompt", "completion")'),
    BadFileCase("jsonl_that_is_an_array", "d.jsonl", json_array_bytes([good(1), good(2)]),
                "looks like a JSON array; rename it to .json or write one object per line"),
    BadFileCase("jsonl_one_line_array", "d.jsonl", json_array_bytes([good(1)], indent=None), "looks like a JSON array"),
    BadFileCase("jsonl_not_json", "d.jsonl", b"question,answer\nwhat,that\n", "not JSON: no record could be parsed"),
    BadFileCase("jsonl_only_scalars", "d.jsonl", b"1\n2\n", "no record is a JSON object"),
    BadFileCase("json_not_json", "d.json", b"hello", "not JSON: expected a JSON array of records, found 'h'"),
    BadFileCase("binary_file", "d.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00\xff", "not JSON: no record could be parsed"),
]


@pytest.mark.parametrize("on_error", ["fail", "skip"])
@pytest.mark.parametrize("case", BAD_FILE_CASES, ids=[case.name for case in BAD_FILE_CASES])
def test_bad_file(tmp_path, case, on_error):
    path = tmp_path / case.filename
    if case.make_dir:
        path.mkdir()
    elif case.data is not None:
        path.write_bytes(case.data)
    with pytest.raises(FormatError) as raised:
        list(iter_rows(path, on_error=on_error))
    assert case.reason in str(raised.value)
    assert str(path) in str(raised.value)  # names the file
    assert not isinstance(raised.value, BadRowsError)
    with pytest.raises(FormatError):
        read_rows([path], on_error=on_error)


def test_fail_mode_lists_every_bad_row(tmp_path):
    records = [good(0)] + [chat(f"q{i}", " ") for i in range(12)] + [good(1)]
    path = write(tmp_path / "many.jsonl", lines(*records))
    yielded = []
    with pytest.raises(BadRowsError) as raised:
        for row in iter_rows(path):
            yielded.append(row)
    errors = raised.value.errors
    assert [e.line for e in errors] == list(range(2, 14))  # all of them, not just the first
    assert all(isinstance(e, RowError) and e.reason == "empty assistant answer in turn 2" for e in errors)
    message = str(raised.value)
    assert "12 bad row(s)" in message
    for error in errors[:10]:
        assert f"{path}:{error.line}: empty assistant answer in turn 2" in message
    assert f"{path}:12:" not in message and "... and 2 more" in message
    assert len(yielded) == 2  # good rows were streamed before the error; callers commit only without error


def test_read_rows_collects_errors_of_all_files(tmp_path):
    first = write(tmp_path / "a.jsonl", lines(good(1, id="x"), "oops"))
    second = write(tmp_path / "b.json", json_array_bytes([good(2, id="x"), good(3)]))
    with pytest.raises(BadRowsError) as raised:
        read_rows([first, second])
    assert [(e.file, e.line) for e in raised.value.errors] == [(str(first), 2), (str(second), 2)]
    assert "duplicate id 'x'" in raised.value.errors[1].reason
    rows, reports = read_rows([first, second], on_error="skip")
    assert [row.row_id for row in rows] == ["x", rows[1].content_hash[:16]]
    assert [(r.format, r.rows, len(r.errors)) for r in reports] == [("messages", 1, 1), ("messages", 1, 1)]
    assert read_rows(str(first), on_error="skip")[1][0].file == str(first)  # one path on its own is fine


def test_blank_lines_are_counted_not_rows(tmp_path):
    path = write(tmp_path / "b.jsonl", b"\n" + json.dumps(good(1)).encode() + b"\n  \n\t\n" + json.dumps(good(2)).encode() + b"\n\n")
    rows, report = read_all(path)
    assert [row.line for row in rows] == [2, 5]
    assert report.blank_lines == 4 and report.rows == 2 and report.errors == []


def test_on_error_is_checked(tmp_path):
    path = write(tmp_path / "a.jsonl", lines(good(1)))
    with pytest.raises(ValueError, match="on_error"):
        list(iter_rows(path, on_error="ignore"))


# ---------------------------------------------------------------------------------------------------------
# 3. ids, source, group, encodings


def test_explicit_ids_are_kept(tmp_path):
    path = write(tmp_path / "ids.jsonl", lines(good(1, id="row-a"), good(2, id=7), good(3, id=0), good(4)))
    rows, _ = read_all(path)
    assert [row.row_id for row in rows[:3]] == ["row-a", "7", "0"]
    assert rows[3].row_id == rows[3].content_hash[:16]


def test_content_hash_ids_are_stable(tmp_path):
    record = {"meta": {"x": 1}, "messages": [{"role": "user", "content": "Ça va? \"quoted\" \u2028"},
                                              {"role": "assistant", "content": "Oui.\n"}]}
    reordered = {"messages": [{"content": m["content"], "role": m["role"]} for m in record["messages"]], "meta": {"x": 1}}
    first = read_all(write(tmp_path / "a.jsonl", lines(record)))[0][0]
    again = read_all(write(tmp_path / "a.jsonl", lines(record)))[0][0]
    other_order = read_all(write(tmp_path / "b.json", json_array_bytes([reordered])))[0][0]
    assert first.row_id == again.row_id == other_order.row_id == first.content_hash[:16]
    canonical = json.dumps(list(first.messages), ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    assert first.content_hash == hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    assert content_hash_of([{"role": "user", "content": "x", "extra": 1}]) == hashlib.sha256(
        json.dumps([{"role": "user", "content": "x", "extra": 1}], ensure_ascii=False, sort_keys=True,
                   separators=(",", ":")).encode()).hexdigest()


@given(st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), st.text()), max_size=4))
def test_content_hash_matches_the_documented_formula(turns):
    messages = [{"role": role, "content": content} for role, content in turns]
    canonical = json.dumps(messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    assert content_hash_of(messages) == hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def test_rows_are_hashable_and_comparable(tmp_path):
    rows, _ = read_all(write(tmp_path / "a.jsonl", lines(good(1))))
    again, _ = read_all(write(tmp_path / "a.jsonl", lines(good(1))))
    assert rows[0] == again[0] and len({rows[0], again[0]}) == 1


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_bom_and_crlf(tmp_path, suffix):
    records = [good(1, id="a"), good(2, id="b")]
    if suffix == ".jsonl":
        data = b"\xef\xbb\xbf" + b"\r\n".join(json.dumps(r).encode() for r in records) + b"\r\n\r\n"
    else:
        data = b"\xef\xbb\xbf" + json_array_bytes(records).replace(b"\n", b"\r\n")
    rows, report = read_all(write(tmp_path / f"bom{suffix}", data))
    assert [row.row_id for row in rows] == ["a", "b"] and report.errors == []
    assert rows[1].messages == tuple(good(2)["messages"])  # no stray "\r" in content
    assert [row.line for row in rows] == ([1, 2] if suffix == ".jsonl" else [2, 2 + json.dumps(records[0], indent=2).count("\n") + 1])
    if suffix == ".jsonl":
        assert report.blank_lines == 1


def test_utf8_error_offset_counts_the_bom(tmp_path):
    rows, report = read_all(write(tmp_path / "b.jsonl", b'\xef\xbb\xbf{"a": "\xff"}\n' + lines(good(1))), on_error="skip")
    assert [str(e) for e in report.errors] == [f"{tmp_path / 'b.jsonl'}:1: line is not valid UTF-8 (byte offset 10)"]


def test_source_and_group(tmp_path):
    records = [
        good(1, source="gsm8k", group="g-top"),
        good(2, dataset="flan", subtask="sub"),
        good(3, meta={"subject": "algebra", "task": "ignored-after-subject?"}),
        good(4, meta={"task": 12}),
        good(5, task=True, meta={"category": "cat"}),  # a bool is not a group name
        good(6, source=""),
        good(7, meta={"subject": "x"}, subject="top-wins"),
    ]
    rows, _ = read_all(write(tmp_path / "mixed_source.jsonl", lines(*records)))
    assert [row.source for row in rows] == ["gsm8k", "flan", "mixed_source", "mixed_source", "mixed_source", "mixed_source", "mixed_source"]
    # auto: the first present of group/subtask/task/subject/category, top level first, then inside "meta"
    assert [row.group for row in rows] == ["g-top", "sub", "ignored-after-subject?", "12", "cat", None, "top-wins"]
    by_field, _ = read_all(tmp_path / "mixed_source.jsonl", group_field="meta.subject")
    assert [row.group for row in by_field] == [None, None, "algebra", None, None, None, "x"]
    dotted_key = write(tmp_path / "dotted.jsonl", lines(good(1, **{"meta.subject": "literal"})))
    assert read_all(dotted_key, group_field="meta.subject")[0][0].group == "literal"


# ---------------------------------------------------------------------------------------------------------
# .json scanner: chunk boundaries must not matter


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_json_reading_does_not_depend_on_chunk_size(tmp_path, monkeypatch, chunk):
    records = [chat(f"Frage {i}: größer als 𝔘 \\\\ \"q\" \u00e9" * (i % 3 + 1), f"Antwort {i} \u2603", id=f"r{i}") for i in range(12)]
    records[4] = 7  # one bad element in the middle
    pretty = write(tmp_path / "p.json", json_array_bytes(records, indent=3))
    minified = write(tmp_path / "m.json", json_array_bytes(records, indent=None))
    broken = write(tmp_path / "b.json", json_array_bytes(records, indent=1).replace(b"Antwort 9", b"Antw\xe9rt 9"))
    expected = {p: (read_all(p, on_error="skip")) for p in (pretty, minified, broken)}
    monkeypatch.setattr(readers, "_READ_CHUNK_BYTES", chunk)
    for path, (rows, report) in expected.items():
        small_rows, small_report = read_all(path, on_error="skip")
        assert small_rows == rows and small_report.errors == report.errors
    assert len(expected[pretty][0]) == 11 and [e.line for e in expected[pretty][1].errors] == [expected[pretty][0][4].line - 1]  # "7," sits on the line before the next record
    assert [e.reason for e in expected[broken][1].errors][1].startswith("record is not valid UTF-8 (line ")


def test_json_big_element_spanning_many_chunks(tmp_path):
    answer = "x" * (3 * 1024 * 1024) + "é"
    path = write(tmp_path / "big.json", json_array_bytes([good(1), chat("big?", answer), good(2)], indent=None))
    rows, report = read_all(path)
    assert [len(row.messages[1]["content"]) for row in rows] == [len("Answer 1."), len(answer), len("Answer 2.")]


# ---------------------------------------------------------------------------------------------------------
# 4. streaming: memory stays far below the file size


def test_streaming_memory_is_bounded(tmp_path):
    path = tmp_path / "big.jsonl"
    filler = "lorem ipsum dolor sit amet " * 45  # ~1.3 KB lines: the id index costs ~190 bytes per row
    head, tail = json.dumps(chat("Question NUMBER: " + filler, "Answer NUMBER.")).split("NUMBER", 1)
    middle, end = tail.split("NUMBER")
    with path.open("w", encoding="utf-8") as handle:
        handle.writelines(f"{head}{i}{middle}{i}{end}\n" for i in range(200_000))
    file_size = path.stat().st_size

    tracemalloc.start()
    try:
        report = ReadReport(file=str(path), format=None)
        count = 0
        for _row in iter_rows(path, report=report):
            count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 200_000 and report.errors == []
    assert peak < file_size / 4, f"peak {peak:,} bytes for a {file_size:,}-byte file"
    path.unlink()


# ---------------------------------------------------------------------------------------------------------
# 5. property: random lines only ever give the documented errors, and nothing is dropped


json_scalars = st.none() | st.booleans() | st.integers(-10, 10) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)
role_values = st.sampled_from(["user", "assistant", "system", "human", "gpt", "bot", "", 3])
text_values = st.sampled_from(["", " ", "hi", "yes", "\u00e9t\u00e9"]) | json_values
message_lists = st.lists(st.fixed_dictionaries({"role": role_values, "content": text_values}), max_size=3)
turn_lists = st.lists(st.fixed_dictionaries({"from": role_values, "value": text_values}), max_size=3)
keys = st.sampled_from(["messages", "conversations", "instruction", "output", "input", "history", "system",
                        "prompt", "completion", "id", "source", "group", "meta", "text"])
records = st.dictionaries(keys, text_values | message_lists | turn_lists | st.integers(0, 3), max_size=5)
lines_strategy = st.lists(
    st.one_of(
        records.map(lambda r: json.dumps(r).encode()),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.text(max_size=12).map(lambda t: t.replace("\n", " ").encode("utf-8", "surrogatepass")),
        st.binary(max_size=8).map(lambda b: b.replace(b"\n", b"")),
        st.sampled_from([b"", b"  ", b"\r", b"\xef\xbb\xbf{}", b"[]", b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}']),
    ),
    max_size=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line_list=lines_strategy)
def test_random_lines_give_only_documented_errors(tmp_path, line_list):
    data = b"\n".join(line_list)
    path = write(tmp_path / "random.jsonl", data)
    report = ReadReport(file=str(path), format=None)
    try:
        rows = list(iter_rows(path, report=report, on_error="skip"))
    except FormatError:
        pass
    else:
        assert len(rows) + len(report.errors) == nonblank_lines(data)
        assert report.rows == len(rows) and all(row.format == report.format for row in rows)
    try:
        list(iter_rows(path, on_error="fail"))
    except (FormatError, BadRowsError):
        pass


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(elements=st.lists(records | json_values, max_size=5), indent=st.sampled_from([None, 0, 2]), cut=st.integers(0, 400))
def test_random_json_arrays_give_only_documented_errors(tmp_path, elements, indent, cut):
    data = json_array_bytes(elements, indent=indent)
    path = write(tmp_path / "random.json", data[: len(data) - cut] if cut < 200 else data)
    report = ReadReport(file=str(path), format=None)
    try:
        rows = list(iter_rows(path, report=report, on_error="skip"))
    except FormatError:
        return
    assert report.rows == len(rows)
    if cut >= 200:  # the whole array: one row or one error per element
        assert len(rows) + len(report.errors) == len(elements)


# ---------------------------------------------------------------------------------------------------------
# the real shared data, when it is there


def _shared_targets() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} is not present")
    return SHARED_DATA / "targets"


def test_shared_gsm8k_targets():
    path = _shared_targets() / "gsm8k.jsonl"
    rows, report = read_all(path)
    ids = [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(rows) == 100 and report.format == "messages" and report.errors == []
    assert [row.row_id for row in rows] == ids
    assert {row.source for row in rows} == {"gsm8k"}
    assert all(row.messages[-1]["role"] == "assistant" for row in rows)


def test_shared_mmlu_groups():
    rows, report = read_all(_shared_targets() / "mmlu.jsonl")
    assert report.errors == [] and len(rows) == 285
    assert len({row.group for row in rows}) == 57
    assert all(row.group == json.loads(json.dumps(row.group)) and row.group for row in rows)
    by_field, _ = read_all(_shared_targets() / "mmlu.jsonl", group_field="meta.subject")
    assert [row.group for row in by_field] == [row.group for row in rows]
