"""Selection over a project's cached features: load them, build (or reuse) the gradient graph, run a method,
and store the run -- its ranked rows and, for G2IS, every walk event -- so the CLI and the app can replay it.

This is where the pure algorithms of ``core.selection.graph`` and ``core.selection`` meet the store: they take arrays,
this module finds the arrays of a project (the feature sets of its current settings, one per warmup
checkpoint) and keys everything it saves by a hash of those feature sets.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from core.config import stable_hash
from core.data.projects import project_settings
from core.features.featurize import learning_rate_weights, plan_features
from core.selection.graph import DEFAULT_K, DEFAULT_K_NEG, FAISS_THRESHOLD, GradientGraph, build_graph, normalize_rows
from core.selection.methods import METHODS, SelectionResult, budget_from, select
from core.store import Store

METHOD_ALIASES = {"tsds": "tsds-kde"}  # TSDS's main variant is KNN-KDE


class FeaturesMissing(ValueError):
    """The project has no complete features yet; the message says what to run."""


@dataclass(eq=False)
class ProjectFeatures:
    """A project's pool and target features for its current settings, aligned with its rows."""

    project: str
    feature_key: str  # hash of the feature sets used: keys graphs and selection runs
    pool_ids: list[str]
    # The pool's rows are L2-normalised (``core.selection.graph.normalize_rows``, in place at load): every method and the
    # graph work in cosine geometry, and normalising once saves each of them a second [N, D] matrix (3.3 GB at
    # 100,000 x 8,192).  Targets stay as projected (small; G2IS's PCA uses their magnitudes).
    pool: np.ndarray  # unit rows [N, D] of the last warmup checkpoint
    target_ids: list[str]
    targets: np.ndarray  # raw projected features [M, D]
    target_groups: list[str | None]
    pool_by_checkpoint: list[np.ndarray]  # unit rows per checkpoint, for LESS's checkpoint-weighted sum
    targets_by_checkpoint: list[np.ndarray]
    checkpoint_weights: list[float]
    pool_texts: list[str]
    target_texts: list[str]
    pool_sources: list[str]


def row_text(messages: list[dict]) -> str:
    """One string per row for text embeddings and previews: the turns joined, system prompts left out."""
    return "\n\n".join(m["content"] for m in messages if m.get("role") != "system")


@dataclass(frozen=True)
class FeatureIndex:
    """Which feature sets and rows a project's selection uses, without loading any matrix (cheap for the views)."""

    project: str
    feature_key: str
    config_keys: dict  # role -> [feature config key per checkpoint, in checkpoint order]
    pool_ids: list[str]
    target_ids: list[str]
    checkpoint_weights: list[float]


def feature_index(store: Store, project: str) -> FeatureIndex:
    """The current settings' feature sets and the rows every checkpoint has; raises ``FeaturesMissing``."""

    if project not in store.projects():
        raise ValueError(f"no project {project!r} in {store.root}")
    plan = plan_features(store, project, project_settings(store, project))
    if plan.missing_checkpoints or not all(store.finished_hashes(c.key) for c in plan.configs):
        raise FeaturesMissing(f"project {project!r} has no features for its current settings yet: "
                              f"run `python -m core features --project {project}` (or launch them on the Features page)")
    config_keys: dict[str, list[str]] = {"pool": [], "targets": []}
    ids: dict[str, list[str]] = {}
    for checkpoint in plan.checkpoints:
        for role in ("pool", "targets"):
            config = next(c for c in plan.configs if c.role == role and c.checkpoint == checkpoint)
            config_keys[role].append(config.key)
            role_ids = store.feature_row_ids(project, role, config.key)
            # rows that failed at one checkpoint and not another: keep the rows every checkpoint has
            if role in ids:
                present = set(role_ids)
                role_ids = [i for i in ids[role] if i in present]
            ids[role] = role_ids
    if not ids["pool"] or not ids["targets"]:
        raise FeaturesMissing(f"project {project!r}: every {'pool' if not ids['pool'] else 'target'} row failed "
                              "to get a feature; see `python -m core status` for the errors")
    weights_by_key = learning_rate_weights(store, plan)
    return FeatureIndex(
        project=project,
        feature_key=stable_hash([c.key for c in plan.configs] + [ids["pool"], ids["targets"]]),
        config_keys=config_keys, pool_ids=ids["pool"], target_ids=ids["targets"],
        checkpoint_weights=[weights_by_key[c.key] for c in plan.checkpoints],
    )


