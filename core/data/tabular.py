"""Tabular instruction files: Parquet, CSV / TSV and ``datasets`` save_to_disk folders in, record dicts out.

This is the container half of the first pipeline stage for data kept as tables (``core/data/readers.py``
dispatches here by suffix and builds the rows).  A table row is just a record from another container: each row
becomes the dict a JSONL line would have decoded to (column name -> value), and the readers hand it to the same
``_RowBuilder`` and ``core/data/records.py`` functions, so detection, ids, content hashes, error reasons and the
fail / skip modes are those of JSONL, and the same records give the same rows whatever the file type.

What differs, on purpose:

* The format is fixed by the columns (every row of a table has them all), before any row is read.  A file whose
  columns are in no known format, a column of a type no row could use (a Parquet ``conversations`` column of
  strings, ``id`` as floats) or a header naming a column twice is one ``FormatError`` naming the file and the
  column, not one error per row.
* A missing value (a Parquet null, an empty CSV cell) is an absent key: a row without ``id`` gets its content hash,
  one without ``source`` the file stem.  In a column the format needs it is a row error naming the column
  ("column 'output' is null; an alpaca row needs it").
* Rows are counted from 1 (the header and blank lines are not rows): ``RowError.line`` and ``Row.line`` hold the
  row number and every reason starts with ``row N`` -- for CSV ``row N (line L)``, L the physical line the row
  starts on (the header is line 1).  In a save_to_disk folder rows are counted across its shards.
* CSV / TSV cells are text, kept as written ("001" stays "001").  The ``messages``, ``conversations`` and
  ``history`` columns hold JSON text (``[{"role": "user", "content": "..."}]``), decoded with a row error when it
  is not valid JSON or not a list; ``meta`` (and the column a dotted ``--group-field`` starts with) is decoded when
  it holds a JSON object.  ``prompt`` / ``completion`` are always text in CSV.

Memory is bounded: Parquet is read in batches of ``BATCH_ROWS`` rows with only the columns the format uses
(``pyarrow.parquet.ParquetFile.iter_batches`` row group by row group, unbuffered, so a whole row group is never
held), Arrow IPC shards record batch by record batch (sliced to ``BATCH_ROWS``; a batch is as large as its writer
made it, 1,000 rows for datasets), CSV / TSV row by row with the standard ``csv`` module: strict quoting, so a file
cut off inside a quoted value is an error, exact line numbers, and values up to ``MAX_CELL_CHARS`` (pyarrow's CSV
reader silently accepts the cut-off value, has no line numbers and fails on a row longer than its block).

A file that cannot be opened (no Parquet footer: cut off; compressed; UTF-16; a shard that is not Arrow) is a
``FormatError`` naming the file.  Damage found later is a row error at the first row not read, saying which rows
were lost: in Parquet the rows of the damaged row group (reading goes on with the next group; only when no row at
all can be read is it a ``FormatError``), in a save_to_disk shard the rest of the dataset, like a syntax error
inside a ``.json`` array.

Nothing here knows about the store, the model or the app.
"""
from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq

from core.data.records import (
    AUTO_GROUP_FIELDS,
    FORMAT_KEYS,
    NOT_UTF8_TEXT_STARTS,
    FormatError,
    _expected_formats,
    _json_type,
    detect_format,
)

TABULAR_SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv"}
DATASET_FOLDER = "dataset_folder"  # the kind of a datasets ``save_to_disk`` folder
KINDS = (*TABULAR_SUFFIXES.values(), DATASET_FOLDER)

BATCH_ROWS = 1024  # rows turned into Python objects at a time (Parquet, Arrow)
_PARQUET_BUFFER_BYTES = 1 << 20  # unbuffered column-chunk reads: memory does not grow with the row group
MAX_CELL_CHARS = 1 << 27  # a CSV value this long is almost surely an unclosed quote swallowing the file
_READ_CHUNK_BYTES = 1 << 20

# A tabular record: (row number, CSV line or None, record or None, problem or None).
TableRecord = tuple[int, "int | None", "dict | None", "str | None"]

