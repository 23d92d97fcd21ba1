"""Hostile and broken input (issue 5): every reader fuzzed over many distinct classes of malformed files, a
1,000,000-row file ingested with bounded memory, and uploads over the size limit refused.

Each malformed class is one reliability case.  Hypothesis draws the files of a class (which of the four formats,
.jsonl or .json, how many good rows around the bad one and where it sits, and the values inside), and every
drawn file goes through the readers and the store:

* the readers either raise ``FormatError`` (the whole file, naming it) or give rows plus one ``RowError`` per bad
  record (file, line, reason) -- never another exception, and every message is printable UTF-8 of bounded size;
* ``ingest_files(on_error="fail")`` either ingests a clean file or leaves the store exactly as it was;
* ``ingest_uploads`` (the Data page's skip mode) stores exactly the good rows and their errors, or, when no good
  row is left, refuses with a message and leaves the store exactly as it was.

On top of those invariants each class states what it expects: the error reason (a regex) and line of the bad
record, a whole-file error, or a documented acceptance (see the docstrings of ``core/data/readers.py`` and
``core/data/records.py``).
"""
from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomllib
from conftest import REPO, subprocess_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_formats import nonblank_lines

from core import config
from core.data.ingest import ingest_files
from core.data.readers import ReadReport, SeenIds, iter_rows
from core.data.records import FORMATS, BadRowsError, FormatError, RowError
from core.store import Store
from core.views import data as data_view

PROJECT = "fuzz"
CONTAINERS = (".jsonl", ".json")
EXAMPLES = int(os.environ.get("G2IS_FUZZ_EXAMPLES", "10"))  # files drawn per class (CI time); raise it to dig
STORE_EVERY = int(os.environ.get("G2IS_FUZZ_STORE_EVERY", "4"))  # ingest the first 3 and every 4th drawn file

# ------------------------------------------------------------------------------------------ drawing files

TEXT = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=16).filter(lambda t: not t.isspace())
WORDS = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=12).filter(str.strip)
JSON_SCALARS = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False) | TEXT
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                           max_leaves=8)


