"""Compare selection methods on one project at one budget, over stored selection runs.

Role: the Compare page's logic.  ``plan_comparison`` finds, per method, the stored run made on the project's
current features at the same row budget *with the method's default parameters* (so nothing that is stored is
recomputed, and a δ=0.5 walk made on the Walk page never silently becomes "the G2IS column"), or the stored run
the caller pinned for that method; ``run_missing`` runs the other methods, with their defaults, once the features
are loaded (one load for all of them), and ``compare_runs`` summarises any set of
stored runs: the Jaccard overlap matrix of their selected row sets, the source composition of each selection,
the rows that only one run picked, and each run's notes.  The summaries read only the selected rows' ids,
sources and (for the unique rows) texts from the store, never the feature matrices.
"""
from __future__ import annotations

import importlib
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass, replace
from datetime import datetime

import numpy as np

from core.selection.methods import METHODS, budget_from
from core.selection.runs import (
    METHOD_ALIASES,
    FeatureIndex,
    ProjectFeatures,
    feature_index,
    load_project_features,
    row_text,
    run_selection,
)
from core.store import Store

COMPARE_METHODS: tuple[str, ...] = tuple(METHODS)  # g2is, less, less-rr, tsds-uniform, tsds-kde, random, embedding
METHOD_TITLES = {
    "g2is": "G2IS (gradient walk)", "g2is-paper": "G2IS as published", "less": "LESS (gradient cosine)", "less-rr": "LESS round-robin",
    "tsds-kde": "TSDS KNN-KDE",
    "tsds-uniform": "TSDS KNN-Uniform", "random": "random", "embedding": "embedding (MiniLM text cosine)",
}
NO_SOURCE = "(no source)"
UNIQUE_ROWS_LISTED = 200  # per run: enough to read, little enough to send to the browser

# Keys a stored run's params may hold that say how the run was *recorded or sized*, not what it selects: the
# fraction asked for (the budget itself is matched separately) and whether G2IS kept its rejected candidates as
# events.  They are never compared.
RECORDING_PARAMS = frozenset({"ratio", "record_candidates"})
# How a parameter is shown in captions (others by their own name).
PARAM_SYMBOLS = {"delta": "δ"}
# The parameters every caption of a method shows; any other parameter is shown only when it is not the default.
HEADLINE_PARAMS: dict[str, tuple[str, ...]] = {
    "g2is": ("delta", "val_k", "k"), "g2is-paper": ("delta", "val_k", "k"), "less": (), "less-rr": ("per",), "tsds-uniform": ("alpha", "C"),
    "tsds-kde": ("alpha", "C", "sigma"), "random": ("seed",), "embedding": (),
}
DEFAULTS_LABEL = "run with the defaults"


def default_params(method: str, index: FeatureIndex | None = None) -> dict:
    """The parameters ``method`` runs with when none are given, as ``run_selection`` records them.

    Read from the method module's own defaults (``G2ISParams``, ``DEFAULTS``, ...), never restated here.  With the
    project's ``index``, the defaults that the project's context fills in are filled in too, as ``run_selection``
    does: LESS's ``checkpoint_weights`` become the features' learning-rate weights.  (G2IS's graph ``k`` is
    ``run_selection``'s ``DEFAULT_K``, which is ``G2ISParams.k``.)"""
    method = METHOD_ALIASES.get(method, method)
    if method not in METHODS:
        raise ValueError(f"unknown selection method {method!r}; choose from {', '.join(METHODS)}")
    module, _, name = METHODS[method]  # imported lazily, so planning imports neither faiss nor sentence-transformers
    source = getattr(importlib.import_module(module), name)
    defaults = {f.name: f.default for f in fields(source)} if is_dataclass(source) else dict(source)
    if method in ("less", "less-rr") and index is not None and defaults.get("checkpoint_weights") is None:
        defaults["checkpoint_weights"] = list(index.checkpoint_weights)
    return defaults


