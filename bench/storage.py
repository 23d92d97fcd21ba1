"""Storing and reading back a projected-feature matrix: DuckDB array/list columns vs .npy chunk files.

Run from the repository root::

    python bench/storage.py [--rows 10000] [--dim 8192] [--chunk 256] [--no-float16]

On seeded random float32 data (default 10,000 x 8192 = 312.5 MiB), in a temporary folder that is removed at the
end, it measures on this machine:

(a) DuckDB ``FLOAT[dim]`` (ARRAY) column: bulk insert from a zero-copy pyarrow ``FixedSizeListArray`` (the
    fastest of three insert routes, picked on a 1,024-row trial) in one transaction + CHECKPOINT, and the read
    back into numpy through Arrow (``to_arrow_table()`` -> flat values -> reshape), checked bit-exact;
(b) the same with a ``FLOAT[]`` (LIST) column;
(c) .npy chunk files of ``--chunk`` rows, each written as ``core/store/``'s ``write_chunk`` does it
    (``np.save`` to ``.partial``, flush, fsync, ``os.replace``), each followed by a catalogue transaction in a
    small DuckDB database (a ``feature_chunks`` row + ``--chunk`` ``features`` rows inserted with the same
    ``NOT EXISTS`` statement as the store); read back as ``Store.feature_matrix`` does it: catalogue query,
    ``np.load(mmap_mode="r")`` per chunk and a row-by-row gather into a float32 matrix;
(d) the same with float16 chunk files (read back converted to float32).

It reports write seconds, read seconds, size on disk and -- decisive for the design, since DuckDB lets one
process write at a time and a reader's open connection blocks the writer -- how long a job holds the DuckDB
write lock per ``--chunk``-row chunk: for (a)/(b) a chunk's connect + insert of its vectors + commit + close
(close checkpoints), for (c)/(d) connect + catalogue insert + commit + close (the .npy file is written before,
outside the lock).  Reads come from the page cache (files were just written); cold-disk reads are not measured.
Peak memory stays around 1.5 GiB at the defaults.

The last lines are ``figure: NAME = VALUE``.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent

MIB = 1024 * 1024


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000, help="rows of the feature matrix (default 10000)")
    parser.add_argument("--dim", type=int, default=8192, help="feature dimension (default 8192)")
    parser.add_argument("--chunk", type=int, default=256, help="rows per chunk / per write transaction (default 256)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-float16", action="store_true", help="skip the float16 .npy variant")
    return parser.parse_args()


def size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def db_size(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + ".wal")) if p.exists())


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def arrow_vectors(matrix: np.ndarray, kind: str) -> pa.Array:
    """Zero-copy Arrow view of a float32 matrix as FixedSizeList (ARRAY) or List (LIST) of float32."""
    flat = pa.array(matrix.reshape(-1))
    if kind == "array":
        return pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1])
    offsets = pa.array(np.arange(0, matrix.size + 1, matrix.shape[1], dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, flat)


def column_type(kind: str, dim: int) -> str:
    return f"FLOAT[{dim}]" if kind == "array" else "FLOAT[]"


# ------------------------------------------------------------------------------------------ DuckDB columns


def insert_routes(folder: Path, data: np.ndarray, kind: str) -> tuple[str, dict[str, float]]:
    """Try three insert routes on the first 1,024 rows; return the fastest and all timings."""
    sample = data[:1024]
    ctype = column_type(kind, data.shape[1])
    table = pa.table({"id": pa.array(np.arange(len(sample), dtype=np.int32)), "v": arrow_vectors(sample, kind)})
    times = {}
    for route in ("register+insert_select", "create_table_as", "relation.insert_into"):
        path = folder / f"route-{kind}-{route}.duckdb"
        con = duckdb.connect(str(path))
        t = time.perf_counter()
        insert_table(con, table, ctype, route)
        times[route] = time.perf_counter() - t
        con.close()
        path.unlink(missing_ok=True)
    return min(times, key=times.get), times


def insert_table(con, table: pa.Table, ctype: str, route: str) -> None:
    """Create table ``g`` from an Arrow table by one of the insert routes, then CHECKPOINT it to disk."""
    if route == "create_table_as":
        con.register("staged", table)
        con.execute(f"CREATE TABLE g AS SELECT id, v::{ctype} AS v FROM staged")
    else:
        con.execute(f"CREATE TABLE g (id INTEGER, v {ctype})")
        if route == "register+insert_select":
            con.register("staged", table)
            con.execute(f"INSERT INTO g SELECT id, v::{ctype} FROM staged")
        else:
            con.from_arrow(table).insert_into("g")
    con.execute("CHECKPOINT")


def duckdb_column(folder: Path, data: np.ndarray, kind: str, chunk: int) -> dict:
    n, dim = data.shape
    ctype = column_type(kind, dim)
    route, route_times = insert_routes(folder, data, kind)
    print(f"[{kind}] insert routes on 1,024 rows: " + ", ".join(f"{k} {v:.3f} s" for k, v in route_times.items()) + f" -> {route}")

    # bulk: everything in one transaction, then CHECKPOINT (the fastest way to get it on disk)
    path = folder / f"bulk-{kind}.duckdb"
    table = pa.table({"id": pa.array(np.arange(n, dtype=np.int32)), "v": arrow_vectors(data, kind)})
    t = time.perf_counter()
    con = duckdb.connect(str(path))
    insert_table(con, table, ctype, route)
    con.close()
    write_s = time.perf_counter() - t
    del table
    size = db_size(path)

    # read back into numpy (insertion order is preserved by a plain scan; ORDER BY id would add a sort)
    reads = []
    for _ in range(2):
        t = time.perf_counter()
        con = duckdb.connect(str(path), read_only=True)
        column = con.sql("SELECT v FROM g").to_arrow_table().column("v").combine_chunks()
        values = column.values if column.offset == 0 else column.flatten()
        back = values.to_numpy(zero_copy_only=False).reshape(-1, dim)
        con.close()
        reads.append(time.perf_counter() - t)
        exact = back.shape == data.shape and np.array_equal(back, data)
        del back, values, column
    print(f"[{kind}] bulk insert of {n} x {dim} + CHECKPOINT: {write_s:.2f} s; file {size / MIB:.1f} MiB; "
          f"read back to numpy: {reads[0]:.2f} s, again {reads[1]:.2f} s; bit-exact: {exact}")

    # chunked: one transaction per chunk on a fresh connection, as a job would write; the lock is held
    # from connect to close (close checkpoints the WAL)
    path2 = folder / f"chunked-{kind}.duckdb"
    con = duckdb.connect(str(path2))
    con.execute(f"CREATE TABLE g (config_key VARCHAR, content_hash VARCHAR, v {ctype})")
    con.close()
    locks = []
    t_all = time.perf_counter()
    for start in range(0, n, chunk):
        block = data[start : start + chunk]
        staged = pa.table({"content_hash": [f"h{i:08d}" for i in range(start, start + len(block))], "v": arrow_vectors(block, kind)})
        t = time.perf_counter()
        con = duckdb.connect(str(path2))
        con.execute("BEGIN TRANSACTION")
        con.register("staged", staged)
        con.execute(f"INSERT INTO g SELECT 'cfg', content_hash, v::{ctype} FROM staged")
        con.execute("COMMIT")
        con.close()
        locks.append(time.perf_counter() - t)
    chunked_s = time.perf_counter() - t_all
    locks_ms = np.array(locks) * 1e3
    print(f"[{kind}] chunked writes ({len(locks)} x {chunk} rows, connect+insert+commit+close each): total {chunked_s:.2f} s; "
          f"write lock per chunk: median {np.median(locks_ms):.0f} ms, mean {locks_ms.mean():.0f} ms, max {locks_ms.max():.0f} ms; "
          f"file {db_size(path2) / MIB:.1f} MiB")
    path.unlink(missing_ok=True)
    path2.unlink(missing_ok=True)
    return {"write_s": write_s, "read_s": min(reads), "read_first_s": reads[0], "size_mib": size / MIB, "exact": exact,
            "chunked_write_s": chunked_s, "lock_ms_median": float(np.median(locks_ms)), "lock_ms_mean": float(locks_ms.mean()),
            "lock_ms_max": float(locks_ms.max())}


# ------------------------------------------------------------------------------------------ .npy chunks

CATALOGUE = """
CREATE TABLE feature_chunks (config_key VARCHAR, chunk VARCHAR, path VARCHAR, n_rows INTEGER, created TIMESTAMP);
CREATE TABLE features (config_key VARCHAR, content_hash VARCHAR, chunk VARCHAR, chunk_offset INTEGER, norm FLOAT,
    n_tokens INTEGER, truncated BOOLEAN);
