"""Selection over a project's cached features: load them, build (or reuse) the gradient graph, run a method,
and store the run -- its ranked rows and, for G2IS, every walk event -- so the CLI and the app can replay it.

This is where the pure algorithms of ``core.selection.graph`` and ``core.selection`` meet the store: they take arrays,
this module finds the arrays of a project (the feature sets of its current settings, one per warmup
checkpoint) and keys everything it saves by a hash of those feature sets.
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from core.config import stable_hash
from core.data.projects import project_settings
from core.features.featurize import learning_rate_weights, plan_features
from core.jobs import progress_text, running_job
from core.selection.g2is import G2IS_METHODS, G2ISParams, centred_rows, profile_params
from core.selection.graph import (
    DEFAULT_K,
    DEFAULT_K_NEG,
    RESCALE_MODES,
    GradientGraph,
    build_graph,
    normalize_rows,
    resolve_backend,
)
from core.selection.methods import METHODS, SelectionResult, budget_from, select
from core.store import Store

METHOD_ALIASES = {"tsds": "tsds-kde"}  # TSDS's main variant is KNN-KDE


class FeaturesMissing(ValueError):
    """The project has no complete features yet; the message says what to run."""


class FeaturesIncomplete(FeaturesMissing):
    """Some of the project's rows have no feature yet (a job is running, or ``features --limit`` ran): a selection
    would silently cover only the finished rows, so it is refused unless the caller allows a partial one."""


@dataclass(eq=False)
class ProjectFeatures:
    """A project's pool and target features for its current settings, aligned with its rows."""

    project: str
    feature_key: str  # hash of the feature sets used: keys graphs and selection runs
    pool_ids: list[str]
    # The pool's rows are L2-normalised (``core.selection.graph.normalize_rows``, in place at load): every method and the
    # graph work in cosine geometry, and normalising once saves each of them a second [N, D] matrix (3.3 GB at
    # 100,000 x 8,192).  Targets stay as projected (small; G2IS's PCA uses their magnitudes).
    # With several warmup checkpoints (``--warmup-checkpoints all``) ``pool`` and ``targets`` are their LR-weighted
    # concatenation, [sqrt(w_1) x_1, ..., sqrt(w_C) x_C] (``weighted_concatenation``): with unit blocks and weights
    # summing to 1 the rows stay unit and a dot product is LESS's sum_c w_c cos_c, so the graph, G2IS and TSDS see
    # every checkpoint as LESS does.  One checkpoint: its matrices, shared with the ``*_by_checkpoint`` lists.
    pool: np.ndarray  # unit rows [N, D] (or [N, C x D])
    target_ids: list[str]
    targets: np.ndarray  # raw projected features [M, D] (or [M, C x D])
    target_groups: list[str | None]
    pool_by_checkpoint: list[np.ndarray]  # unit rows per checkpoint, for LESS's checkpoint-weighted sum
    targets_by_checkpoint: list[np.ndarray]
    checkpoint_weights: list[float]
    pool_texts: list[str]
    target_texts: list[str]
    pool_sources: list[str]
    coverage: dict = field(default_factory=dict)  # as FeatureIndex's: role -> [rows with a feature, project rows]
    unfinished: dict = field(default_factory=dict)  # role -> rows not computed yet (a partial selection's)
    # Set when only some target rows guide the selection (an evaluation split's selection half, ``with_targets``):
    # the key of those rows, which the run records so that an evaluation can tell what guided it.
    guide_key: str | None = None


def with_targets(features: ProjectFeatures, target_ids: Sequence[str], guide_key: str) -> ProjectFeatures:
    """The same features with only the target rows ``target_ids`` guiding (the pool, its graph key, unchanged)."""
    keep = set(target_ids)
    missing = keep - set(features.target_ids)
    if missing:
        raise FeaturesMissing(f"{len(missing)} guiding target rows have no features (e.g. {sorted(missing)[0]!r}): "
                              f"compute the features of project {features.project!r} first")
    positions = [i for i, row_id in enumerate(features.target_ids) if row_id in keep]
    return replace(
        features, target_ids=[features.target_ids[i] for i in positions], targets=features.targets[positions],
        target_groups=[features.target_groups[i] for i in positions],
        targets_by_checkpoint=[matrix[positions] for matrix in features.targets_by_checkpoint],
        target_texts=[features.target_texts[i] for i in positions], guide_key=guide_key)