# The columns each format reads besides its detection keys (``core/data/records.py``).
_READ_BY_FORMAT = {
    "alpaca": ("instruction", "output", "input", "system", "history"),
    "sharegpt": ("conversations", "system"),
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
}
_ROW_COLUMNS = ("id", "source", "dataset", "meta", *AUTO_GROUP_FIELDS)
# CSV columns that hold JSON text, and what the decoded value must be.
_JSON_LIST_COLUMNS = {"messages": "a list of messages", "conversations": "a list of turns",
                      "history": "a list of [question, answer] pairs"}
_ESCAPED_BAD_BYTE = re.compile("[\udc80-\udcff]")

# First bytes of files that are no table we read, and what to do (the JSON readers add their own to the same list).
_NOT_TABLE_STARTS = NOT_UTF8_TEXT_STARTS + (
    (b"PK\x03\x04", "is a zip archive (or a spreadsheet); extract it, or export the sheet as .csv, first"),
)


@dataclass
class Table:
    """An opened table: the format its columns are in, its columns, and its records (read once)."""

    format: str
    columns: list[str]
    records: Iterator[TableRecord]


def open_table(location: Path, file: str, kind: str, report: Any, group_field: str | None = None) -> Table:
    """Open a Parquet / CSV / TSV file or a save_to_disk folder; ``FormatError`` for whatever spoils the whole file.

    ``report`` (a ``ReadReport``) counts the blank lines of CSV files."""
    if kind == "parquet":
        return _open_parquet(location, file, group_field)
    if kind in ("csv", "tsv"):
        return _open_csv(location, file, "\t" if kind == "tsv" else ",", report, group_field)
    if kind == DATASET_FOLDER:
        return _open_dataset_folder(location, file, group_field)
    raise ValueError(f"not a tabular kind: {kind!r}")


# ----------------------------------------------------------------------------------------------------------
# Shared: the columns' format, which columns are read, a row's values


def _shown_columns(columns: list[str], limit: int = 12) -> str:
    shown = ", ".join(json.dumps(name, ensure_ascii=False) for name in columns[:limit])
    return shown + (f", ... ({len(columns)} columns)" if len(columns) > limit else "") if columns else "none"


def _format_of(columns: list[str], file: str, hint: str = "") -> str:
    duplicates = sorted({name for name in columns if columns.count(name) > 1}) if len(set(columns)) < len(columns) else []
    if duplicates:
        raise FormatError(f"{file}: column {duplicates[0]!r} appears more than once; give each column its own name")
    fmt = detect_format(dict.fromkeys(columns))
    if fmt is None:
        raise FormatError(f"{file}: the columns are in no known instruction format (columns: {_shown_columns(columns)}). "
                          f"Expected one of: {_expected_formats()}. Rename the columns to one of these formats.{hint}")
    return fmt


def _read_columns(columns: list[str], fmt: str, group_field: str | None) -> list[str]:
    """The columns the rows of ``fmt`` are built from (other columns are never read: records ignore them)."""
    wanted = {key for keys in FORMAT_KEYS.values() for key in keys} | set(_READ_BY_FORMAT[fmt]) | set(_ROW_COLUMNS)
    if group_field:
        wanted |= {group_field, group_field.split(".", 1)[0]}
    return [name for name in columns if name in wanted]


def _record(names: list[str], values: list, required: tuple[str, ...], fmt: str, missing: str) -> tuple[dict | None, str | None]:
    """The record of one row (missing values left out), or the problem of a required column without a value."""
    record = {}
    for name, value in zip(names, values):
        if value is None:
            if name in required:
                return None, f"column {name!r} is {missing}; {'an' if fmt[0] in 'aeiou' else 'a'} {fmt} row needs it"
            continue
        record[name] = value
    return record, None


# ----------------------------------------------------------------------------------------------------------
# Arrow types (Parquet and save_to_disk shards)


def _is_text(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)
            or getattr(pa.types, "is_string_view", lambda _: False)(kind))


def _is_list(kind: pa.DataType) -> bool:
    return (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
            or getattr(pa.types, "is_list_view", lambda _: False)(kind)
            or getattr(pa.types, "is_large_list_view", lambda _: False)(kind))