def dumps(value) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def good_record(draw, fmt: str, i: int, with_id: bool = False) -> dict:
    """A valid record of ``fmt``, distinct for each ``i``."""
    question, answer = draw(TEXT) + f" #{i}", draw(TEXT)
    if fmt == "alpaca":
        record = {"instruction": question, "input": draw(st.sampled_from(["", "some context"])), "output": answer}
    elif fmt == "sharegpt":
        record = {"conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
    elif fmt == "messages":
        record = {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}
    else:
        record = {"prompt": question, "completion": answer}
    if with_id:
        record["id"] = f"id-{i}"
    return record


def join(items: list[bytes], container: str) -> tuple[bytes, list[int]]:
    """The file holding ``items`` (one per line, or one JSON array element per line) and each item's line."""
    if container == ".jsonl":
        return b"".join(item + b"\n" for item in items), [i + 1 for i in range(len(items))]
    return b"[\n" + b",\n".join(items) + b"\n]\n", [i + 2 for i in range(len(items))]


@dataclass
class Sample:
    data: bytes
    suffix: str
    kind: str  # "row": one bad record at ``line``; "file": FormatError; "ok": every row accepted; "any": invariants only
    reason: str = ""  # regex the row's reason / the FormatError must match
    line: int = 0
    good: int = 0  # rows the reader gives in skip mode ("row" and "ok")
    name: str = "data"  # file name without suffix


def with_bad(draw, bad: Callable, reason: str, *, formats=FORMATS, containers=CONTAINERS, fatal: bool = False,
             first: bool = True, with_ids: bool = False, kind: str = "row") -> Sample:
    """Good rows of one format with one bad piece among them.  ``bad(draw, fmt, goods)`` gives the piece's bytes;
    ``fatal``: in a .json array it is a syntax error, after which the file is not read (later rows are lost);
    ``first``: the piece may come first (not for pieces judged against the file's format)."""
    fmt = draw(st.sampled_from(formats))
    container = draw(st.sampled_from(containers))
    n = draw(st.integers(1, 4))
    goods = [good_record(draw, fmt, i, with_ids) for i in range(n)]
    position = draw(st.integers(0 if first else 1, n))
    piece = bad(draw, fmt, goods[:position])
    items = [dumps(g) for g in goods]
    data, lines = join(items[:position] + [piece] + items[position:], container)
    lost = fatal and container == ".json"
    if lost and position == 0:  # nothing before the syntax error: the file as a whole is not readable JSON
        return Sample(data, container, "file", rf"not JSON: no record could be parsed \(first problem: .*({reason})")
    return Sample(data, container, kind, reason, lines[position], position if lost else n)


def all_good(draw, *, formats=FORMATS, containers=CONTAINERS, transform=None, n_min: int = 1) -> Sample:
    """A file of good rows only, optionally transformed (``transform(data, container) -> data``): kind "ok"."""
    fmt = draw(st.sampled_from(formats))
    container = draw(st.sampled_from(containers))
    n = draw(st.integers(n_min, 4))
    data, _ = join([dumps(good_record(draw, fmt, i)) for i in range(n)], container)
    if transform is not None:
        data = transform(data, container)
    return Sample(data, container, "ok", good=n)


def record_with(draw, fmt: str, field: str, value) -> bytes:
    """A good record of ``fmt`` whose ``field`` (a top-level key, or "turn.KEY" / "turn2.KEY" for a turn) is set."""
    record = good_record(draw, fmt, 99)
    if field.startswith("turn"):
        key = {"messages": "messages", "sharegpt": "conversations"}[fmt]
        index = 1 if field.startswith("turn2") else 0
        record[key][index][field.split(".", 1)[1]] = value
    else:
        record[field] = value
    return dumps(record)


# ------------------------------------------------------------------------------------------ the classes
# Each maker draws one file of its class.  A reason regex that differs between .jsonl and .json lists both.


def only_record_is_whole_file(sample: Sample) -> Sample:
    """A file whose only record is broken has nothing that parses: a whole-file error quoting the record's."""
    if sample.kind == "row" and sample.good == 0:
        sample.kind, sample.reason = "file", rf"not JSON: no record could be parsed \(first problem: .*({sample.reason})"
    return sample


def python_literal(draw):
    def bad(draw, fmt, goods):
        record = good_record(draw, fmt, 50)
        record[draw(st.sampled_from(["flag", "meta"]))] = draw(st.sampled_from([True, None, False]))
        return repr(record).encode("utf-8", "surrogatepass")
    return with_bad(draw, bad, r"invalid JSON: Expecting property name enclosed in double quotes", fatal=True)


def truncated_record(draw):
    fmt = draw(st.sampled_from(FORMATS))
    container = draw(st.sampled_from(CONTAINERS))
    n = draw(st.integers(1, 4))
    items = [dumps(good_record(draw, fmt, i)) for i in range(n)]
    cut = draw(st.integers(1, len(items[-1]) - 1))
    if container == ".jsonl":  # the file ends inside its last line (cut off mid-copy)
        data = b"".join(item + b"\n" for item in items[:-1]) + items[-1][:cut]
        return only_record_is_whole_file(Sample(data, container, "row", r"invalid JSON: .*the line ends inside the record"
                                                r"|not valid UTF-8 .*the file ends inside a character", n, n - 1))
    data, lines = join(items, container)
    data = data[: data.rindex(items[-1]) + cut]
    return only_record_is_whole_file(Sample(data, container, "row", r"truncated JSON: the file ends inside this record",
                                            lines[-1], n - 1))


def trailing_comma_in_object(draw):
    def bad(draw, fmt, goods):
        return dumps(good_record(draw, fmt, 50))[:-1] + b", }"
    return with_bad(draw, bad, r"invalid JSON: (Illegal trailing comma|Expecting property name)", fatal=True)


def trailing_comma_after_last_record(draw):
    fmt, container = draw(st.sampled_from(FORMATS)), draw(st.sampled_from(CONTAINERS))
    n = draw(st.integers(1, 4))
    items = [dumps(good_record(draw, fmt, i)) for i in range(n)]
    if container == ".jsonl":
        data = b"".join(item + b"\n" for item in items[:-1]) + items[-1] + b",\n"
        return only_record_is_whole_file(Sample(data, container, "row", r"Extra data .*exactly one JSON object", n, n - 1))
    data, lines = join(items, container)
    data = data.replace(b"\n]\n", b",\n]\n")
    return Sample(data, container, "row", r"invalid JSON: trailing comma before the closing '\]'", lines[-1] + 1, n)


def records_run_together(draw):
    def bad(draw, fmt, goods):
        return dumps(good_record(draw, fmt, 50)) + draw(st.sampled_from([b"", b" ", b"\t"])) + dumps(good_record(draw, fmt, 51))
    reason = r"(Extra data .*exactly one JSON object|expected ',' or '\]' after the record)"
    sample = with_bad(draw, bad, reason, fatal=True)
    if sample.suffix == ".json":  # the array reader takes the first record of the pair, then stops
        if sample.kind == "file":  # the pair came first
            sample.kind, sample.reason, sample.line, sample.good = "row", reason, 2, 0
        sample.good += 1
    return sample


def comment_lines(draw):
    def bad(draw, fmt, goods):
        return draw(st.sampled_from([b"// ", b"# ", b"/* "])) + draw(WORDS).encode()
    return with_bad(draw, bad, r"invalid JSON: Expecting value", fatal=True)


def raw_control_character(draw):
    def bad(draw, fmt, goods):
        control = draw(st.sampled_from([c for c in range(1, 32) if c not in (10, 13)]))
        text = dumps(good_record(draw, fmt, 50))
        cut = text.rindex(b'"', 0, len(text) - 1)  # before the closing quote of the last string
        return text[:cut] + bytes([control]) + text[cut:]
    return with_bad(draw, bad, r"invalid JSON: Invalid control character", fatal=True)


def invalid_escape(draw):
    def bad(draw, fmt, goods):
        escape = draw(st.sampled_from([rb"\x41", rb"\q", rb"\u12G4", rb"\u00", rb"\'"]))
        text = dumps(good_record(draw, fmt, 50))
        cut = text.rindex(b'"', 0, len(text) - 1)
        return text[:cut] + escape + text[cut:]
    return with_bad(draw, bad, r"invalid JSON: Invalid (\\escape|\\uXXXX escape)", fatal=True)


def nan_and_infinity(draw):
    literal = draw(st.sampled_from(["NaN", "Infinity", "-Infinity"]))
    if draw(st.booleans()):  # in a field no format reads: accepted (documented)
        def transform(data, container):
            text = data.decode("utf-8")
            return re.sub(r"\}(,?\n)", lambda m: f', "score": {literal}}}' + m.group(1), text).encode("utf-8")
        return all_good(draw, transform=transform)

    def bad(draw, fmt, goods):  # in a text field: a wrong type
        field = {"alpaca": "output", "prompt_completion": "completion", "messages": "turn2.content",
                 "sharegpt": "turn2.value"}[fmt]
        return record_with(draw, fmt, field, 987654321).replace(b"987654321", literal.encode())
    return with_bad(draw, bad, r'must be a (non-empty )?string|must both be strings')


def huge_numbers(draw):
    if draw(st.booleans()):  # 1e999 overflows to infinity: accepted where no format reads it
        def transform(data, container):
            return re.sub(rb"\}(,?\n)", lambda m: b', "weight": 1e999}' + m.group(1), data)
        return all_good(draw, transform=transform)
    digits = draw(st.integers(4301, 20_000))

    def bad(draw, fmt, goods):
        record = dumps(good_record(draw, fmt, 50))
        return record[:-1] + b', "id": ' + b"7" * digits + b"}"
    return with_bad(draw, bad, r"invalid JSON: Exceeds the limit \(4300 digits\) for integer string conversion: "
                               r"value has \d+ digits(?!.*set_int_max_str_digits)", fatal=True)


def deep_nesting(draw):
    depth = draw(st.integers(2_000, 200_000))

    def bad(draw, fmt, goods):
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        record = dumps(good_record(draw, fmt, 50))
        return record[:-1] + b', "meta": ' + opener * depth + b"1" + closer * depth + b"}"
    return with_bad(draw, bad, r"invalid JSON: nested too deeply", fatal=True)


def nesting_near_the_limit_in_a_read_field(draw):
    depth = draw(st.integers(500, 997))

    def bad(draw, fmt, goods):
        field = {"messages": "turn.role", "sharegpt": "turn.from", "alpaca": "output", "prompt_completion": "prompt"}[fmt]
        return record_with(draw, fmt, field, 987654321).replace(b"987654321", b"[" * depth + b"]" * depth)
    return with_bad(draw, bad, r"unknown role (\[\[\[|a JSON array)|must be a non-empty string|must both be strings|"
                               r"nested too deeply")


def duplicate_keys(draw):
    last_wins_good = draw(st.booleans())

    def bad(draw, fmt, goods):
        good = dumps(good_record(draw, fmt, 50))
        key = {"alpaca": "output", "sharegpt": "conversations", "messages": "messages", "prompt_completion": "completion"}[fmt]
        junk = f'"{key}": {json.dumps(draw(st.sampled_from([None, 3, [], {}])))}, '.encode()
        return b"{" + junk + good[1:] if last_wins_good else good[:-1] + b", " + junk[:-2] + b"}"
    if last_wins_good:  # documented: the last value of a repeated key wins
        sample = with_bad(draw, bad, "", kind="ok")
        sample.good += 1
        return sample
    return with_bad(draw, bad, r"must be a|must both be|non-empty list")


def bom_at_start(draw):
    return all_good(draw, transform=lambda data, container: b"\xef\xbb\xbf" + data)


def bom_in_the_middle(draw):
    def bad(draw, fmt, goods):
        return b"\xef\xbb\xbf" + dumps(good_record(draw, fmt, 50))
    return with_bad(draw, bad, r"invalid JSON: (Unexpected UTF-8 BOM|Expecting value)", first=False, fatal=True)


BAD_UTF8 = [b"\xff", b"\xfe\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"\xe2\x82", b"\xf8\x88\x80\x80\x80", b"\x80"]


def invalid_utf8(draw):
    sequence = draw(st.sampled_from(BAD_UTF8))
    offset: dict = {}

    def bad(draw, fmt, goods):
        text = dumps(good_record(draw, fmt, 50))
        cut = text.rindex(b'"', 0, len(text) - 1)
        offset["at"] = cut
        return text[:cut] + sequence + text[cut:]
    sample = with_bad(draw, bad, "")
    if sample.suffix == ".jsonl":
        sample.reason = rf"line is not valid UTF-8 \(byte offset {offset['at']}\)"
    else:
        sample.reason = rf"record is not valid UTF-8 \(line {sample.line}, byte offset {offset['at']}\)"
    return sample


def lone_surrogate_in_text(draw):
    field = draw(st.sampled_from(["text", "id", "source", "group"]))

    def bad(draw, fmt, goods):
        escape = draw(st.sampled_from(["\\ud800", "\\udfff", "\\udc80x", "a\\ud83d"]))
        if field == "text":
            key = {"alpaca": "output", "prompt_completion": "completion", "messages": "turn2.content",
                   "sharegpt": "turn2.value"}[fmt]
            return record_with(draw, fmt, key, "PLACEHOLDER").replace(b"PLACEHOLDER", escape.encode())
        return record_with(draw, fmt, field, "PLACEHOLDER").replace(b"PLACEHOLDER", escape.encode())
    return with_bad(draw, bad, r"not valid Unicode \(unpaired surrogate\)")


def lone_surrogate_in_shown_values(draw):
    """Surrogates in values that error messages quote: the messages must still be valid UTF-8."""
    where = draw(st.sampled_from(["role", "key", "part"]))

    def bad(draw, fmt, goods):
        escape = draw(st.sampled_from(["\\ud800", "x\\udfff"]))
        if where == "role" and fmt in ("messages", "sharegpt"):
            field = "turn.role" if fmt == "messages" else "turn.from"
            return record_with(draw, fmt, field, "PLACEHOLDER").replace(b"PLACEHOLDER", escape.encode())
        if where == "part" and fmt == "messages":
            return record_with(draw, fmt, "turn.content", [{"type": "PLACEHOLDER"}]).replace(b"PLACEHOLDER", escape.encode())
        return b'{"' + escape.encode() + b'": 1, "other": 2}'  # keys only: matches no format
    return with_bad(draw, bad, r'unknown role "\\ud|unknown role "x\\ud|non-text content part \("|keys: "\\ud|keys: "x\\ud'
                               r'|missing ".*this file is')


def raw_nul_bytes(draw):
    def bad(draw, fmt, goods):
        text = dumps(good_record(draw, fmt, 50))
        cut = draw(st.sampled_from([text.rindex(b'"', 0, len(text) - 1), 1, len(text) - 1]))
        return text[:cut] + b"\x00" * draw(st.integers(1, 3)) + text[cut:]
    return with_bad(draw, bad, r"invalid JSON: .*(NUL bytes: if the file is UTF-16|Expecting|Invalid control|line \d+\); the rest)",
                    fatal=True)


def nul_escapes_in_text(draw):
    return all_good(draw, transform=lambda data, container: data.replace(b' #', b'\\u0000 #'))


def crlf_line_ends(draw):
    return all_good(draw, transform=lambda data, container: data.replace(b"\n", b"\r\n"))


def bare_cr_line_ends(draw):
    sample = all_good(draw, transform=lambda data, container: data.replace(b"\n", b"\r"), n_min=2)
    if sample.suffix == ".jsonl":  # the whole file is one line: nothing parses
        sample.kind, sample.reason = "file", r"not JSON: no record could be parsed .*bare carriage return"
    return sample  # in a .json array "\r" is whitespace: accepted


def unicode_line_separators(draw):
    separator = draw(st.sampled_from(["\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\x1c"]))
    written = separator if ord(separator) >= 0x20 else f"\\u{ord(separator):04x}"  # JSON escapes control characters
    return all_good(draw, transform=lambda data, container: data.replace(b" #", (written + " #").encode("utf-8")))


def ten_mb_record(draw):
    size = 10 * 2**20 + draw(st.integers(0, 1000))
    fmt, container = draw(st.sampled_from(FORMATS)), draw(st.sampled_from(CONTAINERS))
    record = good_record(draw, fmt, 0)
    big = "x" * size + draw(TEXT)
    key = {"alpaca": "output", "prompt_completion": "completion"}.get(fmt)
    if key:
        record[key] = big
    else:
        record["messages" if fmt == "messages" else "conversations"][1]["content" if fmt == "messages" else "value"] = big
    data, _ = join([dumps(good_record(draw, fmt, 1)), dumps(record)], container)
    return Sample(data, container, "ok", good=2)


def ten_mb_garbage_line(draw):
    size = 10 * 2**20 + draw(st.integers(0, 1000))

    def bad(draw, fmt, goods):
        filler = draw(st.sampled_from([b"a", b"{", b"[", b"\"", b"1", b" x"]))
        return b'{"messages": ' + (filler * size)[:size]
    return with_bad(draw, bad, r"invalid JSON", fatal=True)


def empty_file(draw):
    suffix = draw(st.sampled_from(CONTAINERS))
    return Sample(b"", suffix, "file", r"file is empty")


def blank_or_bom_only_file(draw):
    data = draw(st.sampled_from([b"", b"\xef\xbb\xbf"])) + draw(st.text(" \t\r\n", max_size=20)).encode()
    return Sample(data, draw(st.sampled_from(CONTAINERS)), "file", r"file is empty")


def json_array_in_jsonl(draw):
    fmt = draw(st.sampled_from(FORMATS))
    records = [good_record(draw, fmt, i) for i in range(draw(st.integers(1, 4)))]
    indent = draw(st.sampled_from([None, 1, 2, 4]))
    return Sample(json.dumps(records, indent=indent).encode(), ".jsonl", "file", r"looks like a JSON array; rename it to \.json")


def jsonl_in_json_file(draw):
    sample = all_good(draw, containers=(".jsonl",))
    return Sample(sample.data, ".json", "file", r"found an object at line 1; .*rename it to \.jsonl")


def json_top_level_not_an_array(draw):
    value = draw(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                           TEXT, st.just("word")))
    if value == "word":
        return Sample(b"hello", ".json", "file", r"not JSON: expected a JSON array of records, found 'h' at line 1")
    if value is None or isinstance(value, bool):
        shown = json.dumps(value)
    else:
        shown = "a string" if isinstance(value, str) else "a number"
    return Sample(json.dumps(value).encode(), ".json", "file", rf"expected a JSON array of records, found {shown} at line 1")


def pretty_printed_records_in_jsonl(draw):
    fmt = draw(st.sampled_from(["messages", "sharegpt", "prompt_completion"]))
    records = [good_record(draw, fmt, i) for i in range(draw(st.integers(1, 3)))]
    data = b"".join(json.dumps(r, indent=draw(st.sampled_from([1, 2, 4]))).encode() + b"\n" for r in records)
    return Sample(data, ".jsonl", "file", r"each record must be complete on one line")


def compressed_or_archived(draw):
    plain = all_good(draw, containers=(".jsonl",)).data
    kind = draw(st.sampled_from(["gzip", "bzip2", "xz", "zip"]))
    if kind == "zip":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("data.jsonl", plain)
        data = buffer.getvalue()
    else:
        data = {"gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress}[kind](plain)
    return Sample(data, draw(st.sampled_from(CONTAINERS)), "file", rf"the file is (a )?{kind}")


def utf16_or_utf32(draw):
    text = all_good(draw).data.decode("utf-8")
    sample_suffix = draw(st.sampled_from(CONTAINERS))
    encoding = draw(st.sampled_from(["utf-16", "utf-16-le", "utf-16-be", "utf-32"]))
    data = text.encode(encoding)
    expected = "UTF-32 encoded" if encoding == "utf-32" else "UTF-16 encoded"
    return Sample(data, sample_suffix, "file", expected + r".*; save it as UTF-8")


def binary_garbage(draw):
    return Sample(draw(st.binary(min_size=1, max_size=300)), draw(st.sampled_from(CONTAINERS)), "any")


def unsupported_extension(draw):
    sample = all_good(draw)
    sample.suffix = draw(st.sampled_from([".txt", ".xlsx", ".jsonl.gz", ".JSONL5", ""]))
    sample.kind, sample.reason = "file", r"unsupported file type"
    return sample


def non_object_records(draw):
    def bad(draw, fmt, goods):
        return json.dumps(draw(st.one_of(JSON_SCALARS, st.lists(JSON_SCALARS, max_size=3)))).encode()
    sample = with_bad(draw, bad, r"expected a JSON object, got (null|boolean|number|string|array)")
    if sample.suffix == ".jsonl" and sample.line == 1 and sample.data.startswith(b"["):
        sample.kind, sample.reason = "file", r"line 1 starts a JSON array, so the file looks like a JSON array"
    return sample


def record_of_no_format(draw):
    def bad(draw, fmt, goods):
        keys = st.text(min_size=1, max_size=8).filter(lambda k: k not in ("messages", "conversations", "instruction",
                                                                            "output", "prompt", "completion"))
        return dumps(draw(st.dictionaries(keys, JSON_SCALARS, max_size=4)))
    return with_bad(draw, bad, r"record matches no known format \(keys: .*\); expected one of|missing .*this file is")


def mixed_formats(draw):
    def bad(draw, fmt, goods):
        other = draw(st.sampled_from([f for f in FORMATS if f != fmt]))
        return dumps(good_record(draw, other, 50))
    return with_bad(draw, bad, r"record is in \w+ format but this file is \w+ \(detected at line \d+\)", first=False)


def missing_required_field(draw):
    def bad(draw, fmt, goods):
        record = good_record(draw, fmt, 50)
        for key in {"alpaca": ["output"], "prompt_completion": ["completion"], "messages": ["messages"],
                    "sharegpt": ["conversations"]}[fmt]:
            del record[key]
        record["note"] = draw(TEXT)
        return dumps(record)
    return with_bad(draw, bad, r'\w+: missing "\w+" \(this file is \w+, detected at line \d+\)', first=False)


def wrong_type(name: str, fields: dict[str, list[str]], allowed: Callable):
    def maker(draw):
        def bad(draw, fmt, goods):
            field = draw(st.sampled_from(fields[fmt]))
            value = draw(JSON_VALUES.filter(lambda v: not allowed(field, v)))
            return record_with(draw, fmt, field, value)
        return with_bad(draw, bad, r"must be|must both be|unknown role|non-text content part|has no \"text\" string|"
                                   r"empty (assistant|user)|no user message|last message|system message",
                        formats=tuple(fields))
    maker.__name__ = name
    return maker


def _alpaca_allowed(field, value):
    if field in ("input", "system"):
        return value is None or isinstance(value, str)
    if field == "history":
        return value is None or (isinstance(value, list) and all(
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair) for pair in value))
    return isinstance(value, str) and not value.isspace() and value != ""


wrong_type_alpaca = wrong_type("wrong_type_alpaca", {"alpaca": ["instruction", "output", "input", "system", "history"]}, _alpaca_allowed)
wrong_type_sharegpt = wrong_type("wrong_type_sharegpt", {"sharegpt": ["conversations", "system", "turn.from", "turn.value", "turn2.value"]},
                                 lambda f, v: (f == "system" and (v is None or isinstance(v, str)))
                                 or (f.startswith("turn") and isinstance(v, str)))
wrong_type_messages = wrong_type("wrong_type_messages", {"messages": ["messages", "turn.role", "turn.content", "turn2.content"]},
                                 lambda f, v: isinstance(v, str) and f != "messages")
wrong_type_prompt_completion = wrong_type("wrong_type_prompt_completion", {"prompt_completion": ["prompt", "completion"]},
                                          lambda f, v: isinstance(v, str) and v.strip() != "")


def missing_or_empty_assistant_turn(draw):
    def bad(draw, fmt, goods):
        record = good_record(draw, fmt, 50)
        empty = draw(st.sampled_from(["", " ", "\n\t", "\u3000"]))
        missing = draw(st.booleans())
        if fmt == "alpaca":
            record["output"] = empty
        elif fmt == "prompt_completion":
            record["completion"] = empty
        elif fmt == "messages":
            record["messages"] = record["messages"][:1] if missing else record["messages"][:1] + [{"role": "assistant", "content": empty}]
        else:
            record["conversations"] = record["conversations"][:1] if missing else record["conversations"][:1] + [{"from": "gpt", "value": empty}]
        return dumps(record)
    return with_bad(draw, bad, r'empty assistant answer|last message must be from the assistant|"(output|completion|value)" '
                               r"must be a non-empty string")


def missing_or_empty_user_turn(draw):
    def bad(draw, fmt, goods):
        record = good_record(draw, fmt, 50)
        empty = draw(st.sampled_from(["", "  ", "\r\n"]))
        if fmt == "alpaca":
            record["instruction"] = empty
        elif fmt == "prompt_completion":
            record["prompt"] = empty
        elif fmt == "messages":
            record["messages"] = ([{"role": "system", "content": "Be brief."}, record["messages"][1]] if draw(st.booleans())
                                  else [{"role": "user", "content": empty}, record["messages"][1]])
        else:
            record["conversations"][0]["value"] = empty
        return dumps(record)
    return with_bad(draw, bad, r'empty user message|no user message|"(instruction|prompt|value)" must be a non-empty string')


def unknown_roles(draw):
    def bad(draw, fmt, goods):
        role = draw(WORDS.filter(lambda r: r.lower() not in ("user", "assistant", "system", "human", "gpt", "chatgpt", "model")))
        return record_with(draw, fmt, "turn.role" if fmt == "messages" else "turn.from", role)
    return with_bad(draw, bad, r"turn 1 has unknown role", formats=("messages", "sharegpt"))


def system_turn_not_first(draw):
    def bad(draw, fmt, goods):
        record = good_record(draw, fmt, 50)
        if fmt == "messages":
            record["messages"].insert(1, {"role": "system", "content": draw(TEXT)})
        else:
            record["conversations"].insert(1, {"from": "system", "value": draw(TEXT)})
        return dumps(record)
    return with_bad(draw, bad, r"system message must be the first turn \(found in turn 2\)", formats=("messages", "sharegpt"))


def malformed_content_parts(draw):
    def bad(draw, fmt, goods):
        part = draw(st.one_of(
            st.fixed_dictionaries({"type": st.sampled_from(["image_url", "audio", "", "TEXT"])}),
            st.fixed_dictionaries({"type": st.just("text"), "text": JSON_SCALARS.filter(lambda v: not isinstance(v, str))}),
            st.fixed_dictionaries({"type": st.just("text")}),
            JSON_SCALARS))
        return record_with(draw, fmt, "turn.content", [{"type": "text", "text": "ok"}, part])
    return with_bad(draw, bad, r'non-text content part|content part 2 has no "text" string', formats=("messages",))


def malformed_alpaca_history(draw):
    def bad(draw, fmt, goods):
        item = draw(st.one_of(st.lists(TEXT, min_size=0, max_size=3).filter(lambda items: len(items) != 2),
                              st.tuples(TEXT, JSON_SCALARS.filter(lambda v: not isinstance(v, str))).map(list),
                              JSON_SCALARS))
        return record_with(draw, fmt, "history", [["Hi", "Hello"], item])
    return with_bad(draw, bad, r'"history" item 2 must be a \[question, answer\] pair of strings', formats=("alpaca",))


def duplicate_ids(draw):
    def bad(draw, fmt, goods):
        record = good_record(draw, fmt, 50)
        twin = draw(st.sampled_from(goods))["id"]
        record["id"] = twin
        return dumps(record)
    sample = with_bad(draw, bad, r"duplicate id 'id-\d+' \(first seen at .*:\d+\)", first=False, with_ids=True)
    return sample


def duplicate_content(draw):
    def bad(draw, fmt, goods):
        return dumps(draw(st.sampled_from(goods)))
    return with_bad(draw, bad, r"duplicate row: same content as .*:\d+", first=False)


def id_of_wrong_type(draw):
    def bad(draw, fmt, goods):
        value = draw(st.one_of(st.just(""), st.just("  "), st.none(), st.booleans(), st.floats(allow_nan=False),
                               st.lists(JSON_SCALARS, max_size=2), st.dictionaries(TEXT, JSON_SCALARS, max_size=2)))
        return record_with(draw, fmt, "id", value)
    return with_bad(draw, bad, r'"id" must be a non-empty string or integer')


def nested_garbage_in_any_field(draw):
    def bad(draw, fmt, goods):
        record = good_record(draw, fmt, 50)
        key = draw(st.sampled_from(sorted(record) + ["meta", "id", "source", "group", "history", "system"]))
        record[key] = draw(st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                                        | st.dictionaries(TEXT, inner, max_size=4), max_leaves=30))
        return dumps(record)
    sample = with_bad(draw, bad, "", kind="any")
    return sample