def coverage_notes(features: ProjectFeatures) -> list[str]:
    """What a run says about the rows it could choose from when that is not every row of the project."""
    notes = []
    if any(features.unfinished.values()):
        notes.append("partial selection: " + ", ".join(f"{n} {role} rows had no feature yet"
                                                        for role, n in features.unfinished.items() if n))
    if any(covered < total for covered, total in features.coverage.values()):
        notes.append("features cover " + " and ".join(f"{covered} of {total} {role} rows"
                                                      for role, (covered, total) in features.coverage.items()))
    return notes


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
    coverage: dict = field(default_factory=dict)  # role -> [rows with a feature, rows of the project]
    unfinished: dict = field(default_factory=dict)  # role -> rows neither computed nor failed yet (allow_partial)

    @property
    def partial(self) -> bool:
        return any(self.unfinished.values())


def _finish_hint(store: Store, project: str) -> str:
    current = running_job(store, project)
    if current is not None:
        return (f"the feature {progress_text(current)}; wait for it to finish (`python -m core status --project "
                f"{project}`, or the Features page, shows it)")
    return f"run `python -m core features --project {project}` (or Compute features on the Features page)"


def feature_index(store: Store, project: str, allow_partial: bool = False) -> FeatureIndex:
    """The current settings' feature sets and the rows every checkpoint has; raises ``FeaturesMissing``.

    By default every row of the project must have a feature or a recorded error (``FeaturesIncomplete`` says how
    many are missing and how to finish them); ``allow_partial`` takes the finished rows, and the index records its
    coverage.  The check is on this project's own rows, so a project that shares a feature config with another
    one is judged by its rows, not the other's."""
    if project not in store.projects():
        raise ValueError(f"no project {project!r} in {store.root}")
    plan = plan_features(store, project, project_settings(store, project))
    if plan.missing_checkpoints or not all(store.finished_hashes(c.key) for c in plan.configs):
        raise FeaturesMissing(f"project {project!r} has no features for its current settings yet: "
                              f"{_finish_hint(store, project)}")
    # Rows in a damaged chunk file are not "still to compute" here: loading them reports the damage itself
    # (DamagedChunkError, which says that only that chunk is recomputed).
    damaged = {c.key: store.damaged_hashes(c.key) for c in plan.configs if plan.missing[c.key]}
    missing = {role: {row.content_hash for c in plan.configs if c.role == role
                      for row in plan.missing[c.key] if row.content_hash not in damaged[c.key]}
               for role in ("pool", "targets")}
    unfinished = {role: sum(row.content_hash in missing[role] for row in plan.rows[role]) for role in missing}
    if any(unfinished.values()) and not allow_partial:
        counts = " and ".join(f"{unfinished[role]} of {len(plan.rows[role])} {role} rows"
                              for role in ("pool", "targets") if unfinished[role])
        raise FeaturesIncomplete(f"project {project!r}: {counts} have no feature yet, so a selection would cover only "
                                 f"the others: {_finish_hint(store, project)}; or select from the finished rows "
                                 "anyway (--allow-partial, or Allow partial features on the page)")
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
        # (several checkpoints are walked as their weighted concatenation since issue 17: a key of its own, so no graph
        # or run stored from the last checkpoint alone is taken for it; one checkpoint keeps the key it had)
        feature_key=stable_hash([c.key for c in plan.configs] + [ids["pool"], ids["targets"]]
                                + ([["combined", weights_by_key[c.key]] for c in plan.checkpoints]
                                   if len(plan.checkpoints) > 1 else [])),
        config_keys=config_keys, pool_ids=ids["pool"], target_ids=ids["targets"],
        checkpoint_weights=[weights_by_key[c.key] for c in plan.checkpoints],
        coverage={role: [len(ids[role]), len(plan.rows[role])] for role in ("pool", "targets")}, unfinished=unfinished,
    )


def load_project_features(store: Store, project: str, index: FeatureIndex | None = None,
                          allow_partial: bool = False) -> ProjectFeatures:
    index = index or feature_index(store, project, allow_partial)
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
    pool, targets = (weighted_concatenation(matrices[role], index.checkpoint_weights) for role in ("pool", "targets"))
    return ProjectFeatures(
        project=project, feature_key=index.feature_key,
        pool_ids=index.pool_ids, pool=pool, target_ids=index.target_ids, targets=targets,
        target_groups=[r.group for r in target_rows],
        pool_by_checkpoint=matrices["pool"], targets_by_checkpoint=matrices["targets"],
        checkpoint_weights=index.checkpoint_weights,
        pool_texts=[row_text(r.messages) for r in pool_rows], target_texts=[row_text(r.messages) for r in target_rows],
        pool_sources=[r.source for r in pool_rows], coverage=index.coverage, unfinished=index.unfinished,
    )


