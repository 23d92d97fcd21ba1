"""Checkpoints, feature configs, the .npy chunk files and their catalogue rows, feature errors and measured
throughput: ``FeatureTables``, with ``FeatureRowEntry``."""
from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from core.store.connection import Connection, DamagedChunkError, StoreError, cache_problem, chunk_problem, now

PERMANENT = "permanent"  # a row error caused by the input itself (too long, truncated away): retrying cannot help
RETRIABLE = "retriable"  # a runtime failure (out of memory, ...); NULL (a cache before schema 3) counts as this


@dataclass(frozen=True)
class FeatureRowEntry:
    content_hash: str
    chunk_offset: int
    norm: float
    n_tokens: int
    truncated: bool



class FeatureTables(Connection):
    """Tables checkpoints, feature_configs, feature_chunks, features, feature_errors and throughput.

    ``write_chunk`` records the job's progress with ``JobTables._update_job`` (both are mixed into ``Store``)."""

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

    _CONFIG_COLUMNS = ("key", "gradient_type", "checkpoint_key", "dim", "dtype", "description", "created")

    def feature_configs(self, keys: Sequence[str]) -> dict[str, dict]:
        """The registered feature configs among ``keys``: key -> its columns, ``description`` decoded (the model's
        weights hash and spec, LoRA, chat template hash, max tokens, role, checkpoint epoch, projection)."""
        if not keys:
            return {}
        with self._connect() as con:
            rows = con.execute(f"SELECT {', '.join(self._CONFIG_COLUMNS)} FROM feature_configs "
                               "WHERE key IN (SELECT unnest(?))", [list(keys)]).fetchall()
        return {row[0]: self._feature_config(row) for row in rows}

    def run_feature_configs(self, run_id: str) -> list[dict]:
        """The pool feature configs holding a feature for every row that selection run ``run_id`` chose, oldest
        first (as ``feature_configs``' values): the candidates for the features it selected from, for when the
        project's current settings no longer give the run's feature key.  Empty for an unknown run."""
        with self._connect() as con:
            rows = con.execute(
                f"SELECT {', '.join('c.' + column for column in self._CONFIG_COLUMNS)} FROM feature_configs c "
                "WHERE json_extract_string(c.description, '$.role') = 'pool' "
                "AND EXISTS (SELECT 1 FROM selection_runs WHERE id = ?) "
                "AND NOT EXISTS (SELECT 1 FROM selection_runs sr JOIN selection_rows s ON s.run_id = sr.id "
                "LEFT JOIN rows r ON r.project = sr.project AND r.role = 'pool' AND r.row_id = s.row_id "
                "LEFT JOIN features f ON f.config_key = c.key AND f.content_hash = r.content_hash "
                "WHERE sr.id = ? AND f.content_hash IS NULL) "
                "ORDER BY c.created, c.key", [run_id, run_id]).fetchall()
        return [self._feature_config(row) for row in rows]

    def _feature_config(self, row) -> dict:
        config = dict(zip(self._CONFIG_COLUMNS, row))
        config["description"] = json.loads(config["description"] or "{}")
        return config

    def feature_dir(self, config_key: str) -> Path:
        return self.root / "features" / config_key

    def _feature_chunks(self, config_key: str) -> tuple[list[tuple], set[str]]:
        """This config's (content hash, chunk) rows and the chunks whose file is damaged, truncated or missing."""
        with self._connect() as con:
            features = con.execute("SELECT content_hash, chunk FROM features WHERE config_key = ?", [config_key]).fetchall()
            chunks = con.execute("SELECT chunk, path, n_rows FROM feature_chunks WHERE config_key = ?", [config_key]).fetchall()
        return features, {chunk for chunk, path, n_rows in chunks if chunk_problem(Path(path), n_rows)}

    def finished_hashes(self, config_key: str) -> set[str]:
        """Content hashes that already have a feature or a recorded error under this config.  Rows whose chunk
        file is damaged or missing do not count: planning sees them as missing, so the next run recomputes them."""
        features, damaged = self._feature_chunks(config_key)
        with self._connect() as con:
            errors = con.execute("SELECT content_hash FROM feature_errors WHERE config_key = ?", [config_key]).fetchall()
        return {h for h, chunk in features if chunk not in damaged} | {h for (h,) in errors}

    def damaged_hashes(self, config_key: str) -> set[str]:
        """Content hashes whose feature lies in a damaged, truncated or missing chunk file of this config."""
        features, damaged = self._feature_chunks(config_key)
        return {h for h, chunk in features if chunk in damaged}

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
        errors: Sequence[tuple[str, str, str]],
        dtype: str = "float32",
        job_progress: tuple[str, dict] | None = None,
    ) -> str | None:
        """Persist one finished chunk: the .npy file first (atomic rename), then its catalogue rows, the row
        errors (content hash, message, kind: 'permanent' or 'retriable') and the job's progress in one transaction.  A crash before the commit leaves an orphan file
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
                con.register("staged_errors", pa.table({
                    "content_hash": [e[0] for e in errors], "error": [e[1] for e in errors],
                    "kind": pa.array([e[2] if len(e) > 2 else RETRIABLE for e in errors], pa.string())}))
                con.execute(
                    "INSERT INTO feature_errors SELECT ?, s.content_hash, s.error, s.kind FROM staged_errors s "
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

    def retriable_error_count(self, project: str, config_keys: Sequence[str]) -> int:
        """How many of the project's rows have a retriable error (kind 'retriable', or NULL from an older cache)
        under these feature configs."""
        if not config_keys:
            return 0
        with self._connect() as con:
            (count,) = con.execute(
                "SELECT count(*) FROM feature_errors e WHERE e.config_key IN (SELECT unnest(?)) "
                "AND coalesce(e.kind, ?) = ? AND e.content_hash IN (SELECT content_hash FROM rows WHERE project = ?)",
                [list(config_keys), RETRIABLE, RETRIABLE, project],
            ).fetchone()
        return count

    def clear_retriable_errors(self, project: str, config_keys: Sequence[str]) -> int:
        """Forget the project's retriable row errors under these configs, so that the next job computes those
        rows again; permanent errors (the input itself) stay.  Returns how many were cleared."""
        if not config_keys:
            return 0
        with self._transaction() as con:
            where = ("WHERE config_key IN (SELECT unnest(?)) AND coalesce(kind, ?) = ? "
                     "AND content_hash IN (SELECT content_hash FROM rows WHERE project = ?)")
            params = [list(config_keys), RETRIABLE, RETRIABLE, project]
            (count,) = con.execute(f"SELECT count(*) FROM feature_errors {where}", params).fetchone()
            con.execute(f"DELETE FROM feature_errors {where}", params)
        return count

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
