"""Compare selection methods on one project at one budget, over stored selection runs.

Role: the Compare page's logic.  ``plan_comparison`` finds, per method, the stored run made on the project's
current features at the same row budget (so nothing that is stored is ever recomputed), ``run_missing`` runs the
other methods once the features are loaded (one load for all of them), and ``compare_runs`` summarises any set of
stored runs: the Jaccard overlap matrix of their selected row sets, the source composition of each selection,
the rows that only one run picked, and each run's notes.  The summaries read only the selected rows' ids,
sources and (for the unique rows) texts from the store, never the feature matrices.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
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

COMPARE_METHODS: tuple[str, ...] = tuple(METHODS)  # g2is, less, tsds-uniform, tsds-kde, random, embedding
METHOD_TITLES = {
    "g2is": "G2IS (gradient walk)", "less": "LESS (gradient cosine)", "tsds-kde": "TSDS KNN-KDE",
    "tsds-uniform": "TSDS KNN-Uniform", "random": "random", "embedding": "embedding (MiniLM text cosine)",
}
NO_SOURCE = "(no source)"
UNIQUE_ROWS_LISTED = 200  # per run: enough to read, little enough to send to the browser


@dataclass(frozen=True)
class ComparePlan:
    """Which methods already have a stored run for this comparison and which still have to run."""

    project: str
    feature_key: str
    n_pool: int
    budget: int  # rows per method, after ``budget_from``
    ratio: float | None  # the fraction asked for, if the budget was given as one (kept in the runs' params)
    methods: tuple[str, ...]
    stored: dict[str, dict]  # method -> the latest stored run (a ``Store.selection_run`` dict)
    budget_notes: tuple[str, ...] = ()
    failures: dict[str, str] = field(default_factory=dict)  # method -> why its run failed (after ``run_missing``)

    @property
    def missing(self) -> list[str]:
        return [m for m in self.methods if m not in self.stored]

    @property
    def run_ids(self) -> list[str]:
        return [self.stored[m]["id"] for m in self.methods if m in self.stored]


def plan_comparison(store: Store, project: str, methods: Sequence[str], *, ratio: float | None = None,
                    budget: int | None = None, index: FeatureIndex | None = None) -> ComparePlan:
    """Match each method with its latest stored run on the current features at the same row budget.

    Raises ``FeaturesMissing`` when the project has no features, ``ValueError`` for a bad budget or method."""
    index = index or feature_index(store, project)
    count, notes = budget_from(len(index.pool_ids), ratio=ratio, budget=budget)
    wanted: list[str] = []
    for name in methods:
        method = METHOD_ALIASES.get(name, name)
        if method not in METHODS:
            raise ValueError(f"unknown selection method {name!r}; choose from {', '.join(METHODS)}")
        if method not in wanted:
            wanted.append(method)
    stored: dict[str, dict] = {}
    for run in store.selection_runs(project):  # newest first, so the first match per method is the latest
        if run["method"] in wanted and run["method"] not in stored and run["feature_key"] == index.feature_key \
                and run["budget"] == count:
            stored[run["method"]] = run
    return ComparePlan(project, index.feature_key, len(index.pool_ids), count, ratio, tuple(wanted), stored,
                       tuple(notes))


def run_missing(store: Store, plan: ComparePlan, on_progress: Callable[[str, int, int], None] | None = None,
                features: ProjectFeatures | None = None) -> ComparePlan:
    """Run every method of ``plan`` that has no stored run, loading the features once for all of them.

    ``on_progress(method, done, total)`` is called before each method (and once at the end with ``method=""``).
    A method that fails does not stop the others: its message lands in the returned plan's ``failures``."""
    todo = plan.missing
    stored, failures = dict(plan.stored), {}
    if todo:
        features = features or load_project_features(store, plan.project)
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
