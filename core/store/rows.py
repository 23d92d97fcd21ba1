"""Projects, their pool/target rows and the ingest reports: ``RowTables``, with ``RowKey``, ``StoredRow`` and
``stage_rows_parquet``."""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from core.store.connection import (
    INGEST_MEMORY_LIMIT,
    ROLES,
    Connection,
    DatabaseError,
    StoreError,
    cache_problem,
    now,
)


@dataclass(frozen=True)
class RowKey:
    """A row without its messages: what planning needs (parsing 50,000 rows' message JSON costs a second)."""

    ordinal: int
    row_id: str
    content_hash: str


@dataclass(frozen=True)
class StoredRow:
    ordinal: int
    row_id: str
    content_hash: str
    messages: list
    format: str
    source: str
    file: str
    line: int
    group: str | None


_ROW_COLUMNS = "ordinal, row_id, content_hash, messages, format, source, file, line, grp"


def _stored_row(record: tuple) -> StoredRow:
    """A row read with ``SELECT _ROW_COLUMNS`` (messages are stored as JSON text)."""
    ordinal, row_id, content_hash, messages, *rest = record
    return StoredRow(ordinal, row_id, content_hash, json.loads(messages), *rest)



class RowTables(Connection):
    """Tables projects, rows, ingest_files and ingest_errors."""

    # ------------------------------------------------------------------------------------ projects

    def ensure_project(self, name: str, settings: dict | None = None) -> None:
        with self._transaction() as con:
            exists = con.execute("SELECT 1 FROM projects WHERE name = ?", [name]).fetchone()
            if not exists:
                con.execute("INSERT INTO projects VALUES (?, ?, ?)", [name, now(), json.dumps(settings or {})])
            elif settings is not None:
                con.execute("UPDATE projects SET settings = ? WHERE name = ?", [json.dumps(settings), name])

    def projects(self) -> list[str]:
        with self._connect() as con:
            return [r[0] for r in con.execute("SELECT name FROM projects ORDER BY name").fetchall()]

    def project_settings(self, name: str) -> dict | None:
        with self._connect() as con:
            row = con.execute("SELECT settings FROM projects WHERE name = ?", [name]).fetchone()
        return json.loads(row[0]) if row else None

    # ------------------------------------------------------------------------------------ rows

    def replace_rows(self, project: str, role: str, staged: Path, files: Sequence[dict], errors: Sequence[dict]) -> int:
        """Atomically replace a project's pool or targets with the rows staged in a parquet file."""
        return self.replace_roles(project, {role: (staged, files, errors)})[role]

    def replace_roles(self, project: str, staged: Mapping[str, tuple[Path, Sequence[dict], Sequence[dict]]]) -> dict[str, int]:
        """Replace several roles' rows at once, all or none: role -> (staged parquet file, ingest_files records,
        ingest_errors records), in one transaction (a failure on any role rolls back every role, and the project
        row of a new project).  Returns role -> rows stored."""
        unknown = [role for role in staged if role not in ROLES]
        if unknown or not staged:
            raise ValueError(f"role must be one of {ROLES}")
        with self._transaction() as con:
            if not con.execute("SELECT 1 FROM projects WHERE name = ?", [project]).fetchone():
                con.execute("INSERT INTO projects VALUES (?, ?, ?)", [project, now(), "{}"])
            stamp = now()
            return {role: _replace_role(con, project, role, path, files, errors, stamp)
                    for role, (path, files, errors) in staged.items()}

    def rows(self, project: str, role: str, limit: int | None = None) -> list[StoredRow]:
        sql = (
            "SELECT " + _ROW_COLUMNS + " FROM rows "
            "WHERE project = ? AND role = ? ORDER BY ordinal"
        )
        params: list = [project, role]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        with self._connect() as con:
            result = con.execute(sql, params).fetchall()
        return [_stored_row(r) for r in result]

    def row_counts(self, project: str) -> dict[str, int]:
        with self._connect() as con:
            result = con.execute("SELECT role, count(*) FROM rows WHERE project = ? GROUP BY role", [project]).fetchall()
        return {role: 0 for role in ROLES} | dict(result)

    def ingest_report(self, project: str) -> dict:
        with self._connect() as con:
            files = con.execute(
                "SELECT role, file, format, rows, errors, ingested FROM ingest_files WHERE project = ? ORDER BY role, file",
                [project],
            ).fetchall()
            errors = con.execute(
                "SELECT role, file, line, reason FROM ingest_errors WHERE project = ? ORDER BY role, file, line",
                [project],
            ).fetchall()
        return {
            "files": [dict(zip(("role", "file", "format", "rows", "errors", "ingested"), f)) for f in files],
            "errors": [dict(zip(("role", "file", "line", "reason"), e)) for e in errors],
        }

    # ------------------------------------------------------------------------------------ compare

    def row_keys(self, project: str, role: str) -> list[RowKey]:
        """Every row of the role in order, without messages."""
        with self._connect() as con:
            return [RowKey(*r) for r in con.execute(
                "SELECT ordinal, row_id, content_hash FROM rows WHERE project = ? AND role = ? ORDER BY ordinal",
                [project, role]).fetchall()]

    def rows_by_hash(self, project: str, role: str, hashes: Sequence[str]) -> dict[str, StoredRow]:
        """content hash -> the first row of the role with that content (rows with one hash have one content)."""
        if not hashes:
            return {}
        with self._connect() as con:
            con.register("wanted_hashes", pa.table({"content_hash": pa.array(list(dict.fromkeys(hashes)), pa.string())}))
            found = con.execute(
                "SELECT " + _ROW_COLUMNS + " FROM rows WHERE project = ? AND role = ? "
                "AND content_hash IN (SELECT content_hash FROM wanted_hashes) ORDER BY ordinal",
                [project, role]).fetchall()
        by_hash: dict[str, StoredRow] = {}
        for record in found:
            row = _stored_row(record)
            by_hash.setdefault(row.content_hash, row)
        return by_hash

    def rows_by_id(self, project: str, role: str, row_ids: Sequence[str]) -> list[StoredRow]:
        """The rows with these ids (in pool order; unknown ids are left out): a few rows without reading them all."""
        if not row_ids:
            return []
        with self._connect() as con:
            con.register("wanted_ids", pa.table({"row_id": pa.array(list(row_ids), pa.string())}))
            result = con.execute(
                "SELECT " + _ROW_COLUMNS + " FROM rows "
                "WHERE project = ? AND role = ? AND row_id IN (SELECT row_id FROM wanted_ids) ORDER BY ordinal",
                [project, role]).fetchall()
        return [_stored_row(r) for r in result]

    def row_sources(self, project: str, role: str, row_ids: Sequence[str]) -> dict[str, str]:
        """row id -> source for these ids (no message parsing, so cheap for thousands of selected rows)."""
        if not row_ids:
            return {}
        with self._connect() as con:
            con.register("wanted_ids", pa.table({"row_id": pa.array(list(row_ids), pa.string())}))
            return dict(con.execute("SELECT row_id, source FROM rows WHERE project = ? AND role = ? "
                                    "AND row_id IN (SELECT row_id FROM wanted_ids)", [project, role]).fetchall())

    def source_counts(self, project: str, role: str) -> dict[str, int]:
        """source -> number of rows of the role, largest first."""
        with self._connect() as con:
            return dict(con.execute("SELECT source, count(*) AS n FROM rows WHERE project = ? AND role = ? "
                                    "GROUP BY source ORDER BY n DESC, source", [project, role]).fetchall())

    # ------------------------------------------------------------------------------------ data view

    def rows_version(self, project: str) -> tuple:
        """A cheap stamp that changes whenever one of the project's roles is re-ingested (keys per-row caches)."""
        with self._connect() as con:
            files = con.execute("SELECT role, count(*), max(ingested) FROM ingest_files WHERE project = ? "
                                "GROUP BY role ORDER BY role", [project]).fetchall()
            rows = con.execute("SELECT role, count(*) FROM rows WHERE project = ? GROUP BY role ORDER BY role",
                               [project]).fetchall()
        return tuple(files), tuple(rows)

    def row_lengths(self, project: str, role: str) -> pa.Table:
        """Per row of the role, in order (chars, words): the length of all its message contents joined by spaces,
        in characters and in whitespace-separated words.  Words are counted as spaces and newlines + 1 (exact
        for single-spaced text): a regex split takes ~5 s on 50,000 rows, this under a second."""
        sql = (
            "WITH texts AS (SELECT ordinal, "
            "  array_to_string(json_extract_string(messages, '$[*].content'), ' ') AS text "
            "  FROM rows WHERE project = ? AND role = ?) "
            "SELECT length(text) AS chars, "
            "  length(text) - length(replace(replace(text, ' ', ''), chr(10), '')) + 1 AS words "
            "FROM texts ORDER BY ordinal"
        )
        with self._connect() as con:
            return con.sql(sql, params=[project, role]).to_arrow_table()

    def row_at(self, project: str, role: str, ordinal: int) -> StoredRow | None:
        """One row by its position in the role (``ordinal``), without reading the others."""
        with self._connect() as con:
            r = con.execute(
                "SELECT " + _ROW_COLUMNS + " FROM rows "
                "WHERE project = ? AND role = ? AND ordinal = ?", [project, role, int(ordinal)]).fetchone()
        return _stored_row(r) if r else None

    def ingested_files(self, project: str) -> list[dict]:
        """The files behind the project's current rows (role, file, format, rows, errors, ingested), without
        reading the recorded errors as ``ingest_report`` does."""
        with self._connect() as con:
            files = con.execute("SELECT role, file, format, rows, errors, ingested FROM ingest_files "
                                "WHERE project = ? ORDER BY role, file", [project]).fetchall()
        return [dict(zip(("role", "file", "format", "rows", "errors", "ingested"), f)) for f in files]

    def ingest_errors(self, project: str, limit: int = 1000) -> tuple[int, list[dict]]:
        """(how many bad rows the last ingests recorded, the first ``limit`` of them as role/file/line/reason)."""
        with self._connect() as con:
            total = con.execute("SELECT count(*) FROM ingest_errors WHERE project = ?", [project]).fetchone()[0]
            errors = con.execute("SELECT role, file, line, reason FROM ingest_errors WHERE project = ? "
                                 "ORDER BY role, file, line LIMIT ?", [project, int(limit)]).fetchall()
        return total, [dict(zip(("role", "file", "line", "reason"), e)) for e in errors]