def unknown_extra_keys(draw):
    def transform(data, container):
        extra = json.dumps({"meta": {"x": [1, {"y": None}]}, "label": "ok", "tokens": 12})[1:-1].encode()
        return re.sub(rb"\}(,?\n)", lambda m: b", " + extra + b"}" + m.group(1), data)
    return all_good(draw, transform=transform)


def truncated_json_array(draw):
    sample = all_good(draw, containers=(".json",))
    data = sample.data.rstrip()[:-1]  # drop the closing "]"
    return Sample(data, ".json", "row", r"truncated JSON array: the file ends before the closing '\]'",
                  data.count(b"\n") + 1, sample.good)


def data_after_the_array(draw):
    sample = all_good(draw, containers=(".json",))
    extra = draw(st.sampled_from([b"[]", b"{}", b"x", b"]", b"\x00"]))
    return Sample(sample.data + extra, ".json", "row", r"invalid JSON: extra data after the closing '\]'",
                  sample.data.count(b"\n") + 1, sample.good)


def empty_json_array(draw):
    return Sample(b"[" + draw(st.text(" \t\r\n", max_size=5)).encode() + b"]", ".json", "file", r"the JSON array is empty")


@dataclass
class InputClass:
    name: str  # the reliability case
    make: Callable  # draw -> Sample
    examples: int = EXAMPLES


