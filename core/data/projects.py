"""Projects as the CLI and the app see them: the built-in demo project, and one project's status at a glance.

A project is a pool, a target set and the feature settings last used for it, all persisted by ``core.store``.
This module composes store reads into the summaries both front ends show, so neither holds that logic.
"""
from __future__ import annotations

from dataclasses import replace

from core.config import FeatureSettings
from core.data.demo import DEMO_PROJECT, write_demo_files
from core.data.ingest import ingest_files
from core.jobs import view
from core.store import Store


def create_demo_project(store: Store, project: str | None = None) -> str:
    """Write the built-in demo files under the cache and ingest them (idempotent: same files, same rows)."""

    project = project or DEMO_PROJECT
    pool, targets = write_demo_files(store.root / "demo")
    ingest_files(store, project, "pool", [pool])
    ingest_files(store, project, "targets", [targets])
    return project


def project_settings(store: Store, project: str) -> FeatureSettings:
    """The settings last used for this project's features, else the defaults."""
    stored = store.project_settings(project)
    return FeatureSettings.from_dict(stored) if stored else FeatureSettings()


# Flat names of the settings a user edits (CLI flags, the Features page form) -> (nested group, field).
EDITABLE_SETTINGS = {
    "model": (None, "model"), "max_tokens": (None, "max_tokens"), "truncation": (None, "truncation"),
    "device": (None, "device"),
    "batch_size": (None, "batch_size"), "chunk_rows": (None, "chunk_rows"), "chunk_seconds": (None, "chunk_seconds"),
    "storage_dtype": (None, "storage_dtype"), "precision": (None, "precision"),
    "lora_r": ("lora", "r"), "lora_alpha": ("lora", "alpha"), "lora_targets": ("lora", "target_modules"),
    "projection_kind": ("projection", "kind"), "projection_dim": ("projection", "dim"),
    "projection_seed": ("projection", "seed"), "projection_sparsity": ("projection", "sparsity"),
    "projection_factor_dim": ("projection", "factor_dim"),
    "warmup_fraction": ("warmup", "fraction"), "warmup_epochs": ("warmup", "epochs"),
    "warmup_checkpoints": ("warmup", "checkpoints"),
}


def edit_settings(settings: FeatureSettings, **changes) -> FeatureSettings:
    """``settings`` with the given flat changes (see EDITABLE_SETTINGS; None keeps a value).  The argument
    dataclasses validate themselves, so a bad value raises ValueError with a message naming it."""
    unknown = set(changes) - set(EDITABLE_SETTINGS)
    if unknown:
        raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    top: dict = {}
    nested: dict[str, dict] = {}
    for name, value in changes.items():
        if value is None:
            continue
        group, field = EDITABLE_SETTINGS[name]
        if field == "target_modules":
            value = tuple(m.strip() for m in (value.split(",") if isinstance(value, str) else value) if m.strip())
        if field == "model":
            value = str(value).strip()
            if not value:
                raise ValueError("the model is empty: give 'smollm2', a local folder, a .gguf file or a hub id")
        (top if group is None else nested.setdefault(group, {}))[field] = value
    for group, fields in nested.items():
        top[group] = replace(getattr(settings, group), **fields)
    return settings.replace(**top)


def project_status(store: Store, project: str) -> dict:
    """Rows, ingest files, feature sets and jobs of one project, JSON-ready."""

    if project not in store.projects():
        raise ValueError(f"no project {project!r} in {store.root} (projects: {', '.join(store.projects()) or 'none'})")
    report = store.ingest_report(project)
    return {
        "project": project,
        "cache": str(store.root),
        "settings": store.project_settings(project),
        "rows": store.row_counts(project),
        "files": report["files"],
        "ingest_errors": len(report["errors"]),
        "features": store.project_features(project),
        "jobs": [
            {"id": v.job.id, "kind": v.job.kind, "status": v.status, "phase": v.job.phase, "done": v.job.done,
             "total": v.job.total, "errors": v.job.errors, "rate": v.job.rate, "eta_s": v.job.eta_seconds,
             "message": v.job.message, "created": v.job.created}
            for v in (view(store, job) for job in store.jobs(project))
        ],
    }
