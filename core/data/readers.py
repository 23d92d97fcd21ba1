"""Instruction-data readers: instruction files in, normalised chat rows out.

This is the first stage of the pipeline.  It reads one file at a time, detects which of the four
supported formats the file is in (the first record that detects as one fixes it), hands every record to
``core/data/records.py`` to be turned into a list of ``{"role", "content"}`` chat messages with a stable id,
and reports every bad record with its file, line and a precise reason.  Nothing is dropped silently: every
non-blank line of a JSONL file (every element of a JSON array) comes out either as a ``Row`` or as a
``RowError``.

The container is chosen by suffix: ``.jsonl`` and ``.json`` are read here; ``.parquet``, ``.csv``, ``.tsv`` and
a directory written by ``datasets``' ``save_to_disk`` are opened by ``core/data/tabular.py``, which turns each
table row into the record dict a JSONL line would have decoded to.  Every record, whatever its container, is
built into a row by ``_RowBuilder`` here, so ids, content hashes, error reasons and the fail / skip modes are the
same (for tables the format comes from the columns, and errors count rows: "row 17", with the line for CSV).

Files are streamed: a ``.jsonl`` file is read line by line and a ``.json`` array element by element (tables
batch by batch or row by row), so memory does not grow with the file (only the id index used to catch
duplicates grows, ~50 bytes a row: see ``SeenIds``).

What is accepted on purpose (tests/test_fuzz_inputs.py tries each): a UTF-8 byte-order mark at the start of the
file, CRLF line ends, blank lines (counted, not rows), keys no format uses (ignored), the literals ``NaN`` /
``Infinity`` and numbers too large for a float (Python writes the first, they only matter in a field we read,
where they are a wrong type), a key given twice in one object (the last one wins, as in JavaScript and
Python), and any Unicode text, ``\u0000`` and U+2028 included (kept exactly).  Everything else that is not
one of the four formats is an error with its file, line and reason: a bad record is a ``RowError`` (left out
in skip mode), a file that cannot be read at all a ``FormatError``.  Inside a ``.json`` array a syntax error
ends the reading of that file (the rest is reported as not read), since where the next record starts is
unknown.

The JSON readers use only the standard library (the tabular ones pyarrow); nothing here knows about the store,
the model or the app.
"""
from __future__ import annotations

import codecs
import hashlib
import json
import re
import stat
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from core.data import tabular
from core.data.records import (
    FORMAT_KEYS,
    NOT_UTF8_TEXT_STARTS,
    BadRowsError,
    FormatError,
    Row,
    RowError,
    RowProblem,
    _expected_formats,
    _explicit_id,
    _group_of,
    _is_valid_unicode,
    _json_type,
    _key_list,
    _show,
    _source_of,
    content_hash_of,
    detect_format,
    normalise,
)

JSON_WHITESPACE = " \t\r\n"
_BLANK_LINE_STARTS = ("", " ", "\t", "\r", "\n")
_WHITESPACE_RUN = re.compile(r"[ \t\r\n]*")
# ``surrogateescape`` decoding turns each byte that is not valid UTF-8 into one of these code points;
# valid UTF-8 never produces them, so finding one means the raw bytes were broken.
_ESCAPED_BAD_BYTE = re.compile("[\udc80-\udcff]")
_READ_CHUNK_BYTES = 1 << 20
SUPPORTED_FILES = ".jsonl, .json, .parquet, .csv or .tsv"


# ----------------------------------------------------------------------------------------------------------
# Public data types of the readers (Row, RowError and the errors are in core.data.records)


