"""Export a stored selection as a training file: chat ``messages``, Alpaca or ShareGPT records, as JSONL or
Parquet, plus a manifest with what a paper's reproducibility section needs (tool version, model and weights hash,
feature settings, method, profile and parameters, budget, coverage, ids in order, the evaluation result), and on
request a LLaMA-Factory ``dataset_info.json`` entry beside the file.

The last stage of the pipeline.  Files are written atomically (temporary file, then rename), and everything is
prepared before the first one is written, so an export that fails leaves nothing behind; every export is also
kept under ``cache/exports/``.

The record format and the container are two separate choices (``fmt`` and ``file_type``), not one list of
"messages-parquet"-style names: any format goes in any container, the records are the same in both (a
``datasets.load_dataset("json"|"parquet", ...)`` of either gives the same rows), LLaMA-Factory itself describes a
dataset by these two things (``formatting`` and the file's extension), and the format names, the export file
names and the manifest's ``format`` stay what they were before Parquet existed.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import io
import json
import os
import re
import subprocess
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from core.config import stable_hash
from core.selection.g2is import G2IS_METHODS, PAPER_REMEDIES
from core.store import Store

EXPORT_FORMATS = ("messages", "alpaca", "sharegpt")
EXPORT_FILE_TYPES = ("jsonl", "parquet")
SHAREGPT_SPEAKERS = {"system": "system", "user": "human", "assistant": "gpt"}
MANIFEST_VERSION = 2  # 1: the keys before Parquet (all kept); 2 adds tool, model_weights, features, coverage, ...
DATASET_INFO = "dataset_info.json"  # LLaMA-Factory's catalogue of datasets, read from its dataset_dir
PACKAGE = "g2is-explorer"


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


def _check_choice(fmt: str, file_type: str) -> None:
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if file_type not in EXPORT_FILE_TYPES:
        raise ValueError(f"unknown export file type {file_type!r}; choose one of {', '.join(EXPORT_FILE_TYPES)}")


_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def export_name(run_id: str, fmt: str, file_type: str = "jsonl") -> str:
    """The file name a run's export is kept under in ``cache/exports/``: ``<run id>.<format>.<jsonl|parquet>``.

    Run ids are ``<method>-<hex>``, but the method is whatever was stored, so the id is never trusted as a path:
    characters outside letters, digits and ``._-`` become ``_``, leading dots go, and an id that had to change
    gets a hash of the original (distinct runs keep distinct files).  ``../``, an absolute path, a backslash or
    a NUL byte cannot leave the folder."""
    _check_choice(fmt, file_type)
    stem = _UNSAFE_NAME_CHARS.sub("_", str(run_id)).lstrip(".")[:100]
    if stem != run_id:
        stem = f"{stem or 'run'}-{stable_hash(str(run_id), 8)}"
    return f"{stem}.{fmt}.{file_type}"


def manifest_path_for(path: str | os.PathLike) -> Path:
    """The manifest beside an export: ``x.jsonl`` -> ``x.manifest.json`` (as before Parquet), ``x.parquet`` ->
    ``x.parquet.manifest.json`` (so the two containers of one selection never overwrite each other's manifest,
    which holds the file's own hash)."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".jsonl") + ".manifest.json")


def dataset_name_for(path: str | os.PathLike) -> str:
    """The LLaMA-Factory dataset name of an export: its file name without ``.jsonl`` / ``.parquet``
    (``g2is-3f2a.messages``; ``--out subset.parquet`` gives ``subset``)."""
    name = Path(path).name
    for suffix in (".jsonl", ".parquet"):
        if name.endswith(suffix) and name != suffix:
            return name.removesuffix(suffix)
    return name


def resolve_file_type(out: str | os.PathLike | None, file_type: str | None) -> str:
    """The container to write: ``file_type`` when given, else ``out``'s suffix (``.parquet``), else JSONL.
    An ``out`` ending in the other container's suffix is refused rather than written mislabelled."""
    suffix = Path(out).suffix.lower() if out is not None else ""
    if file_type is None:
        return "parquet" if suffix == ".parquet" else "jsonl"
    if file_type not in EXPORT_FILE_TYPES:
        raise ValueError(f"unknown export file type {file_type!r}; choose one of {', '.join(EXPORT_FILE_TYPES)}")
    if suffix in (".jsonl", ".parquet") and suffix[1:] != file_type:
        raise ValueError(f"the output {Path(out).name!r} ends in {suffix} but the file type is {file_type}: "
                         f"name it *.{file_type} or choose --file-type {suffix[1:]}")
    return file_type


# ------------------------------------------------------------------------------------------------ containers

def _parquet_schema(fmt: str, records: Sequence[dict]):
    """The Parquet columns of a format: exactly the keys of its JSONL records, in the same order, with the types
    ``datasets`` infers from the JSONL, so ``load_dataset("parquet")`` gives the records that
    ``load_dataset("json")`` gives.  Alpaca's ``system`` is a column only when some row has one (null where a row
    has none, as the JSON loader gives ``None``), as in the JSONL; messages and conversations are lists of
    structs (role/content, from/value), never JSON strings, so trainers read them as chats."""
    import pyarrow as pa

    def turns(role: str, content: str):
        return pa.list_(pa.struct([(role, pa.string()), (content, pa.string())]))

    if fmt == "messages":
        return pa.schema([("id", pa.string()), ("messages", turns("role", "content"))])
    if fmt == "sharegpt":
        return pa.schema([("id", pa.string()), ("conversations", turns("from", "value"))])
    columns = [("id", pa.string()), ("instruction", pa.string()), ("input", pa.string()), ("output", pa.string())]
    if any("system" in record for record in records):
        columns.append(("system", pa.string()))
    return pa.schema(columns)


def encode_records(records: Sequence[dict], fmt: str, file_type: str) -> bytes:
    """The file's bytes: one JSON object a line, or one Parquet row per record (in the given order)."""
    _check_choice(fmt, file_type)
    if file_type == "jsonl":
        return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode("utf-8")
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(list(records), schema=_parquet_schema(fmt, records))
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def read_export(path: str | os.PathLike, limit: int | None = None) -> list[dict]:
    """The records of an export file (JSONL or Parquet, by its suffix), the first ``limit`` of them if given."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        if limit is None:
            return pq.read_table(path).to_pylist()
        records: list[dict] = []
        for batch in pq.ParquetFile(path).iter_batches(batch_size=max(1, limit)):
            records += batch.to_pylist()
            if len(records) >= limit:
                break
        return records[:limit]
    records = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if limit is not None and len(records) >= limit:
                break
            if line.strip():
                records.append(json.loads(line))
    return records


def export_preview(path: str | os.PathLike, limit: int = 3) -> str:
    """The first ``limit`` records of an export as JSON lines (what a JSONL file holds; a Parquet file's rows as
    ``datasets`` reads them), or ``(empty selection)``."""
    records = read_export(path, limit)
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records) or "(empty selection)"


def _write_atomic(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        if isinstance(data, str):
            partial.write_text(data, encoding="utf-8")
        else:
            partial.write_bytes(data)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ LLaMA-Factory

def llamafactory_entry(fmt: str, file_name: str, records: Sequence[dict], data: bytes | None = None) -> dict:
    """The ``dataset_info.json`` entry that lets LLaMA-Factory read an export as it is (its data/README.md keys).

    Alpaca: ``formatting: alpaca`` with columns instruction/input/output (and ``system`` when a row has one).
    ShareGPT: ``formatting: sharegpt``, column ``conversations``, tags of our records' speakers (``from``/``value``,
    ``human``/``gpt``/``system``; a system prompt is the first turn, which LLaMA-Factory takes as the system).
    Chat messages: the sharegpt formatting with OpenAI-style tags (``role``/``content``, user/assistant/system).
    ``file_sha1`` is the documented optional checksum (it does not change training)."""
    _check_choice(fmt, EXPORT_FILE_TYPES[0])  # (the entry is the same for either container)
    entry: dict = {"file_name": file_name}
    if fmt == "alpaca":
        entry["formatting"] = "alpaca"
        entry["columns"] = {"prompt": "instruction", "query": "input", "response": "output"}
        if any("system" in record for record in records):
            entry["columns"]["system"] = "system"
    elif fmt == "sharegpt":
        entry["formatting"] = "sharegpt"
        entry["columns"] = {"messages": "conversations"}
        entry["tags"] = {"role_tag": "from", "content_tag": "value", "user_tag": SHAREGPT_SPEAKERS["user"],
                         "assistant_tag": SHAREGPT_SPEAKERS["assistant"], "system_tag": SHAREGPT_SPEAKERS["system"]}
    else:
        entry["formatting"] = "sharegpt"
        entry["columns"] = {"messages": "messages"}
        entry["tags"] = {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                         "assistant_tag": "assistant", "system_tag": "system"}
    if data is not None:
        entry["file_sha1"] = hashlib.sha1(data).hexdigest()
    return entry


def llamafactory_skipped(chats: Sequence[tuple[str, list[dict]]]) -> list[str]:
    """Ids of the chats LLaMA-Factory's sharegpt reader would drop ("Invalid role tag" / "Invalid message count"):
    after an optional leading system turn it needs user, assistant, user, assistant, ... ending with the assistant
    (two user turns in a row, say, are skipped with a warning).  Alpaca rows cannot be such chats (``to_format``)."""
    skipped = []
    for row_id, messages in chats:
        turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
        if len(turns) % 2 or any(m["role"] != ("user", "assistant")[i % 2] for i, m in enumerate(turns)):
            skipped.append(row_id)
    return skipped


def merged_dataset_info(folder: Path, name: str, entry: dict, info: dict | None = None) -> str:
    """The text of ``folder/dataset_info.json`` with ``name``'s entry set: other datasets' entries are kept as
    they are (in their order); an existing entry of this name (an earlier export under it) is replaced.  A file
    that is not a JSON object is refused, never overwritten.  ``info``: the catalogue to merge into instead of
    the file's (one already merged in this export)."""
    path = folder / DATASET_INFO
    if info is None and path.exists():
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise ValueError(f"{path} cannot be read as JSON ({error}): fix or move it, and export again (it is "
                             "merged into, never overwritten)") from error
        if not isinstance(info, dict):
            raise ValueError(f"{path} is not a JSON object of datasets: fix or move it, and export again")
    info = dict(info or {})
    info[name] = entry
    return json.dumps(info, indent=2, ensure_ascii=False) + "\n"


