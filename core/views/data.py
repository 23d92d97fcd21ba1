"""What the app's Data page shows and does, without Streamlit: projects, uploads, a data overview, a token view.

* Projects: ``check_project_name`` / ``create_project``.
* Uploads: ``ingest_uploads`` saves the uploaded bytes under ``<cache>/uploads/<project>/<role>/<sha>/<name>``
  (the user's file is never lost, and a file name can never leave that folder) and ingests them with
  ``core.data.ingest.ingest_files(on_error="skip")``, which *replaces* the role's rows, so ingesting the same files
  twice leaves the same rows.  When nothing usable comes out (a file that is not JSON, every row bad) the role's
  rows are left as they were and the outcome says which file, which line and what is wrong.
  A file over the upload limit (``core.config.max_upload_mb``, ``$G2IS_MAX_UPLOAD_MB``) is refused before anything
  is saved, with a message saying how to get it in (split it, raise the limit, or use the streaming CLI).
* Overview: row counts, source counts and length histograms (characters and whitespace words, measured in SQL
  by ``Store.row_lengths`` and binned here, so the browser gets 40 bars, not 50,000 values), with their plotly
  figures.  User text on an axis or in a hover is ``html.escape``d (plotly renders a subset of HTML).
* Token view: one row encoded by ``core.features.modeling.encode_messages`` -- the very function the feature job uses --
  with the loss-trained (assistant) tokens and the ``max_tokens`` cut marked, rendered as escaped HTML.
"""
from __future__ import annotations

import hashlib
import html
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from core.config import MEGABYTE, max_upload_mb, stable_hash
from core.data.ingest import ingest_files
from core.data.records import BadRowsError, FormatError, RowError
from core.features.modeling import encode_messages, load_tokenizer, resolve_model
from core.store import ROLES, Store, StoreBusyError, StoredRow, StoreError

# ------------------------------------------------------------------------------------------------ projects

PROJECT_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
PROJECT_NAME_RULE = "letters, digits, '-', '_' and '.', 1 to 64 characters (for example 'math-mix.v2')"


def check_project_name(name: str) -> str:
    """The name without surrounding blanks, or ValueError saying what is wrong with it."""
    name = (name or "").strip()
    if not name:
        raise ValueError(f"Give the new project a name: {PROJECT_NAME_RULE}.")
    if len(name) > 64:
        raise ValueError(f"The project name is {len(name)} characters long; use at most 64.")
    bad = sorted({ch for ch in name if not PROJECT_NAME.fullmatch(ch)})
    if bad:
        shown = " ".join(repr(ch) for ch in bad[:8])
        raise ValueError(f"The project name may not contain {shown}; use {PROJECT_NAME_RULE}.")
    if set(name) == {"."}:
        raise ValueError(f"A project name cannot be only dots; use {PROJECT_NAME_RULE}.")
    return name


def create_project(store: Store, name: str) -> tuple[str, bool]:
    """(checked name, whether it was created): an existing project is left as it is, a new one starts empty
    with the default feature settings."""
    name = check_project_name(name)
    if name in store.projects():
        return name, False
    store.ensure_project(name)
    return name, True


# ------------------------------------------------------------------------------------------------ uploads

UPLOAD_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".tsv")
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME_CHARS = 100


def safe_file_name(name: str) -> str:
    """A file name that stays in its folder: the last path part only, letters/digits/``._-`` kept, other runs of
    characters turned into ``_``, no leading dot, at most 100 characters with the extension kept."""
    base = PurePosixPath((name or "").replace("\\", "/")).name
    base = _UNSAFE_NAME_CHARS.sub("_", base).lstrip(".")
    if not base.strip("_"):
        base = "upload" + base
    if len(base) > _MAX_NAME_CHARS:
        stem, suffix = os.path.splitext(base)
        suffix = suffix[:16]
        base = stem[: _MAX_NAME_CHARS - len(suffix)] + suffix
    return base