def weighted_concatenation(matrices: list[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """One matrix per checkpoint -> [sqrt(w_1) M_1, ..., sqrt(w_C) M_C] (weights normalised to sum to 1); a single
    checkpoint's matrix is returned as it is (no copy)."""
    if len(matrices) == 1:
        return matrices[0]
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    return np.hstack([np.float32(np.sqrt(wc)) * m for wc, m in zip(w, matrices)]).astype(np.float32, copy=False)


def graph_geometry(center: bool = False, rescale: str = "none") -> str:
    """How a graph's neighbours are ranked, as stored with it: "cosine" (the paper's), or the hubness remedies
    applied, e.g. "centred+csls" (``G2ISParams.center_pool``, ``graph_rescale``)."""
    parts = (["centred"] if center else []) + ([rescale] if rescale != "none" else [])
    return "+".join(parts) or "cosine"


def parse_geometry(geometry: str) -> tuple[bool, str]:
    """(center, rescale) of a geometry name made by ``graph_geometry``; ValueError for an unknown one."""
    parts = [] if geometry == "cosine" else geometry.split("+")
    center = "centred" in parts
    rescale = [part for part in parts if part != "centred"]
    if len(rescale) > 1 or (rescale and rescale[0] not in RESCALE_MODES) or graph_geometry(center, *rescale) != geometry:
        raise ValueError(f"unknown graph geometry {geometry!r}: cosine, centred, csls, local, mutual, or centred+ "
                         "one of the last three (e.g. centred+mutual)")
    return center, rescale[0] if rescale else "none"


def walk_geometry(method: str, params: dict | None = None) -> str:
    """The geometry of the graph a G2IS profile walks with these params (its remedies)."""
    remedies = G2ISParams.from_dict(profile_params(method, params))
    return graph_geometry(remedies.center_pool, remedies.graph_rescale)


DEFAULT_GEOMETRY = walk_geometry("g2is")  # the default profile's: what `graph` builds unless told


def graph_key(features: ProjectFeatures, k: int, k_neg: int, geometry: str = "cosine") -> str:
    # (the cosine graph keeps the key it had before geometries existed)
    return stable_hash(["graph", features.feature_key, k, k_neg] + ([geometry] if geometry != "cosine" else []))


def project_graph(store: Store, features: ProjectFeatures, k: int = DEFAULT_K, k_neg: int = DEFAULT_K_NEG,
                  backend: str = "auto", rebuild: bool = False, key: str | None = None, center: bool = False,
                  rescale: str = "none") -> tuple[GradientGraph, dict]:
    """The project's kNN gradient graph for ``k`` (and a hubness remedy: ``center``, ``rescale``): from the store,
    or built now and stored.  ``key`` names a stored graph of these features directly (``stored_graph_choice``),
    whatever its k."""
    geometry = graph_geometry(center, rescale)
    key = key or graph_key(features, k, k_neg, geometry)
    if not rebuild:
        arrays = store.load_graph(key)
        if arrays is not None:
            return GradientGraph(k=arrays["neighbors"].shape[1], **arrays), store.graph_info(key)
    started = time.perf_counter()
    resolved = resolve_backend(backend)  # (recorded with the graph)
    rows = centred_rows(features.pool) if center else features.pool
    graph = build_graph(rows, k=k, k_neg=k_neg, backend=resolved, normalized=True, rescale=rescale)
    store.save_graph(key, features.feature_key, graph, resolved, time.perf_counter() - started, geometry)
    return graph, store.graph_info(key)


def stored_graph_choice(store: Store, feature_key: str, geometry: str = DEFAULT_GEOMETRY) -> tuple[str | None, str]:
    """The graph a G2IS selection walks when the user names no k, and a sentence saying which.

    The project's stored graph when there is exactly one for these features (``graph --k 16`` then ``select`` walks
    that graph); otherwise ``None``: the default graph (k=DEFAULT_K), built now unless stored.  Only graphs of the
    walk's ``geometry`` (its hubness remedies) count."""
    stored = [info for info in store.graphs(feature_key) if info["geometry"] == geometry]
    if len(stored) == 1:
        info = stored[0]
        return info["key"], (f"walking the stored graph {info['key']} (k={info['k']}, {info['k_conflict']} conflict "
                             f"edges per row, built {info['created']:%Y-%m-%d %H:%M}); --k chooses another")
    if not stored:
        return None, f"no graph is stored for these features: building the default one (k={DEFAULT_K})"
    ks = ", ".join(sorted({str(info["k"]) for info in stored}))
    return None, (f"{len(stored)} graphs are stored for these features (k = {ks}): walking the default one "
                  f"(k={DEFAULT_K}); --k chooses another")


@dataclass
class SelectionRun:
    run_id: str
    result: SelectionResult
    features: ProjectFeatures
    events: int


WALK_EVENT_BATCH = 50_000  # walk events per store write: ~50 MB of event dicts at most, a sub-second transaction


class WalkRecorder:
    """The ``on_event`` of a recorded G2IS walk: writes the walk's events to the store in batches of
    ``batch_size`` as they happen (each batch one short transaction, so other processes keep their turns and
    memory stays bounded however many candidates a walk examines), under a run id that the store only lists
    once ``finish`` saves the run -- its last batch in the same transaction as the run's row.  A walk that fails
    midway calls ``discard``; one whose process dies leaves unlisted events that no reader reaches."""

    def __init__(self, store: Store, method: str, batch_size: int = WALK_EVENT_BATCH, on_event=None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.store, self.batch_size, self.on_event = store, batch_size, on_event
        self.run_id = store.new_run_id(method)
        self.count = 0  # events seen
        self.written = 0  # events already in the store
        self.write_seconds = 0.0  # time spent in batch writes (not the method's own time)
        self._pending: list[dict] = []

    def __call__(self, event) -> None:
        self._pending.append(event.to_dict())
        self.count += 1
        if len(self._pending) >= self.batch_size:
            self.flush()
        if self.on_event is not None:
            self.on_event(event)

    def flush(self) -> None:
        if self._pending:
            started = time.perf_counter()
            self.store.append_walk_events(self.run_id, self._pending, self.written)
            self.written += len(self._pending)
            self._pending = []
            self.write_seconds += time.perf_counter() - started

    def finish(self, project: str, method: str, params: dict, feature_key: str, budget: int, rows, notes,
               seconds: float) -> str:
        """Save the run (rows, notes, the events not yet written): from now on readers list it."""
        run_id = self.store.save_selection(project, method, params, feature_key, budget, rows, notes, seconds,
                                           self._pending or None, run_id=self.run_id, events_start=self.written)
        self.written += len(self._pending)
        self._pending = []
        return run_id

    def discard(self) -> None:
        """Drop what an unfinished run wrote (best effort: the error that stopped the walk is the one to raise)."""
        self._pending = []
        try:
            self.store.discard_walk_events(self.run_id)
        except Exception:  # a busy or broken store must not hide the walk's own error
            pass


# Params that say how a run was recorded or asked for (``compare.RECORDING_PARAMS``), not what it picks.
_NOT_IDENTITY = ("ratio", "record_candidates")


def identical_stored_run(store: Store, project: str, method: str, params: dict, feature_key: str, budget: int,
                         ranked: Sequence[tuple], with_events: bool) -> str | None:
    """A stored run of the same method, parameters, features and budget that picked the same rows in the same
    order: the run a new one would duplicate (four look-alike "g2is · 16 rows" runs after a short session).  With
    ``with_events`` only a run whose walk events were recorded in full counts (one stored without them is not the
    run the Walk page steps through)."""
    def identity(values: dict) -> dict:  # (through JSON, as the store keeps them: 0.5 and 0.5 from a file agree)
        return {k: v for k, v in json.loads(json.dumps(values, sort_keys=True)).items() if k not in _NOT_IDENTITY}

    wanted, ids = identity(params), [row[1] for row in ranked]
    for run in store.selection_runs(project, method):
        if (run["feature_key"] != feature_key or run["budget"] != budget or run["selected"] != len(ranked)
                or identity(run["params"]) != wanted):
            continue
        if with_events and (run["params"].get("record_candidates") is False or not store.walk_event_count(run["id"])):
            continue
        if [row_id for _, row_id, _, _ in store.selection_rows(run["id"])] == ids:
            return run["id"]
    return None


def run_selection(store: Store, project: str, method: str, *, ratio: float | None = None, budget: int | None = None,
                  params: dict | None = None, features: ProjectFeatures | None = None, k: int = DEFAULT_K,
                  graph: str | None = None, allow_partial: bool = False, record_events: bool = True, on_event=None,
                  event_batch: int = WALK_EVENT_BATCH) -> SelectionRun:
    """Run one method on the project's features and store the run (with the walk's events for G2IS).

    G2IS walks the graph of degree ``params["k"]`` (else ``k``), or the stored graph whose key is ``graph``.
    ``on_event`` also receives each walk event object as it happens (the CLI prints them).  The walk's events go
    to the store ``event_batch`` at a time while it runs (``WalkRecorder``); the run is listed once complete.  A run
    identical to a stored one (``identical_stored_run``) is not stored again: the stored run's id is returned."""
    method = METHOD_ALIASES.get(method, method)
    if method not in METHODS:
        raise ValueError(f"unknown selection method {method!r}; choose one of {', '.join(METHODS)}")
    features = features or load_project_features(store, project, allow_partial=allow_partial)
    count, budget_notes = budget_from(len(features.pool_ids), ratio=ratio, budget=budget)
    params = dict(params or {})
    context: dict = {"pool_is_unit": True}  # ProjectFeatures' pool rows are unit already
    recorder: WalkRecorder | None = None
    pool, targets = features.pool, features.targets
    if method in G2IS_METHODS:
        graph_k = int(params.get("k", k))
        params["k"] = graph_k
        if params.get("use_graph", True):
            remedies = G2ISParams.from_dict(profile_params(method, params))
            geometry = graph_geometry(remedies.center_pool, remedies.graph_rescale)
            if graph is not None and (store.graph_info(graph) or {}).get("geometry") != geometry:
                raise ValueError(f"graph {graph} is not of the walk's geometry ({geometry}): build one with "
                                 f"`graph --geometry {geometry}`")
            context["graph"], info = project_graph(store, features, k=graph_k, key=graph,
                                                   center=remedies.center_pool, rescale=remedies.graph_rescale)
            if graph is not None:  # the stored graph's own degree, which the run records
                params["k"] = int(info["k"])
        if record_events or on_event is not None:
            recorder = WalkRecorder(store, method, event_batch, on_event)
            context["on_event"] = recorder
        if not record_events:
            params["record_candidates"] = False
    elif method in ("less", "less-rr"):  # both weigh the warmup checkpoints and know the target groups
        pool, targets = features.pool_by_checkpoint, features.targets_by_checkpoint
        params.setdefault("checkpoint_weights", features.checkpoint_weights)
        context["target_groups"] = features.target_groups
    elif method == "embedding":
        context.update(pool_texts=features.pool_texts, target_texts=features.target_texts,
                       target_groups=features.target_groups)
    try:
        started = time.perf_counter()
        result = select(method, pool, targets, count, params, **context)
        seconds = time.perf_counter() - started - (recorder.write_seconds if recorder else 0.0)
        result.notes[:0] = budget_notes + coverage_notes(features)
        ranked = [(row, features.pool_ids[row], score, reason)
                  for row, score, reason in zip(result.rows, result.scores, result.reasons)]
        run_params = {**result.params, **({"ratio": ratio} if ratio is not None else {})}
        if any(features.unfinished.values()):  # a partial selection says so in its run and its export manifest
            run_params["coverage"] = features.coverage
        if features.guide_key is not None:
            run_params["targets"] = {"rows": len(features.target_ids), "guide_key": features.guide_key}
        wants_events = recorder is not None and record_events
        same = identical_stored_run(store, project, method, run_params, features.feature_key, count, ranked,
                                    wants_events)
        if same is not None:  # the same inputs gave the same picks before: that run is this one
            if recorder is not None:
                recorder.discard()
            return SelectionRun(same, result, features, store.walk_event_count(same) if recorder else 0)
        if recorder is not None:
            run_id = recorder.finish(project, method, run_params, features.feature_key, count, ranked, result.notes,
                                     seconds)
        else:
            run_id = store.save_selection(project, method, run_params, features.feature_key, count, ranked,
                                          result.notes, seconds)
    except BaseException:
        if recorder is not None:
            recorder.discard()
        raise
    return SelectionRun(run_id, result, features, recorder.count if recorder else 0)
