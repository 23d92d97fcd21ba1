"""Background jobs: their status, progress and cancel requests (``JobTables``, with ``Job``)."""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime

from core.store.connection import Connection, now


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



class JobTables(Connection):
    """Table jobs."""

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