def _path_component(name: str) -> str:
    """A folder name for a project name from anywhere (the CLI accepts any): safe, and distinct per name."""
    safe = safe_file_name(name)
    return safe if safe == name else f"{safe}-{stable_hash(name, 8)}"


def uploads_dir(store: Store, project: str, role: str) -> Path:
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    return store.root / "uploads" / _path_component(project) / role


@dataclass(frozen=True)
class SavedUpload:
    name: str  # as the user gave it
    path: Path  # <uploads_dir>/<sha256[:16]>/<safe name>
    sha256: str
    size: int


def save_upload(store: Store, project: str, role: str, name: str, data: bytes) -> SavedUpload:
    """Write the bytes once (same content, same path) and atomically (a crash leaves no half file).

    The content hash is a folder, not a prefix, so the file keeps its name: rows without a "source" take the
    file's stem as their source."""
    digest = hashlib.sha256(data).hexdigest()
    path = uploads_dir(store, project, role) / digest[:16] / safe_file_name(name)
    if not path.is_file() or path.stat().st_size != len(data):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(dir=path.parent, prefix=".partial-")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.replace(staging, path)
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise
    return SavedUpload(name, path, digest, len(data))


def upload_signature(project: str, role: str, files: Sequence[tuple[str, bytes]], group_field: str | None) -> str:
    """Identity of one upload request: the app ingests a request once, however often Streamlit reruns."""
    contents = [(name, hashlib.sha256(data).hexdigest()) for name, data in files]
    return stable_hash([project, role, (group_field or "").strip(), contents])


@dataclass(frozen=True)
class FileOutcome:
    """One uploaded file as the ingest saw it (file names in errors are the user's, not the saved paths)."""

    name: str
    path: str
    format: str | None
    rows: int
    errors: list[RowError] = field(default_factory=list)
    note: str | None = None


@dataclass
class UploadOutcome:
    project: str
    role: str
    files: list[FileOutcome]
    rows_before: int
    rows_after: int
    error: str | None = None  # set when nothing was ingested: the role's rows are unchanged
    problems: list[RowError] = field(default_factory=list)  # the rows / file behind ``error``

    @property
    def ingested(self) -> bool:
        return self.error is None

    @property
    def bad_rows(self) -> list[RowError]:
        return [e for f in self.files for e in f.errors] + self.problems

    def error_table(self) -> list[dict]:
        """Bad rows as table records (line 0: the problem is the whole file)."""
        return [{"file": e.file, "line": e.line, "reason": e.reason} for e in self.bad_rows]

    def file_table(self) -> list[dict]:
        return [{"file": f.name, "format": f.format or "-", "rows read": f.rows, "bad rows": len(f.errors),
                 "note": f.note or ""} for f in self.files]

    @property
    def ingested_files(self) -> list[FileOutcome]:
        """The files the role's rows now come from (an identical copy in the same upload included)."""
        return self.files if self.ingested else []


def saved_files(outcome: UploadOutcome, leave_out: str | None = None) -> list[tuple[str, bytes]]:
    """(name, bytes) of the files an ingested upload saved under ``uploads/``, without the one whose path is
    ``leave_out``: what to ingest again when the user removes a file from the upload or changes the group
    field.  Raises OSError when a saved file is gone."""
    return [(f.name, Path(f.path).read_bytes()) for f in outcome.ingested_files if f.path != leave_out]


def _user_names(text: str, names: dict[str, str]) -> str:
    for path, name in names.items():
        text = text.replace(path, name)
    return text


def _size_text(size: int) -> str:
    return f"{size / MEGABYTE:,.1f} MB" if size >= MEGABYTE else f"{max(size / 1024, 1):,.0f} KB"


