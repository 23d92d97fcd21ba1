"""2-D maps of a project's rows: UMAP of the gradient features next to UMAP of the text embeddings.

Role in the app: the Map page draws both layouts side by side (rows near each other in gradient space but far
apart in text space, and the reverse, are what the map is for), the Graph page places its nodes at the gradient
layout's positions and the Walk page draws the walk's path on it.  A layout is computed once per project,
feature key and space -- ``compute_map`` loads the feature matrix (or embeds the texts), reduces it with PCA to
at most 50 dimensions and runs UMAP -- and stored in the cache, so every later view only reads ``map_points``
(``load_map``: no feature matrix, no model).

Point order: the pool rows in feature order (point ``i < n_pool`` is pool index ``i`` of the selection runs of
the same feature key, as ``FeatureIndex.pool_ids``), then the target rows.  Targets are part of the layout so
they can be seen among the pool, but they are not in the gradient graph.

Below ``MIN_UMAP_POINTS`` rows UMAP's neighbourhood graph is meaningless, so the layout is PCA's first two
components and ``MapPoints.note`` says so.  This module also builds the plotly figures (escaped, short hover
texts; WebGL above ``WEBGL_THRESHOLD`` points) so the page stays a thin view.
"""
from __future__ import annotations

import html
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from core.config import stable_hash
from core.selection.embeddings import embed_texts
from core.selection.graph import normalize_rows
from core.selection.runs import FeatureIndex, feature_index, row_text
from core.store import Store

SPACES = ("gradient", "text")
SPACE_TITLES = {"gradient": "Gradient features (UMAP of PCA-50)", "text": "Text embeddings (MiniLM, UMAP of PCA-50)"}
PCA_DIM = 50
UMAP_NEIGHBORS = 15
MIN_UMAP_POINTS = 10  # below this, PCA-2 (UMAP needs n_neighbors < n and a few neighbours to mean anything)
PREVIEW_CHARS = 200  # stored preview per point (the selection table, the graph's tooltips)
HOVER_CHARS = 80  # map hover text: enough to recognise a row; at 50k rows 200 made the two maps ~12.7 MB, 80 ~4 MB
WEBGL_THRESHOLD = 2_000
MAX_DRAWN_POINTS = 10_000  # the browser gets a sample above this (targets and highlighted rows always kept)
AUTO_COMPUTE_ROWS = 5_000  # below this the Map page computes missing layouts on first visit (seconds, not minutes)
TARGET_LABEL = "target"


@dataclass
class MapPoints:
    """One stored 2-D layout of a project's rows (pool in feature order, then targets)."""

    space: str  # "gradient" (UMAP of PCA-50 of pool+target gradient features) or "text" (MiniLM embeddings)
    feature_key: str
    row_ids: list[str]
    roles: list[str]  # "pool" or "targets" per point
    sources: list[str]
    x: np.ndarray  # float32 [n]
    y: np.ndarray
    previews: list[str] = field(default_factory=list)  # first PREVIEW_CHARS characters of each row's text (raw)
    method: str = "umap"  # "umap" or "pca" (tiny projects)
    note: str = ""  # what the user should know about how the layout was made
    key: str = ""

    def __len__(self) -> int:
        return len(self.row_ids)

    @property
    def n_pool(self) -> int:
        return sum(role == "pool" for role in self.roles)

    def hover_texts(self, indices: np.ndarray) -> np.ndarray:
        """Escaped hover text of these points only (object array: plotly takes it without re-validating every
        string); built per drawn point, since a sampled map draws a fraction of a large layout."""
        return np.asarray([hover_text(self.row_ids[i], self.roles[i], self.sources[i],
                                      self.previews[i] if self.previews else "", HOVER_CHARS) for i in indices],
                          dtype=object)

    def positions(self) -> dict[str, int]:
        """row id -> point index (pool and target ids may coincide; the pool row wins)."""
        out: dict[str, int] = {}
        for index in range(len(self.row_ids) - 1, -1, -1):
            out[self.row_ids[index]] = index
        return out


def layout_key(project: str, feature_key: str, space: str, seed: int) -> str:
    return stable_hash(["map", project, feature_key, space, seed])


def _check_space(space: str) -> None:
    if space not in SPACES:
        raise ValueError(f"unknown map space {space!r}; choose one of {', '.join(SPACES)}")


def layout_info(store: Store, project: str, space: str = "gradient", index: FeatureIndex | None = None) -> dict | None:
    """Catalogue entry (key, method, note, n_points, created, ...) of the newest stored layout of the project's
    current feature key, or None.  Raises ``FeaturesMissing`` when the project has no features."""
    _check_space(space)
    index = index or feature_index(store, project)
    layouts = store.map_layouts(project, index.feature_key, space)
    return layouts[0] if layouts else None


