"""The cache: one DuckDB catalogue plus feature chunk files.  All SQL of the project lives in this module.

Layout under the cache root (``$G2IS_CACHE_DIR`` or ``cache/``)::

    g2is.duckdb                       projects, rows, ingest reports, checkpoints, feature catalogue, jobs,
                                      kNN graphs, selection runs with their rows and G2IS walk events
    features/<config_key>/<chunk>.npy raw projected features, one array per finished chunk
    checkpoints/<key>/                warmup LoRA weights + Adam moments (safetensors)
    jobs/<id>.log, jobs/<id>.lock     worker output, and the lock a live worker holds
    exports/<run>.<format>.jsonl      every exported selection, with its manifest

Why feature matrices live in .npy chunk files catalogued in DuckDB rather than in ``FLOAT[8192]`` columns
(measured by ``bench/storage.py`` on a loaded 2-core machine, 10,000 x 8192 float32; the ratios are the point):
DuckDB took 31 s to insert them (``FLOAT[]`` 29 s) and 2.7 s (6.0 s) to read them back; .npy chunks took 7.3 s
to write, of which 0.9 s is the files and the rest one small catalogue transaction per chunk, and 0.8 s to read
through memory maps.  More decisive than speed: DuckDB lets one process write at a time, so every second a job
spends in a write transaction is a second the app cannot read.  Writing a 256-row chunk held the lock for 1.5 s
(worst 8-10 s) as DuckDB arrays and 0.15 s as a chunk file plus catalogue rows.  Features keep float32 by
default so that ``dump-features`` hands out exactly what was computed; float16 (half the disk) is an option.

Concurrency protocol (DuckDB allows one read-write process, and any open connection of another process blocks
it): every operation opens a short-lived connection, does its work and closes it, while holding an exclusive
``flock`` on ``g2is.duckdb.lock``.  The kernel queues the processes that wait for it, so a job writing chunks
and the app reading status take turns (each turn is milliseconds) instead of racing DuckDB's own lock, and a
process that dies releases its turn with it -- there is no stale lock to clean up.  DuckDB's lock error can
still come from a program outside this protocol (a DuckDB shell on the file): opening then retries with
jittered backoff for up to ``busy_timeout`` seconds.  Inside one process a thread lock serialises connections
too, because DuckDB refuses a read-only and a read-write connection to the same file in one process.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from core.config import cache_dir

SCHEMA = """
CREATE TABLE IF NOT EXISTS projects (
    name VARCHAR PRIMARY KEY, created TIMESTAMP, settings VARCHAR);
CREATE TABLE IF NOT EXISTS rows (
    project VARCHAR, role VARCHAR, ordinal INTEGER, row_id VARCHAR, content_hash VARCHAR,
    messages VARCHAR, format VARCHAR, source VARCHAR, file VARCHAR, line INTEGER, grp VARCHAR);
CREATE TABLE IF NOT EXISTS ingest_files (
    project VARCHAR, role VARCHAR, file VARCHAR, format VARCHAR, rows INTEGER, errors INTEGER, ingested TIMESTAMP);
CREATE TABLE IF NOT EXISTS ingest_errors (
    project VARCHAR, role VARCHAR, file VARCHAR, line INTEGER, reason VARCHAR);
CREATE TABLE IF NOT EXISTS checkpoints (
    key VARCHAR PRIMARY KEY, run_key VARCHAR, epoch INTEGER, step INTEGER, learning_rate DOUBLE,
    path VARCHAR, created TIMESTAMP);
CREATE TABLE IF NOT EXISTS feature_configs (
    key VARCHAR PRIMARY KEY, gradient_type VARCHAR, checkpoint_key VARCHAR, dim INTEGER, dtype VARCHAR,
    description VARCHAR, created TIMESTAMP);
CREATE TABLE IF NOT EXISTS feature_chunks (
    config_key VARCHAR, chunk VARCHAR, path VARCHAR, n_rows INTEGER, created TIMESTAMP);
CREATE TABLE IF NOT EXISTS features (
    config_key VARCHAR, content_hash VARCHAR, chunk VARCHAR, chunk_offset INTEGER, norm FLOAT,
    n_tokens INTEGER, truncated BOOLEAN);
CREATE TABLE IF NOT EXISTS feature_errors (
    config_key VARCHAR, content_hash VARCHAR, error VARCHAR);
CREATE TABLE IF NOT EXISTS jobs (
    id VARCHAR PRIMARY KEY, project VARCHAR, kind VARCHAR, params VARCHAR, status VARCHAR, phase VARCHAR,
    done BIGINT, total BIGINT, errors BIGINT, rate DOUBLE, message VARCHAR, pid INTEGER,
    created TIMESTAMP, started TIMESTAMP, updated TIMESTAMP, finished TIMESTAMP);
CREATE TABLE IF NOT EXISTS graphs (
    key VARCHAR PRIMARY KEY, feature_key VARCHAR, k INTEGER, k_conflict INTEGER, n_rows INTEGER, backend VARCHAR,
    seconds DOUBLE, created TIMESTAMP);