def upload_size_error(files: Sequence[tuple[str, bytes]], role: str = "pool", rows_before: int = 0) -> str | None:
    """Why the upload is refused for its size (any file over ``max_upload_mb()``), or None.

    Checked before anything is saved: a file over the limit is neither kept nor ingested."""
    try:
        limit = max_upload_mb()
    except ValueError as error:
        return f"{error}. Nothing was ingested: the project's {rows_before} {role} row(s) are unchanged."
    big = [(name, len(data)) for name, data in files if len(data) > limit * MEGABYTE]
    if not big:
        return None
    listed = ", ".join(f"{name} ({_size_text(size)})" for name, size in big)
    return (f"{listed}: over the upload limit of {limit:g} MB per file. Nothing was ingested: the project's "
            f"{rows_before} {role} row(s) are unchanged. Split the file, raise the limit (G2IS_MAX_UPLOAD_MB, and "
            "server.maxUploadSize in .streamlit/config.toml), or ingest it with the command line, which streams "
            f"files of any size: python -m core ingest --project <project> --{role} <file>.")


def ingest_uploads(
    store: Store,
    project: str,
    role: str,
    files: Sequence[tuple[str, bytes]],
    group_field: str | None = None,
) -> UploadOutcome:
    """Save the uploaded files (name, bytes) and make them the project's ``role`` rows; never raises for bad data.

    Identical files in one upload are ingested once (the copy would only add "duplicate row" errors)."""

    group_field = (group_field or "").strip() or None
    rows_before = store.row_counts(project)[role] if project in store.projects() else 0
    if not files:
        return UploadOutcome(project, role, [], rows_before, rows_before, error="No files were uploaded.")
    wrong = [name for name, _ in files if not name.lower().endswith(UPLOAD_SUFFIXES)]
    if wrong:
        return UploadOutcome(project, role, [], rows_before, rows_before,
                             error=f"{', '.join(wrong)}: only .jsonl, .json, .parquet, .csv and .tsv files can be "
                                   "ingested.")
    too_big = upload_size_error(files, role, rows_before)
    if too_big:
        return UploadOutcome(project, role, [], rows_before, rows_before, error=too_big)
    saved: list[SavedUpload] = []
    skipped: list[FileOutcome] = []
    for name, data in files:
        upload = save_upload(store, project, role, name, data)
        twin = next((s for s in saved if s.sha256 == upload.sha256), None)
        if twin is not None:
            skipped.append(FileOutcome(name, str(upload.path), None, 0, note=f"same content as {twin.name}: skipped"))
        else:
            saved.append(upload)
    names = {str(s.path): s.name for s in saved}

    def user_error(error: RowError) -> RowError:
        return RowError(names.get(error.file, _user_names(error.file, names)), error.line, _user_names(error.reason, names))

    kept = f"Nothing was ingested: the project's {rows_before} {role} row(s) are unchanged."
    try:
        result = ingest_files(store, project, role, [s.path for s in saved], on_error="skip", group_field=group_field)
    except FormatError as error:
        message = _user_names(str(error), names)
        return UploadOutcome(project, role, skipped, rows_before, rows_before,
                             error=f"{message}. {kept} Fix the file or remove it from the upload.")
    except BadRowsError as error:
        problems = [user_error(e) for e in error.errors if e.line > 0]
        shown = ", ".join(s.name for s in saved)
        return UploadOutcome(project, role, skipped, rows_before, rows_before,
                             error=f"No usable {role} rows in {shown}: all {len(problems)} row(s) are bad "
                                   f"(listed below with their line and reason). {kept}",
                             problems=problems)
    except (StoreBusyError, StoreError, OSError) as error:
        return UploadOutcome(project, role, skipped, rows_before, rows_before,
                             error=f"The cache could not take the rows ({error}). {kept} Try again.")
    outcomes = [
        FileOutcome(names.get(r.file, r.file), r.file, r.format, r.rows, [user_error(e) for e in r.errors])
        for r in result.reports
    ]
    return UploadOutcome(project, role, outcomes + skipped, rows_before, result.rows)


# ------------------------------------------------------------------------------------------------ overview

LENGTH_UNITS = {"words": "whitespace-separated words", "chars": "characters"}


