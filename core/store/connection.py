"""The cache's connection/lock protocol and schema: one DuckDB catalogue plus feature chunk files.  All SQL of
the project lives in ``core.store``; the table families' queries are mixins over ``Connection``.

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

Schema versions: the catalogue records its schema version in the one-row table ``schema_info``.  A Store checks
it once, when it is created (under the lock, on the connection that creates the schema), never per operation:
a fresh file gets ``SCHEMA`` and ``SCHEMA_VERSION``; an older file (version 1 is a catalogue written before
versions were recorded: tables, but no ``schema_info``) is brought up to ``SCHEMA_VERSION`` by ``MIGRATIONS``,
all in one transaction, so it is either fully migrated or left as it was; a file newer than this code is
refused with a ``StoreError`` that says what to do, before anything is written to it.
"""
from __future__ import annotations

import errno
import fcntl
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import numpy as np

from core.config import cache_dir

DatabaseError = duckdb.Error  # what the table modules catch: only this module imports duckdb

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
    config_key VARCHAR, content_hash VARCHAR, error VARCHAR, kind VARCHAR);
CREATE TABLE IF NOT EXISTS jobs (
    id VARCHAR PRIMARY KEY, project VARCHAR, kind VARCHAR, params VARCHAR, status VARCHAR, phase VARCHAR,
    done BIGINT, total BIGINT, errors BIGINT, rate DOUBLE, message VARCHAR, pid INTEGER,
    created TIMESTAMP, started TIMESTAMP, updated TIMESTAMP, finished TIMESTAMP);
CREATE TABLE IF NOT EXISTS graphs (
    key VARCHAR PRIMARY KEY, feature_key VARCHAR, k INTEGER, k_conflict INTEGER, n_rows INTEGER, backend VARCHAR,
    seconds DOUBLE, created TIMESTAMP, geometry VARCHAR);
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
CREATE TABLE IF NOT EXISTS evaluations (
    id VARCHAR PRIMARY KEY, project VARCHAR, params VARCHAR, arms VARCHAR, eval_rows VARCHAR, created TIMESTAMP);
CREATE TABLE IF NOT EXISTS eval_units (
    key VARCHAR PRIMARY KEY, kind VARCHAR, seed INTEGER, n_train INTEGER, heldout_loss DOUBLE, row_losses DOUBLE[],
    correct INTEGER, checked INTEGER, curve DOUBLE[], seconds DOUBLE, adapter VARCHAR, created TIMESTAMP);
