"""Tests for core/data/tabular.py: Parquet, CSV / TSV and datasets save_to_disk folders read exactly like JSONL.

Every file is a real one written with pyarrow (or the csv module) under tmp_path and read through the public API
(``iter_rows`` / ``read_rows``, ``ingest_files``, the CLI and the Data page).  The same records must give the same
rows in every container; bad rows must name the file, the row (and for CSV the line), the column and the reason;
whole-file problems are one ``FormatError`` naming the file.  The fuzz classes at the end (reliability cases, like
tests/test_fuzz_inputs.py's) draw typed columns, hostile cells and cut-off files; a 1,000,000-row file of each kind
is read in a subprocess whose peak memory growth must stay bounded.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc
import pyarrow.parquet as pq
import pytest
from conftest import REPO, subprocess_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.cli import main
from core.data import tabular
from core.data.ingest import ingest_files
from core.data.readers import ReadReport, iter_rows, read_rows
from core.data.records import FORMATS, BadRowsError, FormatError, RowError
from core.store import Store
from core.views import data as data_view

CONTAINERS = ("parquet", "csv", "tsv", "dataset")
EXAMPLES = int(os.environ.get("G2IS_FUZZ_EXAMPLES", "10")) * 2  # files drawn per fuzz class (they are fast)

# ------------------------------------------------------------------------------------------ writing tables


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def as_table(records: list[dict] | pa.Table) -> pa.Table:
    """The records as a table with a column for every key any of them has (``Table.from_pylist`` would take the
    first record's keys only); a record without a key is null there."""
    if isinstance(records, pa.Table):
        return records
    columns = list(dict.fromkeys(key for record in records for key in record))
    return pa.table({column: [record.get(column) for record in records] for column in columns})


def write_parquet(path: Path, records: list[dict] | pa.Table, row_group_size: int | None = None) -> Path:
    table = as_table(records)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def cell(value) -> str:
    """A value as a CSV cell: JSON text for lists and objects, empty for null, str() otherwise."""
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def csv_text(records: list[dict], delimiter: str = ",") -> str:
    columns = list(dict.fromkeys(key for record in records for key in record))
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
    writer.writerow(columns)
    for record in records:
        writer.writerow([cell(record.get(column)) for column in columns])
    return out.getvalue()


def write_csv(path: Path, records: list[dict], delimiter: str = ",") -> Path:
    path.write_text(csv_text(records, delimiter), encoding="utf-8", newline="")
    return path


def write_dataset_folder(folder: Path, records: list[dict] | pa.Table, shards: int = 2, batch_rows: int = 2,
                         state: bool = True) -> Path:
    """What ``datasets.Dataset.save_to_disk`` writes: Arrow IPC *stream* shards, state.json, dataset_info.json."""
    table = as_table(records)
    folder.mkdir(parents=True)
    per_shard = math.ceil(table.num_rows / shards)
    names = []
    for number in range(shards):
        name = f"data-{number:05d}-of-{shards:05d}.arrow"
        with pa.OSFile(str(folder / name), "wb") as sink, pyarrow.ipc.new_stream(sink, table.schema) as writer:
            for batch in table.slice(number * per_shard, per_shard).to_batches(max_chunksize=batch_rows):
                writer.write_batch(batch)
        names.append(name)
    if state:
        (folder / "state.json").write_text(json.dumps({
            "_data_files": [{"filename": name} for name in names], "_fingerprint": "0123456789abcdef",
            "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
            "_split": None}))
    (folder / "dataset_info.json").write_text(json.dumps({"citation": "", "description": "", "features": {},
                                                          "homepage": "", "license": ""}))
    return folder


def write_container(folder: Path, records: list[dict], container: str, name: str = "data") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if container == "parquet":
        return write_parquet(folder / f"{name}.parquet", records)
    if container in ("csv", "tsv"):
        return write_csv(folder / f"{name}.{container}", records, "\t" if container == "tsv" else ",")
    return write_dataset_folder(folder / name, records)


def read(path: Path, **options) -> tuple[list, ReadReport]:
    report = ReadReport(file=str(path), format=None)
    rows = list(iter_rows(path, report=report, on_error=options.pop("on_error", "skip"), **options))
    return rows, report


def comparable(row) -> tuple:
    return row.row_id, row.content_hash, row.messages, row.format, row.line, row.source, row.group


def reasons(report: ReadReport) -> list[tuple[int, str]]:
    return [(error.line, error.reason) for error in report.errors]


# ------------------------------------------------------------------------------------------ the same rows

TRICKY = 'He said "no",\nthen left.\t(tab) — ünïcode 𝔘, 007'


def records_of(fmt: str) -> list[dict]:
    """Records of ``fmt`` with the awkward parts: ids as text with leading zeros and as integers, missing keys,
    commas, quotes, newlines and tabs in the text, groups at the top level and inside ``meta``, nested lists."""
    if fmt == "alpaca":
        return [
            {"id": "001", "instruction": "Add 2 and 3.", "input": "", "output": "5", "subject": "math"},
            {"id": "002", "instruction": "Translate, please", "input": "chat -> English", "output": TRICKY,
             "system": "Be brief.", "history": [["Hi", "Hello"], ["Who?", "Me, \"the model\""]]},
            {"id": "010", "instruction": "Name a colour.", "output": "Blue", "source": "colours",
             "meta": {"subject": "art", "level": 2}},
        ]
    if fmt == "sharegpt":
        return [
            {"conversations": [{"from": "human", "value": "Hi, there"}, {"from": "gpt", "value": TRICKY}],
             "dataset": "chats"},
            {"conversations": [{"from": "system", "value": "Be kind."}, {"from": "Human", "value": "2+2?"},
                               {"from": "GPT", "value": "4"}, {"from": "human", "value": "and 3+3?"},
                               {"from": "gpt", "value": "6"}], "task": "sums"},
            {"system": "Answer in French.", "conversations": [{"from": "user", "value": "cat"},
                                                              {"from": "assistant", "value": "chat"}]},
        ]
    if fmt == "messages":
        return [
            {"id": 7, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": TRICKY},
                                   {"role": "assistant", "content": "Noted."}], "group": "g1"},
            {"id": 8, "messages": [{"role": "user", "content": "Q\r\nwith CRLF"},
                                   {"role": "assistant", "content": "A"}]},
            {"id": 12, "messages": [{"role": "User", "content": "x"}, {"role": "assistant", "content": "y"}],
             "source": "upper"},
        ]
    return [
        {"prompt": "Complete: 1, 2, 3,", "completion": " 4"},
        {"prompt": TRICKY, "completion": "ok", "category": "quotes"},
        {"prompt": "Capital of France?", "completion": "Paris", "id": "pc-3"},
    ]