@dataclass(frozen=True)
class LengthHistogram:
    """Binned lengths of all message contents of each role, on shared bins."""

    unit: str  # a key of LENGTH_UNITS
    edges: list[float]
    counts: dict[str, list[int]]  # role -> rows per bin
    clipped_at: float | None  # longer rows are counted in the last bin (the long tail would flatten the rest)
    clipped: dict[str, int]  # role -> rows longer than clipped_at
    median: dict[str, float]
    maximum: dict[str, int]


@dataclass(frozen=True)
class DataOverview:
    rows: dict[str, int]
    sources: dict[str, list[tuple[str, int]]]  # role -> (source, rows), largest first
    lengths: dict[str, LengthHistogram]  # unit -> histogram


def _histogram(unit: str, values: dict[str, np.ndarray], bins: int) -> LengthHistogram:
    every = np.concatenate([v for v in values.values()]) if values else np.zeros(0)
    if every.size == 0:
        return LengthHistogram(unit, [0.0, 1.0], {r: [0] for r in values}, None, {r: 0 for r in values}, {}, {})
    low, top = float(every.min()), float(np.percentile(every, 99))
    clipped_at = top if top < every.max() else None
    edges = np.histogram_bin_edges(every, bins=bins, range=(low, max(top, low + 1.0)))
    counts, clipped, median, maximum = {}, {}, {}, {}
    for role, v in values.items():
        counts[role] = np.histogram(np.minimum(v, edges[-1]), bins=edges)[0].tolist()
        clipped[role] = int((v > edges[-1]).sum()) if clipped_at is not None else 0
        median[role] = float(np.median(v)) if v.size else 0.0
        maximum[role] = int(v.max()) if v.size else 0
    return LengthHistogram(unit, edges.tolist(), counts, clipped_at, clipped, median, maximum)


def data_overview(store: Store, project: str, bins: int = 40) -> DataOverview:
    """Counts, sources and length histograms of the project's rows (one SQL scan; ~0.5 s for 50,000 rows, so the
    app caches it per ``Store.rows_version``)."""
    rows: dict[str, int] = {}
    sources: dict[str, list[tuple[str, int]]] = {}
    per_unit: dict[str, dict[str, np.ndarray]] = {unit: {} for unit in LENGTH_UNITS}
    for role in ROLES:
        table = store.row_lengths(project, role)
        rows[role] = table.num_rows
        if not rows[role]:
            continue
        sources[role] = list(store.source_counts(project, role).items())
        for unit in LENGTH_UNITS:
            per_unit[unit][role] = table.column(unit).to_numpy()
    lengths = {unit: _histogram(unit, per_unit[unit], bins) for unit in LENGTH_UNITS}
    return DataOverview(rows, sources, lengths)


ROLE_COLOURS = {"pool": "#4C78A8", "targets": "#F58518"}
# A legend in a row above the plot area: its bottom edge sits on the area's top edge (yanchor "bottom" at y=1), so
# it never covers a bar; the top margin holds it.
LEGEND_ABOVE = dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left", x=0.0)


def length_figure(histogram: LengthHistogram):
    """Bars per bin, one trace per role (nothing user-written is drawn)."""
    import plotly.graph_objects as go

    edges = np.asarray(histogram.edges)
    centres, widths = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    unit = LENGTH_UNITS[histogram.unit]
    figure = go.Figure()
    for role, counts in histogram.counts.items():
        labels = [f"{edges[i]:.0f}-{edges[i + 1]:.0f}" for i in range(len(counts))]
        if histogram.clipped_at is not None and labels:
            labels[-1] = f"{edges[-2]:.0f} or more"
        figure.add_bar(x=centres, y=counts, width=widths, name=role, marker_color=ROLE_COLOURS.get(role),
                       opacity=0.75, customdata=labels,
                       hovertemplate=f"{role}: %{{customdata}} {histogram.unit}<br>%{{y}} rows<extra></extra>")
    figure.update_layout(barmode="overlay", xaxis_title=unit, yaxis_title="rows", height=320,
                         margin=dict(l=10, r=10, t=40, b=10), legend=LEGEND_ABOVE)
    return figure


