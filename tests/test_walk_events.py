"""A selection run's G2IS walk events go to the store in batches as the walk runs (bounded memory), exactly as
the whole in-memory list of the walk would, and a run that fails midway is never listed as a finished run."""
from __future__ import annotations

import json

import numpy as np
import pytest

from core.selection.g2is import prepare_walk, result_from_events, walk_events
from core.selection.graph import normalize_rows
from core.selection.runs import WALK_EVENT_BATCH, ProjectFeatures, project_graph, run_selection
from core.store import Store

K = 8


def synthetic_features(n: int = 400, dim: int = 24, n_targets: int = 20, seed: int = 0) -> ProjectFeatures:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, dim)).astype(np.float32)
    pool = centres[rng.integers(0, 6, n)] + 0.6 * rng.normal(size=(n, dim)).astype(np.float32)
    targets = centres[rng.integers(0, 2, n_targets)] + 0.3 * rng.normal(size=(n_targets, dim)).astype(np.float32)
    unit = normalize_rows(pool.astype(np.float32))
    pool_ids = [f"p{i}" for i in range(n)]
    target_ids = [f"t{i}" for i in range(n_targets)]
    return ProjectFeatures(
        project="p", feature_key="synthetic", pool_ids=pool_ids, pool=unit, target_ids=target_ids,
        targets=targets.astype(np.float32), target_groups=[None] * n_targets, pool_by_checkpoint=[unit],
        targets_by_checkpoint=[targets.astype(np.float32)], checkpoint_weights=[1.0],
        pool_texts=pool_ids, target_texts=target_ids, pool_sources=["s"] * n)


def todays_events(store: Store, features: ProjectFeatures, budget: int, delta: float) -> tuple[list[dict], object]:
    """What the walk yields in memory: ``list(walk_events(plan, record_candidates=True))``, as stored dicts."""
    graph, _ = project_graph(store, features, k=K)
    plan = prepare_walk(features.pool, features.targets, budget, {"k": K, "delta": delta}, graph, pool_is_unit=True)
    events = list(walk_events(plan, record_candidates=True))
    return [json.loads(json.dumps(e.to_dict())) for e in events], result_from_events(plan, events)


def stored(store: Store, run_id: str) -> list[dict]:
    events = store.walk_events(run_id)
    assert [e.pop("step") for e in events] == list(range(len(events)))
    return events


@pytest.mark.parametrize("delta, batch", [(0.8, 7), (0.8, 9), (1.0, 7), (1.0, 9)])
def test_batched_events_equal_the_in_memory_walk(tmp_path, delta, batch):
    store = Store(tmp_path / "cache")
    features = synthetic_features()
    run = run_selection(store, "p", "g2is-paper", budget=40, params={"k": K, "delta": delta}, features=features,
                        event_batch=batch)
    expected, result = todays_events(store, features, 40, delta)
    assert len(expected) > 5 * batch  # several batches (the last one full or partial, by the batch size)
    assert run.events == len(expected) == store.walk_event_count(run.run_id)
    assert stored(store, run.run_id) == expected
    # picks, scores and reasons as the walk computes them, and the same as one single write would store
    assert (run.result.rows, run.result.scores, run.result.reasons) == (result.rows, result.scores, result.reasons)
    other = Store(tmp_path / "other")
    whole = run_selection(other, "p", "g2is-paper", budget=40, params={"k": K, "delta": delta}, features=features)
    assert WALK_EVENT_BATCH > len(expected) and stored(other, whole.run_id) == expected
    assert store.selection_rows(run.run_id) == other.selection_rows(whole.run_id)
    # the same inputs again: the stored run is that run, not another copy (issue 19)
    again = run_selection(store, "p", "g2is-paper", budget=40, params={"k": K, "delta": delta}, features=features)
    assert again.run_id == run.run_id and again.events == run.events
    assert [r["id"] for r in store.selection_runs("p")] == [run.run_id]
    assert stored(store, run.run_id) == expected  # (the repeat's own events were discarded, not appended)
    changed = run_selection(store, "p", "g2is-paper", budget=39, params={"k": K, "delta": delta}, features=features)
    assert [r["id"] for r in store.selection_runs("p")] == [changed.run_id, run.run_id]
    # the Walk page's readers: windows across batch boundaries, kinds, picks
    window = store.walk_events(run.run_id, batch - 2, 3 * batch + 1)
    assert [e["step"] for e in window] == list(range(batch - 2, 3 * batch + 1))
    assert [{k: v for k, v in e.items() if k != "step"} for e in window] == expected[batch - 2:3 * batch + 1]
    ends = store.walk_events(run.run_id, kinds=["component_start", "component_end"])
    assert [e["kind"] for e in ends] == [e["kind"] for e in expected if e["kind"] in ("component_start", "component_end")]
    assert [e["row"] for e in store.walk_picks(run.run_id)] == result.rows
    events, rows = store.walk_events_with_rows(run.run_id, 2 * batch, 2 * batch + 5, "p", lambda _: [])
    assert [e["step"] for e in events] == list(range(2 * batch, 2 * batch + 5)) and rows == []


def test_a_walk_failing_midway_is_not_listed_and_leaves_no_events(tmp_path, monkeypatch):
    store = Store(tmp_path / "cache")
    features = synthetic_features()
    done = run_selection(store, "p", "g2is-paper", budget=40, params={"k": K}, features=features, event_batch=5)
    monkeypatch.setattr(store, "new_run_id", lambda method: f"{method}-failed")
    seen = []

    def fail_after_some_batches(event) -> None:
        seen.append(event)
        if len(seen) == 23:
            raise RuntimeError("walk interrupted")

    with pytest.raises(RuntimeError, match="walk interrupted"):
        run_selection(store, "p", "g2is-paper", budget=40, params={"k": K}, features=features, event_batch=5,
                      on_event=fail_after_some_batches)
    assert [r["id"] for r in store.selection_runs("p")] == [done.run_id]
    assert store.selection_runs("p", "g2is-paper") == store.selection_runs("p")
    assert store.selection_run("g2is-failed") is None
    assert store.walk_event_count("g2is-failed") == 0  # its written batches were dropped
    assert store.walk_event_count(done.run_id) == done.events


def test_appended_batches_are_unlisted_until_the_run_is_saved(tmp_path):
    """What a process killed mid-walk leaves: events under an id that no listing names, until the run is saved."""
    store = Store(tmp_path / "cache")
    run_id = store.new_run_id("g2is")
    events = [{"kind": "candidate", "component": 0, "row": i, "verdict": "inconsistent"} for i in range(10)]
    store.append_walk_events(run_id, events[:4], 0)
    store.append_walk_events(run_id, events[4:8], 4)
    assert store.selection_runs("p") == [] and store.selection_run(run_id) is None
    assert store.save_selection("p", "g2is", {}, "key", 1, [(0, "p0", 1.0, "r")], [], 0.1, events[8:], run_id=run_id,
                                events_start=8) == run_id
    assert [r["id"] for r in store.selection_runs("p")] == [run_id]
    assert stored(store, run_id) == events
    store.discard_walk_events(run_id)  # a finished run's events are never discarded
    assert store.walk_event_count(run_id) == 10