def _kind_text(kind: pa.DataType) -> str:
    """An Arrow type in words, for messages ("a string", "an integer (int64)", "a list of strings")."""
    if pa.types.is_dictionary(kind):
        return _kind_text(kind.value_type)
    if _is_text(kind) and not pa.types.is_null(kind):
        return "a string"
    if pa.types.is_null(kind):
        return "empty (null in every row)"
    if pa.types.is_boolean(kind):
        return "a boolean"
    if pa.types.is_integer(kind):
        return f"an integer ({kind})"
    if pa.types.is_floating(kind):
        return f"a float ({kind})"
    if pa.types.is_decimal(kind):
        return f"a decimal ({kind})"
    if _is_list(kind):
        return "a list of " + _plural(_kind_text(kind.value_type))
    if pa.types.is_struct(kind):
        return "a struct"
    if pa.types.is_map(kind):
        return "a map"
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind):
        return "binary (bytes)"
    if pa.types.is_temporal(kind):
        return f"a date or time ({kind})"
    return f"of type {kind}"


def _plural(kind: str) -> str:
    """ "a string" -> "strings", "an integer (int64)" -> "integers (int64)", "binary (bytes)" -> "binary values"."""
    word, _, rest = re.sub(r"^an? ", "", kind).partition(" ")
    word = {"binary": "binary values", "empty": "nulls", "of": "values of"}.get(word, word + "s")
    return f"{word} {rest}".strip()


_TURN_FIELDS = {"messages": ("role", "content"), "conversations": ("from", "value"), "prompt": ("role", "content"),
                "completion": ("role", "content")}
_EXPECTED = {
    "messages": 'a list of messages (structs with "role" and "content")',
    "conversations": 'a list of turns (structs with "from" and "value")',
    "history": "a list of [question, answer] pairs",
    "prompt": 'text (a string) or a list of messages (structs with "role" and "content")',
    "completion": 'text (a string) or a list of messages (structs with "role" and "content")',
    "id": "text or an integer",
}


def _check_types(schema: pa.Schema, names: list[str], fmt: str, file: str) -> None:
    """A FormatError for a column whose type no row could use: it would make every row bad for the same reason."""
    for name in names:
        if name not in FORMAT_KEYS[fmt] and name not in _READ_BY_FORMAT[fmt] and name != "id":
            continue  # a column of another format, or one whose wrong values are ignored (source, group, meta)
        kind = schema.field(name).type
        if name in ("messages", "conversations", "history"):
            good = _is_list(kind) or pa.types.is_null(kind)
        elif name in ("prompt", "completion"):
            good = _is_text(kind) or _is_list(kind)
        elif name == "id":
            good = _is_text(kind) or pa.types.is_integer(kind)
        else:  # instruction, output, input, system
            good = _is_text(kind)
        expected = _EXPECTED.get(name, "text (a string)")
        if not good:
            hint = ""
            if _is_text(kind) and name in ("messages", "conversations", "history"):
                hint = ("; if its cells hold JSON text, decode it before writing the table (a .csv or .jsonl file "
                        "may hold JSON text)")
            elif name == "id" and pa.types.is_floating(kind):
                hint = ("; pandas writes an integer column with missing values as floats: write the ids as text or "
                        "as a nullable integer (Int64)")
            raise FormatError(f"{file}: column {name!r} is {_kind_text(kind)}, expected {expected}{hint}")
        if name in _TURN_FIELDS and _is_list(kind):
            item = kind.value_type
            fields = _TURN_FIELDS[name]
            if pa.types.is_struct(item):
                present = [item.field(i).name for i in range(item.num_fields)]
                absent = [field for field in fields if field not in present]
                if absent:
                    raise FormatError(
                        f"{file}: column {name!r} holds structs with fields {_shown_columns(present)}; each item needs "
                        f"{' and '.join(json.dumps(field) for field in fields)} (missing: "
                        f"{', '.join(json.dumps(field) for field in absent)})")
            elif not pa.types.is_null(item):
                raise FormatError(f"{file}: column {name!r} is {_kind_text(kind)}, expected {expected}")


def _arrow_damage(error: BaseException) -> str:
    """pyarrow's message on one line, its unprintable characters escaped (it may quote the damaged bytes), short."""
    text = " ".join(str(error).split())
    text = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)
    return text if len(text) <= 300 else text[:297] + "..."


