"""Ingest instruction files into a project: read and validate every file, then replace the pool and/or targets.

Rows stream from the format readers into staged parquet files (one per role), so memory stays bounded for large
files, and the store swaps them all in with one short transaction: ``ingest_roles`` takes every role of one
command (the CLI's ``--pool`` and ``--targets``) and writes all of them or none.  In ``fail`` mode any bad row of
any file aborts the whole ingest before the store is touched (nothing half-written, no role replaced); in
``skip`` mode bad rows are left out and reported, with their file, line and reason kept in the store for the app
to show.  ``ingest_files`` is ``ingest_roles`` for one role.
"""
from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.data.readers import ReadReport, SeenIds, iter_rows
from core.data.records import BadRowsError, RowError
from core.store import ROLES, Store, stage_rows_parquet


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
    """Replace the project's ``role`` rows with the rows of ``paths`` (all files or none)."""
    return ingest_roles(store, project, {role: paths}, on_error=on_error, group_field=group_field)[role]


def ingest_roles(
    store: Store,
    project: str,
    roles: Mapping[str, Sequence[str | Path]],
    on_error: str = "fail",
    group_field: str | None = None,
) -> dict[str, IngestResult]:
    """Replace the rows of every role in ``roles`` (role -> its files) in one transaction: all or none.

    Every file of every role is read and validated first, each role staged to its own parquet file; any
    ``BadRowsError`` (fail mode, or a role left with no usable rows), ``FormatError`` or other failure before or
    during the store write leaves every role of the project -- and a project that did not exist -- as it was."""
    if not roles:
        raise ValueError("no files given")
    unknown = [role for role in roles if role not in ROLES]
    if unknown:
        raise ValueError(f"role must be one of {ROLES}, not {unknown[0]!r}")
    for role, paths in roles.items():
        if not paths:
            raise ValueError(f"no {role} files given")

    staging_dir = store.root / "tmp"
    staging_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=staging_dir) as tmp:
        staged: dict[str, tuple[Path, list[dict], list[dict]]] = {}
        all_reports: dict[str, list[ReadReport]] = {}
        for role, paths in roles.items():
            reports: list[ReadReport] = []
            path = Path(tmp) / f"{role}.parquet"
            count = stage_rows_parquet(path, _staged_rows(paths, reports, on_error, group_field))  # BadRowsError in fail mode
            if count == 0:
                raise BadRowsError(
                    [RowError(str(paths[0]), 0, f"no usable {role} rows in {len(paths)} file(s)")]
                    + [e for r in reports for e in r.errors],
                    advice="no good row is left to ingest; fix the file(s)",
                )
            files = [{"file": r.file, "format": r.format, "rows": r.rows, "errors": len(r.errors)} for r in reports]
            errors = [{"file": e.file, "line": e.line, "reason": e.reason} for r in reports for e in r.errors]
            staged[role] = (path, files, errors)
            all_reports[role] = reports
        stored = store.replace_roles(project, staged)
    return {role: IngestResult(role, stored[role], all_reports[role]) for role in roles}


def _staged_rows(paths: Sequence[str | Path], reports: list[ReadReport], on_error: str,
                 group_field: str | None) -> Iterator[dict]:
    """One role's rows as staging records, its files' reports appended to ``reports`` as they are read.

    The duplicate index (~50 bytes a row) is the only memory that grows with the files; it lives in this
    generator, so it is freed as soon as the role's rows are staged, before the next role is read."""
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