@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_the_same_records_give_the_same_rows_as_jsonl(tmp_path, fmt, container):
    records = records_of(fmt)
    expected, jsonl_report = read(write_jsonl(tmp_path / "data.jsonl", records))
    assert jsonl_report.errors == [] and len(expected) == 3
    path = write_container(tmp_path / container, records, container)
    rows, report = read(path)
    assert report.format == fmt and report.errors == [] and report.rows == 3
    assert [comparable(r) for r in rows] == [comparable(r) for r in expected]
    assert all(row.file == str(path) for row in rows)
    fail_mode, _ = read(path, on_error="fail")
    assert fail_mode == rows


@pytest.mark.parametrize("container", CONTAINERS)
def test_a_dotted_group_field_reaches_inside_meta_in_every_container(tmp_path, container):
    records = records_of("alpaca")
    expected, _ = read(write_jsonl(tmp_path / "data.jsonl", records), group_field="meta.subject")
    rows, report = read(write_container(tmp_path / container, records, container), group_field="meta.subject")
    assert [r.group for r in rows] == [r.group for r in expected] == [None, None, "art"]
    assert report.errors == []


def test_content_parts_and_conversational_prompt_completion_in_parquet(tmp_path):
    parts = [{"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                           {"role": "assistant", "content": [{"type": "text", "text": "c"}]}]}]
    conversational = [{"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": "a"}]}]
    for name, records in (("parts", parts), ("conversational", conversational)):
        expected, _ = read(write_jsonl(tmp_path / f"{name}.jsonl", records))
        rows, report = read(write_parquet(tmp_path / f"{name}.parquet", records))
        assert report.errors == [] and [comparable(r) for r in rows] == [comparable(r) for r in expected]


def test_columns_no_format_reads_are_never_read(tmp_path):
    table = pa.table({
        "prompt": ["p1", "p2"], "completion": ["c1", "c2"],
        "embedding": pa.array([[0.5] * 8, [0.25] * 8], pa.list_(pa.float32())),
        "when": pa.array([0, 1], pa.timestamp("s")),
        "blob": pa.array([b"\x00\xff", None], pa.binary()),
        "tags": pa.array([[("a", 1)], []], pa.map_(pa.string(), pa.int64())),
    })
    rows, report = read(write_parquet(tmp_path / "extra.parquet", table))
    assert report.errors == [] and [r.messages[1]["content"] for r in rows] == ["c1", "c2"]


# ------------------------------------------------------------------------------------------ CSV / TSV


def test_csv_cells_stay_text_exactly_as_written(tmp_path):
    path = tmp_path / "text.csv"
    path.write_text('id,instruction,output\n001,"Say 007",007\n1e3,NaN,null\n" 2 ",TRUE,"  spaced  "\n', encoding="utf-8")
    rows, report = read(path)
    assert report.errors == []
    assert [r.row_id for r in rows] == ["001", "1e3", " 2 "]
    assert [(r.messages[0]["content"], r.messages[1]["content"]) for r in rows] == [
        ("Say 007", "007"), ("NaN", "null"), ("TRUE", "  spaced  ")]


def test_csv_counts_rows_and_lines(tmp_path):
    """Rows count data records (the header and blank lines are not rows); the line is where the row starts."""
    data = ("\ufeffinstruction,output\r\n"  # line 1 (a byte-order mark and CRLF line ends are accepted)
            "q1,a1\r\n"  # line 2: row 1
            '"q2\r\nspanning\r\nthree lines",a2\r\n'  # lines 3-5: row 2
            "\r\n"  # line 6: blank
            ",\r\n"  # line 7: only empty cells, also blank
            "q3,\r\n"  # line 8: row 3, no answer
            "q4,a4\r\n")  # line 9: row 4
    path = tmp_path / "lines.csv"
    path.write_bytes(data.encode("utf-8"))
    rows, report = read(path)
    assert [(r.line, r.messages[0]["content"]) for r in rows] == [(1, "q1"), (2, "q2\r\nspanning\r\nthree lines"), (4, "q4")]
    assert reasons(report) == [(3, "row 3 (line 8): column 'output' is empty; an alpaca row needs it")]
    assert str(report.errors[0]) == f"{path}:3: row 3 (line 8): column 'output' is empty; an alpaca row needs it"
    assert report.blank_lines == 2


def test_tsv_reads_tabs_and_keeps_commas(tmp_path):
    path = tmp_path / "data.tsv"
    path.write_text("prompt\tcompletion\tsource\na, b, c\td, e\tlist\n\"quoted\ttab\"\tok\t\n", encoding="utf-8")
    rows, report = read(path)
    assert report.errors == [] and report.format == "prompt_completion"
    assert [(r.messages[0]["content"], r.messages[1]["content"], r.source) for r in rows] == [
        ("a, b, c", "d, e", "list"), ("quoted\ttab", "ok", "data")]