def load_layout(store: Store, info: dict) -> MapPoints:
    """The points of a stored layout (``info`` from ``layout_info``).  A layout never changes under its key, so
    callers may cache the result by ``info["key"]``."""
    table = store.map_points(info["key"])
    return MapPoints(
        space=info["space"], feature_key=info["feature_key"],
        row_ids=table.column("row_id").to_pylist(), roles=table.column("role").to_pylist(),
        sources=[s or "" for s in table.column("source").to_pylist()],
        x=table.column("x").to_numpy().astype(np.float32), y=table.column("y").to_numpy().astype(np.float32),
        previews=[p or "" for p in table.column("preview").to_pylist()],
        method=info["method"], note=info["note"] or "", key=info["key"],
    )


def load_map(store: Store, project: str, space: str = "gradient",
             index: FeatureIndex | None = None) -> MapPoints | None:
    """The stored layout of the project's CURRENT feature key (newest if several seeds), or None if never computed.

    Cheap: reads the layout tables only, no feature matrix.  Raises ``FeaturesMissing`` when the project has no
    features (pass ``index`` when the caller already has it, to skip recomputing it)."""
    info = layout_info(store, project, space, index)
    return load_layout(store, info) if info else None


def reduce_to_2d(matrix: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str, str]:
    """[n, 2] float32 layout of the rows of ``matrix``: UMAP on PCA-50, or PCA-2 for tiny inputs.

    Returns (layout, method, note)."""
    from sklearn.decomposition import PCA

    n = matrix.shape[0]
    if n == 0:
        return np.zeros((0, 2), np.float32), "pca", "no rows"
    if n < MIN_UMAP_POINTS:
        if n < 3 or matrix.shape[1] < 2:  # PCA needs at least two components
            layout = np.zeros((n, 2), np.float32)
            layout[:, 0] = np.arange(n)
        else:
            layout = PCA(n_components=2, random_state=seed).fit_transform(matrix)
        return (np.asarray(layout, np.float32), "pca",
                f"only {n} rows: UMAP needs at least {MIN_UMAP_POINTS}, so this is PCA's first two components")
    components = min(PCA_DIM, n - 1, matrix.shape[1])
    # copy=False: the caller's matrix is already a private normalised copy; at 50k x 8192 a second copy is 1.6 GB.
    reduced = PCA(n_components=components, svd_solver="randomized" if n > 2000 else "auto", random_state=seed,
                  copy=False).fit_transform(matrix)
    import umap  # ~10-25 s to import; numba compiles its kernels on the first fit of a process (~30 s)

    reducer = umap.UMAP(n_neighbors=min(UMAP_NEIGHBORS, n - 1), n_components=2, random_state=seed, n_jobs=1)
    layout = reducer.fit_transform(reduced)
    note = f"UMAP (n_neighbors={min(UMAP_NEIGHBORS, n - 1)}) of PCA-{components}"
    return np.asarray(layout, np.float32), "umap", note


def _rows_in_order(store: Store, project: str,
                   index: FeatureIndex) -> tuple[list[str], list[str], list[str], list[str]]:
    """(row ids, roles, sources, full texts) of the layout's points: pool in feature order, then targets."""
    ids, roles, sources, texts = [], [], [], []
    for role, wanted in (("pool", index.pool_ids), ("targets", index.target_ids)):
        by_id = {r.row_id: r for r in store.rows(project, role)}
        for row_id in wanted:
            row = by_id[row_id]
            ids.append(row_id)
            roles.append(role)
            sources.append(row.source or "")
            texts.append(row_text(row.messages))
    return ids, roles, sources, texts


def _gradient_matrix(store: Store, project: str, index: FeatureIndex) -> np.ndarray:
    """Unit rows of the last checkpoint's pool and target features, in point order (only that checkpoint loaded)."""

    parts = []
    for role, wanted in (("pool", index.pool_ids), ("targets", index.target_ids)):
        role_ids, matrix, _ = store.feature_matrix(project, role, index.config_keys[role][-1])
        if role_ids != wanted:
            position = {row_id: n for n, row_id in enumerate(role_ids)}
            matrix = matrix[[position[i] for i in wanted]]
        parts.append(normalize_rows(matrix))  # cosine geometry, as the graph and the methods use
        del matrix
    return np.concatenate(parts)


