"""Stored 2-D map layouts and their points (``LayoutTables``)."""
from __future__ import annotations

import pyarrow as pa

from core.store.connection import Connection, now


class LayoutTables(Connection):
    """Tables map_layouts and map_points."""

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
