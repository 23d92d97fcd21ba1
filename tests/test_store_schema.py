"""The cache catalogue's schema version: an old catalogue is migrated once, a fresh one records the version, a
newer one is refused with a message that says what to do and is left untouched.

``fixtures/cache_schema_v1/g2is.duckdb.gz`` is a real catalogue written by the code before schema versions
were recorded (commit 5f1519c, DuckDB 2.0.1): ``Store(tmp)``, then ``ingest_files`` of 5 pool rows ``row-0`` ..
``row-4`` and 2 target rows ``t-0``, ``t-1`` into project ``demo``, then ``CHECKPOINT``.  It is gzipped because
DuckDB's 256 KB blocks make the file 1.8 MB, nearly all of it zeros (7 KB compressed).
"""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import duckdb
import pytest

from core.store import Store, StoreError, connection
from core.store.connection import MIGRATIONS, SCHEMA_VERSION

V1_FIXTURE = Path(__file__).parent / "fixtures" / "cache_schema_v1" / "g2is.duckdb.gz"


def v1_cache(root: Path) -> Path:
    root.mkdir(parents=True)
    with gzip.open(V1_FIXTURE, "rb") as source, open(root / "g2is.duckdb", "wb") as target:
        shutil.copyfileobj(source, target)
    return root


def recorded_version(root: Path) -> int | None:
    con = duckdb.connect(str(root / "g2is.duckdb"), read_only=True)
    try:
        tables = {name for (name,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if "schema_info" not in tables:
            return None
        rows = con.execute("SELECT version FROM schema_info").fetchall()
    finally:
        con.close()
    assert len(rows) == 1, rows
    return rows[0][0]


def columns(root: Path) -> dict[str, list[tuple[str, str]]]:
    con = duckdb.connect(str(root / "g2is.duckdb"), read_only=True)
    try:
        result = con.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position").fetchall()
    finally:
        con.close()
    tables: dict[str, list[tuple[str, str]]] = {}
    for table, column, data_type in result:
        tables.setdefault(table, []).append((column, data_type))
    return tables


def test_migrations_cover_every_version():
    assert [from_version for from_version, _, _ in MIGRATIONS] == list(range(1, SCHEMA_VERSION))


@pytest.mark.reliability("fault", "cache written before schema versions (v1) is migrated")
def test_v1_cache_is_migrated_once_and_keeps_its_rows(tmp_path, monkeypatch, observed):
    root = v1_cache(tmp_path / "cache")
    assert recorded_version(root) is None  # the fixture really is a pre-version catalogue
    con = duckdb.connect(str(root / "g2is.duckdb"))
    try:  # a row error as the old code wrote it: no kind (schema 3 counts it as retriable)
        con.execute("INSERT INTO feature_errors SELECT 'cfg', content_hash, 'out of memory' FROM rows "
                    "WHERE project = 'demo' AND row_id = 'row-1'")
    finally:
        con.close()

    calls = []

    def counted(step):
        def run(con):
            calls.append(step)
            return step(con) if callable(step) else con.execute(step)
        return run

    monkeypatch.setattr(connection, "MIGRATIONS",
                        tuple((version, what, counted(step)) for version, what, step in MIGRATIONS))

    store = Store(root)
    assert len(calls) == SCHEMA_VERSION - 1
    assert recorded_version(root) == SCHEMA_VERSION
    assert store.row_counts("demo") == {"pool": 5, "targets": 2, "eval": 0}
    assert [row.row_id for row in store.rows("demo", "pool")] == [f"row-{i}" for i in range(5)]
    assert [row.row_id for row in store.rows("demo", "targets")] == ["t-0", "t-1"]
    assert store.rows("demo", "pool")[0].messages[0]["content"] == "question 0"
    assert store.retriable_error_count("demo", ["cfg"]) == 1
    observed.append(f"v1 catalogue migrated to schema {SCHEMA_VERSION}; {store.row_counts('demo')} rows readable")

    again = Store(root)  # opening again finds the current version: no second migration
    assert len(calls) == SCHEMA_VERSION - 1
    assert recorded_version(root) == SCHEMA_VERSION
    assert again.row_counts("demo") == {"pool": 5, "targets": 2, "eval": 0}

    fresh = tmp_path / "fresh"
    Store(fresh)
    assert columns(root) == columns(fresh)  # migrated = what a fresh catalogue gets, table for table


@pytest.mark.reliability("fault", "migration of an old cache fails part-way")
def test_failed_migration_leaves_the_cache_as_it_was(tmp_path, monkeypatch, observed):
    root = v1_cache(tmp_path / "cache")
    before = (root / "g2is.duckdb").read_bytes()

    def half_done(con):
        con.execute("ALTER TABLE rows ADD COLUMN half_done INTEGER")
        con.execute("SELECT * FROM no_such_table")

    monkeypatch.setattr(connection, "MIGRATIONS", ((1, "fails part-way", half_done),))
    with pytest.raises(StoreError) as refused:
        Store(root)
    message = str(refused.value)
    observed.append(message)
    assert "cannot migrate the cache" in message and str(root / "g2is.duckdb") in message
    assert f"from schema 1 to {SCHEMA_VERSION}" in message and "left as it was" in message
    assert recorded_version(root) is None
    assert all(column != "half_done" for column, _ in columns(root)["rows"])
    assert (root / "g2is.duckdb").read_bytes() == before

    monkeypatch.undo()  # the real migrations still work on it afterwards
    assert Store(root).row_counts("demo") == {"pool": 5, "targets": 2, "eval": 0}
    assert recorded_version(root) == SCHEMA_VERSION


def test_fresh_cache_records_the_schema_version(tmp_path):
    root = tmp_path / "cache"
    store = Store(root)
    assert recorded_version(root) == SCHEMA_VERSION
    assert store.projects() == []
    Store(root)
    assert recorded_version(root) == SCHEMA_VERSION


@pytest.mark.reliability("fault", "cache written by a newer version (higher schema)")
def test_newer_cache_is_refused_and_left_unchanged(tmp_path, observed):
    root = tmp_path / "cache"
    Store(root).ensure_project("demo")
    newer = SCHEMA_VERSION + 1
    con = duckdb.connect(str(root / "g2is.duckdb"))
    con.execute("UPDATE schema_info SET version = ?", [newer])
    con.execute("CHECKPOINT")
    con.close()
    before = (root / "g2is.duckdb").read_bytes()

    with pytest.raises(StoreError) as refused:
        Store(root)
    message = str(refused.value)
    observed.append(message)
    assert str(root / "g2is.duckdb") in message
    assert f"schema {newer}" in message and f"reads up to {SCHEMA_VERSION}" in message
    assert "upgrade" in message and "G2IS_CACHE_DIR" in message
    assert (root / "g2is.duckdb").read_bytes() == before
    assert recorded_version(root) == newer
    assert sorted(path.name for path in root.iterdir()) == ["g2is.duckdb", "g2is.duckdb.lock"]