def same_value(a, b) -> bool:
    """Parameter equality that survives the store's JSON round trip: numbers up to float rounding (ints and floats
    alike, booleans only equal to booleans), lists and tuples element by element."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or (isinstance(a, bool) and isinstance(b, bool) and a == b)
    if isinstance(a, numbers.Real) and isinstance(b, numbers.Real):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return a == b


def matches_defaults(params: dict, defaults: dict) -> bool:
    """Whether a stored run's ``params`` are the ``defaults`` (``default_params``, context filled in).

    The rule: every parameter that both sides name must be equal (``same_value``); the recording keys
    (``RECORDING_PARAMS``) are never compared; a default the run does not name (a run stored before that parameter
    existed) counts as the default, and a key only the run names (none today: ``resolve_params`` rejects unknown
    names) is ignored."""
    return all(same_value(params[key], value) for key, value in defaults.items()
               if key in params and key not in RECORDING_PARAMS)


def format_value(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


def params_caption(method: str, params: dict, defaults: dict | None = None) -> str:
    """A short line naming a run's method and parameters, e.g. ``g2is · δ=0.8 · val_k=0.5 · k=32``: the method's
    headline parameters (``HEADLINE_PARAMS``), then every other parameter whose value is not the default
    (``defaults``, ``default_params(method)`` when not given; recording keys left out)."""
    defaults = default_params(method) if defaults is None else defaults
    headline = HEADLINE_PARAMS.get(method, ())
    shown = [key for key in headline if key in params]
    shown += [key for key in params if key not in headline and key not in RECORDING_PARAMS
              and not (key in defaults and same_value(params[key], defaults[key]))]
    return " · ".join([method, *(f"{PARAM_SYMBOLS.get(key, key)}={format_value(params[key])}" for key in shown)])


def run_label(run: dict, defaults: dict | None = None) -> str:
    """How a stored run is named wherever it is offered (Walk, Map, Graph, Compare, Export): its method and
    parameters, its rows, when it was made and its id, e.g. ``g2is · δ=0.8 · val_k=0.5 · k=32 · 22 rows ·
    2026-12-04 18:30 · g2is-1a2b3c``."""
    return (f"{params_caption(run['method'], run['params'], defaults)} · {run['selected']} rows · "
            f"{run['created']:%Y-%m-%d %H:%M} · {run['id']}")


@dataclass(frozen=True)
class ComparePlan:
    """Which methods already have a stored run for this comparison and which still have to run.

    ``stored`` holds, per method, the pinned run or else the latest stored run with the method's default parameters;
    ``candidates`` every stored run of each method on these features at this budget (newest first, any params), the
    runs a caller may pin."""

    project: str
    feature_key: str
    n_pool: int
    budget: int  # rows per method, after ``budget_from``
    ratio: float | None  # the fraction asked for, if the budget was given as one (kept in the runs' params)
    methods: tuple[str, ...]
    stored: dict[str, dict]  # method -> the run its column uses (a ``Store.selection_run`` dict)
    budget_notes: tuple[str, ...] = ()
    failures: dict[str, str] = field(default_factory=dict)  # method -> why its run failed (after ``run_missing``)
    candidates: dict[str, list[dict]] = field(default_factory=dict)  # method -> its stored runs here, newest first
    pinned: frozenset[str] = frozenset()  # the methods whose run the caller chose explicitly
    defaults: dict[str, dict] = field(default_factory=dict)  # method -> its default params, context filled in

    @property
    def missing(self) -> list[str]:
        return [m for m in self.methods if m not in self.stored]

    @property
    def run_ids(self) -> list[str]:
        return [self.stored[m]["id"] for m in self.methods if m in self.stored]

    def params_of(self, method: str) -> dict:
        """The params of ``method``'s column: its run's, or the defaults it will run with."""
        return self.stored[method]["params"] if method in self.stored else self.defaults[method]

    def ignored(self, method: str) -> list[dict]:
        """Stored runs of ``method`` here that the plan leaves out because their params are not the defaults."""
        if method in self.pinned:
            return []
        return [run for run in self.candidates.get(method, [])
                if not matches_defaults(run["params"], self.defaults[method])]

    def run_label(self, run: dict) -> str:
        return run_label(run, self.defaults[run["method"]])

    def caption(self, method: str) -> str:
        """``params_caption`` of ``method``'s column, and whether it is a picked, stored or still-to-run run."""
        how = (f"picked run {self.stored[method]['id']}" if method in self.pinned else
               f"stored run {self.stored[method]['id']}, defaults" if method in self.stored else "defaults, not run yet")
        left_out = len(self.ignored(method))
        if left_out:
            how += f"; {left_out} stored run{'s' if left_out != 1 else ''} with other parameters not used unless picked"
        return f"{params_caption(method, self.params_of(method), self.defaults[method])} ({how})"


