"""Walk view: what the app's Walk page shows of a G2IS run, read back from the store and never recomputed.

``core.selection.runs.run_selection`` stores a G2IS run with its parameters, its ranked rows and every walk
event in order.  This module turns that record into what the page draws:

- ``walk_runs``: a project's G2IS runs, newest first, to list and reopen;
- ``start_walk``: validate the walk's settings (before any feature matrix is loaded, so a bad input answers at
  once), then run and store a new walk;
- ``load_replay``: the parts of a run every step needs, read once per run -- its component plan (the
  ``component_start``/``component_end`` events) and its picks (anchors and accepted candidates: at most the
  budget, while rejected candidates can be many times more);
- ``read_step``: one event in plain words (the events' own ``describe()``, so the CLI and the app share one
  wording) with the texts of the rows it names, out of a small window of events read around it
  (``EventWindow``: stepping inside it reads nothing, a jump reads one window);
- the plotly figures: the PCA explained-variance chart with per-component budgets, the running similarity
  curve, and the walk's path over the gradient map (``MapBackdrop``: a bounded sample of the pool, so the browser
  gets only what it draws).

User text (row ids, sources) goes into hover labels through ``html.escape``: plotly renders a subset of HTML.
"""
from __future__ import annotations

import bisect
import html
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime

import numpy as np
import plotly.graph_objects as go

from core.selection.compare import run_label
from core.selection.g2is import (
    G2IS_METHODS,
    Anchor,
    Candidate,
    ComponentEnd,
    ComponentStart,
    Fallback,
    G2ISParams,
    core_knowledge,
)
from core.selection.methods import budget_from
from core.selection.runs import FeatureIndex, feature_index, load_project_features, row_text, run_selection
from core.store import Store

EVENT_TYPES = {cls.kind: cls for cls in (ComponentStart, Anchor, Candidate, Fallback, ComponentEnd)}
MAP_BACKGROUND_LIMIT = 5000  # pool points drawn behind the path: enough to see the layout, light to resend per step


# ---------------------------------------------------------------------------------------------------- settings
WALK_PROFILES = {"g2is": "G2IS (default)", "g2is-paper": "G2IS as published (Algorithm 1)"}


@dataclass(frozen=True)
class WalkSettings:
    """The walk's knobs on the page: give exactly one of ``ratio`` (fraction of the pool) and ``budget`` (rows)."""

    delta: float = G2ISParams.delta
    val_k: float = G2ISParams.val_k
    k: int = G2ISParams.k  # graph degree
    ratio: float | None = None
    budget: int | None = None
    profile: str = "g2is"  # "g2is" (the default profile) or "g2is-paper" (the authors' Algorithm 1)

    def params(self) -> dict:
        return {"delta": self.delta, "val_k": self.val_k, "k": self.k}


def check_walk_settings(settings: WalkSettings, pool_rows: int) -> int:
    """The number of rows the walk will select; raises ``ValueError`` with a message for the user."""
    G2ISParams.from_dict(settings.params())
    count, _ = budget_from(pool_rows, ratio=settings.ratio, budget=settings.budget)
    return count


def start_walk(store: Store, project: str, settings: WalkSettings, index: FeatureIndex | None = None) -> str:
    """Run G2IS on the project's features with these settings and store the run and its events; the run id.

    Raises ``FeaturesMissing`` or ``ValueError`` (bad settings) before loading the feature matrices."""
    index = index or feature_index(store, project)
    check_walk_settings(settings, len(index.pool_ids))
    features = load_project_features(store, project, index)
    run = run_selection(store, project, settings.profile, ratio=settings.ratio, budget=settings.budget,
                        params=settings.params(), features=features, record_events=True)
    return run.run_id


# -------------------------------------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class WalkRun:
    run_id: str
    project: str
    created: datetime
    feature_key: str
    budget: int
    selected: int
    params: dict
    notes: list[str]
    method: str = "g2is"

    @property
    def label(self) -> str:
        """``core.selection.compare.run_label``: the one way a run is named on every page."""
        return run_label({"id": self.run_id, "method": self.method, "params": self.params, "selected": self.selected,
                          "created": self.created})