INPUT_CLASSES = [
    InputClass("invalid JSON: a Python dict literal (single quotes, True/None)", python_literal),
    InputClass("file cut off in the middle of a record", truncated_record),
    InputClass("trailing comma inside a record", trailing_comma_in_object),
    InputClass("trailing comma after the last record", trailing_comma_after_last_record),
    InputClass("two records run together on one line / without a comma", records_run_together),
    InputClass("comment lines (// # /*)", comment_lines),
    InputClass("raw control character inside a string", raw_control_character),
    InputClass("invalid escape sequence (\\x41, \\u12G4)", invalid_escape),
    InputClass("NaN / Infinity literals", nan_and_infinity),
    InputClass("huge numbers (1e999, 5000-digit integers)", huge_numbers),
    InputClass("deeply nested JSON (recursion)", deep_nesting),
    InputClass("nesting near the recursion limit in a field that is read", nesting_near_the_limit_in_a_read_field),
    InputClass("duplicate keys in one record", duplicate_keys),
    InputClass("UTF-8 byte-order mark at the start", bom_at_start),
    InputClass("byte-order mark in the middle of the file", bom_in_the_middle),
    InputClass("invalid UTF-8 bytes", invalid_utf8),
    InputClass("lone surrogate (\\ud800) in text, id, source or group", lone_surrogate_in_text),
    InputClass("lone surrogate in a role, key or part type quoted by the error", lone_surrogate_in_shown_values),
    InputClass("raw NUL bytes", raw_nul_bytes),
    InputClass("\\u0000 escapes inside text", nul_escapes_in_text),
    InputClass("CRLF line ends", crlf_line_ends),
    InputClass("bare CR (old Mac) line ends", bare_cr_line_ends),
    InputClass("Unicode line separators (U+2028, U+0085, form feed) inside text", unicode_line_separators),
    InputClass("a 10 MB record on one line", ten_mb_record, examples=2),
    InputClass("a 10 MB line of garbage", ten_mb_garbage_line, examples=2),
    InputClass("0-byte file", empty_file, examples=2),
    InputClass("file of blanks or only a byte-order mark", blank_or_bom_only_file),
    InputClass("a JSON array where JSONL was expected", json_array_in_jsonl),
    InputClass("JSON Lines in a .json file", jsonl_in_json_file),
    InputClass(".json file that is a scalar, not an array", json_top_level_not_an_array),
    InputClass("pretty-printed records in a .jsonl file", pretty_printed_records_in_jsonl),
    InputClass("compressed file or archive (gzip, bzip2, xz, zip)", compressed_or_archived),
    InputClass("UTF-16 / UTF-32 encoded file", utf16_or_utf32),
    InputClass("random binary bytes", binary_garbage, examples=3 * EXAMPLES),
    InputClass("unsupported file extension", unsupported_extension),
    InputClass("records that are not objects (number, string, array, null)", non_object_records),
    InputClass("record in no known format", record_of_no_format),
    InputClass("mixed formats in one file", mixed_formats),
    InputClass("required field of the file's format missing", missing_required_field),
    InputClass("wrong types: Alpaca fields", wrong_type_alpaca),
    InputClass("wrong types: ShareGPT fields", wrong_type_sharegpt),
    InputClass("wrong types: messages fields", wrong_type_messages),
    InputClass("wrong types: prompt/completion fields", wrong_type_prompt_completion),
    InputClass("missing or empty assistant turn", missing_or_empty_assistant_turn),
    InputClass("missing or empty user turn", missing_or_empty_user_turn),
    InputClass("unknown roles", unknown_roles),
    InputClass("system turn not first", system_turn_not_first),
    InputClass("non-text or malformed content parts", malformed_content_parts),
    InputClass("malformed Alpaca history", malformed_alpaca_history),
    InputClass("duplicate ids", duplicate_ids),
    InputClass("duplicate rows (same content, no ids)", duplicate_content),
    InputClass("id of the wrong type (null, bool, float, list, empty)", id_of_wrong_type),
    InputClass("nested garbage in any field", nested_garbage_in_any_field),
    InputClass("unknown extra keys", unknown_extra_keys),
    InputClass("JSON array without its closing bracket", truncated_json_array),
    InputClass("data after the closing bracket of a JSON array", data_after_the_array),
    InputClass("empty JSON array", empty_json_array, examples=2),
]

