"""The cache: the DuckDB catalogue and the feature chunk files; the only package that speaks SQL.

    connection  the connection/lock protocol and the schema      rows     projects, rows, ingest reports
    features    checkpoints, feature chunks, throughput          jobs     background jobs
    runs        kNN graphs, selection runs, walk events          layouts  2-D map layouts
    evaluations fine-tuning evaluations and their trained units
"""
from core.store.connection import ROLES, StoreBusyError, StoreError, cache_problem, now
from core.store.evaluations import EvaluationTables, EvalUnitResult
from core.store.features import FeatureRowEntry, FeatureTables
from core.store.jobs import Job, JobTables
from core.store.layouts import LayoutTables
from core.store.rows import RowKey, RowTables, StoredRow, stage_rows_parquet
from core.store.runs import RunTables


class Store(RowTables, FeatureTables, JobTables, RunTables, LayoutTables, EvaluationTables):
    """The cache catalogue: every table family's queries over one connection/lock protocol."""


__all__ = ["ROLES", "EvalUnitResult", "FeatureRowEntry", "Job", "RowKey", "Store", "StoreBusyError", "StoredRow", "StoreError",
           "cache_problem", "now", "stage_rows_parquet"]
