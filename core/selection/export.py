"""Export a stored selection as a training file: JSONL in chat ``messages``, Alpaca or ShareGPT form, plus a
manifest with its provenance (method, parameters, feature-set key, model, ids, scores, time).

The last stage of the pipeline.  Files are written atomically (temporary file, then rename), so an export that
fails half-way leaves nothing behind, and every export is also kept under ``cache/exports/``.
"""
from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path

from core.config import stable_hash
from core.selection.g2is import G2IS_METHODS, PAPER_REMEDIES
from core.store import Store

EXPORT_FORMATS = ("messages", "alpaca", "sharegpt")
SHAREGPT_SPEAKERS = {"system": "system", "user": "human", "assistant": "gpt"}


def to_format(messages: list[dict], fmt: str, row_id: str) -> dict:
    """One row in the chosen format; Alpaca holds a single exchange only, so longer chats are an error."""
    if fmt == "messages":
        return {"id": row_id, "messages": messages}
    if fmt == "sharegpt":
        return {"id": row_id, "conversations": [{"from": SHAREGPT_SPEAKERS[m["role"]], "value": m["content"]} for m in messages]}
    if fmt == "alpaca":
        system = [m["content"] for m in messages if m["role"] == "system"]
        turns = [m for m in messages if m["role"] != "system"]
        if len(turns) != 2 or [m["role"] for m in turns] != ["user", "assistant"]:
            raise ValueError(f"row {row_id!r} is a {len(turns)}-turn chat, which Alpaca cannot hold; "
                             "export as messages or sharegpt instead")
        record = {"id": row_id, "instruction": turns[0]["content"], "input": "", "output": turns[1]["content"]}
        if system:
            record["system"] = "\n".join(system)
        return record
    raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")


_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def export_name(run_id: str, fmt: str) -> str:
    """The file name a run's export is kept under in ``cache/exports/``: ``<run id>.<format>.jsonl``.

    Run ids are ``<method>-<hex>``, but the method is whatever was stored, so the id is never trusted as a path:
    characters outside letters, digits and ``._-`` become ``_``, leading dots go, and an id that had to change
    gets a hash of the original (distinct runs keep distinct files).  ``../``, an absolute path, a backslash or
    a NUL byte cannot leave the folder."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    stem = _UNSAFE_NAME_CHARS.sub("_", str(run_id)).lstrip(".")[:100]
    if stem != run_id:
        stem = f"{stem or 'run'}-{stable_hash(str(run_id), 8)}"
    return f"{stem}.{fmt}.jsonl"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def export_selection(store: Store, run_id: str, fmt: str = "messages", out: str | os.PathLike | None = None) -> dict:
    """Write the run's rows (in selection order) as JSONL, and ``<name>.manifest.json`` beside it.

    Returns the manifest, with ``path`` and ``manifest_path``.  Without ``out`` the file goes to
    ``cache/exports/<run id>.<format>.jsonl`` (see ``export_name``); with it, a copy is still kept there."""
    exports = store.root / "exports"
    kept = exports / export_name(run_id, fmt)  # checks the format before anything is read or written
    if kept.resolve().parent != exports.resolve():
        raise ValueError(f"the export name {kept.name!r} would leave {exports}")
    run = store.selection_run(run_id)
    if run is None:
        raise ValueError(f"no selection run {run_id!r}")
    chosen = store.selection_rows(run_id)
    by_id = {r.row_id: r for r in store.rows(run["project"], "pool")}
    missing = [row_id for _, row_id, _, _ in chosen if row_id not in by_id]
    if missing:
        raise ValueError(f"{len(missing)} selected rows are no longer in project {run['project']!r} "
                         f"(the pool was re-ingested), e.g. {missing[:3]}; run the selection again")
    lines = [json.dumps(to_format(by_id[row_id].messages, fmt, row_id), ensure_ascii=False) for _, row_id, _, _ in chosen]
    text = "".join(line + "\n" for line in lines)
    settings = store.project_settings(run["project"]) or {}
    manifest = {
        "run_id": run_id, "project": run["project"], "method": run["method"], "params": run["params"],
        "feature_key": run["feature_key"], "model": settings.get("model"), "format": fmt,
        "budget": run["budget"], "selected": len(chosen), "notes": run["notes"],
        "ids": [row_id for _, row_id, _, _ in chosen], "scores": [score for _, _, score, _ in chosen],
        "selected_at": str(run["created"]), "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if run["method"] in G2IS_METHODS:  # which G2IS: the authors' Algorithm 1, or the default profile and its remedies
        manifest["profile"] = {"name": "paper" if run["method"] == "g2is-paper" else "default",
                               **{name: run["params"].get(name, value) for name, value in PAPER_REMEDIES.items()}}
    targets = [kept] if out is None else [Path(out), kept]
    for path in targets:
        _write_atomic(path, text)
        _write_atomic(path.with_name(path.name.removesuffix(".jsonl") + ".manifest.json"),
                      json.dumps({**manifest, "path": str(path)}, indent=1))
    manifest["path"] = str(targets[0])
    manifest["manifest_path"] = str(targets[0].with_name(targets[0].name.removesuffix(".jsonl") + ".manifest.json"))
    return manifest