def source_figure(overview: DataOverview, top: int = 25):
    """Rows per source (the ``top`` largest of each role, the rest summed), source names escaped."""
    import plotly.graph_objects as go

    figure = go.Figure()
    for role, sources in overview.sources.items():
        shown = sources[:top]
        rest = sources[top:]
        names = [html.escape(name) for name, _ in shown]
        counts = [count for _, count in shown]
        if rest:
            names.append(f"({len(rest)} other sources)")
            counts.append(sum(count for _, count in rest))
        figure.add_bar(x=counts, y=names, orientation="h", name=role, marker_color=ROLE_COLOURS.get(role),
                       hovertemplate=f"{role}: %{{y}}<br>%{{x}} rows<extra></extra>")
    bars = max((min(len(s), top + 1) for s in overview.sources.values()), default=1)
    figure.update_layout(barmode="group", xaxis_title="rows", height=min(120 + 22 * bars * len(overview.sources), 900),
                         margin=dict(l=10, r=10, t=40, b=10), legend=LEGEND_ABOVE,
                         yaxis=dict(autorange="reversed"))
    return figure


def short_text(messages: Sequence[dict], width: int = 160) -> str:
    """'user: ... → assistant: ...' on one line, cut to ``width`` characters."""
    parts = []
    for message in messages:
        content = " ".join(str(message.get("content", "")).split())
        parts.append(f"{message.get('role')}: {content}")
    text = " → ".join(parts)
    return text if len(text) <= width else text[: width - 1] + "…"


def preview_rows(store: Store, project: str, role: str, limit: int = 50) -> list[dict]:
    """The role's first ``limit`` rows as table records (shown by st.dataframe, which renders text as text)."""
    return [
        {"#": r.ordinal, "id": r.row_id, "source": r.source, "format": r.format, "group": r.group,
         "text": short_text(r.messages)}
        for r in store.rows(project, role, limit=limit)
    ]


def ingest_file_table(store: Store, project: str) -> list[dict]:
    """The files behind the project's current rows, as recorded at ingest."""
    return [
        {"role": f["role"], "file": Path(f["file"]).name, "format": f["format"], "rows": f["rows"],
         "bad rows": f["errors"], "ingested": f["ingested"]}
        for f in store.ingested_files(project)
    ]


def recorded_errors(store: Store, project: str, limit: int = 1000) -> tuple[int, list[dict]]:
    """(bad rows recorded by the last ingests, the first ``limit`` as role/file name/line/reason)."""
    total, errors = store.ingest_errors(project, limit)
    return total, [{"role": e["role"], "file": Path(e["file"]).name, "line": e["line"],
                    "reason": e["reason"]} for e in errors]


# ------------------------------------------------------------------------------------------------ tokens


def tokenizer_needs_conversion(spec: str) -> bool:
    """Whether loading this model's tokenizer first converts a GGUF (~40 s once, see
    ``core.features.modeling.ensure_converted``, which leaves ``g2is_source.json`` in the converted folder)."""

    resolved = resolve_model(spec)
    return resolved.kind == "gguf" and not (Path(resolved.load_path) / "g2is_source.json").is_file()


def load_project_tokenizer(spec: str):
    """The tokenizer the feature job uses for this model spec (raises ``core.features.modeling.ModelError``)."""

    return load_tokenizer(resolve_model(spec))


@dataclass(frozen=True)
class TokenPiece:
    text: str  # the token decoded on its own
    token_id: int
    trained: bool  # the loss trains on it (an assistant token inside max_tokens)
    kept: bool  # inside max_tokens (what the feature job sees)