# ------------------------------------------------------------------------------------------ the checks


def check_message(text: str, limit: int = 3000) -> None:
    text.encode("utf-8")  # printable and storable: no lone surrogate
    assert text.strip() and len(text) <= limit, f"message of {len(text)} characters"


@dataclass
class ReaderResult:
    rows: list | None
    report: ReadReport
    file_error: FormatError | None


def read_and_check(path: Path, sample: Sample) -> ReaderResult:
    """Both reader modes on one file: only the documented errors, every message clear, nothing dropped silently."""
    report = ReadReport(file=str(path), format=None)
    try:
        rows, file_error = list(iter_rows(path, report=report, on_error="skip")), None
    except FormatError as error:  # anything else is a crash and fails the test
        rows, file_error = None, error
    if file_error is not None:
        assert not isinstance(file_error, BadRowsError)
        check_message(str(file_error))
        assert str(path) in str(file_error), "the message names the file"
        with pytest.raises(FormatError):
            list(iter_rows(path, on_error="fail"))
    else:
        for error in report.errors:
            assert isinstance(error, RowError) and error.file == str(path) and error.line >= 1
            check_message(error.reason, 1500)
        if sample.suffix == ".jsonl":
            assert len(rows) + len(report.errors) == nonblank_lines(sample.data), "every line is a row or an error"
        try:
            fail_rows = list(iter_rows(path, on_error="fail"))
        except BadRowsError as error:
            assert error.errors == report.errors
            check_message(str(error), 12_000)
        else:
            assert not report.errors and fail_rows == rows

    if sample.kind == "file":
        assert file_error is not None, f"expected a whole-file error, got {report.errors[:3]}"
        assert re.search(sample.reason, str(file_error)), str(file_error)
    elif sample.kind == "row":
        assert file_error is None, str(file_error)
        assert [e.line for e in report.errors] == [sample.line], report.errors
        assert re.search(sample.reason, report.errors[0].reason, re.S), report.errors[0].reason
        assert len(rows) == sample.good
    elif sample.kind == "ok":
        assert file_error is None and report.errors == [], file_error or report.errors[:3]
        assert len(rows) == sample.good
    return ReaderResult(rows, report, file_error)