def plan_comparison(store: Store, project: str, methods: Sequence[str], *, ratio: float | None = None,
                    budget: int | None = None, index: FeatureIndex | None = None,
                    pinned: Mapping[str, str | None] | None = None) -> ComparePlan:
    """Match each method with its latest stored run on the current features at the same row budget whose params are
    the method's defaults (``matches_defaults``), unless ``pinned`` names a run for it.

    ``pinned`` maps a method to the id of one of its stored runs on these features at this budget (one of
    ``plan.candidates[method]``); it overrides the default matching, whatever that run's params.  A ``None`` value
    means no pin.  Raises ``FeaturesMissing`` when the project has no features, ``ValueError`` for a bad budget or
    method, or a pinned run that is not a stored run of that method on these features at this budget."""
    index = index or feature_index(store, project)
    count, notes = budget_from(len(index.pool_ids), ratio=ratio, budget=budget)
    wanted: list[str] = []
    for name in methods:
        method = _method(name)
        if method not in wanted:
            wanted.append(method)
    defaults = {method: default_params(method, index) for method in wanted}
    candidates: dict[str, list[dict]] = {method: [] for method in wanted}
    for run in store.selection_runs(project):  # newest first
        if run["method"] in candidates and run["feature_key"] == index.feature_key and run["budget"] == count:
            candidates[run["method"]].append(run)
    stored: dict[str, dict] = {}
    for method, runs in candidates.items():
        match = next((run for run in runs if matches_defaults(run["params"], defaults[method])), None)
        if match is not None:
            stored[method] = match
    pins: set[str] = set()
    for name, run_id in (pinned or {}).items():
        if run_id is None:
            continue
        method = _method(name)
        if method not in candidates:
            raise ValueError(f"run {run_id} is pinned for {method}, which is not among the compared methods")
        run = next((r for r in candidates[method] if r["id"] == run_id), None)
        if run is None:
            raise ValueError(f"run {run_id!r} is not a stored {method} run on this project's current features "
                             f"at {count} rows; pick one of: {', '.join(r['id'] for r in candidates[method]) or 'none'}")
        stored[method] = run
        pins.add(method)
    return ComparePlan(project, index.feature_key, len(index.pool_ids), count, ratio, tuple(wanted), stored,
                       tuple(notes), candidates=candidates, pinned=frozenset(pins), defaults=defaults)


def _method(name: str) -> str:
    method = METHOD_ALIASES.get(name, name)
    if method not in METHODS:
        raise ValueError(f"unknown selection method {name!r}; choose from {', '.join(METHODS)}")
    return method


def run_missing(store: Store, plan: ComparePlan, on_progress: Callable[[str, int, int], None] | None = None,
                features: ProjectFeatures | None = None, index: FeatureIndex | None = None) -> ComparePlan:
    """Run every method of ``plan`` that has no stored run, with its default parameters, loading the features once
    for all of them.

    ``on_progress(method, done, total)`` is called before each method (and once at the end with ``method=""``).
    A method that fails does not stop the others: its message lands in the returned plan's ``failures``."""
    todo = plan.missing
    stored, failures = dict(plan.stored), {}
    if todo:
        features = features or load_project_features(store, plan.project, index)  # a partial index stays partial
        if features.feature_key != plan.feature_key:
            raise ValueError("the project's features changed since this comparison was planned; plan it again")
    for done, method in enumerate(todo):
        if on_progress is not None:
            on_progress(method, done, len(todo))
        sizing = {"ratio": plan.ratio} if plan.ratio is not None else {"budget": plan.budget}
        try:
            run = run_selection(store, plan.project, method, features=features, **sizing)
        except Exception as error:  # noqa: BLE001 -- one method's failure (e.g. its model) must not lose the others
            failures[method] = f"{type(error).__name__}: {error}"
            continue
        stored[method] = store.selection_run(run.run_id)
    if on_progress is not None and todo:
        on_progress("", len(todo), len(todo))
    return replace(plan, stored=stored, failures=failures)


@dataclass(frozen=True)
class ComparedRun:
    run_id: str
    method: str
    label: str  # the method, or method + run id when two compared runs share a method
    params: dict
    budget: int
    selected: int
    notes: list[str]
    seconds: float | None
    created: datetime


@dataclass(frozen=True)
class UniqueRow:
    """A row that exactly one of the compared runs selected."""

    label: str
    run_id: str
    rank: int  # its position in that run's selection (0 = first picked)
    row_id: str
    score: float
    source: str
    text: str  # the row's turns joined (system prompts left out), cut to ``text_chars``