@dataclass(frozen=True)
class TokenView:
    pieces: list[TokenPiece]  # the tokens shown: the kept window and up to a few cut tokens on either side
    max_tokens: int
    full_length: int  # tokens of the whole rendered row
    error: str | None  # why the feature job cannot use this row, if it cannot
    first_shown: int = 0  # index in the whole row of ``pieces[0]``
    window_start: int = 0  # tokens cut on the left (truncation "left")

    @property
    def kept(self) -> int:
        return sum(p.kept for p in self.pieces)

    @property
    def trained(self) -> int:
        return sum(p.trained for p in self.pieces)

    @property
    def truncated(self) -> bool:
        return self.full_length > self.max_tokens

    @property
    def not_shown(self) -> int:
        return self.full_length - len(self.pieces) - self.first_shown

    def summary(self) -> str:
        text = (f"{self.full_length} tokens, {self.trained} trained (assistant), "
                f"{self.kept - self.trained} context.")
        if self.window_start:
            text += (f" Truncated from the left to keep the answer: the first {self.window_start} tokens are not seen"
                     + (f", nor the last {self.full_length - self.window_start - self.kept}."
                        if self.full_length > self.window_start + self.kept else "."))
        elif self.truncated:
            text += (f" Truncated at max_tokens={self.max_tokens}: the last "
                     f"{self.full_length - self.max_tokens} tokens are not seen.")
        return text

    def html(self) -> str:
        """Escaped HTML: each token a span (trained, context, or cut off), the window's edges marked."""
        out = ['<div class="g2is-tokens" style="font-family:monospace;font-size:0.85rem;white-space:pre-wrap;'
               'line-height:1.9;word-break:break-all">']
        if self.first_shown:
            out.append(f'<span class="g2is-cut" style="color:#888">{self.first_shown} earlier tokens … </span>')
        window_end = self.window_start + self.max_tokens
        for offset, piece in enumerate(self.pieces):
            index = self.first_shown + offset
            if index == self.window_start and index:
                out.append(f'<span class="g2is-cut" style="color:#c00;font-weight:bold;padding:0 4px">'
                           f'✂ {index} tokens cut on the left</span>')
            if index == window_end:
                out.append(f'<span class="g2is-cut" style="color:#c00;font-weight:bold;padding:0 4px">'
                           f'✂ max_tokens={self.max_tokens}</span>')
            kind = "trained" if piece.trained else "context" if piece.kept else "cut"
            text = html.escape(piece.text).replace("\n", "↵\n").replace("\t", "→\t")
            title = html.escape(f"#{index} id {piece.token_id} {kind}")
            out.append(f'<span class="g2is-{kind}" title="{title}" style="{_TOKEN_STYLES[kind]}">{text}</span>')
        if self.not_shown > 0:
            out.append(f'<span class="g2is-cut" style="color:#888"> … {self.not_shown} more tokens</span>')
        out.append("</div>")
        return "".join(out)


_TOKEN_STYLES = {
    "trained": "background:#c9f2c7;border:1px solid #7cc576;border-radius:3px;margin:0 1px",
    "context": "background:#f0f0f0;border:1px solid #ddd;border-radius:3px;margin:0 1px;color:#555",
    "cut": "color:#999;text-decoration:line-through;margin:0 1px",
}


def token_view(tokenizer, messages: Sequence[dict], max_tokens: int, shown_after_cut: int = 64,
               truncation: str = "right") -> TokenView:
    """One row as the feature job encodes it (``encode_messages`` with the project's max_tokens and truncation),
    plus up to ``shown_after_cut`` of the tokens each cut drops.  Raises ``core.features.modeling.ModelError`` for
    unusable templates."""

    used = encode_messages(tokenizer, messages, max_tokens, truncation)
    whole = encode_messages(tokenizer, messages, max(used.full_length, 1)) if used.truncated else used
    first = max(0, used.start - shown_after_cut)
    ids = list(whole.input_ids[first: used.start + max_tokens + shown_after_cut])
    texts = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    pieces = []
    for offset, (token_id, text) in enumerate(zip(ids, texts)):
        inside = used.start <= first + offset < used.start + used.n_tokens
        pieces.append(TokenPiece(text, int(token_id), inside and used.loss_mask[first + offset - used.start], inside))
    return TokenView(pieces, max_tokens, used.full_length, used.error, first, used.start)


def example_row(store: Store, project: str, role: str, ordinal: int) -> StoredRow | None:
    return store.row_at(project, role, ordinal)