def store_state(store: Store) -> tuple:
    rows = [(r.ordinal, r.row_id, r.content_hash, r.messages, r.format, r.source, r.line, r.group)
            for r in store.rows(PROJECT, "pool")]
    return rows, store.ingest_report(PROJECT)


def ingest_and_check(store: Store, path: Path, sample: Sample, read: ReaderResult) -> str:
    """Fail mode leaves the store as it was unless the file is clean; the Data page's skip mode stores exactly the
    good rows (and their errors) or, with none, leaves the store as it was.  Returns what the page said."""
    before = store_state(store)
    try:
        ingest_files(store, PROJECT, "pool", [path], on_error="fail")
    except (FormatError, BadRowsError):
        assert store_state(store) == before, "a failed ingest changed the store"
        assert read.file_error is not None or read.report.errors or not read.rows
    else:
        assert read.file_error is None and not read.report.errors
        before = None  # the clean file's rows are in: the upload below must ingest them again

    outcome = data_view.ingest_uploads(store, PROJECT, "pool", [(path.name, sample.data)])
    if not outcome.ingested:
        assert before is not None and store_state(store) == before, "a refused upload changed the store"
        assert read.file_error is not None or not read.rows
        check_message(outcome.error, 12_000)
        return outcome.error
    rows, report = store_state(store)
    expected = [(i, r.row_id, r.content_hash, list(r.messages), r.format, r.source, r.line, r.group)
                for i, r in enumerate(read.rows)]
    assert rows == expected, "skip mode stored other rows than the good ones"
    saved = outcome.files[0].path
    stored_errors = sorted((e["line"], e["reason"].replace(saved, "FILE")) for e in report["errors"])
    assert stored_errors == sorted((e.line, e.reason.replace(str(path), "FILE")) for e in read.report.errors)
    shown = outcome.error_table()[:1]
    return "; ".join(f"{e['file']}:{e['line']}: {e['reason']}" for e in shown) or f"{len(rows)} rows accepted"