CREATE TABLE IF NOT EXISTS graph_nodes (
    graph_key VARCHAR, node INTEGER, neighbors INTEGER[], similarities FLOAT[], conflicts INTEGER[],
    conflict_similarities FLOAT[]);
CREATE TABLE IF NOT EXISTS selection_runs (
    id VARCHAR PRIMARY KEY, project VARCHAR, method VARCHAR, params VARCHAR, feature_key VARCHAR,
    budget INTEGER, selected INTEGER, notes VARCHAR, seconds DOUBLE, created TIMESTAMP);
CREATE TABLE IF NOT EXISTS selection_rows (
    run_id VARCHAR, rank INTEGER, pool_index INTEGER, row_id VARCHAR, score DOUBLE, reason VARCHAR);
CREATE TABLE IF NOT EXISTS walk_events (
    run_id VARCHAR, step INTEGER, kind VARCHAR, component INTEGER, pool_index INTEGER, verdict VARCHAR,
    payload VARCHAR);
CREATE TABLE IF NOT EXISTS throughput (
    device VARCHAR, model_key VARCHAR, tokens_per_s DOUBLE, measured TIMESTAMP, PRIMARY KEY (device, model_key));
CREATE TABLE IF NOT EXISTS map_layouts (
    key VARCHAR PRIMARY KEY, project VARCHAR, feature_key VARCHAR, space VARCHAR, method VARCHAR, seed INTEGER,
    n_points INTEGER, note VARCHAR, seconds DOUBLE, created TIMESTAMP);
CREATE TABLE IF NOT EXISTS map_points (
    layout_key VARCHAR, point INTEGER, row_id VARCHAR, role VARCHAR, source VARCHAR, preview VARCHAR, x FLOAT, y FLOAT);
"""

ROLES = ("pool", "targets")
INGEST_MEMORY_LIMIT = "128MB"  # DuckDB's memory while it inserts ingested rows (it spills beyond it)
class _ProcessTurn:
    """Per database path and process: the thread lock, and how deeply the holding thread has re-entered."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.depth = 0


_PROCESS_TURNS: dict[str, _ProcessTurn] = {}
_PROCESS_TURNS_GUARD = threading.Lock()


class StoreBusyError(RuntimeError):
    """Another process kept the cache database locked for longer than the busy timeout."""


class StoreError(RuntimeError):
    """The cache is unusable (unreadable file, read-only folder, ...); the message says what to do."""


_READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def cache_problem(root: Path, path: Path | str, error: BaseException) -> str | None:
    """A user-facing sentence for a disk fault of the cache (read-only, full), or None for anything else.

    ``error`` is an OSError, or a DuckDB error whose text carries the operating system's reason."""
    code = getattr(error, "errno", None)
    text = str(error)
    if code in _READ_ONLY or "Permission denied" in text or "Read-only file system" in text:
        return (f"the cache folder {root} is not writable by this user ({path}: "
                f"{getattr(error, 'strerror', None) or text}): make it writable (chown/chmod) or set "
                f"G2IS_CACHE_DIR to a writable folder")
    if code in _FULL or "No space left on device" in text or "Disk quota exceeded" in text:
        return (f"the disk of the cache folder {root} is full (writing {path}): free some space there or set "
                f"G2IS_CACHE_DIR to a folder on a larger disk; finished work is kept, so running the same "
                f"command again (or Resume) continues where it stopped")
    return None


class DamagedChunkError(StoreError, ValueError):
    """A feature chunk file is damaged, truncated or missing (also a ValueError: bad data, shown as a message)."""