"""


def npy_chunks(folder: Path, data: np.ndarray, chunk: int, dtype: str) -> dict:
    n, dim = data.shape
    root = folder / f"npy-{dtype}"
    features = root / "features" / "cfg"
    features.mkdir(parents=True)
    db = root / "g2is.duckdb"
    con = duckdb.connect(str(db))
    con.execute(CATALOGUE)
    con.close()
    file_s, locks = 0.0, []
    t_all = time.perf_counter()
    for start in range(0, n, chunk):
        block = data[start : start + chunk]
        name = f"job-{uuid.uuid4().hex[:8]}"
        # the file, outside the database lock (as Store.write_chunk)
        t = time.perf_counter()
        final, partial = features / f"{name}.npy", features / f"{name}.partial"
        with open(partial, "wb") as handle:
            np.save(handle, np.ascontiguousarray(block, dtype=np.dtype(dtype)))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, final)
        file_s += time.perf_counter() - t
        # the catalogue transaction: what holds the write lock
        staged = pa.table({
            "content_hash": [f"h{i:08d}" for i in range(start, start + len(block))],
            "chunk_offset": np.arange(len(block), dtype=np.int32),
            "norm": pa.array(np.linalg.norm(block, axis=1), pa.float32()),
            "n_tokens": np.full(len(block), 200, dtype=np.int32),
            "truncated": np.zeros(len(block), dtype=bool),
        })
        t = time.perf_counter()
        con = duckdb.connect(str(db))
        con.execute("BEGIN TRANSACTION")
        con.execute("INSERT INTO feature_chunks VALUES (?, ?, ?, ?, now())", ["cfg", name, str(final), len(block)])
        con.register("staged_features", staged)
        con.execute(
            "INSERT INTO features SELECT ?, s.content_hash, ?, s.chunk_offset, s.norm, s.n_tokens, s.truncated "
            "FROM staged_features s WHERE NOT EXISTS (SELECT 1 FROM features f "
            "WHERE f.config_key = ? AND f.content_hash = s.content_hash)",
            ["cfg", name, "cfg"],
        )
        con.execute("COMMIT")
        con.close()
        locks.append(time.perf_counter() - t)
    write_s = time.perf_counter() - t_all
    locks_ms = np.array(locks) * 1e3
    size_files = size_of(features)
    size_db = db_size(db)

    # read back like Store.feature_matrix: catalogue query, memory maps, row-by-row gather into float32
    reads, opens = [], []
    for _ in range(2):
        t = time.perf_counter()
        con = duckdb.connect(str(db), read_only=True)
        entries = con.execute(
            "SELECT c.path, f.chunk_offset FROM features f JOIN feature_chunks c ON c.config_key = f.config_key "
            "AND c.chunk = f.chunk WHERE f.config_key = 'cfg' ORDER BY f.content_hash"
        ).fetchall()
        con.close()
        maps = {}
        for path, _ in entries:
            if path not in maps:
                maps[path] = np.load(path, mmap_mode="r")
        opened = time.perf_counter() - t
        out = np.empty((len(entries), dim), dtype=np.float32)
        for i, (path, offset) in enumerate(entries):
            out[i] = maps[path][offset]
        reads.append(time.perf_counter() - t)
        opens.append(opened)
        if dtype == "float32":
            exact = np.array_equal(out, data)
        else:
            exact = np.array_equal(out, data.astype(np.float16).astype(np.float32))
            max_rel = float(np.abs(out - data).max() / np.abs(data).max())
        del out, maps, entries
    # the vectorised alternative: one fancy-index per chunk instead of a Python loop per row
    t = time.perf_counter()
    con = duckdb.connect(str(db), read_only=True)
    per_chunk = con.execute(
        "SELECT c.path, list(f.chunk_offset ORDER BY f.content_hash) FROM features f JOIN feature_chunks c "
        "ON c.config_key = f.config_key AND c.chunk = f.chunk WHERE f.config_key = 'cfg' GROUP BY c.path, c.created "
        "ORDER BY min(f.content_hash)"
    ).fetchall()
    con.close()
    out = np.concatenate([np.load(path, mmap_mode="r")[np.array(offsets)] for path, offsets in per_chunk]).astype(np.float32, copy=False)
    vector_read = time.perf_counter() - t
    vector_exact = out.shape == data.shape and (np.array_equal(out, data) if dtype == "float32" else True)
    del out
    extra = f", float16 max error {max_rel:.1e} of max |x|" if dtype != "float32" else ""
    print(f"[npy {dtype}] {len(locks)} chunk files + catalogue: write {write_s:.2f} s (files incl. fsync {file_s:.2f} s); "
          f"write lock per chunk: median {np.median(locks_ms):.1f} ms, mean {locks_ms.mean():.1f} ms, max {locks_ms.max():.1f} ms; "
          f"files {size_files / MIB:.1f} MiB + catalogue {size_db / MIB:.1f} MiB")
    print(f"[npy {dtype}] read: catalogue + open {len(set(p for p, _ in per_chunk))} memmaps {min(opens):.3f} s; "
          f"+ row-by-row gather into float32 (Store.feature_matrix) {reads[0]:.2f} s, again {reads[1]:.2f} s; "
          f"per-chunk fancy-index gather {vector_read:.2f} s; bit-exact: {exact} / {vector_exact}{extra}")
    shutil.rmtree(root)
    return {"write_s": write_s, "file_s": file_s, "read_s": min(reads), "open_s": min(opens), "vector_read_s": vector_read,
            "size_mib": (size_files + size_db) / MIB, "files_mib": size_files / MIB, "lock_ms_median": float(np.median(locks_ms)),
            "lock_ms_mean": float(locks_ms.mean()), "lock_ms_max": float(locks_ms.max()), "exact": exact}


def main() -> int:
    args = parse_args()
    t_start = time.perf_counter()
    print(f"[setup] duckdb {duckdb.__version__}, pyarrow {pa.__version__}, numpy {np.__version__}; {args.rows} x {args.dim} float32 "
          f"({args.rows * args.dim * 4 / MIB:.1f} MiB raw), chunks of {args.chunk}; load average {os.getloadavg()[0]:.1f}")
    data = np.random.default_rng(args.seed).standard_normal((args.rows, args.dim), dtype=np.float32)
    results = {}
    with tempfile.TemporaryDirectory(prefix="g2is-bench-storage-") as tmp:
        folder = Path(tmp)
        print(f"[setup] temp folder {folder} (removed at the end)")
        results["array"] = duckdb_column(folder, data, "array", args.chunk)
        results["list"] = duckdb_column(folder, data, "list", args.chunk)
        results["npy"] = npy_chunks(folder, data, args.chunk, "float32")
        if not args.no_float16:
            results["npy16"] = npy_chunks(folder, data, args.chunk, "float16")

    print()
    print(f"Summary: {args.rows} x {args.dim} float32 ({args.rows * args.dim * 4 / MIB:.1f} MiB raw) on this machine; "
          f"write lock per {args.chunk}-row chunk")
    print(f"{'layout':<34}{'write s':>9}{'read s':>9}{'MiB':>8}{'lock ms/chunk (median/max)':>30}")
    names = {"array": "DuckDB FLOAT[dim] (ARRAY)", "list": "DuckDB FLOAT[] (LIST)", "npy": ".npy float32 chunks + catalogue",
             "npy16": ".npy float16 chunks + catalogue"}
    for key, r in results.items():
        lock = f"{r['lock_ms_median']:.1f} / {r['lock_ms_max']:.1f}"
        print(f"{names[key]:<34}{r['write_s']:>9.2f}{r['read_s']:>9.2f}{r['size_mib']:>8.1f}{lock:>30}")
    print("(DuckDB write = one bulk transaction + CHECKPOINT; its per-chunk lock is from the chunked write. "
          ".npy write = all chunk files with fsync + one catalogue transaction per chunk; read = Store.feature_matrix's way)")
    print(f"[total] {time.perf_counter() - t_start:.0f} s; peak RSS {rss_mib():.0f} MiB; load average now {os.getloadavg()[0]:.1f}")

    a, li, c = results["array"], results["list"], results["npy"]
    figures = {
        "duckdb_array_write_s": a["write_s"],
        "duckdb_array_read_s": a["read_s"],
        "duckdb_array_size_mib": a["size_mib"],
        "duckdb_array_chunked_write_s": a["chunked_write_s"],
        "duckdb_list_write_s": li["write_s"],
        "duckdb_list_read_s": li["read_s"],
        "duckdb_list_size_mib": li["size_mib"],
        "duckdb_list_chunked_write_s": li["chunked_write_s"],
        "npy_write_s": c["write_s"],
        "npy_files_write_s": c["file_s"],
        "npy_open_s": c["open_s"],
        "npy_read_s": c["read_s"],
        "npy_vectorised_read_s": c["vector_read_s"],
        "npy_size_mib": c["size_mib"],
        "duckdb_lock_ms_per_chunk": a["lock_ms_median"],
        "duckdb_lock_ms_per_chunk_max": a["lock_ms_max"],
        "duckdb_list_lock_ms_per_chunk": li["lock_ms_median"],
        "npy_lock_ms_per_chunk": c["lock_ms_median"],
        "npy_lock_ms_per_chunk_max": c["lock_ms_max"],
    }
    if "npy16" in results:
        h = results["npy16"]
        figures.update({"npy16_write_s": h["write_s"], "npy16_read_s": h["read_s"], "npy16_size_mib": h["size_mib"],
                        "npy16_lock_ms_per_chunk": h["lock_ms_median"]})
    for name, value in figures.items():
        print(f"figure: {name} = {value:.3g}" if value < 100 else f"figure: {name} = {value:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
