"""Ingest instruction files into a project: read and validate every file, then replace the pool or targets.

Rows stream from the format readers into a staged parquet file, so memory stays bounded for large files,
and the store swaps them in with one short transaction.  In ``fail`` mode any bad row aborts the whole ingest
before the store is touched (nothing half-written); in ``skip`` mode bad rows are left out and reported,
with their file, line and reason kept in the store for the app to show.
"""
from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.data.readers import ReadReport, SeenIds, iter_rows
from core.data.records import BadRowsError, RowError
from core.store import Store, stage_rows_parquet


@dataclass
class IngestResult:
    role: str
    rows: int
    reports: list[ReadReport] = field(default_factory=list)

    @property
    def errors(self) -> list[RowError]:
        return [e for r in self.reports for e in r.errors]


def ingest_files(
    store: Store,
    project: str,
    role: str,
    paths: Sequence[str | Path],
    on_error: str = "fail",
    group_field: str | None = None,
) -> IngestResult:
    if not paths:
        raise ValueError(f"no {role} files given")
    reports: list[ReadReport] = []

    def staged_rows():
        # The duplicate index (~50 bytes a row) is the only memory that grows with the files; it lives in this
        # generator, so it is freed as soon as the rows are staged, before the store inserts them.
        seen = SeenIds()
        ordinal = 0
        for path in paths:
            report = ReadReport(file=str(path), format=None)
            reports.append(report)
            for row in iter_rows(path, report=report, on_error=on_error, seen=seen, group_field=group_field):
                yield {
                    "ordinal": ordinal,
                    "row_id": row.row_id,
                    "content_hash": row.content_hash,
                    "messages": json.dumps(list(row.messages), ensure_ascii=False),
                    "format": row.format,
                    "source": row.source,
                    "file": row.file,
                    "line": row.line,
                    "grp": row.group,
                }
                ordinal += 1

    staging_dir = store.root / "tmp"
    staging_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=staging_dir) as tmp:
        staged = Path(tmp) / "rows.parquet"
        count = stage_rows_parquet(staged, staged_rows())  # raises BadRowsError in fail mode
        if count == 0:
            raise BadRowsError(
                [RowError(str(paths[0]), 0, f"no usable {role} rows in {len(paths)} file(s)")]
                + [e for r in reports for e in r.errors]
            )
        files = [{"file": r.file, "format": r.format, "rows": r.rows, "errors": len(r.errors)} for r in reports]
        errors = [{"file": e.file, "line": e.line, "reason": e.reason} for r in reports for e in r.errors]
        stored = store.replace_rows(project, role, staged, files, errors)
    return IngestResult(role, stored, reports)