@pytest.fixture()
def fuzz_store(tmp_path) -> Store:
    store = Store(tmp_path / "cache")
    seed = tmp_path / "seed.jsonl"
    seed.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"seed {i}"},
                                                     {"role": "assistant", "content": "ok"}]}) + "\n" for i in range(3)))
    ingest_files(store, PROJECT, "pool", [seed])
    return store


@pytest.mark.parametrize("input_class", [pytest.param(c, id=c.make.__name__, marks=pytest.mark.reliability("input", c.name))
                                         for c in INPUT_CLASSES])
def test_malformed_input_class(input_class, fuzz_store, tmp_path, observed):
    """Every drawn file goes through both readers; the first three and every fourth also through the store."""
    seen_kinds: dict[str, int] = {}
    first_message: list[str] = []
    counter = iter(range(10**9))
    ingested = [0]

    @settings(max_examples=input_class.examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                     HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(data=st.data())
    def one_file(data):
        sample = input_class.make(data.draw)
        number = next(counter)
        path = tmp_path / f"case{number}" / (sample.name + sample.suffix)
        path.parent.mkdir()
        path.write_bytes(sample.data)
        read = read_and_check(path, sample)
        if number < 3 or number % STORE_EVERY == 0:  # the store costs ~0.5 s a file: a sample of them
            said = ingest_and_check(fuzz_store, path, sample, read)
            ingested[0] += 1
            if not first_message:
                first_message.append(said.replace(str(path), path.name)[:300])
        seen_kinds[sample.kind] = seen_kinds.get(sample.kind, 0) + 1
        path.unlink()

    one_file()
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(seen_kinds.items()))
    observed.append(f"{sum(seen_kinds.values())} drawn files ({kinds}): no crash, only documented errors; "
                    f"{ingested[0]} of them ingested: fail mode left the store unchanged, skip mode stored exactly the "
                    "good rows")
    observed.append(f"e.g. the Data page said: {first_message[0]}")


def test_there_are_at_least_40_distinct_classes():
    assert len({c.name for c in INPUT_CLASSES}) == len(INPUT_CLASSES) >= 40
    assert len({c.make for c in INPUT_CLASSES}) == len(INPUT_CLASSES)


# ------------------------------------------------------------------------------------------ single-file classes


@pytest.mark.reliability("input", "not a regular file (a FIFO, a directory)")
def test_fifo_and_directory_are_refused_without_blocking(tmp_path, fuzz_store, observed):
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)  # opening it for reading would block until a writer comes: it must not be opened
    folder = tmp_path / "folder.json"
    folder.mkdir()
    before = store_state(fuzz_store)
    for path, reason in ((fifo, "is not a regular file (a pipe, socket or device)"), (folder, "is a directory")):
        for mode in ("fail", "skip"):
            with pytest.raises(FormatError, match=re.escape(reason)):
                ingest_files(fuzz_store, PROJECT, "pool", [path], on_error=mode)
        observed.append(f"{path.name}: {reason}")
    assert store_state(fuzz_store) == before


@pytest.mark.reliability("input", "file name that is not valid UTF-8")
def test_file_name_in_another_encoding(tmp_path, fuzz_store, observed):
    path = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.jsonl"))  # Latin-1 "café": a lone surrogate in str
    path.write_bytes(b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n')
    before = store_state(fuzz_store)
    with pytest.raises(FormatError) as raised:
        ingest_files(fuzz_store, PROJECT, "pool", [path], on_error="skip")
    message = str(raised.value)
    check_message(message)
    assert "caf\\udce9.jsonl: the file name is not valid UTF-8; rename the file" in message
    assert store_state(fuzz_store) == before
    observed.append(f"message: {message.rsplit('/', 1)[-1]}")


@pytest.mark.reliability("input", "20,000 bad rows in one file")
def test_many_bad_rows_are_all_listed_and_stored(tmp_path, fuzz_store, observed):
    lines = [json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]})
             if i % 10 == 0 else f'{{"messages": [{{"role": "bot{i}", "content": "x"}}]}}' for i in range(22_000)]
    path = tmp_path / "mostly_bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    before = store_state(fuzz_store)
    with pytest.raises(BadRowsError) as raised:
        ingest_files(fuzz_store, PROJECT, "pool", [path], on_error="fail")
    assert store_state(fuzz_store) == before
    message = str(raised.value)
    assert message.startswith(f"19800 bad row(s) in {path}") and message.endswith("... and 19790 more")
    assert message.count("\n") == 11  # the first 10 listed, not 19,800 lines
    result = ingest_files(fuzz_store, PROJECT, "pool", [path], on_error="skip")
    assert result.rows == 2200 and len(result.errors) == 19_800
    total, _ = fuzz_store.ingest_errors(PROJECT)
    assert total == 19_800
    observed.append(f"fail mode: one error of {message.count(chr(10)) + 1} lines ('19800 bad row(s) ... and 19790 "
                    "more'), store unchanged; skip mode: 2,200 good rows stored, all 19,800 errors recorded")


# ------------------------------------------------------------------------------------------ bounded memory

ROWS_FOR_MEMORY = int(os.environ.get("G2IS_BIG_UPLOAD_ROWS", "1000000"))
MEMORY_SCRIPT = r"""
import json, sys, time
from pathlib import Path
rows, folder = int(sys.argv[1]), Path(sys.argv[2])
from core.data.ingest import ingest_files
from core.store import Store

path = folder / "big.jsonl"
with path.open("w", encoding="utf-8") as out:  # written line by line: the generator holds one row at a time
    for i in range(rows):
        out.write('{"id": "r%d", "source": "s%d", "messages": [{"role": "user", "content": "Question %d: what is %d '
                  'plus %d? Show the steps."}, {"role": "assistant", "content": "%d plus %d is %d."}]}\n'
                  % (i, i % 7, i, i, i + 1, i, i + 1, 2 * i + 1))
store = Store(folder / "cache")
ingest_files(store, "warm", "pool", [Path(sys.argv[3])])  # imports and first-use allocations out of the measure


def status_kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])


try:  # reset this process's peak RSS (VmHWM) to its current RSS; without it the peak so far counts too
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
except OSError:
    pass
base = status_kb("VmRSS")
started = time.perf_counter()
result = ingest_files(store, "big", "pool", [path])
seconds = time.perf_counter() - started
peak = status_kb("VmHWM")
last = store.row_at("big", "pool", rows - 1)
print(json.dumps({"rows": result.rows, "seconds": seconds, "growth_mb": (peak - base) / 1024,
                  "file_mb": path.stat().st_size / 2**20, "last_id": last.row_id, "last_line": last.line}))
"""


