"""kNN graphs, selection runs with their ranked rows, and the G2IS walk's events (``RunTables``)."""
from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa

from core.store.connection import Connection, now
from core.store.rows import _ROW_COLUMNS, StoredRow, _stored_row


class RunTables(Connection):
    """Tables graphs, graph_nodes, selection_runs, selection_rows and walk_events."""

    # ------------------------------------------------------------------------------------ graphs

    def save_graph(self, key: str, feature_key: str, graph, backend: str, seconds: float, geometry: str = "cosine") -> None:
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
            con.execute("INSERT INTO graphs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [key, feature_key, graph.k, graph.conflicts.shape[1], len(graph.neighbors), backend, seconds, now(),
                         geometry])
            con.register("staged_graph", table)
            con.execute("INSERT INTO graph_nodes SELECT ?, node, neighbors, similarities, conflicts, conflict_similarities "
                        "FROM staged_graph", [key])

    def graph_info(self, key: str) -> dict | None:
        with self._connect() as con:
            row = con.execute(f"SELECT {self._GRAPH_SELECT} FROM graphs WHERE key = ?", [key]).fetchone()
        return dict(zip(self._GRAPH_COLUMNS, row)) if row else None

    _GRAPH_COLUMNS = ("key", "feature_key", "k", "k_conflict", "n_rows", "backend", "seconds", "created", "geometry")
    _GRAPH_SELECT = ", ".join(_GRAPH_COLUMNS[:-1]) + ", coalesce(geometry, 'cosine')"  # (NULL: stored before schema 5)

    def graphs(self, feature_key: str) -> list[dict]:
        """Every stored graph of a feature set (``graph_info`` of each), newest first."""
        with self._connect() as con:
            rows = con.execute(f"SELECT {self._GRAPH_SELECT} FROM graphs WHERE feature_key = ? "
                               "ORDER BY created DESC", [feature_key]).fetchall()
        return [dict(zip(self._GRAPH_COLUMNS, row)) for row in rows]

    def latest_graph(self, feature_key: str, geometry: str | None = None) -> dict | None:
        """The newest stored graph of a feature set (of this geometry when one is named)."""
        with self._connect() as con:
            row = con.execute("SELECT key FROM graphs WHERE feature_key = ? AND (? IS NULL OR coalesce(geometry, "
                              "'cosine') = ?) ORDER BY created DESC LIMIT 1", [feature_key, geometry, geometry]).fetchone()
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

    @staticmethod
    def new_run_id(method: str) -> str:
        """A fresh selection run id; ``append_walk_events`` writes under it before ``save_selection`` lists it."""
        return f"{method}-{uuid.uuid4().hex[:10]}"

    @staticmethod
    def _staged_events(events: Sequence[dict], start: int) -> pa.Table:
        return pa.table({
            "step": pa.array(range(start, start + len(events)), pa.int32()),
            "kind": [e.get("kind") for e in events],
            "component": pa.array([e.get("component") for e in events], pa.int32()),
            "pool_index": pa.array([e.get("row") for e in events], pa.int32()),
            "verdict": [e.get("verdict") for e in events],
            "payload": [json.dumps(e) for e in events],
        })

    def append_walk_events(self, run_id: str, events: Sequence[dict], start: int) -> None:
        """Write one batch of a walk's events as steps ``start, start + 1, ...`` in one short transaction.

        A long walk writes its events in batches as it goes (``core.selection.runs.WalkRecorder``) so that its
        memory stays bounded; the run itself is only listed once ``save_selection(..., run_id=run_id)`` commits
        its row, so a walk that fails midway never looks complete (``discard_walk_events`` drops its batches)."""
        if not events:
            return
        table = self._staged_events(events, start)  # built before taking the lock: the turn is the insert only
        with self._transaction() as con:
            con.register("staged_events", table)
            con.execute("INSERT INTO walk_events SELECT ?, step, kind, component, pool_index, verdict, payload "
                        "FROM staged_events", [run_id])

    def discard_walk_events(self, run_id: str) -> None:
        """Drop the events written for a run that did not finish (it has no ``selection_runs`` row)."""
        with self._transaction() as con:
            if con.execute("SELECT count(*) FROM selection_runs WHERE id = ?", [run_id]).fetchone()[0] == 0:
                con.execute("DELETE FROM walk_events WHERE run_id = ?", [run_id])

    def save_selection(self, project: str, method: str, params: dict, feature_key: str, budget: int,
                       rows: Sequence[tuple[int, str, float, str]], notes: Sequence[str], seconds: float,
                       events: Sequence[dict] | None = None, run_id: str | None = None,
                       events_start: int = 0) -> str:
        """Store one selection run: its parameters, its ranked rows (pool index, row id, score, reason) and, for
        G2IS, the walk's events in order (each a dict with ``kind``, ``component``, ``row``, ``verdict``).

        This commits the run's ``selection_runs`` row, which is what lists it: with ``run_id`` (from
        ``new_run_id``) it finishes a run whose first ``events_start`` events ``append_walk_events`` already
        wrote, and ``events`` are the rest (steps from ``events_start``)."""
        run_id = run_id or self.new_run_id(method)
        staged_events = self._staged_events(events, events_start) if events else None
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
            if staged_events is not None:
                con.register("staged_events", staged_events)
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