def test_csv_json_columns(tmp_path):
    good = json.dumps([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
    records = [{"id": "1", "messages": good},
               {"id": "2", "messages": "hello there"},
               {"id": "3", "messages": '"a JSON string"'},
               {"id": "4", "messages": '{"role": "user"}'},
               {"id": "5", "messages": json.dumps([{"role": "user", "content": "only a question"}])},
               {"id": "6", "messages": ""}]
    path = write_csv(tmp_path / "json.csv", records)
    rows, report = read(path)
    assert [r.row_id for r in rows] == ["1"]
    assert reasons(report) == [
        (2, "row 2 (line 3): column 'messages' is not valid JSON (Expecting value, character 1); it must hold a list "
            'of messages as JSON text (e.g. [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}])'),
        (3, "row 3 (line 4): column 'messages' holds a JSON string, expected a list of messages"),
        (4, "row 4 (line 5): column 'messages' holds a JSON object, expected a list of messages"),
        (5, 'row 5 (line 6): last message must be from the assistant (got "user")'),
        (6, "row 6 (line 7): column 'messages' is empty; a messages row needs it"),
    ]


@pytest.mark.parametrize(("data", "good", "expected"), [
    (b"instruction,output\nq1,a1\nq2,a2,extra\nq3\nq4,a4\n", 2,
     [(2, "row 2 (line 3): the row has 3 values but the header has 2 columns: a value holding the delimiter (',') "
          "must be quoted"), (3, "row 3 (line 4): the row has 1 values but the header has 2 columns")]),
    (b"instruction,output\nq1,a1\nq2,ok \xff\xfe here\nq3,a3\n", 2,
     [(2, "row 2 (line 3): column 'output' is not valid UTF-8 (byte offset 3 in the value)")]),
    (b'instruction,output\nq1,a1\n"q2" and more,a2\nq3,a3\n', 2,
     [(2, "row 2 (line 3): a quoted value goes on after its closing quote (',' expected after '\"'): a value that "
          'starts with a quote must end with one, and a quote inside it must be doubled (""); or put the value '
          "between quotes (the delimiter is ',')")]),
    (b'instruction,output\nq1,a1\nq2,"cut off in the mid', 1,
     [(2, 'row 2 (line 3): the file ends inside a quoted value: it was cut off, or a quote (") is never closed')]),
], ids=["ragged", "bad_utf8", "quote_after_quote", "cut_inside_quotes"])
def test_csv_bad_rows(tmp_path, data, good, expected):
    path = tmp_path / "bad.csv"
    path.write_bytes(data)
    rows, report = read(path)
    assert reasons(report) == expected
    assert len(rows) == good and [r.line for r in rows] == sorted(set(range(1, good + len(expected) + 1))
                                                                 - {line for line, _ in expected})
    with pytest.raises(BadRowsError) as raised:
        list(iter_rows(path))
    assert raised.value.errors == report.errors


@pytest.mark.parametrize(("name", "data", "reason"), [
    ("empty.csv", b"", "file is empty"),
    ("blank.csv", b"\n\n\r\n", "file is empty"),
    ("header.csv", b"instruction,output\n\n", "the file has a header but no rows"),
    ("columns.csv", b"question,answer\nq,a\n", 'the columns are in no known instruction format (columns: "question", '
     '"answer"). Expected one of: alpaca ("instruction", "output"); sharegpt ("conversations"); messages ("messages"); '
     'prompt_completion ("prompt", "completion"). Rename the columns to one of these formats. The first line of the '
     "file is read as the column names."),
    ("twice.csv", b"prompt,completion,prompt\na,b,c\n", "column 'prompt' appears more than once"),
    ("unnamed.csv", b"prompt,,completion\na,b,c\n", "column 2 of the header (line 1) has no name"),
    ("tabs.csv", b"prompt\tcompletion\na\tb\n", "a tab-separated file should end in .tsv"),
    ("json.csv", b'{"prompt": "a", "completion": "b"}\n', "The file looks like JSON: rename it to .jsonl"),
    ("utf16.tsv", "prompt\tcompletion\na\tb\n".encode("utf-16"), "is UTF-16 encoded; save it as UTF-8"),
    ("nobom16.csv", "prompt,completion\na,b\n".encode("utf-16-le"), "The header has NUL bytes: if the file is UTF-16"),
    ("data.csv", b"\x1f\x8b\x08\x00rest", "is gzip-compressed; decompress it first"),
    ("sheet.csv", b"PK\x03\x04rest", "is a zip archive (or a spreadsheet)"),
    ("table.csv", b"PAR1rest", "is a Parquet file; rename it to .parquet"),
    ("badname.csv", b"prompt,compl\xffetion\na,b\n", "the header (line 1) is not valid UTF-8"),
])
def test_csv_whole_file_errors(tmp_path, name, data, reason):
    path = tmp_path / name
    path.write_bytes(data)
    for mode in ("fail", "skip"):
        with pytest.raises(FormatError) as raised:
            list(iter_rows(path, on_error=mode))
        assert not isinstance(raised.value, BadRowsError)
        assert str(raised.value).startswith(f"{path}: ") and reason in str(raised.value), str(raised.value)


def test_csv_long_values_are_read(tmp_path):
    answer = "word, " * 2_000_000  # 12 MB in one cell: over the csv module's default limit of 131,072
    path = write_csv(tmp_path / "long.csv", [{"prompt": "q", "completion": answer}, {"prompt": "q2", "completion": "a"}])
    rows, report = read(path)
    assert report.errors == [] and rows[0].messages[1]["content"] == answer and rows[1].line == 2


# ------------------------------------------------------------------------------------------ Parquet


@pytest.mark.parametrize(("table", "message"), [
    (pa.table({"conversations": ['[{"from": "human", "value": "q"}]']}),
     "column 'conversations' is a string, expected a list of turns (structs with \"from\" and \"value\"); if its "
     "cells hold JSON text, decode it before writing the table"),
    (pa.table({"id": [1.0, None], "prompt": ["a", "b"], "completion": ["c", "d"]}),
     "column 'id' is a float (double), expected text or an integer; pandas writes an integer column with missing "
     "values as floats"),
    (pa.table({"instruction": ["q"], "output": pa.array([5], pa.int64())}),
     "column 'output' is an integer (int64), expected text (a string)"),
    (pa.table({"messages": pa.array([["q", "a"]], pa.list_(pa.string()))}),
     "column 'messages' is a list of strings, expected a list of messages (structs with \"role\" and \"content\")"),
    (pa.table({"messages": [[{"role": "user", "text": "q"}]]}),
     "column 'messages' holds structs with fields \"role\", \"text\"; each item needs \"role\" and \"content\" "
     "(missing: \"content\")"),
    (pa.table({"instruction": ["q"], "output": ["a"], "history": ["Hi|Hello"]}),
     "column 'history' is a string, expected a list of [question, answer] pairs"),
    (pa.table({"prompt": pa.array([True]), "completion": ["a"]}), "column 'prompt' is a boolean, expected text"),
    (pa.table({"text": ["a"], "label": [1]}), 'the columns are in no known instruction format (columns: "text", "label")'),
    (pa.table({"prompt": pa.array([], pa.string()), "completion": pa.array([], pa.string())}),
     "the Parquet file has no rows"),
], ids=["conversations_string", "id_float", "output_int", "messages_strings", "messages_fields", "history_string",
        "prompt_bool", "no_format", "no_rows"])
def test_parquet_columns_of_the_wrong_type_are_one_error_naming_the_column(tmp_path, table, message):
    path = write_parquet(tmp_path / "typed.parquet", table)
    folder = write_dataset_folder(tmp_path / "typed", table, shards=1) if table.num_rows else None
    for target in filter(None, (path, folder)):
        for mode in ("fail", "skip"):
            with pytest.raises(FormatError) as raised:
                list(iter_rows(target, on_error=mode))
            assert str(raised.value).startswith(f"{target}: ") and message in str(raised.value), str(raised.value)


def test_parquet_nulls(tmp_path):
    records = [{"id": "a", "instruction": "q1", "output": "a1"},
               {"id": None, "instruction": "q2", "output": "a2", "input": None, "system": None},
               {"id": "c", "instruction": "q3", "output": None},
               {"id": "d", "instruction": None, "output": "a4"},
               {"id": "e", "instruction": "q5", "output": "a5", "history": [["h", None]]}]
    expected, _ = read(write_jsonl(tmp_path / "nulls.jsonl", [{k: v for k, v in r.items() if v is not None}
                                                              for r in records[:2]]))
    path = write_parquet(tmp_path / "nulls.parquet", records)
    rows, report = read(path)
    assert [comparable(r) for r in rows] == [comparable(r) for r in expected]  # a null id: the content hash
    assert rows[1].row_id == rows[1].content_hash[:16]
    assert reasons(report) == [(3, "row 3: column 'output' is null; an alpaca row needs it"),
                               (4, "row 4: column 'instruction' is null; an alpaca row needs it"),
                               (5, 'row 5: alpaca: "history" item 1 must be a [question, answer] pair of strings')]
    with pytest.raises(BadRowsError) as raised:
        list(iter_rows(path))
    assert f"{path}:3: row 3: column 'output' is null" in str(raised.value)


def test_parquet_nested_lists_with_nulls_and_bad_turns(tmp_path):
    turn = pa.struct([("from", pa.string()), ("value", pa.string())])
    table = pa.table({"conversations": pa.array([
        [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
        [{"from": "human", "value": "q2"}, None],
        [{"from": "human", "value": "q3"}, {"from": "gpt", "value": None}],
        [],
        [{"from": "robot", "value": "q5"}, {"from": "gpt", "value": "a5"}],
        None,
    ], pa.list_(turn))})
    rows, report = read(write_parquet(tmp_path / "nested.parquet", table))
    assert [r.line for r in rows] == [1]
    assert reasons(report) == [
        (2, 'row 2: sharegpt: turn 2 must be an object with "from" and "value"'),
        (3, 'row 3: sharegpt: turn 2 "value" must be a non-empty string'),
        (4, 'row 4: sharegpt: "conversations" must be a non-empty list'),
        (5, 'row 5: sharegpt: turn 1 has unknown role "robot"'),
        (6, "row 6: column 'conversations' is null; a sharegpt row needs it"),
    ]


def _good_parquet_bytes(tmp_path, rows: int = 3000, row_group_size: int = 1000) -> tuple[Path, bytes]:
    records = [{"instruction": f"Question {i}: " + "x" * 40, "output": f"Answer {i}"} for i in range(rows)]
    path = write_parquet(tmp_path / "good.parquet", records, row_group_size=row_group_size)
    return path, path.read_bytes()


@pytest.mark.reliability("input", "Parquet file cut off (truncated download)")
def test_truncated_parquet_is_a_format_error_naming_the_file(tmp_path, observed):
    _, data = _good_parquet_bytes(tmp_path)
    messages = set()
    for cut in (1, 4, 100, len(data) // 2, len(data) - 9, len(data) - 1):
        path = tmp_path / "cut.parquet"
        path.write_bytes(data[:cut])
        with pytest.raises(FormatError) as raised:
            list(iter_rows(path, on_error="skip"))
        message = str(raised.value)
        assert message.startswith(f"{path}: ") and ("cut off" in message or "not a Parquet file" in message), message
        messages.add(message.replace(str(path), "cut.parquet"))
    observed.append("; ".join(sorted(messages)))


@pytest.mark.reliability("input", "Parquet file damaged in the middle (one row group unreadable)")
def test_a_damaged_row_group_loses_only_its_rows(tmp_path, observed):
    path, data = _good_parquet_bytes(tmp_path)
    column = pq.ParquetFile(path).metadata.row_group(1).column(0)
    start = column.dictionary_page_offset or column.data_page_offset
    damaged = bytearray(data)
    damaged[start:start + 16] = b"\xff" * 16  # the page header of the second row group: it cannot be decoded
    path.write_bytes(bytes(damaged))
    rows, report = read(path)
    assert [r.line for r in rows] == list(range(1, 1001)) + list(range(2001, 3001))
    ((line, reason),) = reasons(report)
    assert line == 1001 and reason.startswith("row 1001: rows 1001 to 2000 (row group 2 of 3) cannot be read: the "
                                              "Parquet data is damaged (") and reason.endswith("); they were left out")
    reason.encode("utf-8")
    assert reason.isprintable()
    with pytest.raises(BadRowsError):
        list(iter_rows(path))
    observed.append(f"skip mode kept 2,000 of 3,000 rows; the error: {reason[:200]}")

    one_group, data = _good_parquet_bytes(tmp_path, rows=50, row_group_size=50)
    column = pq.ParquetFile(one_group).metadata.row_group(0).column(0)
    start = column.dictionary_page_offset or column.data_page_offset
    damaged = bytearray(data)
    damaged[start:start + 16] = b"\xff" * 16
    one_group.write_bytes(bytes(damaged))
    with pytest.raises(FormatError, match=r"good\.parquet: no row of the Parquet file can be read \(first problem: "
                                          r"rows 1 to 50 cannot be read: the Parquet data is damaged"):
        list(iter_rows(one_group, on_error="skip"))


def test_containers_in_the_wrong_suffix(tmp_path):
    jsonl = write_jsonl(tmp_path / "records.parquet", records_of("messages"))
    with pytest.raises(FormatError, match=r"records\.parquet: the file looks like JSON, not Parquet; rename it to "
                                          r"\.jsonl"):
        list(iter_rows(jsonl))
    parquet = write_parquet(tmp_path / "table.jsonl", records_of("messages"))
    with pytest.raises(FormatError, match=r"table\.jsonl: the file is a Parquet file; rename it to \.parquet"):
        list(iter_rows(parquet))
    other = tmp_path / "sheet.xlsx"
    other.write_bytes(b"PK\x03\x04")
    with pytest.raises(FormatError, match=r"unsupported file type '\.xlsx': use \.jsonl, \.json, \.parquet, \.csv "
                                          r"or \.tsv \(or a datasets save_to_disk folder\)"):
        list(iter_rows(other))


# ------------------------------------------------------------------------------------------ save_to_disk folders


def test_dataset_folder_rows_count_across_shards(tmp_path):
    records = [{"id": f"r{i}", "prompt": f"q{i}", "completion": f"a{i}" if i != 4 else " "} for i in range(7)]
    folder = write_dataset_folder(tmp_path / "my_set", records, shards=3, batch_rows=2)
    rows, report = read(folder)
    assert [(r.row_id, r.line, r.source) for r in rows] == [(f"r{i}", i + 1, "my_set") for i in range(7) if i != 4]
    assert reasons(report) == [(5, 'row 5: prompt_completion: "completion" must be a non-empty string')]
    without_state = write_dataset_folder(tmp_path / "plain", records, shards=3, state=False)
    assert [comparable(r)[:4] for r in read(without_state)[0]] == [comparable(r)[:4] for r in rows]


def test_dataset_folder_with_an_ipc_file_format_shard(tmp_path):
    folder = tmp_path / "filefmt"
    folder.mkdir()
    table = as_table(records_of("sharegpt"))
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink, pyarrow.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=1)
    rows, report = read(folder)
    assert report.errors == [] and len(rows) == 3


def test_dataset_folder_problems(tmp_path):
    records = [{"id": f"r{i}", "prompt": f"q{i}" * 50, "completion": f"a{i}"} for i in range(40)]
    splits = tmp_path / "dict"
    write_dataset_folder(splits / "train", records)
    write_dataset_folder(splits / "test", records[:3])
    (splits / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    with pytest.raises(FormatError, match=r"dict: is a DatasetDict folder \(splits: train, test\); give the folder of "
                                          r"one split, e\.g\. .*dict/train"):
        list(iter_rows(splits))
    assert len(read(splits / "train")[0]) == 40

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FormatError, match=r"empty: is a directory, not a file \(nor a datasets save_to_disk folder\)"):
        list(iter_rows(empty))

    missing = write_dataset_folder(tmp_path / "missing", records)
    (missing / "data-00001-of-00002.arrow").unlink()
    with pytest.raises(FormatError, match="state.json lists data-00001-of-00002.arrow, which is not in the folder"):
        list(iter_rows(missing))

    cut = write_dataset_folder(tmp_path / "cut", records, batch_rows=5)
    second = cut / "data-00001-of-00002.arrow"
    second.write_bytes(second.read_bytes()[: second.stat().st_size // 2])
    rows, report = read(cut)
    assert [r.line for r in rows] == list(range(1, len(rows) + 1)) and 20 <= len(rows) < 40
    ((line, reason),) = reasons(report)
    assert line == len(rows) + 1
    assert re.match(rf"row {line}: data-00001-of-00002\.arrow cannot be read from here on \(.+\); the rest of the "
                    r"dataset was not read$", reason), reason

    broken = write_dataset_folder(tmp_path / "broken", records)
    (broken / "data-00000-of-00002.arrow").write_bytes(b"not arrow at all")
    with pytest.raises(FormatError, match=r"broken: data-00000-of-00002\.arrow is not a readable Arrow data file"):
        list(iter_rows(broken))


# ------------------------------------------------------------------------------------------ modes, CLI, page


def test_fail_and_skip_modes_and_duplicates_across_containers(tmp_path):
    first = write_parquet(tmp_path / "a.parquet", [{"id": "001", "prompt": "q", "completion": "a"},
                                                   {"id": "x", "prompt": "q2", "completion": ""}])
    second = write_csv(tmp_path / "b.csv", [{"id": "001", "prompt": "other", "completion": "b"},
                                            {"id": "y", "prompt": "q3", "completion": "c"}])
    with pytest.raises(BadRowsError) as raised:
        read_rows([first, second])
    assert [str(e) for e in raised.value.errors] == [
        f'{first}:2: row 2: prompt_completion: "completion" must be a non-empty string',
        f"{second}:1: row 1 (line 2): duplicate id '001' (first seen at {first}:1)",
    ]
    rows, reports = read_rows([first, second], on_error="skip")
    assert [r.row_id for r in rows] == ["001", "y"] and [len(r.errors) for r in reports] == [1, 1]
    yielded = []
    with pytest.raises(BadRowsError):
        for row in iter_rows(first):
            yielded.append(row.row_id)
    assert yielded == ["001"]  # good rows stream before the error; callers commit only without one


def test_cli_ingests_parquet_csv_and_a_dataset_folder(tmp_path, cache, capsys):
    pool = write_parquet(tmp_path / "pool.parquet", records_of("messages"))
    targets = write_csv(tmp_path / "targets.csv", records_of("alpaca"))
    held_out = write_dataset_folder(tmp_path / "held_out", records_of("sharegpt"))
    assert main(["ingest", "--project", "tab", "--pool", str(pool), "--targets", str(targets),
                 "--eval", str(held_out), "--group-field", "meta.subject"]) == 0
    out = capsys.readouterr().out
    assert f"pool: {pool}: 3 rows (messages), 0 skipped" in out
    assert f"targets: {targets}: 3 rows (alpaca), 0 skipped" in out
    assert f"eval: {held_out}: 3 rows (sharegpt), 0 skipped" in out
    store = Store()
    assert store.row_counts("tab") == {"pool": 3, "targets": 3, "eval": 3}
    assert [r.row_id for r in store.rows("tab", "targets")] == ["001", "002", "010"]
    assert [r.group for r in store.rows("tab", "targets")] == [None, None, "art"]

    bad = write_csv(tmp_path / "bad.csv", [{"prompt": "q", "completion": "a"}, {"prompt": "q2", "completion": ""}])
    assert main(["ingest", "--project", "tab", "--pool", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:2: row 2 (line 3): column 'completion' is empty; a prompt_completion row needs it" in err
    assert "nothing was ingested: project 'tab' is unchanged" in err
    assert main(["ingest", "--project", "tab", "--pool", str(bad), "--on-error", "skip"]) == 0
    assert "skipped " + f"{bad}:2: row 2 (line 3)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["ingest", "--help"])
    assert ".parquet, .csv, .tsv" in capsys.readouterr().out


def test_data_page_ingests_an_uploaded_parquet_file_and_lists_csv_row_errors(cache):
    from streamlit.testing.v1 import AppTest

    store = Store()
    store.ensure_project("tables", {})
    app = AppTest.from_file(str(REPO / "app" / "main.py"), default_timeout=120)
    app.query_params["project"] = "tables"
    app.switch_page("../pages/data.py").run()
    assert not app.exception, app.exception

    def uploader(role: str):
        (widget,) = [w for w in app.file_uploader if w.key.startswith(f"data-upload-{role}-")]
        return widget

    buffer = io.BytesIO()
    pq.write_table(as_table(records_of("messages")), buffer)
    uploader("pool").set_value(("pool.parquet", buffer.getvalue(), "application/vnd.apache.parquet")).run()
    assert not app.exception, app.exception
    assert any("3 pool rows" in s.value for s in app.success)
    bad = csv_text([{"instruction": "q1", "output": "a1"}, {"instruction": "q2", "output": ""},
                    {"instruction": "q3", "output": "a3"}]).encode()
    uploader("targets").set_value(("targets.csv", bad, "text/csv")).run()
    assert not app.exception, app.exception
    table = next(d.value for d in app.dataframe if list(d.value.columns) == ["file", "line", "reason"])
    assert table.to_dict("records") == [{"file": "targets.csv", "line": 2, "reason": "row 2 (line 3): column 'output' "
                                                                                      "is empty; an alpaca row needs it"}]
    assert store.row_counts("tables") == {"pool": 3, "targets": 2, "eval": 0}
    assert [r.row_id for r in store.rows("tables", "pool")] == ["7", "8", "12"]
    saved = sorted(p.name for p in (cache / "uploads" / "tables").rglob("*.*"))
    assert saved == ["pool.parquet", "targets.csv"]  # kept with their suffix: that is how they are read


def test_upload_of_an_unsupported_type_names_the_supported_ones(tmp_path):
    store = Store(tmp_path / "cache")
    outcome = data_view.ingest_uploads(store, "p", "pool", [("sheet.xlsx", b"PK\x03\x04")])
    assert not outcome.ingested
    assert outcome.error == "sheet.xlsx: only .jsonl, .json, .parquet, .csv and .tsv files can be ingested."


# ------------------------------------------------------------------------------------------ fuzz

WORDS = st.text(st.characters(exclude_categories=("Cs",)), min_size=0, max_size=10)
ROLES = st.sampled_from(["user", "assistant", "system", "human", "gpt", "Human", "bot", "", "ASSISTANT"])


def check_message(text: str, limit: int = 3000) -> None:
    text.encode("utf-8")  # printable and storable: no lone surrogate
    assert text.strip() and len(text) <= limit, f"message of {len(text)} characters"


def check_reading(path: Path, rows_in_file: int | None = None) -> tuple[list, ReadReport, FormatError | None]:
    """Both modes on one table: only FormatError (naming the file) or rows plus row errors that say "row N"."""
    report = ReadReport(file=str(path), format=None)
    try:
        rows = list(iter_rows(path, report=report, on_error="skip"))
    except FormatError as error:  # anything else is a crash and fails the test
        assert not isinstance(error, BadRowsError)
        check_message(str(error))
        assert str(error).startswith(f"{path}: "), "the message names the file"
        with pytest.raises(FormatError):
            list(iter_rows(path, on_error="fail"))
        return [], report, error
    numbers = [row.line for row in rows] + [error.line for error in report.errors]
    assert len(set(numbers)) == len(numbers) and all(n >= 1 for n in numbers)
    assert [row.line for row in rows] == sorted(row.line for row in rows)
    for error in report.errors:
        assert isinstance(error, RowError) and error.file == str(path)
        assert error.reason.startswith(f"row {error.line}: ") or error.reason.startswith(f"row {error.line} (line ")
        check_message(error.reason, 1500)
    if rows_in_file is not None:
        assert len(rows) + len(report.errors) == rows_in_file, "every row is a Row or a RowError"
    assert all(row.format == report.format for row in rows)
    try:
        again = list(iter_rows(path, on_error="fail"))
    except BadRowsError as error:
        assert error.errors == report.errors
    else:
        assert not report.errors and again == rows
    return rows, report, None


# Each drawn column: (Arrow type, value strategy, whether a row could ever use it).
def text_column(good: bool = True):
    choices = [(pa.string(), WORDS, True), (pa.large_string(), WORDS, True), (pa.int64(), st.integers(-5, 5), False),
               (pa.float64(), st.floats(allow_nan=True), False), (pa.bool_(), st.booleans(), False),
               (pa.list_(pa.string()), st.lists(WORDS, max_size=2), False), (pa.null(), st.none(), True)]
    return st.sampled_from([c for c in choices if c[2] or not good])


def turns_column(keys: tuple[str, str]):
    struct = pa.struct([(keys[0], pa.string()), (keys[1], pa.string())])
    turn = st.one_of(st.none(), st.fixed_dictionaries({keys[0]: st.one_of(st.none(), ROLES), keys[1]: st.one_of(st.none(), WORDS)}))
    return st.sampled_from([
        (pa.list_(struct), st.lists(turn, max_size=4), True),
        (pa.large_list(struct), st.lists(turn, max_size=4), True),
        (pa.list_(pa.string()), st.lists(WORDS, max_size=3), False),
        (pa.string(), WORDS, False),
        (pa.list_(pa.struct([(keys[0], pa.string())])), st.lists(st.fixed_dictionaries({keys[0]: ROLES}), max_size=2), False),
    ])


COLUMNS = {
    "alpaca": {"instruction": None, "output": None, "input": None, "system": None},
    "sharegpt": {"conversations": ("from", "value"), "system": None},
    "messages": {"messages": ("role", "content")},
    "prompt_completion": {"prompt": None, "completion": None},
}


@st.composite
def typed_table(draw) -> tuple[pa.Table, str | None, int]:
    """A table of one format's columns, each of a drawn type with drawn values and nulls; also the column whose
    type no row can use (a FormatError must name it), if any."""
    fmt = draw(st.sampled_from(FORMATS))
    n = draw(st.integers(1, 6))
    columns, bad_column = {}, None
    required = {"alpaca": ("instruction", "output"), "sharegpt": ("conversations",), "messages": ("messages",),
                "prompt_completion": ("prompt", "completion")}[fmt]
    wanted = {name: spec for name, spec in COLUMNS[fmt].items() if name in required or draw(st.booleans())}
    if draw(st.booleans()):
        wanted["id"] = "id"
    for name, spec in wanted.items():
        if spec == "id":
            kind, values, usable = draw(st.sampled_from([(pa.string(), WORDS, True), (pa.int64(), st.integers(0, 3), True),
                                                         (pa.float64(), st.floats(0, 3), False)]))
        elif spec is None:
            kind, values, usable = draw(text_column(good=draw(st.integers(0, 4)) > 0))
        else:
            kind, values, usable = draw(turns_column(spec))
        cells = draw(st.lists(st.one_of(st.none(), values) if draw(st.booleans()) else values, min_size=n, max_size=n))
        if pa.types.is_null(kind):
            cells = [None] * n
        columns[name] = pa.array(cells, kind)
        if not usable and bad_column is None:
            bad_column = name
    return pa.table(columns), bad_column, n


def _fuzz_settings(examples: int = EXAMPLES):
    return settings(max_examples=examples, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


@pytest.mark.reliability("input", "Parquet and save_to_disk columns of drawn types, nulls and nested turns")
def test_fuzz_typed_columns(tmp_path, observed):
    counter = iter(range(10**9))
    seen = {"file": 0, "rows": 0}
    first: list[str] = []

    @_fuzz_settings()
    @given(drawn=typed_table(), as_folder=st.booleans())
    def one(drawn, as_folder):
        table, bad_column, n = drawn
        number = next(counter)
        path = (write_dataset_folder(tmp_path / f"set{number}", table, shards=min(2, n)) if as_folder
                else write_parquet(tmp_path / f"t{number}.parquet", table))
        rows, report, file_error = check_reading(path, None)
        if bad_column is not None:
            assert file_error is not None and f"column {bad_column!r}" in str(file_error), file_error or report.errors
        if file_error is None:
            assert len(rows) + len(report.errors) == n
            for error in report.errors:
                nulls = re.search(r"column '(\w+)' is null", error.reason)
                if nulls:
                    assert table.column(nulls.group(1))[error.line - 1].as_py() is None
        seen["file" if file_error else "rows"] += 1
        if not first:
            first.append(str(file_error or (report.errors[:1] or ["no error"])[0]).replace(str(tmp_path), "")[:200])

    one()
    observed.append(f"{seen['file']} tables refused as a whole (each naming the file and, for a wrong type, the "
                    f"column), {seen['rows']} read row by row with every row a Row or a row error; e.g. {first[0]}")


CSV_CELLS = st.one_of(
    WORDS, st.sampled_from(["", " ", '"', '""', "a,b", "a\tb", "line\nbreak", "\r\n", "[", "[]", "{}", "null", "001",
                            '[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]',
                            '[{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]',
                            '[{"role": "user"}]', '"text"', "[[[[[[[[[[1]]]]]]]]]]"]))


@st.composite
def csv_file(draw) -> tuple[bytes, str, int]:
    fmt = draw(st.sampled_from(FORMATS))
    header = list(COLUMNS[fmt]) + draw(st.lists(st.sampled_from(["id", "source", "meta", "history", "note"]),
                                                max_size=2, unique=True))
    delimiter = draw(st.sampled_from([",", "\t"]))
    out = io.StringIO()
    ending = draw(st.sampled_from(["\n", "\r\n"]))
    writer = csv.writer(out, delimiter=delimiter, lineterminator=ending)
    # csv.writer quotes a value holding a line break only if it is one of lineterminator's characters, but every
    # reader ends a line at a bare "\r" too: such rows are written with every value quoted.
    quoting_writer = csv.writer(out, delimiter=delimiter, lineterminator=ending, quoting=csv.QUOTE_ALL)
    writer.writerow(header)
    n = draw(st.integers(1, 6))
    data_rows = 0
    for _ in range(n):
        cells = [draw(CSV_CELLS) for _ in header]
        if draw(st.integers(0, 9)) == 0:  # a ragged row now and then
            cells = cells[: draw(st.integers(0, len(cells)))] + draw(st.lists(CSV_CELLS, max_size=2))
        if not any(cells):
            continue  # a row of empty cells is a blank line, not a row
        (quoting_writer if any("\r" in c or "\n" in c for c in cells) else writer).writerow(cells)
        data_rows += 1
    return out.getvalue().encode("utf-8"), ".tsv" if delimiter == "\t" else ".csv", data_rows


@pytest.mark.reliability("input", "CSV / TSV cells: quotes, delimiters, line breaks, JSON text, ragged rows")
def test_fuzz_csv_cells(tmp_path, observed):
    counter = iter(range(10**9))
    outcomes = {"file": 0, "rows": 0}

    @_fuzz_settings()
    @given(drawn=csv_file())
    def one(drawn):
        data, suffix, data_rows = drawn
        path = tmp_path / f"c{next(counter)}{suffix}"
        path.write_bytes(data)
        _, _, file_error = check_reading(path, data_rows)
        outcomes["file" if file_error else "rows"] += 1

    one()
    observed.append(f"{outcomes['rows']} files read with every data row a Row or a row error (row and line named), "
                    f"{outcomes['file']} refused as a whole")


@pytest.mark.reliability("input", "tables cut off at a random byte (Parquet, CSV, TSV, save_to_disk shard)")
def test_fuzz_cut_off_tables(tmp_path, observed):
    records = [{"id": f"r{i}", "instruction": f"Question {i}, \"quoted\"\nand long " + "x" * (i * 7),
                "output": f"Answer {i}"} for i in range(30)]
    sources = {
        "parquet": write_parquet(tmp_path / "src.parquet", records, row_group_size=7).read_bytes(),
        "csv": csv_text(records).encode(),
        "tsv": csv_text(records, "\t").encode(),
        "dataset": (write_dataset_folder(tmp_path / "src", records, shards=1, batch_rows=4)
                    / "data-00000-of-00001.arrow").read_bytes(),
    }
    counter = iter(range(10**9))
    outcomes: dict[str, list[int]] = {kind: [] for kind in sources}

    @_fuzz_settings(3 * EXAMPLES)
    @given(kind=st.sampled_from(sorted(sources)), fraction=st.floats(0, 1, exclude_max=True))
    def one(kind, fraction):
        data = sources[kind]
        cut = data[: int(len(data) * fraction)]
        number = next(counter)
        if kind == "dataset":
            path = write_dataset_folder(tmp_path / f"cut{number}", records[:1], shards=1)
            (path / "data-00000-of-00001.arrow").write_bytes(cut)
        else:
            path = tmp_path / f"cut{number}.{kind}"
            path.write_bytes(cut)
        rows, report, file_error = check_reading(path)
        if file_error is None:  # at most one bad spot, where the file was cut; whatever is read is right
            assert len(rows) <= 30 and len(report.errors) <= 1 and all(e.line <= 31 for e in report.errors)
            assert [r.row_id for r in rows] == [f"r{r.line - 1}" for r in rows]
        outcomes[kind].append(len(rows))

    one()
    observed.append("; ".join(f"{kind}: {len(counts)} cuts, {sum(1 for c in counts if c)} kept some rows"
                              for kind, counts in outcomes.items()) + "; never a crash, every message names the file")


@pytest.mark.reliability("input", "random bytes in a .parquet / .csv / .tsv file")
def test_fuzz_random_bytes_in_tables(tmp_path, observed):
    counter = iter(range(10**9))

    @_fuzz_settings(2 * EXAMPLES)
    @given(data=st.binary(max_size=300), suffix=st.sampled_from([".parquet", ".csv", ".tsv"]),
           prefix=st.sampled_from([b"", b"PAR1", b"prompt,completion\n", b"prompt\tcompletion\n"]))
    def one(data, suffix, prefix):
        path = tmp_path / f"r{next(counter)}{suffix}"
        path.write_bytes(prefix + data + (b"PAR1" if prefix == b"PAR1" and data else b""))
        check_reading(path)

    one()
    observed.append("only FormatError naming the file, or rows and row errors")


def test_fuzz_tables_in_the_store(tmp_path):
    """A few drawn tables through ``ingest_files`` (fail: all or nothing) and the Data page's skip-mode upload."""
    store = Store(tmp_path / "cache")
    seed = write_jsonl(tmp_path / "seed.jsonl", [{"prompt": f"seed {i}", "completion": "ok"} for i in range(3)])
    ingest_files(store, "fz", "pool", [seed])
    counter = iter(range(10**9))

    def state():
        return [(r.row_id, r.content_hash, r.line) for r in store.rows("fz", "pool")], store.ingest_report("fz")

    @_fuzz_settings(max(4, EXAMPLES // 4))
    @given(drawn=typed_table())
    def one(drawn):
        table, _, _ = drawn
        path = write_parquet(tmp_path / f"s{next(counter)}.parquet", table)
        rows, report, file_error = check_reading(path)
        before = state()
        try:
            ingest_files(store, "fz", "pool", [path], on_error="fail")
        except (FormatError, BadRowsError):
            assert state() == before
        outcome = data_view.ingest_uploads(store, "fz", "pool", [(path.name, path.read_bytes())])
        if outcome.ingested:
            assert [r.row_id for r in store.rows("fz", "pool")] == [r.row_id for r in rows]
        else:
            assert file_error is not None or not rows

    one()


# ------------------------------------------------------------------------------------------ bounded memory

ROWS_FOR_MEMORY = int(os.environ.get("G2IS_BIG_TABLE_ROWS", "1000000"))
MEMORY_SCRIPT = r"""
import json, sys
from pathlib import Path
from core.data import tabular
from core.data.readers import ReadReport


def status_kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])


def read_all(path):
    kind = tabular.DATASET_FOLDER if path.is_dir() else tabular.TABULAR_SUFFIXES[path.suffix]
    table = tabular.open_table(path, str(path), kind, ReadReport(str(path), None))
    count = last = problems = 0
    for number, line, record, problem in table.records:
        count += 1
        last = number
        problems += problem is not None
    return kind, {"rows": count, "last": last, "problems": problems}


paths = [Path(p) for p in sys.argv[1:]]
results = {}
for warm, path in zip(paths[::2], paths[1::2]):
    read_all(warm)  # a small table of the same kind first: imports, thread pools and allocator arenas (~30 MB once)
    try:  # reset this process's peak RSS (VmHWM) to its current RSS
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        pass
    base = status_kb("VmRSS")
    kind, result = read_all(path)
    results[kind] = result | {"growth_mb": (status_kb("VmHWM") - base) / 1024}
print(json.dumps(results))
"""


def big_batches(rows: int, size: int = 250_000):
    """Batches of a messages table, built with pyarrow compute (no Python object per row)."""
    for start in range(0, rows, size):
        n = min(size, rows - start)
        text = pc.cast(pa.array(np.arange(start, start + n)), pa.string())
        questions = pc.binary_join_element_wise("Question ", text, ": what is ", text, " plus one? Show the steps.", "")
        answers = pc.binary_join_element_wise(text, " plus one is one more than ", text, ".", "")
        contents = pc.take(pa.concat_arrays([questions, answers]), np.column_stack([np.arange(n), np.arange(n) + n]).ravel())
        roles = pc.take(pa.array(["user", "assistant"]), np.tile([0, 1], n))
        turns = pa.StructArray.from_arrays([roles, contents], names=["role", "content"])
        messages = pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32)), turns)
        yield pa.record_batch([pc.binary_join_element_wise("r", text, ""), messages], names=["id", "messages"])


def write_big_tables(folder: Path, rows: int) -> tuple[Path, Path, Path]:
    """A Parquet file (row groups of 250,000), a CSV file and a save_to_disk folder (stream batches of 1,000 rows,
    as datasets writes them) of ``rows`` rows each, written batch by batch (the CSV line by line)."""
    folder.mkdir()
    parquet_path, csv_path, dataset = folder / "big.parquet", folder / "big.csv", folder / "big_set"
    dataset.mkdir()
    schema = next(big_batches(1)).schema
    with pq.ParquetWriter(parquet_path, schema) as parquet, pa.OSFile(str(dataset / "data-00000-of-00001.arrow"), "wb") as sink:
        with pyarrow.ipc.new_stream(sink, schema) as stream:
            for batch in big_batches(rows):
                parquet.write_batch(batch)
                for piece in pa.Table.from_batches([batch]).to_batches(max_chunksize=1000):
                    stream.write_batch(piece)
    (dataset / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    with csv_path.open("w", encoding="utf-8") as out:
        out.write("id,instruction,output\n")
        for i in range(rows):
            out.write(f'r{i},"Question {i}: what is {i} plus one, in words?",{i} plus one is {i + 1}.\n')
    return parquet_path, csv_path, dataset


@pytest.mark.reliability("input", "a 1,000,000-row Parquet, CSV and save_to_disk table streamed with bounded memory")
def test_million_row_tables_are_read_with_bounded_memory(tmp_path, observed):
    """Peak RSS growth (VmHWM after minus RSS before, in a fresh process) of reading every record of a 1,000,000-row
    Parquet file (4 row groups of 250,000), CSV file and save_to_disk folder (stream batches of 1,000 rows, as
    datasets writes them), each generated here in batches.

    Measured is the tabular layer (``open_table(...).records``: decoding, batches to Python, the record dicts): it
    is what this module adds.  Building the rows on top costs ~17 s a million rows on one core and only adds the
    duplicate index (``SeenIds``, ~48 MB at a million rows), whose bound tests/test_fuzz_inputs.py already checks.
    Held whole, the Parquet rows take ~130 MB as Arrow data and ~1 GB as Python objects; pyarrow's default read
    (pre-buffering a whole row group) grew ~65 MB on a one-group file.  32 MB bounds a million rows streamed."""
    warm, big = write_big_tables(tmp_path / "warm", 20_000), write_big_tables(tmp_path / "big", ROWS_FOR_MEMORY)
    parquet_path, csv_path, folder = big
    done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, *(str(p) for pair in zip(warm, big) for p in pair)],
                          env=subprocess_env(tmp_path / "cache") | {"OMP_NUM_THREADS": "1"}, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    sizes = {"parquet": parquet_path.stat().st_size, "csv": csv_path.stat().st_size,
             tabular.DATASET_FOLDER: (folder / "data-00000-of-00001.arrow").stat().st_size}
    observed.append("; ".join(f"{kind}: {r['rows']:,} rows ({sizes[kind] / 2**20:.0f} MB), peak RSS grew "
                              f"{r['growth_mb']:.1f} MB" for kind, r in results.items()) + " (bound 32 MB)")
    for kind, result in results.items():
        assert (result["rows"], result["last"], result["problems"]) == (ROWS_FOR_MEMORY, ROWS_FOR_MEMORY, 0), kind
        assert result["growth_mb"] < 32, (kind, result)