@pytest.mark.reliability("input", "a 1,000,000-row upload is streamed with bounded memory")
def test_million_row_file_is_ingested_with_bounded_memory(tmp_path, observed):
    """Peak RSS growth of ingesting a generated JSONL file, in a fresh process: its VmHWM (peak resident memory)
    after the ingest minus its RSS before.  (``getrusage``'s ``ru_maxrss`` is useless here: a child started from a
    big pytest process inherits the parent's peak through fork and exec.)

    What may grow: the duplicate-id index (``SeenIds``, 24 bytes a slot, at most 2/3 full: ~48 MB at 1,000,000
    rows, ~72 MB while it doubles), pyarrow's pool for the staged parquet batches (~70 MB, constant) and DuckDB's
    buffer while it inserts (``INGEST_MEMORY_LIMIT``, 128 MB).  So 300 MB bounds a million rows, while holding the
    rows (~1 KB each as Python objects) would take ~1 GB and the unbounded store took ~800 MB before the fix."""
    seed = tmp_path / "seed.jsonl"
    seed.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}) + "\n")
    done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(ROWS_FOR_MEMORY), str(tmp_path), str(seed)],
                          env=subprocess_env(tmp_path / "cache") | {"OMP_NUM_THREADS": "1"}, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["rows"] == ROWS_FOR_MEMORY
    assert (result["last_id"], result["last_line"]) == (f"r{ROWS_FOR_MEMORY - 1}", ROWS_FOR_MEMORY)
    bound = 300 * ROWS_FOR_MEMORY / 1_000_000 if ROWS_FOR_MEMORY > 1_000_000 else 300
    observed.append(f"{result['rows']:,} rows ({result['file_mb']:.0f} MB file) ingested in {result['seconds']:.1f} s; "
                    f"peak RSS grew by {result['growth_mb']:.0f} MB (bound {bound:.0f} MB)")
    assert result["growth_mb"] < bound, result


def test_seen_ids_index_behaves_like_the_dict_it_replaces():
    index, plain = SeenIds(), {}
    for i in range(5000):
        key = f"row-{i % 3700}" if i % 2 else str(i * 7919 % 4001)
        if key not in plain:
            plain[key] = (f"file{i % 3}.jsonl", i + 1)
            index[key] = plain[key]
        assert (key in index) and index.get(key) == plain[key]
    assert len(index) == len(plain)
    assert index.get("never seen") is None and "never seen" not in index
    assert all(index.get(key) == where for key, where in plain.items())
    index["\ud800 lone"] = ("x.jsonl", 7)  # ids are checked later; the index must not be where it breaks
    assert index.get("\ud800 lone") == ("x.jsonl", 7)


# ------------------------------------------------------------------------------------------ upload size limit


def test_upload_limit_defaults_agree_with_streamlit_config(monkeypatch):
    monkeypatch.delenv("G2IS_MAX_UPLOAD_MB", raising=False)
    streamlit_config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert streamlit_config["server"]["maxUploadSize"] == config.DEFAULT_MAX_UPLOAD_MB == config.max_upload_mb()
    monkeypatch.setenv("G2IS_MAX_UPLOAD_MB", "2.5")
    assert config.max_upload_mb() == 2.5
    for bad in ("0", "-1", "lots", "nan", "inf"):
        monkeypatch.setenv("G2IS_MAX_UPLOAD_MB", bad)
        with pytest.raises(ValueError, match="G2IS_MAX_UPLOAD_MB must be a positive number of megabytes"):
            config.max_upload_mb()


@pytest.mark.reliability("input", "an upload over the configured size limit is refused")
def test_upload_over_the_limit_is_refused_with_a_message(fuzz_store, monkeypatch, observed):
    monkeypatch.setenv("G2IS_MAX_UPLOAD_MB", "1")
    row = json.dumps({"messages": [{"role": "user", "content": "q" * 1000}, {"role": "assistant", "content": "a"}]})
    small = (row + "\n").encode()
    big = "".join(row.replace('"q', f'"{i} q') + "\n" for i in range(1100)).encode()  # ~1.1 MB
    assert len(big) > config.MEGABYTE > len(small)
    before = store_state(fuzz_store)
    outcome = data_view.ingest_uploads(fuzz_store, PROJECT, "pool", [("small.jsonl", small), ("big.jsonl", big)])
    assert not outcome.ingested and store_state(fuzz_store) == before
    assert re.match(r"big\.jsonl \(1\.\d MB\): over the upload limit of 1 MB per file\. Nothing was ingested: the "
                    r"project's 3 pool row\(s\) are unchanged\. Split the file", outcome.error), outcome.error
    assert "G2IS_MAX_UPLOAD_MB" in outcome.error and "python -m core ingest --project <project> --pool <file>" in outcome.error
    assert not (fuzz_store.root / "uploads").exists(), "a refused file is not kept"
    observed.append(f"Data page: {outcome.error}")
    monkeypatch.setenv("G2IS_MAX_UPLOAD_MB", "2")  # under the limit: ingested
    assert data_view.ingest_uploads(fuzz_store, PROJECT, "pool", [("big.jsonl", big)]).rows_after == 1100
    monkeypatch.setenv("G2IS_MAX_UPLOAD_MB", "many")
    outcome = data_view.ingest_uploads(fuzz_store, PROJECT, "pool", [("small.jsonl", small)])
    assert not outcome.ingested and "G2IS_MAX_UPLOAD_MB must be a positive number" in outcome.error


@pytest.mark.reliability("input", "an upload over the size limit on the Data page (AppTest file uploader)")
def test_data_page_refuses_an_upload_over_the_limit(cache, monkeypatch, observed):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("G2IS_MAX_UPLOAD_MB", "0.01")  # 10 KB
    store = Store()
    store.ensure_project("limits", {})
    app = AppTest.from_file(str(REPO / "app" / "main.py"), default_timeout=120)
    app.query_params["project"] = "limits"
    app.switch_page("../pages/data.py").run()
    assert not app.exception, app.exception
    (uploader,) = [w for w in app.file_uploader if w.key.startswith("data-upload-pool-")]
    line = json.dumps({"messages": [{"role": "user", "content": "x" * 200}, {"role": "assistant", "content": "a"}]})
    content = "".join(line.replace('"x', f'"{i} x') + "\n" for i in range(60)).encode()  # ~14 KB
    uploader.set_value(("too_big.jsonl", content, "application/json")).run()
    assert not app.exception, app.exception
    errors = [re.sub(r"\\(.)", r"\1", e.value) for e in app.error]
    assert any(re.match(r"too_big\.jsonl \(1\d KB\): over the upload limit of 0\.01 MB per file", e) for e in errors), errors
    assert store.row_counts("limits")["pool"] == 0
    observed.append(f"Data page shows: {errors[0][:160]}")