CREATE TABLE IF NOT EXISTS schema_info (version INTEGER);
"""
"""The current schema (version ``SCHEMA_VERSION``), which a fresh catalogue gets.  Changing it means: bump
``SCHEMA_VERSION`` and append the migration from the previous version to ``MIGRATIONS``."""

SCHEMA_VERSION = 5
"""The schema version this code writes and reads.  1: the catalogue before versions were recorded (no
``schema_info`` table); 2: ``schema_info`` added, the tables otherwise as in 1; 3: ``feature_errors.kind``
('permanent' or 'retriable'; NULL, an error recorded before 3, counts as retriable); 4: tables ``evaluations``
and ``eval_units`` (fine-tuning evaluations), and the row role 'eval'; 5: ``graphs.geometry`` (how the neighbours
were ranked: 'cosine', or a hubness remedy such as 'centred+csls'; NULL, a graph stored before 5, is 'cosine')."""


def _add_schema_info(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("CREATE TABLE IF NOT EXISTS schema_info (version INTEGER)")


MIGRATIONS: tuple[tuple[int, str, Callable[[duckdb.DuckDBPyConnection], None] | str], ...] = (
    (1, "record the schema version (table schema_info)", _add_schema_info),
    (2, "feature errors keep their kind (column feature_errors.kind)",
     "ALTER TABLE IF EXISTS feature_errors ADD COLUMN IF NOT EXISTS kind VARCHAR"),
    (3, "evaluations by fine-tuning (new tables, created by the schema itself)", ""),
    (4, "graphs record their geometry (column graphs.geometry)",
     "ALTER TABLE IF EXISTS graphs ADD COLUMN IF NOT EXISTS geometry VARCHAR"),
)
"""The ordered migrations, one per version: ``(from_version, what it does, step)`` brings a catalogue from
``from_version`` to ``from_version + 1``; ``step`` is a function of the open connection or one SQL text (any
number of ``;``-separated statements).  They run in order inside one transaction, then the ``CREATE TABLE IF
NOT EXISTS`` statements of ``SCHEMA`` (which add a table that an old catalogue lacks and leave the others as
they are), then the new version is recorded.  So a new table needs only its ``CREATE`` in ``SCHEMA`` and an
entry whose step is ``""``; a new column needs its definition in ``SCHEMA`` and a step such as ``"ALTER TABLE
IF EXISTS jobs ADD COLUMN IF NOT EXISTS host VARCHAR"`` (``IF EXISTS``: a very old catalogue may lack the table,
which ``SCHEMA`` then creates whole).  ``tests/test_store_schema.py`` checks that a migrated catalogue has
exactly the tables and columns of a fresh one."""

ROLES = ("pool", "targets", "eval")  # eval: rows that evaluate a selection by fine-tuning, never guide one
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
# numpy's np.save/tofile reports a short write as a bare OSError("1024 requested and 992 written") with no errno;
# on a regular cache file a short write only happens when the disk (or the quota) is full.
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")


def cache_problem(root: Path, path: Path | str, error: BaseException) -> str | None:
    """A user-facing sentence for a disk fault of the cache (read-only, full), or None for anything else.

    ``error`` is an OSError, or a DuckDB error whose text carries the operating system's reason."""
    code = getattr(error, "errno", None)
    text = str(error)
    if code in _READ_ONLY or "Permission denied" in text or "Read-only file system" in text:
        return (f"the cache folder {root} is not writable by this user ({path}: "
                f"{getattr(error, 'strerror', None) or text}): make it writable (chown/chmod) or set "
                f"G2IS_CACHE_DIR to a writable folder")
    if (code in _FULL or "No space left on device" in text or "Disk quota exceeded" in text
            or (code is None and _SHORT_WRITE.search(text))):
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



class Connection:
    """The cache root, its database file and the connection/lock protocol every table family's queries use."""

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
            self._ensure_schema(con)

    def _ensure_schema(self, con: duckdb.DuckDBPyConnection) -> None:
        """Create the schema of a fresh catalogue, migrate an older one, refuse a newer one (see the module doc).
        Runs once per Store, on its first connection, inside this process's turn."""
        tables = {name for (name,) in con.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_catalog = current_database() AND table_schema = 'main'").fetchall()}
        if not tables:
            version = 0
        elif "schema_info" not in tables:
            version = 1
        else:
            recorded = con.execute("SELECT max(version) FROM schema_info").fetchone()[0]
            if recorded is None:
                raise StoreError(_damaged_database(self.path, "its schema_info table records no schema version"))
            version = int(recorded)
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise StoreError(f"the cache {self.path} was written by a newer G2IS Explorer (schema {version}, this "
                             f"code reads up to {SCHEMA_VERSION}): upgrade, or set G2IS_CACHE_DIR to another folder")
        steps = {from_version: step for from_version, _, step in MIGRATIONS}
        con.execute("BEGIN TRANSACTION")
        try:
            if version:  # a fresh catalogue gets SCHEMA as it is; an older one its migrations first
                for from_version in range(version, SCHEMA_VERSION):
                    step = steps[from_version]
                    if callable(step):
                        step(con)
                    elif step.strip():
                        con.execute(step)
            con.execute(SCHEMA)
            con.execute("DELETE FROM schema_info")
            con.execute("INSERT INTO schema_info VALUES (?)", [SCHEMA_VERSION])
        except BaseException as error:
            con.execute("ROLLBACK")
            if not version or self._problem(error) is not None or not isinstance(error, duckdb.Error):
                raise  # a disk fault becomes its StoreError in _connect
            raise StoreError(f"cannot migrate the cache {self.path} from schema {version} to {SCHEMA_VERSION} "
                             f"({error}); the file was left as it was: upgrade G2IS Explorer, or move the file "
                             f"aside (mv {self.path} {self.path}.old) and ingest your files again") from error
        con.execute("COMMIT")

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