def _replace_role(con, project: str, role: str, staged: Path, files: Sequence[dict], errors: Sequence[dict],
                  stamp) -> int:
    """Inside the caller's transaction: replace one role's rows, ingest_files and ingest_errors."""
    for table in ("rows", "ingest_files", "ingest_errors"):
        con.execute(f"DELETE FROM {table} WHERE project = ? AND role = ?", [project, role])
    # Bounded memory for any file size: DuckDB would keep the new blocks cached up to 80 % of the RAM
    # (a 1,000,000-row insert took 550 MB), and an ORDER BY would sort the whole file in memory; the
    # staged file is already in ordinal order, which the insert keeps (preserve_insertion_order).
    # The limit is the database instance's, which other connections of this process may share: reset it.
    con.execute(f"SET memory_limit = '{INGEST_MEMORY_LIMIT}'")
    try:
        con.execute(
            "INSERT INTO rows SELECT ?, ?, ordinal, row_id, content_hash, messages, format, source, file, line, "
            "grp FROM read_parquet(?)",
            [project, role, str(staged)],
        )
    finally:
        with suppress(DatabaseError):  # after a failed insert the transaction refuses it; the error that matters propagates
            con.execute("RESET memory_limit")
    for info in files:
        con.execute(
            "INSERT INTO ingest_files VALUES (?, ?, ?, ?, ?, ?, ?)",
            [project, role, info["file"], info["format"], info["rows"], info["errors"], stamp],
        )
    if errors:
        table = pa.table(
            {
                "file": [e["file"] for e in errors],
                "line": [e["line"] for e in errors],
                "reason": [e["reason"] for e in errors],
            }
        )
        con.register("staged_errors", table)
        try:
            con.execute("INSERT INTO ingest_errors SELECT ?, ?, file, line, reason FROM staged_errors", [project, role])
        finally:
            with suppress(DatabaseError):
                con.unregister("staged_errors")
    return con.execute("SELECT count(*) FROM rows WHERE project = ? AND role = ?", [project, role]).fetchone()[0]


def stage_rows_parquet(path: Path, rows: Iterable[dict], batch_rows: int = 5000) -> int:
    """Stream row dicts into a parquet file (bounded memory) for ``Store.replace_rows``."""
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("ordinal", pa.int32()),
            ("row_id", pa.string()),
            ("content_hash", pa.string()),
            ("messages", pa.string()),
            ("format", pa.string()),
            ("source", pa.string()),
            ("file", pa.string()),
            ("line", pa.int32()),
            ("grp", pa.string()),
        ]
    )
    count = 0
    try:
        with pq.ParquetWriter(str(path), schema) as writer:
            batch: list[dict] = []
            for row in rows:
                batch.append(row)
                count += 1
                if len(batch) >= batch_rows:
                    writer.write_table(pa.Table.from_pylist(batch, schema))
                    batch = []
            writer.write_table(pa.Table.from_pylist(batch, schema))
    except OSError as error:  # the readers turn their own file errors into row errors: this is the staging disk
        root = next((folder for folder in path.parents if (folder / "g2is.duckdb").exists()), path.parent)
        problem = None if getattr(error, "filename", None) not in (None, str(path)) else cache_problem(root, path, error)
        if problem is None:
            raise
        raise StoreError(problem) from error
    return count