def compute_map(store: Store, project: str, space: str = "gradient", seed: int = 0, recompute: bool = False,
                index: FeatureIndex | None = None) -> MapPoints:
    """Compute the layout of ``space`` for the project's current features and store it.

    A layout already stored for this feature key, space and seed is returned as is (so it never runs twice)
    unless ``recompute``.  Loads the last checkpoint's feature matrix (gradient) or embeds every row's text
    with MiniLM (text)."""
    _check_space(space)
    index = index or feature_index(store, project)
    key = layout_key(project, index.feature_key, space, seed)
    if not recompute and any(info["key"] == key for info in store.map_layouts(project, index.feature_key, space)):
        return load_map(store, project, space, index)
    started = time.perf_counter()
    ids, roles, sources, texts = _rows_in_order(store, project, index)
    if space == "gradient":
        matrix = _gradient_matrix(store, project, index)
    else:
        matrix = embed_texts(texts)
    layout, method, note = reduce_to_2d(matrix, seed)
    del matrix
    previews = [text[:PREVIEW_CHARS] for text in texts]
    points = pa.table({
        "point": pa.array(range(len(ids)), pa.int32()), "row_id": pa.array(ids, pa.string()), "role": pa.array(roles, pa.string()),
        "source": pa.array(sources, pa.string()), "preview": pa.array(previews, pa.string()),
        "x": pa.array(layout[:, 0], pa.float32()), "y": pa.array(layout[:, 1], pa.float32()),
    })
    store.save_map_layout(key, project, index.feature_key, space, method, seed, note, time.perf_counter() - started,
                          points)
    return load_map(store, project, space, index)


# ------------------------------------------------------------------------------------ colouring and figures

# Plotly's qualitative palette (px.colors.qualitative.Plotly) extended with D3's; sources beyond it repeat.
PALETTE = ["#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A", "#19D3F3", "#FF6692", "#B6E880", "#FF97FF",
           "#FECB52", "#1F77B4", "#FF7F0E", "#2CA02C", "#D62728", "#9467BD", "#8C564B", "#E377C2", "#7F7F7F"]
TARGET_COLOR = "#111111"
PICKED_COLOR = "#D62728"
NOT_PICKED_COLOR = "#C8C8C8"
NOT_PICKED_LABEL = "not picked"


def source_colors(sources) -> dict[str, str]:
    """A stable colour per source: sorted sources take the palette in order."""
    return {source: PALETTE[n % len(PALETTE)] for n, source in enumerate(sorted(set(sources)))}


@dataclass
class Colouring:
    """Per-point legend labels, the colour of each label, the legend's title, and the labels drawn last (in this
    order, so the last is on top of everything): the targets, and a selection's picks above them."""

    labels: list[str]
    colors: dict[str, str]
    title: str
    on_top: tuple[str, ...] = (TARGET_LABEL,)


def colour_by_source(points: MapPoints) -> Colouring:
    labels = [TARGET_LABEL if role == "targets" else (source or "(no source)")
              for role, source in zip(points.roles, points.sources)]
    colors = source_colors(label for label in labels if label != TARGET_LABEL)
    colors[TARGET_LABEL] = TARGET_COLOR
    return Colouring(labels, colors, "source")


def colour_by_selection(points: MapPoints, picked_ids, name: str = "picked", title: str = "selection run") -> Colouring:
    """Pool rows in ``picked_ids`` (labelled ``name``) vs the rest ("not picked"), targets apart; the picks are
    drawn last, on top of the target stars.  The legend's title names what the labels are about, so no text is
    in the legend twice."""
    picked = set(picked_ids)
    labels = [TARGET_LABEL if role == "targets" else (name if row_id in picked else NOT_PICKED_LABEL)
              for role, row_id in zip(points.roles, points.row_ids)]
    return Colouring(labels, {name: PICKED_COLOR, NOT_PICKED_LABEL: NOT_PICKED_COLOR, TARGET_LABEL: TARGET_COLOR},
                     title, on_top=(TARGET_LABEL, name))


def selection_picks(store: Store, run_id: str) -> list[str]:
    """Row ids a stored selection run picked, in selection order."""
    return [row_id for _, row_id, _, _ in store.selection_rows(run_id)]


def hover_text(row_id: str, role: str, source: str, preview: str, max_chars: int = PREVIEW_CHARS) -> str:
    """Escaped hover text: plotly renders a subset of HTML in hovers, so user text goes through html.escape."""
    body = " ".join(preview[:max_chars].split())
    if len(preview) > max_chars:
        body += "…"
    head = f"{html.escape(row_id)} · {html.escape(role)}" + (f" · {html.escape(source)}" if source else "")
    return f"<b>{head}</b><br>{html.escape(body)}"