class SeenIds:
    """The duplicate index: row_id -> (file, line) of the row that first had it, in ~50 bytes per id.

    It is the one thing that grows with the file while reading.  A dict of str -> (file, line) costs ~175 bytes
    a row (175 MB for 1,000,000 rows); this keeps a 128-bit BLAKE2b digest of each id and a packed (file number,
    line) in open-addressing arrays kept at most 2/3 full (48 MB for 1,000,000 rows).  Two different ids share a
    digest with probability ~n^2 / 2^129 (1e-27 for a million rows).  It offers what the readers use -- ``get``,
    ``in``, ``len`` and item assignment -- so a plain dict can be passed instead.
    """

    def __init__(self) -> None:
        self._files: list[str] = []
        self._file_numbers: dict[str, int] = {}
        self._count = 0
        self._allocate(1 << 10)

    def _allocate(self, slots: int) -> None:
        self._his = array("Q", bytes(8 * slots))
        self._los = array("Q", bytes(8 * slots))  # 0 marks a free slot (a used one has its lowest bit set)
        self._places = array("Q", bytes(8 * slots))  # file number << 32 | line
        self._mask = slots - 1

    @staticmethod
    def _key(row_id: str) -> tuple[int, int]:
        digest = hashlib.blake2b(row_id.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little") | 1

    def _slot(self, hi: int, lo: int) -> tuple[int, bool]:
        his, los, mask = self._his, self._los, self._mask
        slot = hi & mask
        while True:
            found = los[slot]
            if found == lo and his[slot] == hi:
                return slot, True
            if found == 0:
                return slot, False
            slot = (slot + 1) & mask

    def get(self, row_id: str, default: Any = None) -> tuple[str, int] | Any:
        slot, found = self._slot(*self._key(row_id))
        if not found:
            return default
        place = self._places[slot]
        return self._files[place >> 32], place & 0xFFFFFFFF

    def __contains__(self, row_id: str) -> bool:
        return self._slot(*self._key(row_id))[1]

    def __len__(self) -> int:
        return self._count

    def __setitem__(self, row_id: str, where: tuple[str, int]) -> None:
        file, line = where
        number = self._file_numbers.get(file)
        if number is None:
            number = self._file_numbers[file] = len(self._files)
            self._files.append(file)
        hi, lo = self._key(row_id)
        slot, found = self._slot(hi, lo)
        if not found:
            if 3 * (self._count + 1) > 2 * len(self._los):
                self._grow()
                slot, _ = self._slot(hi, lo)
            self._his[slot], self._los[slot] = hi, lo
            self._count += 1
        self._places[slot] = number << 32 | min(max(int(line), 0), 0xFFFFFFFF)

    def _grow(self) -> None:
        his, los, places = self._his, self._los, self._places
        self._allocate(2 * len(los))
        for hi, lo, place in zip(his, los, places):
            if lo:
                slot, _ = self._slot(hi, lo)
                self._his[slot], self._los[slot], self._places[slot] = hi, lo, place


@dataclass
class ReadReport:
    """What reading one file produced: its format, how many good rows, and every error."""

    file: str
    format: str | None
    rows: int = 0  # good rows yielded
    errors: list[RowError] = field(default_factory=list)
    blank_lines: int = 0


# ----------------------------------------------------------------------------------------------------------
# Reading files


# What a record source yields per record: (line, decoded value or None, problem or None).
_RawRecord = tuple[int, Any, "str | None"]


def _open_checked(path: Any, file: str) -> tuple[Path, str]:
    """The path and its kind ("jsonl", "json" or one of ``tabular.KINDS``), or FormatError for every whole-file
    problem we can see."""
    location = Path(path)
    if not _is_valid_unicode(file):  # a name in another encoding: it would end up in messages and the store
        shown = file.encode("utf-8", "backslashreplace").decode("utf-8")
        raise FormatError(f"{shown}: the file name is not valid UTF-8; rename the file")
    try:
        mode = location.stat().st_mode
    except FileNotFoundError:
        raise FormatError(f"{file}: file not found; check the path") from None
    except (OSError, ValueError) as error:  # a name too long, a NUL byte in the path, no permission...
        reason = getattr(error, "strerror", None) or str(error)
        raise FormatError(f"{file}: cannot read the file ({reason}); check the path") from None
    if stat.S_ISDIR(mode):
        if tabular.is_dataset_folder(location):
            return location, tabular.DATASET_FOLDER
        raise FormatError(f"{file}: is a directory, not a file (nor a datasets save_to_disk folder); "
                          f"give a {SUPPORTED_FILES} file")
    if not stat.S_ISREG(mode):  # reading a pipe or a device could block or never end
        raise FormatError(f"{file}: is not a regular file (a pipe, socket or device); give a {SUPPORTED_FILES} file")
    suffix = location.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return location, suffix[1:]
    if suffix in tabular.TABULAR_SUFFIXES:
        return location, tabular.TABULAR_SUFFIXES[suffix]
    shown = f"'{location.suffix}'" if location.suffix else "(no extension)"
    raise FormatError(f"{file}: unsupported file type {shown}: use {SUPPORTED_FILES} (or a datasets save_to_disk "
                      "folder)")


def _jsonl_records(handle: BinaryIO, file: str, report: ReadReport) -> Iterator[_RawRecord]:
    """One item per non-blank line; blank lines are only counted."""
    checked_first_line = False
    for line_number, raw_line in enumerate(handle, 1):
        bom_bytes = 0
        if line_number == 1 and raw_line.startswith(codecs.BOM_UTF8):
            raw_line = raw_line[len(codecs.BOM_UTF8):]
            bom_bytes = len(codecs.BOM_UTF8)
        # Each line is decoded on its own so one broken line does not spoil the rest of the file.
        try:
            text = raw_line.decode("utf-8")
        except UnicodeDecodeError as error:
            checked_first_line = True
            cut = "; the file ends inside a character: it was cut off" if error.reason == "unexpected end of data" else ""
            yield line_number, None, f"line is not valid UTF-8 (byte offset {error.start + bom_bytes}){cut}"
            continue
        # Only JSON whitespace counts as blank; a line of other whitespace is reported as invalid JSON.
        # (The first-character test just skips the strip for the usual line that starts with "{".)
        if text[:1] in _BLANK_LINE_STARTS and not text.strip(JSON_WHITESPACE):
            report.blank_lines += 1
            continue
        if not checked_first_line:
            checked_first_line = True
            if text.lstrip(JSON_WHITESPACE).startswith("["):
                raise FormatError(
                    f"{file}: line {line_number} starts a JSON array, so the file looks like a JSON array; "
                    "rename it to .json or write one object per line"
                )
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            yield (line_number, None,
                   f"invalid JSON: {_json_error_text(error, text)} (column {error.colno}){_jsonl_hint(text, error)}")
        except RecursionError:
            yield line_number, None, "invalid JSON: nested too deeply"
        except ValueError as error:  # e.g. an integer with more digits than Python converts
            yield line_number, None, f"invalid JSON: {_value_error_text(error)}"
        else:
            yield line_number, value, None


def _json_error_text(error: json.JSONDecodeError, text: str) -> str:
    """The decoder's message without its dangling "at" (we add the place) or advice meant for programmers."""
    if text.startswith("\ufeff", error.pos):
        return "Unexpected UTF-8 BOM: a byte-order mark (U+FEFF) may only start the file; remove this one"
    return error.msg.removesuffix(" starting at").removesuffix(" at")


def _jsonl_hint(text: str, error: json.JSONDecodeError) -> str:
    """What most likely went wrong on a .jsonl line that is not JSON, as "; ..." (or "")."""
    if "\x00" in text:
        return "; the line has NUL bytes: if the file is UTF-16 encoded, save it as UTF-8"
    body = text.rstrip(JSON_WHITESPACE)
    if "\r" in body:
        return "; the line has a bare carriage return (\\r): records must be separated by \\n or \\r\\n line ends"
    if error.msg == "Extra data":
        return "; a .jsonl line holds exactly one JSON object: put the next record on its own line"
    if _ends_inside(error, len(body)):
        return "; the line ends inside the record: in .jsonl each record must be complete on one line"
    return ""


def _ends_inside(error: json.JSONDecodeError, end: int) -> bool:
    """Whether the text (``end`` characters without trailing blanks) stops inside a value, not at a wrong character."""
    if error.pos >= end or error.msg.startswith("Unterminated string"):
        return True
    # "\u00" cut off: the error points at the "u" of an escape with the text ending within its 4 hex digits (the
    # decoder also wants the character after them, so an escape ending the text is reported the same way).
    return error.msg.startswith("Invalid \\uXXXX escape") and end - error.pos <= 5


def _value_error_text(error: ValueError) -> str:
    # Python's message for a 5000-digit number ends with advice for programmers (sys.set_int_max_str_digits).
    return str(error).split("; use sys.set_int_max_str_digits", 1)[0]


# The first bytes of files that are certainly not UTF-8 JSON, and what to do about each.
_NOT_JSON_STARTS = NOT_UTF8_TEXT_STARTS + (
    (b"PK\x03\x04", "is a zip archive (or a spreadsheet); extract or export the .jsonl / .json file first"),
    (b"PAR1", "is a Parquet file; rename it to .parquet"),
)


def _not_json_reason(head: bytes) -> str | None:
    for start, reason in _NOT_JSON_STARTS:
        if head.startswith(start):
            return reason
    # UTF-16 without a byte-order mark: every other byte of the first characters is NUL ("{\0"\0" or "\0{\0"").
    if len(head) >= 4:
        for text, nul in ((head[0::2], head[1::2]), (head[1::2], head[0::2])):
            if not nul.strip(b"\x00") and all(text[:2]) and text[0] in b"{[ \t\r\n":
                return "looks UTF-16 encoded (NUL bytes between the characters); save it as UTF-8"
    return None


class _JsonArrayScanner:
    """Streams the elements of a top-level JSON array with the line each element starts on.

    Hand-written on ``json.JSONDecoder.raw_decode`` over a buffered reader because we need the starting
    line number of every element, which streaming parsers such as ijson do not give.  The file is read in
    chunks (a minified array is a single line, so reading by line would load it whole); a decode that
    fails near the end of the buffer is retried after reading more, and each refill at least doubles the
    unread part of the buffer, so even one huge element is decoded in linear total time.
    """

    def __init__(self, handle: BinaryIO, file: str):
        self._handle = handle
        self._file = file
        # surrogateescape keeps broken bytes in the text so they can be reported per element.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        self._json = json.JSONDecoder()
        self._buffer = ""
        self._pos = 0  # next unread character of the buffer
        self._line = 1  # line number at self._pos
        self._buffer_start_byte_column = 0  # byte column of buffer[0] within its line
        self._eof = False
        self._started = False

    # -- buffer management -------------------------------------------------------------------------------

    def _fill(self) -> None:
        """Drop what has been consumed and read at least as much again as is still unread."""
        consumed = self._buffer[:self._pos]
        if consumed:
            newline = consumed.rfind("\n")
            tail = consumed[newline + 1:] if newline >= 0 else consumed
            start = 0 if newline >= 0 else self._buffer_start_byte_column
            self._buffer_start_byte_column = start + len(tail.encode("utf-8", "surrogateescape"))
            self._buffer = self._buffer[self._pos:]
            self._pos = 0
        data = self._handle.read(max(_READ_CHUNK_BYTES, len(self._buffer)))
        text = self._decoder.decode(data, final=not data)
        if not self._started:
            self._started = True
            if text.startswith("\ufeff"):  # a UTF-8 byte-order mark is accepted at file start
                text = text[1:]
                self._buffer_start_byte_column = len(codecs.BOM_UTF8)
        self._buffer += text
        self._eof = not data

    def _advance(self, new_pos: int) -> None:
        self._line += self._buffer.count("\n", self._pos, new_pos)
        self._pos = new_pos

    def _next_char(self) -> str:
        """Skip JSON whitespace (reading more as needed); the next character, or "" at end of file."""
        while True:
            self._advance(_WHITESPACE_RUN.match(self._buffer, self._pos).end())
            if self._pos < len(self._buffer):
                return self._buffer[self._pos]
            if self._eof:
                return ""
            self._fill()

    def _line_of(self, index: int) -> int:
        return self._line + self._buffer.count("\n", self._pos, index)

    def _byte_column_of(self, index: int) -> int:
        newline = self._buffer.rfind("\n", 0, index)
        if newline >= 0:
            return len(self._buffer[newline + 1:index].encode("utf-8", "surrogateescape"))
        return self._buffer_start_byte_column + len(self._buffer[:index].encode("utf-8", "surrogateescape"))

    def _bad_bytes_reason(self, start: int, end: int) -> str | None:
        found = _ESCAPED_BAD_BYTE.search(self._buffer, start, end)
        if found is None:
            return None
        index = found.start()
        return (f"record is not valid UTF-8 (line {self._line_of(index)}, "
                f"byte offset {self._byte_column_of(index)})")

    # -- parsing ---------------------------------------------------------------------------------------

    def records(self) -> Iterator[_RawRecord]:
        first = self._next_char()
        if first == "":
            raise FormatError(f"{self._file}: file is empty")
        if first == "{":
            raise FormatError(
                f"{self._file}: expected a JSON array of records, found an object at line {self._line}; "
                "wrap the records in [ ... ], or if the file has one object per line rename it to .jsonl"
            )
        if first != "[":
            value = {"n": "null", "t": "true", "f": "false", '"': "a string"}.get(first)
            value = value or ("a number" if first in "-0123456789" else None)
            found = f"expected a JSON array of records, found {value}" if value else \
                f"not JSON: expected a JSON array of records, found {first!r}"
            raise FormatError(
                f"{self._file}: {found} at line {self._line}; "
                "use a JSON array of objects (.json) or one JSON object per line (.jsonl)"
            )
        self._advance(self._pos + 1)
        char = self._next_char()
        if char == "]":
            self._advance(self._pos + 1)
        else:
            while True:
                if char == "":
                    yield self._line, None, "truncated JSON array: the file ends before the closing ']'"
                    return
                start_line = self._line
                value, problem, fatal = self._decode_element()
                yield start_line, value, problem
                if fatal:
                    return
                char = self._next_char()
                if char == ",":
                    self._advance(self._pos + 1)
                    char = self._next_char()
                    if char == "]":
                        yield self._line, None, "invalid JSON: trailing comma before the closing ']'"
                        self._advance(self._pos + 1)
                        break
                    continue
                if char == "]":
                    self._advance(self._pos + 1)
                    break
                if char == "":
                    yield self._line, None, "truncated JSON array: the file ends before the closing ']'"
                    return
                yield (self._line, None,
                       f"invalid JSON: expected ',' or ']' after the record starting at line {start_line}, "
                       f"found {char!r}; the rest of the file was not read")
                return
        if self._next_char() != "":
            yield self._line, None, "invalid JSON: extra data after the closing ']'; the rest of the file was not read"

    def _decode_element(self) -> tuple[Any, str | None, bool]:
        """(value, problem, fatal) for the element at the current position; fatal means stop reading."""
        while True:
            try:
                value, end = self._json.raw_decode(self._buffer, self._pos)
            except json.JSONDecodeError as error:
                # An error at the very end of the buffer may just mean the element continues in the next
                # chunk (a chunk can end inside a string, a number or an escape); read more and retry.
                near_end = error.pos >= len(self._buffer) - 16 or error.msg.startswith("Unterminated string")
                if near_end and not self._eof:
                    self._fill()
                    continue
                bad_bytes = self._bad_bytes_reason(self._pos, min(error.pos + 1, len(self._buffer)))
                if bad_bytes is not None:
                    return None, bad_bytes + "; the rest of the file was not read", True
                ran_out = _ends_inside(error, len(self._buffer.rstrip(JSON_WHITESPACE)))
                if ran_out:  # at end of file here, so the record was cut off
                    return None, "truncated JSON: the file ends inside this record", True
                return None, (f"invalid JSON: {_json_error_text(error, self._buffer)} (line {self._line_of(error.pos)}); "
                              "the rest of the file was not read"), True
            except RecursionError:
                return None, "invalid JSON: nested too deeply; the rest of the file was not read", True
            except ValueError as error:
                return None, f"invalid JSON: {_value_error_text(error)}; the rest of the file was not read", True
            if end >= len(self._buffer) and not self._eof:
                self._fill()  # a bare number could go on in the next chunk
                continue
            bad_bytes = self._bad_bytes_reason(self._pos, end)
            self._advance(end)
            return (None, bad_bytes, False) if bad_bytes else (value, None, False)


class _RowBuilder:
    """Turns decoded records of one file into Rows; holds the file's detected format."""

    def __init__(self, file: str, report: ReadReport, seen: SeenIds | dict[str, tuple[str, int]],
                 group_field: str | None):
        self.file = file
        self.file_stem = Path(file).stem
        self.report = report
        self.seen = seen
        self.group_field = group_field
        self.format: str | None = None
        self.format_line = 0
        self.format_origin = ""  # "detected at line 3", or "from its columns" for a table

    def fix_format(self, fmt: str, origin: str) -> None:
        """Set the file's format before any record (a table's columns fix it)."""
        self.format, self.format_origin = fmt, origin
        self.report.format = fmt

    def build(self, record: dict, line: int) -> Row:
        fmt = detect_format(record)
        if fmt is None:
            if self.format is None:
                raise RowProblem(f"record matches no known format (keys: {_key_list(record)}); "
                                 f"expected one of: {_expected_formats()}")
            missing = [key for key in FORMAT_KEYS[self.format] if key not in record]
            raise RowProblem(f"{self.format}: missing {', '.join(_show(key) for key in missing)} "
                             f"(this file is {self.format}, {self.format_origin})")
        if self.format is None:
            self.format, self.format_line = fmt, line
            self.format_origin = f"detected at line {line}"
            self.report.format = fmt
        elif fmt != self.format:
            raise RowProblem(f"record is in {fmt} format but this file is {self.format} ({self.format_origin})")

        messages = normalise(record, fmt)
        explicit_id = _explicit_id(record)
        source = _source_of(record, self.file_stem)
        group = _group_of(record, self.group_field)
        if explicit_id is not None and not _is_valid_unicode(explicit_id):
            raise RowProblem('"id" is not valid Unicode (unpaired surrogate)')
        if not _is_valid_unicode(source) or (group is not None and not _is_valid_unicode(group)):
            raise RowProblem("source or group is not valid Unicode (unpaired surrogate)")
        content_hash = content_hash_of(messages)
        row_id = explicit_id if explicit_id is not None else content_hash[:16]

        first = self.seen.get(row_id)
        if first is not None:
            if explicit_id is not None:
                shown = repr(explicit_id) if len(explicit_id) <= 60 else repr(explicit_id[:57]) + "..."
                raise RowProblem(f"duplicate id {shown} (first seen at {first[0]}:{first[1]})")
            raise RowProblem(f"duplicate row: same content as {first[0]}:{first[1]}")
        self.seen[row_id] = (self.file, line)
        return Row(row_id=row_id, content_hash=content_hash, messages=tuple(messages), format=fmt,
                   file=self.file, line=line, source=source, group=group)


def iter_rows(
    path: Any,
    *,
    report: ReadReport | None = None,
    on_error: str = "fail",
    seen: SeenIds | dict[str, tuple[str, int]] | None = None,
    group_field: str | None = None,
) -> Iterator[Row]:
    """Stream the good rows of one ``.jsonl`` / ``.json`` / ``.parquet`` / ``.csv`` / ``.tsv`` file or save_to_disk folder.

    Every bad record is appended to ``report.errors``.  With ``on_error="fail"`` a ``BadRowsError`` listing
    all of this file's errors is raised once the file has been read to the end -- the good rows before it
    have already been yielded, so callers stage rows and commit only if no exception came.  With
    ``on_error="skip"`` bad rows are only recorded.  Whole-file problems raise ``FormatError`` (this is a
    generator, so on the first ``next()``).

    ``seen`` maps row_id -> (file, line) (a ``SeenIds``, or a dict); pass the same one for several files to
    catch duplicates across them.  Rows are entered as they are yielded, also in fail mode.  ``group_field``
    is a dotted path ("meta.subject") to the row's group; without it the first of AUTO_GROUP_FIELDS, at top
    level and then inside "meta", is used.
    """
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', not {on_error!r}")
    file = str(path)
    report = report if report is not None else ReadReport(file=file, format=None)
    seen = seen if seen is not None else SeenIds()
    errors_before = len(report.errors)
    location, kind = _open_checked(path, file)
    builder = _RowBuilder(file, report, seen, group_field)
    if kind in tabular.KINDS:
        yield from _table_rows(location, file, kind, builder, report, group_field)
    else:
        yield from _json_rows(location, file, kind, builder, report)
    new_errors = report.errors[errors_before:]
    if on_error == "fail" and new_errors:
        raise BadRowsError(new_errors)


def _table_rows(location: Path, file: str, kind: str, builder: _RowBuilder, report: ReadReport,
                group_field: str | None) -> Iterator[Row]:
    """The rows of a Parquet / CSV / TSV file or save_to_disk folder; errors counted by row ("row 17 (line 18)")."""
    table = tabular.open_table(location, file, kind, report, group_field)
    builder.fix_format(table.format, "from its columns")
    for number, line, record, problem in table.records:
        if problem is None:
            try:
                row = builder.build(record, number)
            except RowProblem as reason:
                problem = str(reason)
        if problem is not None:
            place = f"row {number}" if line is None else f"row {number} (line {line})"
            report.errors.append(RowError(file, number, f"{place}: {problem}"))
            continue
        report.rows += 1
        yield row


def _json_rows(location: Path, file: str, kind: str, builder: _RowBuilder, report: ReadReport) -> Iterator[Row]:
    """The rows of a .jsonl / .json file; FormatError when no record is in a known format."""
    records_read = 0
    first_problem: RowError | None = None
    first_keys: str | None = None
    parsed_any_json = False
    try:
        handle = open(location, "rb", buffering=_READ_CHUNK_BYTES)
    except OSError as error:
        raise FormatError(f"{file}: cannot open the file ({error.strerror}); check its permissions") from error
    with handle:
        not_json = _not_json_reason(handle.peek(8)[:8])
        if not_json is not None:
            raise FormatError(f"{file}: the file {not_json}")
        source = _jsonl_records(handle, file, report) if kind == "jsonl" else _JsonArrayScanner(handle, file).records()
        for line, record, problem in source:
            records_read += 1
            if problem is None:
                parsed_any_json = True
                if not isinstance(record, dict):
                    problem = f"expected a JSON object, got {_json_type(record)}"
                else:
                    if first_keys is None:
                        first_keys = _key_list(record)
                    try:
                        row = builder.build(record, line)
                    except RowProblem as reason:
                        problem = str(reason)
            if problem is not None:
                error = RowError(file, line, problem)
                first_problem = first_problem or error
                report.errors.append(error)
                continue
            report.rows += 1
            yield row

    if builder.format is None:
        # No record detected as any format: the file as a whole is not instruction data we know.
        if records_read == 0:
            if kind == "json":
                raise FormatError(f"{file}: the JSON array is empty: the file has no records")
            raise FormatError(f"{file}: file is empty")
        if first_keys is not None:
            raise FormatError(
                f"{file}: no record is in a known instruction format. The first record has keys: {first_keys}. "
                f"Expected one of: {_expected_formats()}. Convert the file to one of these formats."
            )
        if not parsed_any_json:
            raise FormatError(f"{file}: not JSON: no record could be parsed (first problem: {first_problem}); "
                              "write one JSON object per line (.jsonl) or a JSON array of objects (.json)")
        raise FormatError(f"{file}: no record is a JSON object (first problem: {first_problem}); "
                          f"expected objects in one of: {_expected_formats()}")


def read_rows(
    paths: list, *, on_error: str = "fail", group_field: str | None = None
) -> tuple[list[Row], list[ReadReport]]:
    """Read several files into memory with one shared duplicate index.

    In fail mode every file is still read to the end so that the ``BadRowsError`` lists the bad rows of
    all files at once; ``FormatError`` stops at the first unreadable file.
    """
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', not {on_error!r}")
    if isinstance(paths, (str, Path)):  # one path given on its own, not a list of its characters
        paths = [paths]
    seen = SeenIds()
    rows: list[Row] = []
    reports: list[ReadReport] = []
    for path in paths:
        report = ReadReport(file=str(path), format=None)
        reports.append(report)
        rows.extend(iter_rows(path, report=report, on_error="skip", seen=seen, group_field=group_field))
    errors = [error for report in reports for error in report.errors]
    if on_error == "fail" and errors:
        raise BadRowsError(errors)
    return rows, reports