# ------------------------------------------------------------------------------------------------ provenance

def _git(folder: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10,
                              env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
    except (OSError, subprocess.SubprocessError):  # no git, or it hangs
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def tool_version() -> dict:
    """This tool's version for manifests: the git commit of the checkout the ``core`` package runs from (and
    whether it has uncommitted changes) when there is one, else the installed package version.  Computed once
    per process (the code that runs is the code imported).  Never fails: without git the commit is None."""
    try:
        package_version = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        package_version = None
    folder = Path(__file__).resolve().parent.parent  # the core package
    commit = dirty = None
    top = _git(folder, "rev-parse", "--show-toplevel")
    # only a repository that tracks this very package: an installed copy inside some other checkout is not it
    if top and _git(folder, "ls-files", "--error-unmatch", "--", "__init__.py") is not None:
        commit = _git(folder, "rev-parse", "HEAD")
        status = _git(folder, "status", "--porcelain", "--untracked-files=no") if commit else None
        dirty = None if status is None else bool(status)
    return {"name": PACKAGE, "version": commit or package_version, "package_version": package_version,
            "git_commit": commit, "git_dirty": dirty}


def _config_record(config: dict) -> dict:
    return {"key": config["key"], "gradient_type": config["gradient_type"], "checkpoint_key": config["checkpoint_key"],
            "dim": config["dim"], "dtype": config["dtype"], **config["description"]}


def _weights(configs: Sequence[dict]) -> dict | None:
    """The model of these feature sets, when they agree on one: spec, weights hash and chat template hash."""
    found = {(c["description"].get("model_spec"), c["description"].get("model"), c["description"].get("template"))
             for c in configs}
    if len(found) != 1:
        return None
    spec, weights, template = found.pop()
    return {"spec": spec, "weights_hash": weights, "chat_template_hash": template,
            "hash_of": "core.features.modeling.model_key: the GGUF's sha256, or config.json and the weight files"}


def feature_provenance(store: Store, run: dict) -> dict:
    """Which model and feature sets a run selected from, as the manifest's ``model_weights``, ``features`` and
    ``coverage``.

    Verified when the project's current feature settings still give the run's feature key (``feature_index``,
    tried only when a stored feature set of the run's rows was made with the current model spec, so that an export
    never converts or downloads a model): then ``features.settings`` are the run's settings.  Otherwise the pool
    feature sets that hold every selected row are named as candidates, with the model they agree on."""
    settings = store.project_settings(run["project"]) or {}
    candidates = store.run_feature_configs(run["id"])
    index, note = None, ""
    if any(c["description"].get("model_spec") == settings.get("model") for c in candidates):
        from core.selection.runs import feature_index

        try:
            index = feature_index(store, run["project"], allow_partial=True)
        except Exception as error:  # noqa: BLE001 - a model that no longer loads must not stop an export
            note = f"the current feature settings could not be checked ({type(error).__name__}: {error}); "
    verified = index is not None and index.feature_key == run["feature_key"]
    if verified:
        keys = [key for role in ("pool", "targets") for key in index.config_keys[role]]
        found = store.feature_configs(keys)
        configs = [found[key] for key in keys if key in found]
        note = "the project's current feature settings give this run's feature key"
    else:
        configs = candidates
        note += ("the project's feature settings are no longer the run's: these are the stored pool feature sets "
                 "that hold every selected row" if candidates else "no stored feature set holds the selected rows")
    coverage = run["params"].get("coverage") or (index.coverage if verified else None)
    return {
        "model_weights": _weights(configs),
        "features": {"feature_key": run["feature_key"], "verified": verified, "note": note,
                     "settings": settings if verified else None, "configs": [_config_record(c) for c in configs]},
        "coverage": coverage, "partial_features": bool(run["params"].get("coverage")),
    }


def _arm_record(arm) -> dict:
    return {"label": arm.label, "method": arm.method, "budget": arm.budget, "run_ids": list(arm.run_ids),
            "seeds": list(arm.seeds), "losses": list(arm.losses), "mean": arm.mean, "spread": arm.spread,
            "vs_random": arm.vs_random, "accuracy": arm.accuracy, "verdict": arm.verdict}


def run_evaluation_records(store: Store, run: dict) -> list[dict]:
    """Every evaluation that judged the run, newest first: where it was measured, how each fine-tune trained,
    the run's arm (held-out loss per seed, mean, spread, change vs random, exact match, verdict) beside random at
    the same budget and zero-shot.  An evaluation whose record no longer loads is named with the error."""
    from core.evaluation.report import evaluation_report

    found = []
    for record in store.evaluations(run["project"]):
        if not any(run["id"] in (arm.get("run_ids") or []) for arm in record["arms"]):
            continue
        try:
            report = evaluation_report(store, record["id"])
        except (ValueError, KeyError, TypeError) as error:
            found.append({"id": record["id"], "error": f"{type(error).__name__}: {error}"})
            continue
        for arm in report.arms:
            if run["id"] not in arm.run_ids:
                continue
            random = next((a for a in report.arms if a.method == "random" and a.budget == arm.budget), None)
            zero = next((a for a in report.arms if a.method == "zero-shot"), None)
            found.append({
                "id": report.id, "created": record["created"], "complete": report.complete,
                "evaluated_on": report.rows_description, "evaluation_rows": report.eval_rows,
                "training": report.args, "result": _arm_record(arm),
                "random": _arm_record(random) if random is not None else None,
                "zero_shot": {"loss": zero.mean, "accuracy": zero.accuracy} if zero is not None else None,
                "notes": list(report.notes)})
    return found


# ------------------------------------------------------------------------------------------------ export

def export_selection(store: Store, run_id: str, fmt: str = "messages", out: str | os.PathLike | None = None,
                     file_type: str | None = None, llamafactory: bool = False) -> dict:
    """Write the run's rows (in selection order) in format ``fmt`` as JSONL or Parquet (``file_type``; default:
    ``out``'s suffix, else JSONL), and ``<name>.manifest.json`` beside it (``manifest_path_for``); with
    ``llamafactory`` also set the export's entry in ``dataset_info.json`` beside it (merged into one that is there).

    Returns the manifest, with ``path`` and ``manifest_path`` (and ``llamafactory``: the dataset name, the
    ``dataset_info.json`` path, the entry, rows LLaMA-Factory would skip).  Without ``out`` the file goes to
    ``cache/exports/<run id>.<format>.<jsonl|parquet>`` (see ``export_name``); with it, a copy is still kept
    there.  Nothing is written unless every file can be prepared."""
    file_type = resolve_file_type(out, file_type)
    exports = store.root / "exports"
    kept = exports / export_name(run_id, fmt, file_type)  # checks the format before anything is read or written
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
    records = [to_format(by_id[row_id].messages, fmt, row_id) for _, row_id, _, _ in chosen]
    data = encode_records(records, fmt, file_type)
    settings = store.project_settings(run["project"]) or {}
    provenance = feature_provenance(store, run)
    evaluations = run_evaluation_records(store, run)
    manifest = {
        "run_id": run_id, "project": run["project"], "method": run["method"], "params": run["params"],
        "feature_key": run["feature_key"], "model": settings.get("model"), "format": fmt,
        "budget": run["budget"], "selected": len(chosen), "notes": run["notes"],
        "ids": [row_id for _, row_id, _, _ in chosen], "scores": [score for _, _, score, _ in chosen],
        "selected_at": str(run["created"]), "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "manifest_version": MANIFEST_VERSION, "file_type": file_type, "sha256": hashlib.sha256(data).hexdigest(),
        "tool": tool_version(), **provenance, "profile": None,
        "evaluation": evaluations[0] if evaluations else None,
        "other_evaluations": [e["id"] for e in evaluations[1:]],
    }
    if run["method"] in G2IS_METHODS:  # which G2IS: the authors' Algorithm 1, or the default profile and its remedies
        manifest["profile"] = {"name": "paper" if run["method"] == "g2is-paper" else "default",
                               **{name: run["params"].get(name, value) for name, value in PAPER_REMEDIES.items()}}
    manifest = json.loads(json.dumps(manifest, default=str))  # what is written is what is returned
    skipped = [] if fmt == "alpaca" else llamafactory_skipped([(row_id, by_id[row_id].messages)
                                                               for _, row_id, _, _ in chosen])
    targets = [kept] if out is None else [Path(out), kept]
    # Prepare every file before writing one: a dataset_info.json that cannot be merged stops the export whole.
    infos: dict[Path, str] = {}  # dataset_info.json path -> its new text (two targets in one folder: both entries)
    written: list[dict] = []
    for path in targets:
        described = {**manifest, "path": str(path), "manifest_path": str(manifest_path_for(path)), "llamafactory": None}
        if llamafactory:
            name, info_path = dataset_name_for(path), (path.parent / DATASET_INFO).resolve()
            entry = llamafactory_entry(fmt, path.name, records, data)
            previous = json.loads(infos[info_path]) if info_path in infos else None
            infos[info_path] = merged_dataset_info(path.parent, name, entry, previous)
            described["llamafactory"] = {"dataset": name, "dataset_dir": str(info_path.parent),
                                         "dataset_info": str(info_path), "entry": entry, "skipped_rows": skipped}
        written.append(described)
    for described in written:  # the data file and its manifest, then the entries that point at them
        _write_atomic(Path(described["path"]), data)
        _write_atomic(Path(described["manifest_path"]),
                      json.dumps({k: v for k, v in described.items() if k != "manifest_path"}, indent=1))
    for info_path, text in infos.items():
        _write_atomic(info_path, text)
    return written[0]