def _batch_records(batch: pa.RecordBatch, names: list[str], required: tuple[str, ...], fmt: str,
                   first_row: int) -> Iterator[TableRecord]:
    """The records of one Arrow batch, ``BATCH_ROWS`` at a time (each slice becomes Python objects at once)."""
    for start in range(0, batch.num_rows, BATCH_ROWS):
        piece = batch.slice(start, BATCH_ROWS)
        columns = [piece.column(name).to_pylist() for name in names]
        for offset, values in enumerate(zip(*columns)):
            record, problem = _record(names, values, required, fmt, "null")
            yield first_row + start + offset, None, record, problem


# ----------------------------------------------------------------------------------------------------------
# Parquet


def _not_table_reason(head: bytes) -> str | None:
    for start, reason in _NOT_TABLE_STARTS:
        if head.startswith(start):
            return reason
    return None


def _open_parquet(location: Path, file: str, group_field: str | None) -> Table:
    try:
        with open(location, "rb") as handle:
            head = handle.read(8)
            size = handle.seek(0, io.SEEK_END)
            handle.seek(max(size - 4, 0))
            tail = handle.read(4)
    except OSError as error:
        raise FormatError(f"{file}: cannot open the file ({error.strerror}); check its permissions") from None
    if not head:
        raise FormatError(f"{file}: file is empty")
    if not head.startswith(b"PAR1"):
        reason = _not_table_reason(head)
        if reason is None and head.lstrip()[:1] in (b"{", b"["):
            reason = "looks like JSON, not Parquet; rename it to .jsonl (one object per line) or .json (an array)"
        raise FormatError(f"{file}: the file {reason or 'is not a Parquet file (it does not start with PAR1)'}")
    if size < 12 or tail != b"PAR1":
        raise FormatError(f"{file}: the Parquet file is cut off (its footer is missing): copy or download it again")
    try:
        parquet = pq.ParquetFile(location, buffer_size=_PARQUET_BUFFER_BYTES, pre_buffer=False)
        schema = parquet.schema_arrow
        total = parquet.metadata.num_rows
    except (pa.ArrowException, OSError, ValueError) as error:
        raise FormatError(f"{file}: the Parquet file cannot be read ({_arrow_damage(error)}); it is damaged or "
                          "was not written completely: write or copy it again") from None
    try:
        columns = list(schema.names)
        fmt = _format_of(columns, file)
        names = _read_columns(columns, fmt, group_field)
        _check_types(schema, names, fmt, file)
        if total == 0:
            raise FormatError(f"{file}: the Parquet file has no rows")
    except BaseException:
        parquet.close()
        raise
    return Table(fmt, columns, _parquet_records(parquet, file, names, fmt, total))


def _parquet_records(parquet: pq.ParquetFile, file: str, names: list[str], fmt: str, total: int) -> Iterator[TableRecord]:
    """Row group by row group (a batch never spans two), so damage in one group loses only its rows: the rows
    of a group that cannot be decoded are one row error, at its first row not read, and reading goes on."""
    required = FORMAT_KEYS[fmt]
    metadata = parquet.metadata
    groups = metadata.num_row_groups
    first_row = 1
    read_any = False
    pending: list[TableRecord] = []  # damage before any row was read: a whole-file error if no row ever is
    try:
        for group in range(groups):
            size = metadata.row_group(group).num_rows
            done = 0
            try:
                batches = parquet.iter_batches(batch_size=BATCH_ROWS, row_groups=[group], columns=names,
                                               use_threads=False)
                while done < size:
                    batch = next(batches, None)
                    if batch is None:
                        break
                    if not read_any:
                        read_any = True
                        yield from pending
                    yield from _batch_records(batch, names, required, fmt, first_row + done)
                    done += batch.num_rows
            except (pa.ArrowException, OSError, ValueError) as error:
                where = f" (row group {group + 1} of {groups})" if groups > 1 else ""
                lost = (f"rows {first_row + done} to {first_row + size - 1}{where} cannot be read"
                        if size - done > 1 else f"row {first_row + done}{where} cannot be read")
                damage = (first_row + done, None, None, f"{lost}: the Parquet data is damaged ({_arrow_damage(error)}); "
                          f"{'they were' if size - done > 1 else 'it was'} left out")
                if read_any:
                    yield damage
                else:
                    pending.append(damage)
            first_row += size
        if not read_any and pending:
            raise FormatError(f"{file}: no row of the Parquet file can be read (first problem: {pending[0][3]}); "
                              "write or copy it again")
    finally:
        parquet.close()