@dataclass
class Comparison:
    runs: list[ComparedRun]
    labels: list[str]
    selected: list[frozenset[str]]  # the row ids each run selected
    intersections: np.ndarray  # [R, R] int: |A ∩ B|
    jaccard: np.ndarray  # [R, R] float: |A ∩ B| / |A ∪ B| (1 on the diagonal; 1 for two empty selections)
    sources: list[str]  # every source that occurs in a selection or in the pool, pool's largest first
    composition: np.ndarray  # [R, S] int: selected rows per run and source
    pool_composition: np.ndarray  # [S] int: pool rows per source (the reference the selections shift away from)
    unique_counts: dict[str, int]  # label -> rows only that run picked
    unique_rows: list[UniqueRow]  # up to ``unique_limit`` per run, in each run's selection order


def jaccard_matrix(sets: Sequence[frozenset[str]]) -> tuple[np.ndarray, np.ndarray]:
    """(intersection sizes, Jaccard indices) of every pair of sets."""
    n = len(sets)
    intersections = np.zeros((n, n), dtype=np.int64)
    jaccard = np.ones((n, n), dtype=np.float64)
    for i in range(n):
        for j in range(i, n):
            common = len(sets[i] & sets[j])
            union = len(sets[i]) + len(sets[j]) - common
            intersections[i, j] = intersections[j, i] = common
            jaccard[i, j] = jaccard[j, i] = common / union if union else 1.0
    return intersections, jaccard


def compare_runs(store: Store, run_ids: Sequence[str], unique_limit: int = UNIQUE_ROWS_LISTED,
                 text_chars: int = 300) -> Comparison:
    """Overlap, composition and unique rows of stored selection runs (all of one project)."""
    runs = []
    for run_id in run_ids:
        run = store.selection_run(run_id)
        if run is None:
            raise ValueError(f"no selection run {run_id!r}")
        runs.append(run)
    projects = {run["project"] for run in runs}
    if len(projects) > 1:
        raise ValueError(f"the runs belong to different projects ({', '.join(sorted(projects))}); compare runs of one")
    project = projects.pop() if projects else None
    methods = [run["method"] for run in runs]
    labels = [m if methods.count(m) == 1 else f"{m} ({run['id']})" for m, run in zip(methods, runs)]
    chosen = [store.selection_rows(run["id"]) for run in runs]
    selected = [frozenset(row_id for _, row_id, _, _ in rows) for rows in chosen]
    intersections, jaccard = jaccard_matrix(selected)

    every_id = sorted(frozenset().union(*selected)) if selected else []
    source_of = {i: s or NO_SOURCE for i, s in store.row_sources(project, "pool", every_id).items()} if project else {}
    pool_counts = {s or NO_SOURCE: n for s, n in store.source_counts(project, "pool").items()} if project else {}
    sources = list(pool_counts) + sorted({source_of.get(i, NO_SOURCE) for i in every_id} - set(pool_counts))
    column = {s: n for n, s in enumerate(sources)}
    composition = np.zeros((len(runs), len(sources)), dtype=np.int64)
    for r, ids in enumerate(selected):
        for row_id in ids:
            composition[r, column[source_of.get(row_id, NO_SOURCE)]] += 1
    pool_composition = np.array([pool_counts.get(s, 0) for s in sources], dtype=np.int64)

    picked_by = {}
    for ids in selected:
        for row_id in ids:
            picked_by[row_id] = picked_by.get(row_id, 0) + 1
    unique_counts, shown = {}, []
    for label, run, rows in zip(labels, runs, chosen):
        only = [(rank, row_id, score) for rank, (_, row_id, score, _) in enumerate(rows) if picked_by[row_id] == 1]
        unique_counts[label] = len(only)
        shown.extend((label, run["id"], rank, row_id, score) for rank, row_id, score in only[:unique_limit])
    texts = {r.row_id: row_text(r.messages) for r in store.rows_by_id(project, "pool", [s[3] for s in shown])} \
        if project and len(runs) > 1 else {}
    unique_rows = [
        UniqueRow(label, run_id, rank, row_id, float(score), source_of.get(row_id, NO_SOURCE),
                  _cut(texts.get(row_id, "(row no longer in the pool)"), text_chars))
        for label, run_id, rank, row_id, score in shown
    ] if len(runs) > 1 else []
    if len(runs) < 2:
        unique_counts = {}

    compared = [ComparedRun(run["id"], run["method"], label, run["params"], run["budget"], run["selected"],
                            run["notes"], run["seconds"], run["created"]) for label, run in zip(labels, runs)]
    return Comparison(compared, labels, selected, intersections, jaccard, sources, composition, pool_composition,
                      unique_counts, unique_rows)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