def _walk_run(run: dict) -> WalkRun:
    return WalkRun(run["id"], run["project"], run["created"], run["feature_key"], run["budget"], run["selected"],
                   run["params"], run["notes"], run["method"])


def walk_runs(store: Store, project: str) -> list[WalkRun]:
    """The project's stored G2IS runs (either profile), newest first."""
    runs = [run for method in G2IS_METHODS for run in store.selection_runs(project, method)]
    return [_walk_run(r) for r in sorted(runs, key=lambda run: run["created"], reverse=True)]


# ------------------------------------------------------------------------------------------------------ replay
@dataclass(frozen=True)
class ComponentPlan:
    """One PCA component of a run, from its ``component_start`` and ``component_end`` events."""

    component: int
    weight: float
    budget: int
    explained_variance: float
    start_step: int
    filled: int | None  # None when the run has no end event for it
    end_reason: str | None


@dataclass(frozen=True)
class Pick:
    """An accepted row (anchor or accepted candidate) and the running similarity of its component after it."""

    step: int
    component: int
    pool_index: int
    row_id: str | None
    similarity: float  # |cos(sum of the component's picks so far, component direction)|


@dataclass(eq=False)
class WalkReplay:
    """A stored walk, ready to step through: everything but the individual events, which ``read_step`` reads."""

    run: WalkRun
    event_count: int
    components: list[ComponentPlan]
    picks: list[Pick]
    row_ids: dict[int, str]  # pool index -> row id for the selected rows (from the run's stored rows)
    _pick_steps: list[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._pick_steps = [p.step for p in self.picks]

    @property
    def last_step(self) -> int:
        return max(self.event_count - 1, 0)

    def clamp(self, step: int) -> int:
        return min(max(int(step), 0), self.last_step)

    def picks_until(self, step: int) -> list[Pick]:
        """The picks made at or before ``step``."""
        return self.picks[: bisect.bisect_right(self._pick_steps, step)]


def load_replay(store: Store, run_id: str) -> WalkReplay:
    """Read a stored G2IS run for replay; raises ``ValueError`` when there is no such G2IS run."""
    run = store.selection_run(run_id)
    if run is None or run["method"] not in G2IS_METHODS:
        raise ValueError(f"there is no stored G2IS run {run_id!r}")
    row_ids = {pool_index: row_id for pool_index, row_id, _, _ in store.selection_rows(run_id)}
    ends = {}
    starts = []
    for event in store.walk_events(run_id, kinds=["component_start", "component_end"]):
        if event["kind"] == "component_start":
            starts.append(event)
        else:
            ends[event["component"]] = event
    components = [ComponentPlan(e["component"], e["weight"], e["budget"], e["explained_variance"], e["step"],
                                ends.get(e["component"], {}).get("filled"), ends.get(e["component"], {}).get("reason"))
                  for e in starts]
    picks = []
    for event in store.walk_picks(run_id):
        # An anchor's running similarity is |cos(t_anchor, k_v)| = |t_anchor . k_v|: the walk's rows are unit.
        similarity = abs(event["score"]) if event["kind"] == "anchor" else event["new_similarity"]
        picks.append(Pick(event["step"], event["component"], event["row"], row_ids.get(event["row"]),
                          float(similarity)))
    return WalkReplay(_walk_run(run), store.walk_event_count(run_id), components, picks, row_ids)


def parse_step(value, default: int = 0) -> int:
    """A step number from a URL parameter or widget ("12" -> 12); ``default`` for anything else."""
    try:
        return max(int(str(value).strip()), 0)
    except (TypeError, ValueError):
        return default


# -------------------------------------------------------------------------------------------------------- steps
def event_from_dict(payload: dict):
    """A stored event dict back as its typed event (extra keys such as ``step`` and ``ratio`` are dropped)."""
    cls = EVENT_TYPES.get(payload.get("kind"))
    if cls is None:
        raise ValueError(f"unknown walk event kind {payload.get('kind')!r}")
    names = {f.name for f in fields(cls)}
    return cls(**{key: value for key, value in payload.items() if key in names})


@dataclass(frozen=True)
class RowView:
    pool_index: int
    row_id: str | None  # None when the run's pool order is no longer known (features changed since the run)
    source: str | None
    text: str | None  # None when the row cannot be found

    @property
    def label(self) -> str:
        return f"row {self.pool_index}" + (f" · {self.row_id}" if self.row_id is not None else "")


@dataclass(frozen=True)
class WalkStep:
    step: int
    last_step: int
    kind: str
    verdict: str | None  # candidates only: taken | conflict | inconsistent | accepted
    component: int | None
    text: str  # the event in plain words
    event: dict  # the stored event, with its step
    row: RowView | None  # the row the event is about (anchor, candidate)
    from_row: RowView | None  # the walk's current node (candidate, fallback)
    conflict_row: RowView | None  # the picked row a conflicting candidate clashes with
    picks: int  # rows accepted up to and including this step

    @property
    def context(self) -> str | None:
        """Where a candidate came from, in words (row ids are user text: show this as plain text)."""
        if self.kind != "candidate":
            return None
        position = self.event.get("position")
        if self.event.get("phase") == "local" and self.from_row is not None:
            return f"candidate: neighbour {position} of the walk's current {self.from_row.label}"
        return f"candidate: rank {position} in the global ranking of component {self.component}"


@dataclass(eq=False)
class EventWindow:
    """Events ``start <= step < stop`` of one run and the pool rows they name, read together.

    Opening a connection to the cache costs tens of milliseconds, so a step does not query on its own: stepping
    inside the window costs nothing, and a jump outside it reads the next window (one connection, two small
    queries; measured ~100 ms at 50,000 rows on the loaded 2-core box, most of it the connection)."""

    run_id: str
    start: int
    stop: int
    events: list[dict]
    rows: dict[str, tuple[str | None, str]]  # row id -> (source, text)

    def covers(self, step: int) -> bool:
        return self.start <= step < self.stop


WINDOW_EVENTS = 64  # events per read: ~130 named rows at most, so a jump's query stays small


def _named_rows(payload: dict) -> dict[str, int | None]:
    """The pool indices an event names: the row in question, the walk's node, the row a conflict is with."""
    conflict = payload.get("conflict_row") if payload.get("verdict") == "conflict" else None
    return {"row": payload.get("row"), "from_row": payload.get("from_row"), "conflict_row": conflict}


def _row_id(replay: WalkReplay, pool_ids: Sequence[str] | None, index: int | None) -> str | None:
    if index is None:
        return None
    if index in replay.row_ids:
        return replay.row_ids[index]
    return pool_ids[index] if pool_ids is not None and 0 <= index < len(pool_ids) else None


def read_window(store: Store, replay: WalkReplay, step: int, pool_ids: Sequence[str] | None = None,
                size: int = WINDOW_EVENTS) -> EventWindow:
    """The events around ``step`` (a quarter of the window behind it, for stepping back) and their rows."""
    start = max(0, min(replay.clamp(step) - size // 4, replay.event_count - size))
    stop = min(start + size, replay.event_count)

    def row_ids_of(events: list[dict]):
        return (_row_id(replay, pool_ids, index) for event in events for index in _named_rows(event).values())

    events, rows = store.walk_events_with_rows(replay.run.run_id, start, stop, replay.run.project, row_ids_of)
    texts = {r.row_id: (r.source, row_text(r.messages)) for r in rows}
    return EventWindow(replay.run.run_id, start, stop, events, texts)


def read_step(store: Store, replay: WalkReplay, step: int, pool_ids: Sequence[str] | None = None,
              window: EventWindow | None = None) -> tuple[WalkStep, EventWindow]:
    """Event ``step`` of the replayed walk (clamped to the run) with the rows it names, and the window it came
    from: pass that window back on the next call so that steps inside it read nothing."""
    step = replay.clamp(step)
    if window is None or window.run_id != replay.run.run_id or not window.covers(step):
        window = read_window(store, replay, step, pool_ids)
    if not window.covers(step):
        raise ValueError(f"run {replay.run.run_id} has no stored event at step {step}")
    payload = window.events[step - window.start]
    event = event_from_dict(payload)
    named = _named_rows(payload)

    def view(name: str) -> RowView | None:
        index = named[name]
        if index is None:
            return None
        row_id = _row_id(replay, pool_ids, index)
        source, text = window.rows.get(row_id, (None, None))
        return RowView(index, row_id, source, text)

    return (WalkStep(step, replay.last_step, payload["kind"], payload.get("verdict"), payload.get("component"),
                     event.describe(), payload, view("row"), view("from_row"), view("conflict_row"),
                     len(replay.picks_until(step))), window)


# ------------------------------------------------------------------------------------------------------ figures
def target_variance_curve(store: Store, project: str, feature_key: str,
                          index: FeatureIndex | None = None) -> np.ndarray | None:
    """Cumulative explained variance of every PCA component of the run's target features (for the discarded
    tail of the chart), or None when the project's current features are no longer the run's.

    Reads only the target matrix (small: a few hundred rows); the kept components come from the run's events."""
    index = index or feature_index(store, project)
    if index.feature_key != feature_key:
        return None
    ids, matrix, _ = store.feature_matrix(project, "targets", index.config_keys["targets"][-1])
    if ids != index.target_ids:
        position = {row_id: n for n, row_id in enumerate(ids)}
        matrix = matrix[[position[i] for i in index.target_ids]]
    try:
        return core_knowledge(matrix).cumulative_curve
    except ValueError:  # all-zero targets: the run itself would have failed
        return None


def budget_tick(component: ComponentPlan) -> str:
    """A kept component's x-axis label: its number over its budget (and the rows filled when fewer)."""
    filled = (f"<br>filled {component.filled}"
              if component.filled is not None and component.filled != component.budget else "")
    return f"<b>{component.component}</b><br>budget<br>{component.budget}{filled}"  # narrow: one word a line


def variance_figure(components: Sequence[ComponentPlan], val_k: float | None,
                    cumulative_curve: np.ndarray | None = None, tail: int = 30) -> go.Figure:
    """Bars: each kept component's share of the target variance; grey bars: the components beyond ``val_k`` (when
    the full curve is known, at most ``tail`` of them); line: cumulative explained variance; dashed: the ``val_k``
    cut.  Each kept component's budget is written under its bar, in the x-axis labels: above the bars it sat
    where the cumulative line passes (the line starts at the first bar's top)."""
    figure = go.Figure()
    kept = [c.component for c in components]
    figure.add_bar(x=kept, y=[c.explained_variance for c in components], name="kept component",
                   customdata=[[c.weight, c.budget] for c in components],
                   hovertemplate="component %{x}<br>explained variance %{y:.1%}<br>weight %{customdata[0]:.3f}"
                                 "<br>budget %{customdata[1]} rows<extra></extra>")
    rest: list[int] = []
    if cumulative_curve is not None and len(cumulative_curve) > len(kept):
        ratios = np.diff(np.concatenate([[0.0], np.asarray(cumulative_curve, dtype=float)]))
        rest = list(range(len(kept), min(len(ratios), len(kept) + tail)))
        figure.add_bar(x=rest, y=ratios[rest], name="beyond val_k (not walked)", marker_color="lightgrey",
                       hovertemplate="component %{x}<br>explained variance %{y:.1%}<extra></extra>")
        cumulative = np.asarray(cumulative_curve, dtype=float)[: len(kept) + len(rest)]
    else:
        cumulative = np.cumsum([c.explained_variance for c in components])
    figure.add_scatter(x=list(range(len(cumulative))), y=cumulative, mode="lines+markers", name="cumulative",
                       hovertemplate="components 0..%{x}: %{y:.1%}<extra></extra>")
    if val_k is not None:
        figure.add_hline(y=val_k, line_dash="dash", annotation_text=f"val_k = {val_k:g}",
                         annotation_position="top left")
    # Every kept component is labelled with its budget; of the grey ones every fifth gets its number.
    step = 5 if len(rest) > 10 else 1
    ticks = [(c.component, budget_tick(c)) for c in components]
    ticks += [(c, str(c)) for c in rest if step == 1 or (c % step == 0 and c > len(kept))]
    figure.update_layout(xaxis=dict(title="PCA component of the target gradients (kept ones with their budget "
                                          "in rows)", tickmode="array", tickvals=[t for t, _ in ticks],
                                    ticktext=[text for _, text in ticks], tickangle=0),
                         yaxis_title="explained variance", yaxis_tickformat=".0%", yaxis_range=[0, 1.08],
                         barmode="overlay", height=340, margin=dict(l=10, r=10, t=30, b=10),
                         legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left", x=0.0))
    return figure


def similarity_figure(picks: Sequence[Pick], components: Sequence[ComponentPlan]) -> go.Figure:
    """The running |cos(sum, component)| after each accepted row, one line per component, in selection order.

    Arrays go to plotly as numpy arrays: its validation walks Python lists element by element (measured: most of
    a step's time at 50,000 rows), while numpy arrays pass through as they are."""
    figure = go.Figure()
    order = np.arange(1, len(picks) + 1)
    component_of = np.fromiter((p.component for p in picks), dtype=np.int64, count=len(picks))
    similarity = np.fromiter((p.similarity for p in picks), dtype=np.float64, count=len(picks))
    shown = list(dict.fromkeys(component_of.tolist()))
    for component in shown:
        members = component_of == component
        figure.add_scatter(x=order[members], y=similarity[members], mode="lines+markers", name=f"component {component}",
                           hovertemplate=f"component {component}<br>pick %{{x}}: %{{y:.3f}}<extra></extra>")
    total = sum(c.budget for c in components) or max(len(picks), 1)
    figure.update_layout(xaxis_title="accepted rows, in selection order", yaxis_title="|cos(sum, component)|",
                         xaxis_range=[0.5, total + 0.5], yaxis_range=[0, 1.02], height=320,
                         margin=dict(l=10, r=10, t=30, b=10), showlegend=len(shown) <= 12)
    return figure


@dataclass(eq=False)
class MapBackdrop:
    """The gradient map as the walk view draws it: a bounded, seeded sample of pool points and the targets (no
    hover text: the Map page is for browsing rows, and every step resends this), plus the position of every pool
    row so any picked row can be placed on the path."""

    x: np.ndarray  # float32, the sampled pool points
    y: np.ndarray
    target_x: np.ndarray
    target_y: np.ndarray
    target_hover: np.ndarray  # escaped "id<br>source" per target
    positions: dict[str, int]  # pool row id -> its index in all_x / all_y
    all_x: np.ndarray  # float64, every pool row
    all_y: np.ndarray
    method: str = "umap"  # how the layout was made ("umap", or "pca" for tiny projects): the axes' names

    @property
    def pool_rows(self) -> int:
        return len(self.all_x)

    @property
    def sampled(self) -> bool:
        return len(self.x) < self.pool_rows


def map_backdrop(row_ids: Sequence[str], roles: Sequence[str], sources: Sequence[str], x, y,
                 limit: int = MAP_BACKGROUND_LIMIT, seed: int = 0, method: str = "umap") -> MapBackdrop:
    """Prepare the map's points (fields of ``core.views.map.MapPoints``) once per page render."""
    roles_array = np.asarray(roles)
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    pool = np.flatnonzero(roles_array == "pool")
    targets = np.flatnonzero(roles_array != "pool")
    shown = pool if len(pool) <= limit else np.sort(np.random.default_rng(seed).choice(pool, limit, replace=False))
    target_hover = np.asarray([f"{html.escape(str(row_ids[i]))}<br>{html.escape(str(sources[i]))}" for i in targets],
                              dtype=str)
    return MapBackdrop(xs[shown].astype(np.float32), ys[shown].astype(np.float32), xs[targets], ys[targets],
                       target_hover, {row_ids[i]: n for n, i in enumerate(pool)}, xs[pool], ys[pool], method)


POOL_POINT_COLOR = "#8D99A6"  # a mid grey: the pool stays visible behind the path without competing with it
TARGET_POINT_COLOR = "#222222"
PATH_COLOR = "#1F77B4"
STEP_COLOR = "crimson"


def walk_path_figure(backdrop: MapBackdrop, picks: Sequence[Pick], current_row_id: str | None = None) -> go.Figure:
    """The pool (sampled) in grey and the targets in black, the accepted rows so far as a path (a line per
    component, NaN gaps between them), and the row of the current step highlighted; titled, with the map's axes
    named (their units mean nothing: UMAP or PCA coordinates)."""
    figure = go.Figure()
    figure.add_scattergl(x=backdrop.x, y=backdrop.y, mode="markers", hoverinfo="skip",
                         name="pool" + (" (sample)" if backdrop.sampled else ""),
                         marker=dict(size=6, color=POOL_POINT_COLOR, opacity=0.6))
    if len(backdrop.target_x):
        figure.add_scattergl(x=backdrop.target_x, y=backdrop.target_y, mode="markers", name="targets",
                             marker=dict(size=8, symbol="diamond", color=TARGET_POINT_COLOR), text=backdrop.target_hover,
                             hovertemplate="target %{text}<extra></extra>")
    placed = [(order, pick) for order, pick in enumerate(picks, start=1) if pick.row_id in backdrop.positions]
    points = np.fromiter((backdrop.positions[pick.row_id] for _, pick in placed), dtype=np.int64, count=len(placed))
    components = np.fromiter((pick.component for _, pick in placed), dtype=np.int64, count=len(placed))
    gaps = np.flatnonzero(np.diff(components) != 0) + 1  # a gap: the line breaks between components
    xs = np.insert(backdrop.all_x[points], gaps, np.nan)
    ys = np.insert(backdrop.all_y[points], gaps, np.nan)
    hover = np.insert(np.asarray([f"pick {order} · component {pick.component}<br>{html.escape(pick.row_id)}"
                                  for order, pick in placed], dtype=str), gaps, "")
    figure.add_scatter(x=xs, y=ys, mode="lines+markers", name="walk so far", connectgaps=False,
                       marker=dict(size=8, color=PATH_COLOR, line=dict(width=1, color="white")),
                       line=dict(width=2, color=PATH_COLOR), text=hover, hovertemplate="%{text}<extra></extra>")
    current = backdrop.positions.get(current_row_id) if current_row_id is not None else None
    if current is not None:
        figure.add_scatter(x=backdrop.all_x[[current]], y=backdrop.all_y[[current]], mode="markers", name="this step",
                           marker=dict(size=16, symbol="star", color=STEP_COLOR, line=dict(width=1, color="black")),
                           text=np.asarray([html.escape(current_row_id)], dtype=str),
                           hovertemplate="%{text}<extra></extra>")
    axis = "PCA" if backdrop.method == "pca" else "UMAP"
    figure.update_layout(
        title=dict(text=f"The walk's path on the gradient map ({len(placed)} accepted rows so far)", x=0.0,
                   xanchor="left"),
        height=460, margin=dict(l=10, r=10, t=80, b=10),
        xaxis=dict(title=f"gradient map, {axis} 1", showticklabels=False, zeroline=False, showgrid=False),
        yaxis=dict(title=f"gradient map, {axis} 2", showticklabels=False, zeroline=False, showgrid=False),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left", x=0.0))
    return figure