# ----------------------------------------------------------------------------------------------------------
# datasets save_to_disk folders: Arrow IPC stream shards + dataset_info.json / state.json


def is_dataset_folder(location: Path) -> bool:
    """Whether a directory looks like what ``datasets.Dataset.save_to_disk`` (or ``DatasetDict``) writes."""
    try:
        return any((location / name).is_file() for name in ("state.json", "dataset_info.json", "dataset_dict.json")) \
            or any(location.glob("*.arrow"))
    except OSError:
        return False


def _dataset_shards(location: Path, file: str) -> list[Path]:
    if (location / "dataset_dict.json").is_file():
        try:
            splits = json.loads((location / "dataset_dict.json").read_text(encoding="utf-8")).get("splits") or []
        except (OSError, ValueError, AttributeError):
            splits = []
        splits = [str(s) for s in splits] or sorted(p.name for p in location.iterdir() if p.is_dir())
        example = f"{file.rstrip('/')}/{splits[0]}" if splits else f"{file.rstrip('/')}/train"
        raise FormatError(f"{file}: is a DatasetDict folder (splits: {', '.join(splits) or 'none'}); give the folder "
                          f"of one split, e.g. {example}")
    state = location / "state.json"
    if state.is_file():
        try:
            listed = json.loads(state.read_text(encoding="utf-8"))["_data_files"]
            names = [entry["filename"] for entry in listed]
        except (OSError, ValueError, KeyError, TypeError):
            raise FormatError(f"{file}: state.json is not a datasets state file (no \"_data_files\" list of "
                              "{\"filename\": ...}); save the dataset again with save_to_disk") from None
        shards = [location / name for name in names]
        absent = [name for name, shard in zip(names, shards) if not shard.is_file()]
        if absent:
            raise FormatError(f"{file}: state.json lists {absent[0]}, which is not in the folder; copy the whole "
                              "folder again")
    else:
        shards = sorted(location.glob("*.arrow"))
    if not shards:
        raise FormatError(f"{file}: the datasets folder holds no .arrow data files")
    return shards


def _open_shard(path: Path) -> tuple[Any, Any]:
    """(reader, file handle) of one Arrow IPC file, stream format (what save_to_disk writes) or file format."""
    handle = pa.OSFile(str(path), "rb")
    try:
        random_access = handle.read(6) == b"ARROW1"
        handle.seek(0)
        return (pyarrow.ipc.open_file(handle) if random_access else pyarrow.ipc.open_stream(handle)), handle
    except BaseException:
        handle.close()
        raise


def _batches(reader: Any) -> Iterator[pa.RecordBatch]:
    if isinstance(reader, pyarrow.ipc.RecordBatchFileReader):
        for index in range(reader.num_record_batches):
            yield reader.get_batch(index)
        return
    while True:
        try:
            yield reader.read_next_batch()
        except StopIteration:
            return


def _open_dataset_folder(location: Path, file: str, group_field: str | None) -> Table:
    shards = _dataset_shards(location, file)
    try:
        reader, handle = _open_shard(shards[0])
    except (pa.ArrowException, OSError) as error:
        raise FormatError(f"{file}: {shards[0].name} is not a readable Arrow data file ({_arrow_damage(error)}); "
                          "save the dataset again") from None
    try:
        schema = reader.schema
        columns = list(schema.names)
        fmt = _format_of(columns, file)
        names = _read_columns(columns, fmt, group_field)
        _check_types(schema, names, fmt, file)
    except BaseException:
        handle.close()
        raise
    return Table(fmt, columns, _dataset_records(shards, (reader, handle), file, schema, names, fmt))


