"""The cache: the DuckDB catalogue and the feature chunk files; the only package that speaks SQL.

    catalog   the connection/lock protocol, the schema and every table family's queries (``Store``)
"""
from core.store.catalog import (
                                ROLES,
                                FeatureRowEntry,
                                Job,
                                RowKey,
                                Store,
                                StoreBusyError,
                                StoredRow,
                                StoreError,
                                cache_problem,
                                now,
                                stage_rows_parquet,
)

__all__ = ["ROLES", "FeatureRowEntry", "Job", "RowKey", "Store", "StoreBusyError", "StoredRow", "StoreError",
           "cache_problem", "now", "stage_rows_parquet"]