def drawn_points(points: MapPoints, keep=(), max_points: int = MAX_DRAWN_POINTS, seed: int = 0) -> np.ndarray:
    """Indices of the points to send to the browser: all of them, or a seeded sample of ``max_points`` that
    always includes the targets and the points in ``keep`` (a selection's picks)."""
    n = len(points)
    if n <= max_points:
        return np.arange(n)
    must = np.zeros(n, dtype=bool)
    must[[i for i, role in enumerate(points.roles) if role == "targets"]] = True
    must[np.asarray(list(keep), dtype=np.int64)] = True
    rest = np.flatnonzero(~must)
    room = max(0, max_points - int(must.sum()))
    sample = np.random.default_rng(seed).choice(rest, size=min(room, rest.size), replace=False)
    return np.sort(np.concatenate([np.flatnonzero(must), sample]))


def scatter_figure(points: MapPoints, colouring: Colouring, title: str = "", drawn: np.ndarray | None = None,
                   highlight: dict[str, str] | None = None):
    """A plotly figure of the layout, one trace per label (legend toggles them).

    ``customdata`` holds each point's index in ``points`` so a box/lasso selection maps back to rows whatever
    trace it hit.  The colouring's ``on_top`` labels (and ``highlight``'s, label -> colour) are drawn last, in
    order; a label drawn on top of the targets is bigger and outlined, and the stars under it are lighter, so
    they cannot hide it."""
    import plotly.graph_objects as go

    drawn = np.arange(len(points)) if drawn is None else np.asarray(drawn)
    trace_type = go.Scattergl if drawn.size > WEBGL_THRESHOLD else go.Scatter
    labels = np.asarray(colouring.labels, dtype=object)
    colors = dict(colouring.colors, **(highlight or {}))
    top = list(colouring.on_top) + [label for label in (highlight or {}) if label not in colouring.on_top]
    order = sorted(set(labels[drawn]), key=lambda label: (top.index(label) if label in top else -1, label))
    above_targets = TARGET_LABEL in top and any(top.index(label) > top.index(TARGET_LABEL) for label in order
                                                if label in top)
    figure = go.Figure()
    for label in order:
        members = drawn[labels[drawn] == label]
        is_target = label == TARGET_LABEL
        raised = label in top and not is_target
        if is_target:
            marker = dict(size=10 if above_targets else 11, symbol="star", opacity=0.7 if above_targets else 0.9,
                          line=dict(width=0.5, color="#333"))
        elif raised:
            marker = dict(size=8, symbol="circle", opacity=1.0, line=dict(width=0.8, color="#400000"))
        else:
            marker = dict(size=6, symbol="circle", opacity=0.9, line=dict(width=0))
        figure.add_trace(trace_type(
            x=points.x[members], y=points.y[members], mode="markers", name=html.escape(str(label)),
            customdata=members,
            hovertext=points.hover_texts(members),
            hoverinfo="text",
            marker=dict(color=colors.get(label, NOT_PICKED_COLOR), **marker),
        ))
    figure.update_layout(title=title, height=520, margin=dict(l=10, r=10, t=40, b=10), dragmode="lasso",
                         legend=dict(title=html.escape(colouring.title), itemsizing="constant"))
    figure.update_xaxes(showticklabels=False, title=None)
    figure.update_yaxes(showticklabels=False, title=None)
    return figure


def selected_points(chart_state) -> list[int]:
    """Point indices of a box/lasso selection, from the points' ``customdata``.

    ``chart_state`` is what ``st.plotly_chart(..., on_select="rerun")`` returns (a dict-like
    ``{"selection": {"points": [{"customdata": ..., ...}, ...], ...}}``), or None."""
    out = []
    for point in ((chart_state or {}).get("selection") or {}).get("points") or []:
        value = point.get("customdata")
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if value is not None:
            out.append(int(value))
    return sorted(set(out))


def selected_rows_table(store: Store, project: str, points: MapPoints, indices, max_rows: int = 500,
                        max_chars: int = 2_000) -> list[dict]:
    """id, role, source and text of the selected points (first ``max_rows``), for a table (shown as plain text)."""
    indices = list(indices)[:max_rows]
    wanted: dict[str, list[str]] = {"pool": [], "targets": []}
    for i in indices:
        wanted[points.roles[i]].append(points.row_ids[i])
    texts = {}
    for role, ids in wanted.items():
        for row in store.rows_by_id(project, role, ids):
            texts[(role, row.row_id)] = row_text(row.messages)
    return [{"id": points.row_ids[i], "role": points.roles[i], "source": points.sources[i],
             "text": texts.get((points.roles[i], points.row_ids[i]), "")[:max_chars]} for i in indices]