def _dataset_records(shards: list[Path], first: tuple, file: str, schema: pa.Schema, names: list[str],
                     fmt: str) -> Iterator[TableRecord]:
    required = FORMAT_KEYS[fmt]
    read = 0
    for number, shard in enumerate(shards):
        try:
            reader, handle = first if number == 0 else _open_shard(shard)
        except (pa.ArrowException, OSError) as error:
            yield read + 1, None, None, (f"{shard.name} is not a readable Arrow data file ({_arrow_damage(error)}); "
                                         "it and the shards after it were not read")
            return
        try:
            if number and not reader.schema.equals(schema, check_metadata=False):
                yield read + 1, None, None, (f"{shard.name} has other columns than {shards[0].name} "
                                             f"({_shown_columns(list(reader.schema.names))}); it and the shards after "
                                             "it were not read")
                return
            batches = _batches(reader)
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except (pa.ArrowException, OSError, ValueError) as error:
                    damage = _arrow_damage(error)
                    if read == 0:
                        raise FormatError(f"{file}: {shard.name} cannot be read ({damage}); it is damaged or was not "
                                          "written completely: save the dataset again") from None
                    yield read + 1, None, None, (f"{shard.name} cannot be read from here on ({damage}); the rest of "
                                                 "the dataset was not read")
                    return
                yield from _batch_records(batch, names, required, fmt, read + 1)
                read += batch.num_rows
        finally:
            handle.close()
    if read == 0:
        raise FormatError(f"{file}: the dataset has no rows")


# ----------------------------------------------------------------------------------------------------------
# CSV / TSV


def _cell_is_broken(text: str) -> int | None:
    """The byte offset of the first byte that was not UTF-8 (decoded with surrogateescape), or None."""
    if text.isascii():
        return None
    found = _ESCAPED_BAD_BYTE.search(text)
    if found is None:
        return None
    return len(text[:found.start()].encode("utf-8", "surrogateescape"))


def _csv_problem(error: csv.Error, delimiter: str) -> tuple[str, bool]:
    """(reason, fatal) for the csv.Error of one row; fatal: nothing after it can be read."""
    text = str(error)
    if text == "unexpected end of data":
        return ("the file ends inside a quoted value: it was cut off, or a quote (\") is never closed", True)
    if text.startswith("field larger than field limit"):
        return (f'a value is longer than {MAX_CELL_CHARS:,} characters: most likely a quote (") opened in this row '
                "is never closed; the rest of the file was not read", True)
    shown = "tab" if delimiter == "\t" else repr(delimiter)
    if "expected after '\"'" in text:
        return (f"a quoted value goes on after its closing quote ({text}): a value that starts with a quote must end "
                f"with one, and a quote inside it must be doubled (\"\"); or put the value between quotes "
                f"(the delimiter is {shown})", False)
    return f"not valid CSV: {text}", False


def _open_csv(location: Path, file: str, delimiter: str, report: Any, group_field: str | None) -> Table:
    try:
        handle = open(location, "rb", buffering=_READ_CHUNK_BYTES)
    except OSError as error:
        raise FormatError(f"{file}: cannot open the file ({error.strerror}); check its permissions") from None
    try:
        head = handle.peek(8)[:8]
        reason = _not_table_reason(head)
        if reason is None and head.startswith(b"PAR1"):
            reason = "is a Parquet file; rename it to .parquet"
        if reason is not None:
            raise FormatError(f"{file}: the file {reason}")
        # utf-8-sig drops a byte-order mark; surrogateescape keeps broken bytes so each row can report its own.
        text = io.TextIOWrapper(handle, encoding="utf-8-sig", errors="surrogateescape", newline="")
        if csv.field_size_limit() < MAX_CELL_CHARS:  # the default (131,072) would refuse long answers; the limit
            csv.field_size_limit(MAX_CELL_CHARS)  # is process-wide (csv has no per-reader one), it is only raised
        reader = csv.reader(text, delimiter=delimiter, strict=True)
        header = _csv_header(reader, file, delimiter, report)
        fmt = _format_of(header, file, _header_hint(header, delimiter))
        names = _read_columns(header, fmt, group_field)
    except BaseException:
        handle.close()
        raise
    return Table(fmt, header, _csv_records(reader, handle, file, header, names, fmt, delimiter, report, group_field))


def _csv_header(reader: Any, file: str, delimiter: str, report: Any) -> list[str]:
    while True:
        try:
            header = next(reader)
        except StopIteration:
            raise FormatError(f"{file}: file is empty") from None
        except csv.Error as error:
            reason, _ = _csv_problem(error, delimiter)
            raise FormatError(f"{file}: the header (line {reader.line_num}) is not valid CSV: {reason}") from None
        if header and any(cell.strip() for cell in header):
            break
        report.blank_lines += 1
    for cell in header:
        bad = _cell_is_broken(cell)
        if bad is not None:
            raise FormatError(f"{file}: the header (line {reader.line_num}) is not valid UTF-8 (byte offset {bad} "
                              "in a column name); save the file as UTF-8")
    names = [cell.strip() for cell in header]
    if "" in names:
        raise FormatError(f"{file}: column {names.index('') + 1} of the header (line {reader.line_num}) has no name; "
                          "name every column")
    return names