def chunk_problem(path: Path, n_rows: int) -> str | None:
    """Why a feature chunk file cannot hold its ``n_rows`` catalogued rows (missing, truncated, bad header), or None.
    Reads only the .npy header and the file size."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(handle)
            expected = handle.tell() + int(np.prod(shape)) * dtype.itemsize
            size = os.fstat(handle.fileno()).st_size
    except FileNotFoundError:
        return "the file is missing"
    except (OSError, ValueError, EOFError) as error:
        return f"unreadable .npy header: {error}"
    if size < expected:
        return f"truncated: {size} bytes of {expected}"
    if len(shape) != 2 or shape[0] != n_rows:
        return f"holds an array of shape {shape}, {n_rows} rows were recorded"
    return None


def _damaged_database(path: Path, text: str) -> str:
    return (f"the cache database {path} is damaged or truncated ({text.strip()}): move it aside "
            f"(mv {path} {path}.damaged) and ingest your files again to start a fresh catalogue, "
            f"or restore it from a backup")


def now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


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


@dataclass(frozen=True)
class Job:
    id: str
    project: str
    kind: str
    params: dict
    status: str  # queued | running | cancelling | cancelled | done | failed
    phase: str | None
    done: int
    total: int
    errors: int
    rate: float | None  # rows per second in the current run
    message: str | None
    pid: int | None
    created: datetime
    started: datetime | None
    updated: datetime | None
    finished: datetime | None

    @property
    def eta_seconds(self) -> float | None:
        if not self.rate or self.total <= self.done:
            return None
        return (self.total - self.done) / self.rate


@dataclass(frozen=True)
class FeatureRowEntry:
    content_hash: str
    chunk_offset: int
    norm: float
    n_tokens: int
    truncated: bool


class Store:
    def __init__(self, root: Path | str | None = None, busy_timeout: float = 120.0):
        self.root = Path(root).resolve() if root is not None else cache_dir()
        self.path = self.root / "g2is.duckdb"
        self.busy_timeout = busy_timeout
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            if self.root.exists() and not self.root.is_dir():
                raise StoreError(f"the cache folder {self.root} is a file, not a folder: move the file away or set "
                                 f"G2IS_CACHE_DIR to a folder") from error
            raise StoreError(cache_problem(self.root, self.root, error)
                             or f"cannot create the cache folder {self.root}: {error.strerror}; set G2IS_CACHE_DIR") from error
        with _PROCESS_TURNS_GUARD:
            self._process_turn = _PROCESS_TURNS.setdefault(str(self.path), _ProcessTurn())
        with self._connect(write=True) as con:
            con.execute(SCHEMA)

    # ------------------------------------------------------------------------------------ connections

    @contextmanager
    def _turn(self) -> Iterator[None]:
        """This process's turn at the database: the thread lock, then the cross-process ``flock``."""
        turn = self._process_turn
        with turn.lock:
            if turn.depth:  # re-entered by this thread: the flock is already ours
                turn.depth += 1
                try:
                    yield
                finally:
                    turn.depth -= 1
                return
            lock_file = self.path.with_name(self.path.name + ".lock")
            try:
                handle = open(lock_file, "a")
            except OSError as error:
                raise StoreError(cache_problem(self.root, lock_file, error)
                                 or f"cannot open {lock_file}: {error.strerror}; check the cache folder") from error
            with handle:
                fcntl.flock(handle, fcntl.LOCK_EX)  # released by close(), or by the kernel if we die
                turn.depth = 1
                try:
                    yield
                finally:
                    turn.depth = 0

    @contextmanager
    def _connect(self, write: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._turn():
            deadline = time.monotonic() + self.busy_timeout
            delay = 0.01
            while True:
                try:
                    con = duckdb.connect(str(self.path), read_only=not write)
                    break
                except duckdb.Error as error:
                    text = str(error)
                    if not isinstance(error, duckdb.IOException) or "could not set lock" not in text.lower():
                        raise StoreError(self._problem(error) or f"cannot open the cache database {self.path}: {text}") from error
                    if time.monotonic() > deadline:
                        raise StoreBusyError(
                            f"the cache database {self.path} stayed locked by another process for "
                            f"{self.busy_timeout:.0f} s: {text}"
                        ) from error
                    time.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 1.6, 0.25)
            try:
                yield con
            except duckdb.Error as error:  # a full or read-only disk, or a damaged file: say so and what to do
                problem = self._problem(error)
                if problem is None:
                    raise
                raise StoreError(problem) from error
            finally:
                con.close()

    def _problem(self, error: BaseException) -> str | None:
        """A user-facing message for a DuckDB error caused by the cache's disk or file, else None."""
        text = str(error)
        problem = cache_problem(self.root, self.path, error)
        if problem is None and str(self.path) in text and any(
                sign in text for sign in ("Could not read enough bytes", "not a valid DuckDB database", "Corrupt",
                                          "checksum", "corrupt")):
            problem = _damaged_database(self.path, text)
        return problem

    @contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._connect(write=True) as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

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
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        with self._transaction() as con:
            if not con.execute("SELECT 1 FROM projects WHERE name = ?", [project]).fetchone():
                con.execute("INSERT INTO projects VALUES (?, ?, ?)", [project, now(), "{}"])
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
                with suppress(duckdb.Error):  # after a failed insert the transaction refuses it; the error that matters propagates
                    con.execute("RESET memory_limit")
            stamp = now()
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
                con.execute("INSERT INTO ingest_errors SELECT ?, ?, file, line, reason FROM staged_errors", [project, role])
            return con.execute("SELECT count(*) FROM rows WHERE project = ? AND role = ?", [project, role]).fetchone()[0]

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

    # ------------------------------------------------------------------------------------ checkpoints

    def checkpoint(self, key: str) -> dict | None:
        with self._connect() as con:
            row = con.execute(
                "SELECT key, run_key, epoch, step, learning_rate, path FROM checkpoints WHERE key = ?", [key]
            ).fetchone()
        if row is None or not Path(row[5]).is_dir():
            return None
        return dict(zip(("key", "run_key", "epoch", "step", "learning_rate", "path"), row))

    def add_checkpoint(self, key: str, run_key: str, epoch: int, step: int, learning_rate: float, path: Path) -> None:
        with self._transaction() as con:
            con.execute("DELETE FROM checkpoints WHERE key = ?", [key])
            con.execute(
                "INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?, ?, ?)",
                [key, run_key, epoch, step, learning_rate, str(path), now()],
            )

    def checkpoint_dir(self, key: str) -> Path:
        return self.root / "checkpoints" / key

    # ------------------------------------------------------------------------------------ features

    def register_feature_config(self, key: str, gradient_type: str, checkpoint_key: str, dim: int, dtype: str, description: dict) -> None:
        with self._transaction() as con:
            if not con.execute("SELECT 1 FROM feature_configs WHERE key = ?", [key]).fetchone():
                con.execute(
                    "INSERT INTO feature_configs VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [key, gradient_type, checkpoint_key, dim, dtype, json.dumps(description), now()],
                )

    def feature_dir(self, config_key: str) -> Path:
        return self.root / "features" / config_key

    def finished_hashes(self, config_key: str) -> set[str]:
        """Content hashes that already have a feature or a recorded error under this config.  Rows whose chunk
        file is damaged or missing do not count: planning sees them as missing, so the next run recomputes them."""
        with self._connect() as con:
            features = con.execute("SELECT content_hash, chunk FROM features WHERE config_key = ?", [config_key]).fetchall()
            errors = con.execute("SELECT content_hash FROM feature_errors WHERE config_key = ?", [config_key]).fetchall()
            chunks = con.execute("SELECT chunk, path, n_rows FROM feature_chunks WHERE config_key = ?", [config_key]).fetchall()
        damaged = {chunk for chunk, path, n_rows in chunks if chunk_problem(Path(path), n_rows)}
        return {h for h, chunk in features if chunk not in damaged} | {h for (h,) in errors}

    def drop_damaged_chunks(self, config_key: str) -> int:
        """Forget (and delete) this config's chunk files that are damaged, truncated or missing, so that their
        rows are computed again; returns how many rows were dropped."""
        with self._connect() as con:
            chunks = con.execute("SELECT chunk, path, n_rows FROM feature_chunks WHERE config_key = ?", [config_key]).fetchall()
        damaged = [(chunk, path, n_rows) for chunk, path, n_rows in chunks if chunk_problem(Path(path), n_rows)]
        if not damaged:
            return 0
        with self._transaction() as con:
            for chunk, _, _ in damaged:
                con.execute("DELETE FROM features WHERE config_key = ? AND chunk = ?", [config_key, chunk])
                con.execute("DELETE FROM feature_chunks WHERE config_key = ? AND chunk = ?", [config_key, chunk])
        for _, path, _ in damaged:
            Path(path).unlink(missing_ok=True)
        return sum(n_rows for _, _, n_rows in damaged)

    def chunk_files(self, config_key: str) -> set[str]:
        with self._connect() as con:
            return {r[0] for r in con.execute("SELECT path FROM feature_chunks WHERE config_key = ?", [config_key]).fetchall()}

    def write_chunk(
        self,
        config_key: str,
        chunk_prefix: str,
        matrix: np.ndarray,
        entries: Sequence[FeatureRowEntry],
        errors: Sequence[tuple[str, str]],
        dtype: str = "float32",
        job_progress: tuple[str, dict] | None = None,
    ) -> str | None:
        """Persist one finished chunk: the .npy file first (atomic rename), then its catalogue rows, the row
        errors and the job's progress in one transaction.  A crash before the commit leaves an orphan file
        that ``remove_orphan_chunks`` deletes; a crash after it loses nothing."""
        chunk = None
        if len(entries):
            chunk = f"{chunk_prefix}-{uuid.uuid4().hex[:8]}"
            folder = self.feature_dir(config_key)
            final = folder / f"{chunk}.npy"
            partial = folder / f"{chunk}.partial"
            try:
                folder.mkdir(parents=True, exist_ok=True)
                with open(partial, "wb") as handle:
                    np.save(handle, np.ascontiguousarray(matrix, dtype=np.dtype(dtype)))
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(partial, final)
            except OSError as error:  # a full or read-only disk: drop the half-written file, say what to do
                partial.unlink(missing_ok=True)
                problem = cache_problem(self.root, partial, error)
                if problem is None:
                    raise
                raise StoreError(problem) from error
        with self._transaction() as con:
            if chunk is not None:
                con.execute(
                    "INSERT INTO feature_chunks VALUES (?, ?, ?, ?, ?)",
                    [config_key, chunk, str(self.feature_dir(config_key) / f"{chunk}.npy"), len(entries), now()],
                )
                table = pa.table(
                    {
                        "content_hash": [e.content_hash for e in entries],
                        "chunk_offset": [e.chunk_offset for e in entries],
                        "norm": pa.array([e.norm for e in entries], pa.float32()),
                        "n_tokens": [e.n_tokens for e in entries],
                        "truncated": [e.truncated for e in entries],
                    }
                )
                con.register("staged_features", table)
                # Another job may have finished the same row under the same config meanwhile: keep the first.
                con.execute(
                    "INSERT INTO features SELECT ?, s.content_hash, ?, s.chunk_offset, s.norm, s.n_tokens, s.truncated "
                    "FROM staged_features s WHERE NOT EXISTS (SELECT 1 FROM features f "
                    "WHERE f.config_key = ? AND f.content_hash = s.content_hash)",
                    [config_key, chunk, config_key],
                )
            if errors:
                con.register("staged_errors", pa.table({"content_hash": [e[0] for e in errors], "error": [e[1] for e in errors]}))
                con.execute(
                    "INSERT INTO feature_errors SELECT ?, s.content_hash, s.error FROM staged_errors s "
                    "WHERE NOT EXISTS (SELECT 1 FROM feature_errors f WHERE f.config_key = ? AND f.content_hash = s.content_hash)",
                    [config_key, config_key],
                )
            if job_progress is not None:
                self._update_job(con, *job_progress)
        return chunk

    def remove_orphan_chunks(self, config_key: str, chunk_prefix: str) -> int:
        """Delete this job's chunk files that never made it into the catalogue (killed between file and commit)."""
        folder = self.feature_dir(config_key)
        if not folder.is_dir():
            return 0
        known = self.chunk_files(config_key)
        removed = 0
        for file in folder.iterdir():
            if file.name.startswith(chunk_prefix + "-") and str(file) not in known:
                file.unlink(missing_ok=True)
                removed += 1
        return removed

    def feature_row_ids(self, project: str, role: str, config_key: str) -> list[str]:
        """Ids of the project's rows that have a feature in this set, in stored row order."""
        with self._connect() as con:
            return [r[0] for r in con.execute(
                "SELECT r.row_id FROM rows r JOIN features f ON f.content_hash = r.content_hash AND f.config_key = ? "
                "WHERE r.project = ? AND r.role = ? ORDER BY r.ordinal", [config_key, project, role]).fetchall()]

    def feature_matrix(self, project: str, role: str, config_key: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Row ids, raw projected features [N, K] float32 and their norms, in stored row order.

        Chunk files are opened as memory maps and each chunk's needed rows are gathered in one indexing step."""
        with self._connect() as con:
            table = con.sql(
                "SELECT r.row_id, c.path, f.chunk_offset, f.norm FROM rows r "
                "JOIN features f ON f.content_hash = r.content_hash AND f.config_key = ? "
                "JOIN feature_chunks c ON c.config_key = f.config_key AND c.chunk = f.chunk "
                "WHERE r.project = ? AND r.role = ? ORDER BY r.ordinal",
                params=[config_key, project, role],
            ).to_arrow_table()
        if table.num_rows == 0:
            return [], np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.float32)
        paths = np.asarray(table.column("path").to_pylist(), dtype=object)
        offsets = table.column("chunk_offset").to_numpy()
        out = None
        for path in dict.fromkeys(paths):
            positions = np.flatnonzero(paths == path)
            try:
                chunk = np.load(path, mmap_mode="r")
                if out is None:
                    out = np.empty((table.num_rows, chunk.shape[1]), dtype=np.float32)
                out[positions] = chunk[offsets[positions]]
            except (OSError, ValueError, EOFError, IndexError) as error:
                raise DamagedChunkError(
                    f"feature chunk {path} is damaged or truncated ({error}): compute the features again "
                    f"(`python -m core features --project {project}`, or Compute features on the Features page); "
                    f"only that chunk's rows are recomputed, the rest stays cached") from error
        return table.column("row_id").to_pylist(), out, table.column("norm").to_numpy().astype(np.float32)

    def feature_progress(self, project: str, role: str, config_key: str) -> dict:
        with self._connect() as con:
            total, done, failed, truncated = con.execute(
                "SELECT count(*), count(f.content_hash), count(e.content_hash), count_if(f.truncated) FROM rows r "
                "LEFT JOIN features f ON f.content_hash = r.content_hash AND f.config_key = ? "
                "LEFT JOIN feature_errors e ON e.content_hash = r.content_hash AND e.config_key = ? "
                "WHERE r.project = ? AND r.role = ?",
                [config_key, config_key, project, role],
            ).fetchone()
        return {"rows": total, "features": done, "errors": failed, "truncated": truncated or 0}

    def project_features(self, project: str) -> list[dict]:
        """Per feature config that covers any of the project's rows: role, gradient type, epoch and counts."""
        with self._connect() as con:
            result = con.execute(
                "SELECT c.key, r.role, c.gradient_type, c.description, count(*), count(f.content_hash), "
                "count(e.content_hash), count_if(f.truncated), min(c.created) FROM feature_configs c "
                "JOIN rows r ON r.project = ? AND r.role = json_extract_string(c.description, '$.role') "
                "LEFT JOIN features f ON f.config_key = c.key AND f.content_hash = r.content_hash "
                "LEFT JOIN feature_errors e ON e.config_key = c.key AND e.content_hash = r.content_hash "
                "GROUP BY c.key, r.role, c.gradient_type, c.description HAVING count(f.content_hash) + count(e.content_hash) > 0 "
                "ORDER BY min(c.created), r.role",
                [project],
            ).fetchall()
        return [
            {"config": key, "role": role, "gradient_type": gtype, "epoch": json.loads(desc).get("epoch"),
             "rows": total, "features": done, "errors": failed, "truncated": truncated or 0}
            for key, role, gtype, desc, total, done, failed, truncated, _ in result
        ]

    def feature_errors(self, project: str, role: str, config_key: str) -> list[tuple[str, str]]:
        with self._connect() as con:
            return con.execute(
                "SELECT r.row_id, e.error FROM rows r JOIN feature_errors e ON e.content_hash = r.content_hash "
                "AND e.config_key = ? WHERE r.project = ? AND r.role = ? ORDER BY r.ordinal",
                [config_key, project, role],
            ).fetchall()

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

    # ------------------------------------------------------------------------------------ maps

    _MAP_COLUMNS = ("key", "project", "feature_key", "space", "method", "seed", "n_points", "note", "seconds", "created")

    def save_map_layout(self, key: str, project: str, feature_key: str, space: str, method: str, seed: int,
                        note: str, seconds: float, points: pa.Table) -> None:
        """Store a 2-D layout (``points``: row_id, role, source, preview, x, y in point order; optionally ``point``)
        under its key, replacing an older layout with the same key.  One Arrow insert, so 50,000 points take well
        under a second."""
        if "point" not in points.column_names:  # an explicit position: a parallel scan need not keep table order
            points = points.append_column("point", pa.array(range(points.num_rows), pa.int32()))
        with self._transaction() as con:
            con.execute("DELETE FROM map_points WHERE layout_key = ?", [key])
            con.execute("DELETE FROM map_layouts WHERE key = ?", [key])
            con.execute("INSERT INTO map_layouts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [key, project, feature_key, space, method, seed, points.num_rows, note, seconds, now()])
            con.register("staged_points", points)
            con.execute("INSERT INTO map_points SELECT ?, point, row_id, role, source, preview, x, y "
                        "FROM staged_points", [key])

    def map_layouts(self, project: str, feature_key: str | None = None, space: str | None = None) -> list[dict]:
        """Stored layouts of a project (optionally of one feature key and space), newest first."""
        sql = f"SELECT {', '.join(self._MAP_COLUMNS)} FROM map_layouts WHERE project = ?"
        params: list = [project]
        for column, value in (("feature_key", feature_key), ("space", space)):
            if value is not None:
                sql += f" AND {column} = ?"
                params.append(value)
        with self._connect() as con:
            return [dict(zip(self._MAP_COLUMNS, r)) for r in con.execute(sql + " ORDER BY created DESC", params).fetchall()]

    def map_points(self, layout_key: str) -> pa.Table:
        """The layout's points (row_id, role, source, preview, x, y) in point order."""
        with self._connect() as con:
            return con.sql("SELECT row_id, role, source, preview, x, y FROM map_points WHERE layout_key = ? "
                           "ORDER BY point", params=[layout_key]).to_arrow_table()

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

    # ------------------------------------------------------------------------------------ jobs

    def create_job(self, project: str, kind: str, params: dict, total: int = 0) -> str:
        job_id = f"{kind}-{uuid.uuid4().hex[:10]}"
        with self._transaction() as con:
            con.execute(
                "INSERT INTO jobs VALUES (?, ?, ?, ?, 'queued', NULL, 0, ?, 0, NULL, NULL, NULL, ?, NULL, ?, NULL)",
                [job_id, project, kind, json.dumps(params), total, now(), now()],
            )
        return job_id

    _JOB_FIELDS = ("status", "phase", "done", "total", "errors", "rate", "message", "pid", "started", "finished")

    @classmethod
    def _update_job(cls, con, job_id: str, fields: dict) -> None:
        unknown = set(fields) - set(cls._JOB_FIELDS)
        if unknown:
            raise ValueError(f"unknown job fields {unknown}")
        assignments = ", ".join(f"{name} = ?" for name in fields)
        con.execute(f"UPDATE jobs SET {assignments}, updated = ? WHERE id = ?", [*fields.values(), now(), job_id])

    def update_job(self, job_id: str, **fields) -> None:
        with self._transaction() as con:
            self._update_job(con, job_id, fields)

    def request_cancel(self, job_id: str) -> None:
        with self._transaction() as con:
            con.execute(
                "UPDATE jobs SET status = 'cancelling', updated = ? WHERE id = ? AND status IN ('queued', 'running')",
                [now(), job_id],
            )

    _JOB_COLUMNS = "id, project, kind, params, status, phase, done, total, errors, rate, message, pid, created, started, updated, finished"

    @staticmethod
    def _job(row) -> Job:
        values = list(row)
        values[3] = json.loads(values[3])
        return Job(*values)

    def job(self, job_id: str) -> Job | None:
        with self._connect() as con:
            row = con.execute(f"SELECT {self._JOB_COLUMNS} FROM jobs WHERE id = ?", [job_id]).fetchone()
        return self._job(row) if row else None

    def jobs(self, project: str | None = None) -> list[Job]:
        sql = f"SELECT {self._JOB_COLUMNS} FROM jobs"
        params: list = []
        if project is not None:
            sql += " WHERE project = ?"
            params.append(project)
        with self._connect() as con:
            return [self._job(r) for r in con.execute(sql + " ORDER BY created DESC", params).fetchall()]

    # ------------------------------------------------------------------------------------ graphs

    def save_graph(self, key: str, feature_key: str, graph, backend: str, seconds: float) -> None:
        """Store a kNN gradient graph (rows of neighbour indices by descending similarity) under its key.

        The graph lives in DuckDB itself: one row per node with list columns, written from Arrow in one insert
        (50,000 x 32 neighbours is a few MB and well under a second)."""
        table = pa.table({
            "node": pa.array(np.arange(len(graph.neighbors), dtype=np.int32)),
            "neighbors": pa.array(list(np.asarray(graph.neighbors, dtype=np.int32)), pa.list_(pa.int32())),
            "similarities": pa.array(list(np.asarray(graph.similarities, dtype=np.float32)), pa.list_(pa.float32())),
            "conflicts": pa.array(list(np.asarray(graph.conflicts, dtype=np.int32)), pa.list_(pa.int32())),
            "conflict_similarities": pa.array(list(np.asarray(graph.conflict_similarities, dtype=np.float32)), pa.list_(pa.float32())),
        })
        with self._transaction() as con:
            con.execute("DELETE FROM graph_nodes WHERE graph_key = ?", [key])
            con.execute("DELETE FROM graphs WHERE key = ?", [key])
            con.execute("INSERT INTO graphs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [key, feature_key, graph.k, graph.conflicts.shape[1], len(graph.neighbors), backend, seconds, now()])
            con.register("staged_graph", table)
            con.execute("INSERT INTO graph_nodes SELECT ?, node, neighbors, similarities, conflicts, conflict_similarities "
                        "FROM staged_graph", [key])

    def graph_info(self, key: str) -> dict | None:
        with self._connect() as con:
            row = con.execute("SELECT key, feature_key, k, k_conflict, n_rows, backend, seconds, created FROM graphs "
                              "WHERE key = ?", [key]).fetchone()
        names = ("key", "feature_key", "k", "k_conflict", "n_rows", "backend", "seconds", "created")
        return dict(zip(names, row)) if row else None

    def latest_graph(self, feature_key: str) -> dict | None:
        with self._connect() as con:
            row = con.execute("SELECT key FROM graphs WHERE feature_key = ? ORDER BY created DESC LIMIT 1",
                              [feature_key]).fetchone()
        return self.graph_info(row[0]) if row else None

    def load_graph(self, key: str) -> dict[str, np.ndarray] | None:
        """The graph's arrays: neighbors, similarities, conflicts, conflict_similarities ([N, k] each)."""
        with self._connect() as con:
            table = con.sql("SELECT neighbors, similarities, conflicts, conflict_similarities FROM graph_nodes "
                            "WHERE graph_key = ? ORDER BY node", params=[key]).to_arrow_table()
        if table.num_rows == 0:
            return None
        out = {}
        for name, dtype in (("neighbors", np.int64), ("similarities", np.float32), ("conflicts", np.int64),
                            ("conflict_similarities", np.float32)):
            column = table.column(name).combine_chunks()
            width = len(column[0]) if len(column) else 0
            out[name] = column.flatten().to_numpy().astype(dtype).reshape(table.num_rows, width)
        return out

    # ------------------------------------------------------------------------------------ selections

    def save_selection(self, project: str, method: str, params: dict, feature_key: str, budget: int,
                       rows: Sequence[tuple[int, str, float, str]], notes: Sequence[str], seconds: float,
                       events: Sequence[dict] | None = None) -> str:
        """Store one selection run: its parameters, its ranked rows (pool index, row id, score, reason) and, for
        G2IS, the walk's events in order (each a dict with ``kind``, ``component``, ``row``, ``verdict``)."""
        run_id = f"{method}-{uuid.uuid4().hex[:10]}"
        with self._transaction() as con:
            con.execute("INSERT INTO selection_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [run_id, project, method, json.dumps(params, sort_keys=True), feature_key, budget, len(rows),
                         json.dumps(list(notes)), seconds, now()])
            if rows:
                con.register("staged_selection", pa.table({
                    "rank": pa.array(range(len(rows)), pa.int32()),
                    "pool_index": pa.array([r[0] for r in rows], pa.int32()),
                    "row_id": [r[1] for r in rows],
                    "score": pa.array([r[2] for r in rows], pa.float64()),
                    "reason": [r[3] for r in rows],
                }))
                con.execute("INSERT INTO selection_rows SELECT ?, rank, pool_index, row_id, score, reason "
                            "FROM staged_selection", [run_id])
            if events:
                con.register("staged_events", pa.table({
                    "step": pa.array(range(len(events)), pa.int32()),
                    "kind": [e.get("kind") for e in events],
                    "component": pa.array([e.get("component") for e in events], pa.int32()),
                    "pool_index": pa.array([e.get("row") for e in events], pa.int32()),
                    "verdict": [e.get("verdict") for e in events],
                    "payload": [json.dumps(e) for e in events],
                }))
                con.execute("INSERT INTO walk_events SELECT ?, step, kind, component, pool_index, verdict, payload "
                            "FROM staged_events", [run_id])
        return run_id

    _RUN_COLUMNS = ("id", "project", "method", "params", "feature_key", "budget", "selected", "notes", "seconds", "created")

    def _run(self, row) -> dict:
        run = dict(zip(self._RUN_COLUMNS, row))
        run["params"], run["notes"] = json.loads(run["params"]), json.loads(run["notes"])
        return run

    def selection_runs(self, project: str, method: str | None = None) -> list[dict]:
        sql = f"SELECT {', '.join(self._RUN_COLUMNS)} FROM selection_runs WHERE project = ?"
        params: list = [project]
        if method:
            sql += " AND method = ?"
            params.append(method)
        with self._connect() as con:
            return [self._run(r) for r in con.execute(sql + " ORDER BY created DESC", params).fetchall()]

    def selection_run(self, run_id: str) -> dict | None:
        with self._connect() as con:
            row = con.execute(f"SELECT {', '.join(self._RUN_COLUMNS)} FROM selection_runs WHERE id = ?", [run_id]).fetchone()
        return self._run(row) if row else None

    def selection_rows(self, run_id: str) -> list[tuple[int, str, float, str]]:
        """(pool index, row id, score, reason) in selection order."""
        with self._connect() as con:
            return con.execute("SELECT pool_index, row_id, score, reason FROM selection_rows WHERE run_id = ? "
                               "ORDER BY rank", [run_id]).fetchall()

    def walk_event_count(self, run_id: str) -> int:
        with self._connect() as con:
            return con.execute("SELECT count(*) FROM walk_events WHERE run_id = ?", [run_id]).fetchone()[0]

    def walk_events(self, run_id: str, start: int = 0, stop: int | None = None, kinds: Sequence[str] | None = None) -> list[dict]:
        """Events ``start <= step < stop`` of a stored walk (optionally only some kinds), each with its ``step``."""
        sql = "SELECT step, payload FROM walk_events WHERE run_id = ? AND step >= ?"
        params: list = [run_id, start]
        if stop is not None:
            sql += " AND step < ?"
            params.append(stop)
        if kinds:
            sql += f" AND kind IN ({', '.join('?' for _ in kinds)})"
            params.extend(kinds)
        with self._connect() as con:
            result = con.execute(sql + " ORDER BY step", params).fetchall()
        return [{"step": step, **json.loads(payload)} for step, payload in result]

    # ------------------------------------------------------------------------------------ throughput

    def record_throughput(self, device: str, model_key: str, tokens_per_s: float) -> None:
        with self._transaction() as con:
            con.execute("DELETE FROM throughput WHERE device = ? AND model_key = ?", [device, model_key])
            con.execute("INSERT INTO throughput VALUES (?, ?, ?, ?)", [device, model_key, tokens_per_s, now()])

    def throughput(self, device: str, model_key: str) -> float | None:
        with self._connect() as con:
            row = con.execute(
                "SELECT tokens_per_s FROM throughput WHERE device = ? AND model_key = ?", [device, model_key]
            ).fetchone()
        return row[0] if row else None

    # ------------------------------------------------------------------------------------ walk view

    def walk_picks(self, run_id: str) -> list[dict]:
        """The walk's picks in order: its anchor events and accepted candidates, each with its ``step``.

        A run's picks are at most its budget, while its rejected candidates can be many times more; the replay
        reads these once and every step then reads only a small window of events (``walk_events_with_rows``)."""
        with self._connect() as con:
            result = con.execute("SELECT step, payload FROM walk_events WHERE run_id = ? "
                                 "AND (kind = 'anchor' OR verdict = 'accepted') ORDER BY step", [run_id]).fetchall()
        return [{"step": step, **json.loads(payload)} for step, payload in result]

    def walk_events_with_rows(
        self, run_id: str, start: int, stop: int, project: str, row_ids_of: Callable[[list[dict]], Iterable[str]]
    ) -> tuple[list[dict], list[StoredRow]]:
        """Events ``start <= step < stop`` of a stored walk and the pool rows they name, in ONE connection:
        opening one costs tens of milliseconds, a large part of a walk step's budget.  Events name rows by pool
        index, so ``row_ids_of(events)`` (the caller knows the run's pool order) says which rows to read."""
        with self._connect() as con:
            found = con.execute("SELECT step, payload FROM walk_events WHERE run_id = ? AND step >= ? AND step < ? "
                                "ORDER BY step", [run_id, start, stop]).fetchall()
            events = [{"step": step, **json.loads(payload)} for step, payload in found]
            wanted = list(dict.fromkeys(i for i in row_ids_of(events) if i is not None))
            rows = []
            if wanted:
                con.register("walk_row_ids", pa.table({"row_id": pa.array(wanted, pa.string())}))
                rows = con.execute(
                    "SELECT " + _ROW_COLUMNS + " FROM rows "
                    "WHERE project = ? AND role = 'pool' AND row_id IN (SELECT row_id FROM walk_row_ids)",
                    [project]).fetchall()
        return events, [_stored_row(r) for r in rows]


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