def load_project_features(store: Store, project: str, index: FeatureIndex | None = None) -> ProjectFeatures:
    index = index or feature_index(store, project)
    rows = {role: {r.row_id: r for r in store.rows(project, role)} for role in ("pool", "targets")}
    wanted = {"pool": index.pool_ids, "targets": index.target_ids}
    matrices: dict[str, list[np.ndarray]] = {"pool": [], "targets": []}
    for role in ("pool", "targets"):
        for config_key in index.config_keys[role]:
            role_ids, matrix, _ = store.feature_matrix(project, role, config_key)
            if role_ids != wanted[role]:
                position = {row_id: n for n, row_id in enumerate(role_ids)}
                matrix = matrix[[position[i] for i in wanted[role]]]
            if role == "pool":
                normalize_rows(matrix, out=matrix)  # our own fresh float32 array: normalised where it lies
            matrices[role].append(matrix)
    pool_rows = [rows["pool"][i] for i in index.pool_ids]
    target_rows = [rows["targets"][i] for i in index.target_ids]
    return ProjectFeatures(
        project=project, feature_key=index.feature_key,
        pool_ids=index.pool_ids, pool=matrices["pool"][-1], target_ids=index.target_ids, targets=matrices["targets"][-1],
        target_groups=[r.group for r in target_rows],
        pool_by_checkpoint=matrices["pool"], targets_by_checkpoint=matrices["targets"],
        checkpoint_weights=index.checkpoint_weights,
        pool_texts=[row_text(r.messages) for r in pool_rows], target_texts=[row_text(r.messages) for r in target_rows],
        pool_sources=[r.source for r in pool_rows],
    )


def graph_key(features: ProjectFeatures, k: int, k_neg: int) -> str:
    return stable_hash(["graph", features.feature_key, k, k_neg])


def project_graph(store: Store, features: ProjectFeatures, k: int = DEFAULT_K, k_neg: int = DEFAULT_K_NEG,
                  backend: str = "auto", rebuild: bool = False) -> tuple[GradientGraph, dict]:
    """The project's kNN gradient graph for ``k``: from the store, or built now and stored."""
    key = graph_key(features, k, k_neg)
    if not rebuild:
        arrays = store.load_graph(key)
        if arrays is not None:
            return GradientGraph(k=arrays["neighbors"].shape[1], **arrays), store.graph_info(key)
    started = time.perf_counter()
    resolved = backend
    if backend == "auto":

        resolved = "faiss" if len(features.pool_ids) > FAISS_THRESHOLD else "torch"
    graph = build_graph(features.pool, k=k, k_neg=k_neg, backend=resolved, normalized=True)
    store.save_graph(key, features.feature_key, graph, resolved, time.perf_counter() - started)
    return graph, store.graph_info(key)


@dataclass
class SelectionRun:
    run_id: str
    result: SelectionResult
    features: ProjectFeatures
    events: int


def run_selection(store: Store, project: str, method: str, *, ratio: float | None = None, budget: int | None = None,
                  params: dict | None = None, features: ProjectFeatures | None = None, k: int = DEFAULT_K,
                  record_events: bool = True, on_event=None) -> SelectionRun:
    """Run one method on the project's features and store the run (with the walk's events for G2IS).

    ``on_event`` also receives each walk event object as it happens (the CLI prints them)."""
    method = METHOD_ALIASES.get(method, method)
    if method not in METHODS:
        raise ValueError(f"unknown selection method {method!r}; choose one of {', '.join(METHODS)}")
    features = features or load_project_features(store, project)
    count, budget_notes = budget_from(len(features.pool_ids), ratio=ratio, budget=budget)
    params = dict(params or {})
    context: dict = {"pool_is_unit": True}  # ProjectFeatures' pool rows are unit already
    events: list[dict] = []
    pool, targets = features.pool, features.targets
    if method == "g2is":
        graph_k = int(params.get("k", k))
        params["k"] = graph_k
        if params.get("use_graph", True):
            context["graph"], _ = project_graph(store, features, k=graph_k)
        if record_events or on_event is not None:
            def keep(event) -> None:
                events.append(event.to_dict())
                if on_event is not None:
                    on_event(event)

            context["on_event"] = keep
        if not record_events:
            params["record_candidates"] = False
    elif method == "less":
        pool, targets = features.pool_by_checkpoint, features.targets_by_checkpoint
        params.setdefault("checkpoint_weights", features.checkpoint_weights)
        context["target_groups"] = features.target_groups
    elif method == "embedding":
        context.update(pool_texts=features.pool_texts, target_texts=features.target_texts,
                       target_groups=features.target_groups)
    started = time.perf_counter()
    result = select(method, pool, targets, count, params, **context)
    seconds = time.perf_counter() - started
    result.notes[:0] = budget_notes
    ranked = [(row, features.pool_ids[row], score, reason)
              for row, score, reason in zip(result.rows, result.scores, result.reasons)]
    run_params = {**result.params, **({"ratio": ratio} if ratio is not None else {})}
    run_id = store.save_selection(project, method, run_params, features.feature_key, count, ranked, result.notes,
                                  seconds, events or None)
    return SelectionRun(run_id, result, features, len(events))