def _header_hint(header: list[str], delimiter: str) -> str:
    if any("\x00" in name for name in header):
        return " The header has NUL bytes: if the file is UTF-16 encoded, save it as UTF-8."
    if header[0].lstrip()[:1] in ("{", "["):
        return " The file looks like JSON: rename it to .jsonl (one object per line) or .json (an array)."
    if len(header) == 1 and delimiter == "," and "\t" in header[0]:
        return " The header is one column holding tabs: a tab-separated file should end in .tsv."
    if len(header) == 1 and delimiter == "\t" and "," in header[0]:
        return " The header is one column holding commas: a comma-separated file should end in .csv."
    return " The first line of the file is read as the column names."


def _csv_records(reader: Any, handle: Any, file: str, header: list[str], names: list[str], fmt: str, delimiter: str,
                 report: Any, group_field: str | None) -> Iterator[TableRecord]:
    required = FORMAT_KEYS[fmt]
    width = len(header)
    positions = [header.index(name) for name in names]
    json_objects = {"meta"}
    if group_field and "." in group_field and group_field not in header:
        json_objects.add(group_field.split(".", 1)[0])
    row = 0
    try:
        while True:
            start = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as error:
                row += 1
                reason, fatal = _csv_problem(error, delimiter)
                yield row, start, None, reason
                if fatal:
                    return
                continue
            if not any(cells):  # a blank line (or only empty cells): counted, not a row
                report.blank_lines += 1
                continue
            row += 1
            if len(cells) != width:
                more = len(cells) > width
                hint = (f": a value holding the delimiter ({'tab' if delimiter == chr(9) else repr(delimiter)}) must "
                        "be quoted") if more else ""
                yield row, start, None, f"the row has {len(cells)} values but the header has {width} columns{hint}"
                continue
            values: list = []
            problem = None
            for name, position in zip(names, positions):
                cell = cells[position]
                bad = _cell_is_broken(cell)
                if bad is not None:
                    problem = f"column {name!r} is not valid UTF-8 (byte offset {bad} in the value)"
                    break
                if cell == "":
                    values.append(None)
                elif name in _JSON_LIST_COLUMNS:
                    value, problem = _json_cell(name, cell)
                    if problem is not None:
                        break
                    values.append(value)
                elif name in json_objects and cell.lstrip().startswith("{"):
                    try:
                        values.append(json.loads(cell))
                    except (ValueError, RecursionError):
                        values.append(cell)  # not JSON after all: kept as text (no format needs it)
                else:
                    values.append(cell)
            if problem is not None:
                yield row, start, None, problem
                continue
            record, problem = _record(names, values, required, fmt, "empty")
            yield row, start, record, problem
        if row == 0:
            raise FormatError(f"{file}: the file has a header but no rows")
    finally:
        handle.close()


def _json_cell(name: str, cell: str) -> tuple[Any, str | None]:
    expected = _JSON_LIST_COLUMNS[name]
    try:
        value = json.loads(cell)
    except json.JSONDecodeError as error:
        example = {"messages": ' (e.g. [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}])',
                   "conversations": ' (e.g. [{"from": "human", "value": "..."}, {"from": "gpt", "value": "..."}])'
                   }.get(name, "")
        return None, (f"column {name!r} is not valid JSON ({error.msg}, character {error.pos + 1}); it must hold "
                      f"{expected} as JSON text{example}")
    except RecursionError:
        return None, f"column {name!r} is not valid JSON: nested too deeply"
    except ValueError as error:  # an integer with more digits than Python converts
        return None, f"column {name!r} is not valid JSON: {str(error).split('; use sys.set_int_max_str_digits', 1)[0]}"
    if not isinstance(value, list):
        return None, f"column {name!r} holds a JSON {_json_type(value)}, expected {expected}"
    return value, None
