"""Selection methods: every G2IS rule on hand-built vectors, the fast walk against a loop-by-loop reference of
Algorithm 1, and LESS / TSDS / baselines on cases whose answer is known."""
from __future__ import annotations

import json

import numpy as np
import pytest

from core.selection.g2is import (
    PAPER_REMEDIES,
    Anchor,
    Candidate,
    ComponentEnd,
    ComponentStart,
    CoreKnowledge,
    Fallback,
    G2ISParams,
    component_budgets,
    core_knowledge,
    make_plan,
    prepare_walk,
    result_from_events,
    walk_events,
)
from core.selection.graph import GradientGraph, build_graph, normalize_rows
from core.selection.less import less_scores
from core.selection.methods import SelectionResult, budget_from, select
from core.selection.tsds import tsds_distribution
from tests.reference_g2is import reference_g2is

E_Z = np.array([[0.0, 0.0, 2.0]], dtype=np.float32)  # one target row: the single component is +z


def run(pool, targets, budget, graph=None, **params):
    plan = prepare_walk(np.asarray(pool, np.float32), targets, budget, params, graph)
    events = list(walk_events(plan))
    return plan, events, result_from_events(plan, events)


def hand_graph(neighbors: list[list[int]]) -> GradientGraph:
    """A graph with chosen neighbour lists (the walk only reads the order), so a test can aim the walk."""
    idx = np.array(neighbors, dtype=np.int64)
    zeros = np.zeros(idx.shape, np.float32)
    return GradientGraph(idx, zeros, np.empty((len(idx), 0), np.int64), np.empty((len(idx), 0), np.float32), idx.shape[1])


def picked(events) -> list[int]:
    return [e.row for e in events if isinstance(e, Anchor) or (isinstance(e, Candidate) and e.verdict == "accepted")]


# ------------------------------------------------------------------------------------------------ budgets
def test_budget_from_ratio_budget_and_errors():
    assert budget_from(1000, ratio=0.01) == (10, [])
    assert budget_from(999, ratio=0.01) == (9, [])  # int(N * ratio): truncation, as G2IS
    assert budget_from(50, budget=7) == (7, [])
    value, notes = budget_from(50, budget=80)
    assert value == 50 and "clipped to 50" in notes[0]
    for kwargs, message in [({}, "exactly one"), ({"ratio": 0.1, "budget": 3}, "exactly one"),
                            ({"ratio": 0}, r"\(0, 1\]"), ({"ratio": 1.5}, r"\(0, 1\]"), ({"ratio": float("nan")}, "number"),
                            ({"ratio": 0.001}, "rounds down to 0"), ({"budget": 0}, "at least 1"),
                            ({"budget": 2.5}, "whole number"), ({"budget": True}, "whole number")]:
        with pytest.raises(ValueError, match=message):
            budget_from(100, **kwargs)
    with pytest.raises(ValueError, match="at least one row"):
        budget_from(0, budget=1)


def test_largest_remainder_sums_exactly():
    assert component_budgets(np.array([0.5, 0.3, 0.2]), 7) == [4, 2, 1]  # quotas 3.5/2.1/1.4: the .5 wins
    assert component_budgets(np.full(3, 1 / 3), 4) == [2, 1, 1]  # equal remainders: earlier component first
    assert component_budgets(np.full(3, 1 / 3), 5) == [2, 2, 1]
    assert component_budgets(np.array([1.0]), 13) == [13]
    rng = np.random.default_rng(0)
    for _ in range(200):
        weights = rng.dirichlet(np.ones(rng.integers(1, 30)))
        budget = int(rng.integers(0, 5000))
        budgets = component_budgets(weights, budget)
        assert sum(budgets) == budget
        assert all(abs(b - w * budget) < 1 for b, w in zip(budgets, weights))


# ------------------------------------------------------------------------------------------------ G2IS rules
def test_conflict_rejection_fallback_and_underfill():
    # Target +z.  Row 0 = (1, 0, .7) scores highest (anchor).  Rows 1-3 share z = .5 and lie at +-53 deg in x/y:
    # row 1 agrees with row 0 (dot > 0); row 2 has a negative dot with row 0, row 3 a negative dot with row 1.
    pool = [[1, 0, 0.7], [0.6, 0.8, 0.5], [-0.6, 0.8, 0.5], [0.6, -0.8, 0.5]]
    plan, events, result = run(pool, E_Z, 3, delta=0.5, k=3)
    assert plan.graph.neighbors[1].tolist() == [0, 2, 3]
    unit = normalize_rows(np.array(pool, np.float32)).astype(np.float64)
    walk = [e for e in events if isinstance(e, Candidate)]
    assert [(e.row, e.phase, e.verdict) for e in walk] == [
        (1, "local", "accepted"),
        (0, "local", "taken"), (2, "local", "conflict"), (3, "local", "conflict"),  # stuck at row 1
        (2, "fallback", "conflict"), (3, "fallback", "conflict"),  # ranking: 0 (taken, skipped), 1 (taken), 2, 3
    ]
    assert walk[2].conflict_row == 0 and walk[2].conflict_dot == pytest.approx(unit[0] @ unit[2])
    assert walk[3].conflict_row == 1 and walk[3].conflict_dot == pytest.approx(unit[1] @ unit[3])
    assert walk[2].describe() == f"rejected: conflicts with row 0, dot \u2212{abs(unit[0] @ unit[2]):.2f}"
    assert walk[4].position == 3 and walk[5].position == 4  # global ranks, 1-based
    assert sum(isinstance(e, Fallback) for e in events) == 1
    end = events[-1]
    assert isinstance(end, ComponentEnd) and end.under_filled and (end.filled, end.budget) == (2, 3)
    assert result.rows == [0, 1] and "under-filled: 2 of 3" in result.notes
    # Without the no-conflict rule, row 2 is accepted from row 1's list.
    _, events, result = run(pool, E_Z, 3, delta=0.5, k=3, conflict_check=False)
    assert result.rows == [0, 1, 2] and not any(isinstance(e, Fallback) for e in events)


def test_consistency_rejection_against_delta():
    # Target +z; anchor row 0 at 11.3 deg from z.  Row 1 (30 deg, same plane) is row 0's nearest neighbour but
    # pulls acc away from z: |cos(acc + t1, z)| / |cos(acc, z)| = 0.954.  Row 2 (19 deg, other plane) keeps it ~1.
    pool = np.array([[0, 0.2, 1], [0, 0.577, 1], [0.35, 0, 1]], np.float32)
    unit = normalize_rows(pool).astype(np.float64)
    old = unit[0][2] / np.linalg.norm(unit[0])
    summed = unit[0] + unit[1]
    ratio = (summed[2] / np.linalg.norm(summed)) / old
    assert 0.95 < ratio < 0.96
    plan, events, result = run(pool, E_Z, 2, delta=0.97, k=2)
    assert plan.graph.neighbors[0].tolist() == [1, 2]
    rejected = next(e for e in events if isinstance(e, Candidate) and e.verdict == "inconsistent")
    assert rejected.row == 1 and rejected.ratio == pytest.approx(ratio)
    assert rejected.describe() == f"rejected: similarity would fall to {ratio:.2f} of its previous value, below \u03b4=0.97"
    assert result.rows == [0, 2]
    assert result.reasons[1].startswith("component 0 walk from row 0 (edge")
    for delta in (0.95, 0.8):  # ratio 0.954 passes these
        assert run(pool, E_Z, 2, delta=delta, k=2)[2].rows == [0, 1]


def test_fallback_accepts_from_global_ranking_and_ablation_switches():
    # Row 0 (+z) anchors; its only graph neighbour, row 1, conflicts with it; the fallback ranking by score is
    # [0 (taken), 2, 1], and row 2 passes both constraints.
    pool = np.array([[0, 0, 1], [0, 1, -0.2], [0.5, 0, 1]], np.float32)
    graph = hand_graph([[1], [0], [0]])
    _, events, result = run(pool, E_Z, 2, graph)
    accepted = [e for e in events if isinstance(e, Candidate) and e.verdict == "accepted"]
    assert [(e.row, e.phase, e.position) for e in accepted] == [(2, "fallback", 2)]
    assert result.rows == [0, 2] and result.reasons == ["component 0 anchor (rank 1)", "component 0 fallback rank 2"]
    assert accepted[0].describe().startswith("accepted: global rank 2")
    # local_steps_only: stuck at row 0 means the component ends under-filled.
    _, events, result = run(pool, E_Z, 2, graph, local_steps_only=True)
    assert result.rows == [0] and events[-1].reason.startswith("local walk stuck")
    assert not any(isinstance(e, Fallback) for e in events)
    # use_graph=False: no neighbour lists at all, every step is a ranking step.
    _, events, result = run(pool, E_Z, 2, graph, use_graph=False)
    assert result.rows == [0, 2]
    assert [e.reason for e in events if isinstance(e, Fallback)] == ["no_graph"]
    assert [e.describe() for e in events if isinstance(e, Fallback)] == ["fallback to global ranking (graph disabled)"]


def test_anchor_skips_taken_rows_and_falls_back_to_global_argmax():
    # Two hand-chosen directions 10 deg apart in x/y, weights 2:1, budget 3 -> budgets [2, 1].  Component 0 takes
    # row 0 (on its axis) and then row 1 (its nearest neighbour).  Component 1's own ranking is 1, 0, 3, 2: the
    # first two are taken, so its anchor is row 3 at rank 3 with 2 skipped.
    angle = np.deg2rad([0.0, 11.5, -26.0, 30.0])
    pool = np.stack([np.cos(angle), np.sin(angle), np.zeros(4)], axis=1).astype(np.float32)
    directions = np.array([[1, 0, 0], [np.cos(np.deg2rad(10)), np.sin(np.deg2rad(10)), 0]])
    knowledge = CoreKnowledge(directions, np.array([2 / 3, 1 / 3]), np.array([0.4, 0.2]), np.array([0.4, 0.6]), "test")
    unit = normalize_rows(pool)
    graph = build_graph(unit, k=3, normalized=True)
    events = list(walk_events(make_plan(unit, knowledge, 3, G2ISParams(), graph)))
    anchors = [e for e in events if isinstance(e, Anchor)]
    assert [(a.component, a.row, a.rank, a.skipped, a.from_global_argmax) for a in anchors] == [
        (0, 0, 1, 0, False), (1, 3, 3, 2, False)]
    assert picked(events) == [0, 1, 3]
    # With a 2-entry anchor list both entries are taken: the anchor comes from the global argmax.
    events = list(walk_events(make_plan(unit, knowledge, 3, G2ISParams(anchor_candidates=2), graph)))
    last_anchor = [e for e in events if isinstance(e, Anchor)][-1]
    assert (last_anchor.row, last_anchor.from_global_argmax) == (3, True)
    assert "global argmax" in last_anchor.describe()


def test_pool_exhausted_and_zero_budget_components():
    pool = np.array([[1, 0, 1], [0, 1, 1]], np.float32)
    directions = np.array([[0, 0, 1.0], [1.0, 0, 0], [0, 1.0, 0]])
    knowledge = CoreKnowledge(directions, np.array([0.7, 0.3, 0.0]), np.ones(3), np.ones(3), "test")
    events = list(walk_events(make_plan(normalize_rows(pool), knowledge, 2, G2ISParams(use_graph=False))))
    ends = [e for e in events if isinstance(e, ComponentEnd)]
    assert [(e.budget, e.filled) for e in ends] == [(1, 1), (1, 1), (0, 0)]
    knowledge = CoreKnowledge(directions[:2], np.array([0.5, 0.5]), np.ones(2), np.ones(2), "test")
    plan = make_plan(normalize_rows(pool[:1]), knowledge, 1, G2ISParams(use_graph=False))
    plan.budgets[:] = [1, 1]  # force more demand than rows
    ends = [e for e in walk_events(plan) if isinstance(e, ComponentEnd)]
    assert ends[1].under_filled and ends[1].reason == "pool exhausted"


def test_duplicate_and_zero_rows():
    # Five identical rows: anchor is the lowest index, the walk takes the rest in index order (ties by index).
    row = [0.3, 0.4, 1.0]
    pool = np.array([row] * 5 + [[0, 0, 0], [0, 0, 0], [1, -1, 0.2]], np.float32)
    plan, events, result = run(pool, E_Z, 3, k=4)
    assert result.rows == [0, 1, 2]
    # Zero rows score 0, conflict with nothing and leave acc unchanged: they are valid, finite picks.
    # A budget of the whole pool takes every row: no conflict (row 7 has a positive dot with the others), so by
    # score: the identical rows, then row 7 (z = 0.2, a smaller score), then the two zero rows (score 0), by index.
    plan, events, result = run(pool, E_Z, 8, k=7, delta=0.8)
    assert result.rows == [0, 1, 2, 3, 4, 7, 5, 6]
    ends = [e for e in events if isinstance(e, ComponentEnd)]
    assert [(e.filled, e.budget, e.reason) for e in ends] == [(8, 8, "budget met")]
    assert all(np.isfinite(result.scores))
    assert all(np.isfinite(v) for e in events for v in e.to_dict().values() if isinstance(v, float))


def test_one_target_row_and_pca_knowledge():
    rng = np.random.default_rng(3)
    target = rng.standard_normal((1, 16)).astype(np.float32)
    knowledge = core_knowledge(target)
    assert knowledge.how == "single target row" and knowledge.weights.tolist() == [1.0]
    np.testing.assert_allclose(knowledge.components[0], target[0] / np.linalg.norm(target[0]), atol=1e-6)
    many = rng.standard_normal((30, 16)) * np.linspace(3, 0.1, 16)  # decreasing variance per axis
    knowledge = core_knowledge(many, val_k=0.5)
    assert knowledge.how == "pca" and abs(knowledge.weights.sum() - 1) < 1e-12
    assert knowledge.explained_variance_ratio.sum() >= 0.5 > knowledge.explained_variance_ratio[:-1].sum()
    np.testing.assert_allclose(np.linalg.norm(knowledge.components, axis=1), 1, atol=1e-12)
    assert core_knowledge(many, n_components=4).components.shape == (4, 16)
    with pytest.raises(ValueError, match="n_components"):
        core_knowledge(many, n_components=40)
    with pytest.raises(ValueError, match="all zero"):
        core_knowledge(np.zeros((1, 4)))
    result = select("g2is", rng.standard_normal((50, 16)), target, 5)
    assert len(result.rows) == 5 and any("single target row" in n for n in result.notes)


def test_events_are_json_safe_deterministic_and_define_the_selection(walk_data):
    pool, targets, graph = walk_data(0)
    plan = prepare_walk(pool, targets, 120, {"delta": 0.95, "k": 16}, graph)
    first = [e.to_dict() for e in walk_events(plan)]
    second = [e.to_dict() for e in walk_events(plan)]
    assert first == second
    json.dumps(first)
    assert {d["kind"] for d in first} == {"component_start", "anchor", "candidate", "fallback", "component_end"}
    events = list(walk_events(plan))
    assert all(isinstance(e.describe(), str) and e.describe() for e in events)
    assert isinstance(events[0], ComponentStart)
    light = list(walk_events(plan, record_candidates=False))
    assert picked(light) == picked(events)
    assert not any(isinstance(e, Candidate) and e.verdict != "accepted" for e in light)
    result = result_from_events(plan, events)
    assert result.rows == picked(events) and len(set(result.rows)) == len(result.rows)
    assert len(result.scores) == len(result.reasons) == len(result.rows)
    # The scores are each row's signed similarity to the component that picked it.
    comp_of = {e.row: e.component for e in events if isinstance(e, Anchor) or (isinstance(e, Candidate) and e.verdict == "accepted")}
    np.testing.assert_allclose(result.scores, [plan.scores[r, comp_of[r]] for r in result.rows])
    # A re-run with other walk switches reuses the plan.
    assert picked(walk_events(plan.with_params(delta=0.5))) != picked(events)


# ------------------------------------------------------------------------------------------------ vs reference
def clustered(seed: int, n: int = 2000, dim: int = 64, clusters: int = 20, noise: float = 2.5):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim))
    labels = rng.integers(0, clusters, n)
    scale = rng.uniform(0.5, 2.0, n)[:, None]  # raw features differ in norm; the walk normalises, PCA does not
    pool = ((centers[labels] + noise * rng.standard_normal((n, dim))) * scale).astype(np.float32)
    targets = (centers[rng.integers(0, 5, 40)] + noise * rng.standard_normal((40, dim))).astype(np.float32)
    return pool, targets


@pytest.fixture(scope="module")
def walk_data():
    cache = {}

    def get(seed):
        if seed not in cache:
            pool, targets = clustered(seed)
            cache[seed] = (pool, targets, build_graph(pool, k=16))
        return cache[seed]

    return get


VARIANTS = (
    [(seed, {"delta": delta}) for seed in (0, 1, 2) for delta in (0.5, 0.8, 0.95, 1.0)]
    + [(seed, {"delta": delta, switch: value}) for seed in (0, 1) for delta in (0.8, 1.0)
       for switch, value in (("conflict_check", False), ("local_steps_only", True), ("use_graph", False),
                             ("anchor_candidates", 2))]
    + [(0, {"delta": 0.8, "anchor_candidates": 1}), (3, {"delta": 0.8, "n_components": 3}),
       (3, {"delta": 0.9, "val_k": 0.3})]
)


@pytest.mark.parametrize("seed,params", VARIANTS, ids=[f"s{s}-{p}" for s, p in VARIANTS])
def test_fast_walk_matches_reference(walk_data, seed, params):
    pool, targets, graph = walk_data(seed)
    budget = 150
    # The paper profile is the authors' Algorithm 1 whatever the defaults of "g2is" become.
    result = select("g2is-paper", pool, targets, budget, {"k": 16, **params}, graph=graph)
    expected, finished = reference_g2is(pool, targets, budget, graph.neighbors, **params)
    assert finished
    assert result.rows == expected and result.method == "g2is-paper"
    assert {name: result.params[name] for name in PAPER_REMEDIES} == PAPER_REMEDIES


def test_reference_comparison_exercises_every_rule(walk_data):
    """The random inputs above are only a check if the walk does real work on them: conflicts, inconsistency,
    fallbacks, under-fill and a global-argmax anchor must all occur among the compared runs."""
    seen = set()
    for seed, params in [(0, {"delta": 0.8}), (1, {"delta": 1.0}), (0, {"delta": 1.0, "anchor_candidates": 2}),
                         (0, {"delta": 1.0, "local_steps_only": True})]:
        pool, targets, graph = walk_data(seed)
        for e in walk_events(prepare_walk(pool, targets, 150, {"k": 16, **params}, graph)):
            seen.add(e.verdict if isinstance(e, Candidate) else e.kind)
            if isinstance(e, ComponentEnd) and e.under_filled:
                seen.add("under_filled")
            if isinstance(e, Anchor) and e.from_global_argmax:
                seen.add("global_argmax")
            if isinstance(e, Anchor) and e.skipped:
                seen.add("anchor_skipped")
    assert {"taken", "conflict", "inconsistent", "accepted", "fallback", "under_filled", "global_argmax",
            "anchor_skipped"} <= seen


# ------------------------------------------------------------------------------------------------ select()
def test_select_validates_inputs():
    pool = np.ones((10, 4), np.float32)
    for method in ("g2is", "less", "tsds-uniform"):
        with pytest.raises(ValueError, match="no target features"):
            select(method, pool, np.zeros((0, 4), np.float32), 3)
        with pytest.raises(ValueError, match="no target features"):
            select(method, pool, None, 3)
        with pytest.raises(ValueError, match="dimension mismatch"):
            select(method, pool, np.ones((2, 5), np.float32), 3)
        bad = pool.copy()
        bad[4, 1] = np.nan
        with pytest.raises(ValueError, match="non-finite.*row 4"):
            select(method, bad, np.ones((2, 4), np.float32), 3)
    with pytest.raises(ValueError, match="unknown selection method"):
        select("magic", pool, pool, 3)
    with pytest.raises(ValueError, match="unknown parameter"):
        select("g2is", pool, pool, 3, {"detla": 0.5})
    with pytest.raises(ValueError, match="delta"):
        select("g2is", pool, pool, 3, {"delta": 1.5})


def test_budget_larger_than_pool_is_clipped_for_every_feature_method():
    rng = np.random.default_rng(1)
    pool, targets = rng.standard_normal((12, 8)), rng.standard_normal((3, 8))
    for method in ("g2is", "less", "tsds-uniform", "tsds-kde", "random"):
        result = select(method, pool, targets, 50)
        assert isinstance(result, SelectionResult) and result.budget == 12
        assert any("clipped to 12" in n for n in result.notes), method
        assert len(set(result.rows)) == len(result.rows) <= 12


# ------------------------------------------------------------------------------------------------ LESS
def test_less_group_max_versus_plain_mean():
    # Targets: two rows of group "a" along x, one of group "b" along y.  Pool: x, the x/y diagonal, y.
    targets = np.array([[1, 0], [2, 0], [0, 3]], np.float32)
    pool = np.array([[1, 0], [1, 1], [0, 1]], np.float32)
    grouped = select("less", pool, targets, 3, target_groups=["a", "a", "b"])
    # Group max: x and y both reach 1 (tie, lower index first); the diagonal 0.707 in either group.
    assert grouped.rows == [0, 2, 1]
    np.testing.assert_allclose(grouped.scores, [1, 1, np.sqrt(0.5)], atol=1e-6)
    assert grouped.reasons[0] == "best group 'a', mean cosine 1.00" and grouped.reasons[1].startswith("best group 'b'")
    # Plain mean over all targets: the diagonal (0.707) beats x (2/3) and y (1/3).
    plain = select("less", pool, targets, 3)
    assert plain.rows == [1, 0, 2]
    np.testing.assert_allclose(plain.scores, [np.sqrt(0.5), 2 / 3, 1 / 3], atol=1e-6)


def test_less_checkpoint_weights_and_ungrouped_rows():
    rng = np.random.default_rng(4)
    pools = [rng.standard_normal((30, 6)).astype(np.float32) for _ in range(2)]
    targets = [rng.standard_normal((4, 6)).astype(np.float32) for _ in range(2)]
    scored = less_scores(pools, targets, checkpoint_weights=[3, 1])
    expected = sum(w * (normalize_rows(p) @ normalize_rows(t).T).mean(axis=1)
                   for w, p, t in zip([0.75, 0.25], pools, targets))
    np.testing.assert_allclose(scored.scores, expected, atol=1e-6)
    assert scored.checkpoint_weights == [0.75, 0.25]
    result = select("less", pools, targets, 5, {"checkpoint_weights": [3, 1]})
    assert result.rows == np.argsort(-expected, kind="stable")[:5].tolist()
    assert less_scores(pools[0], targets[0], target_groups=[None, "x", None, "x"]).group_names == ["(ungrouped)", "x"]
    with pytest.raises(ValueError, match="checkpoint weights"):
        less_scores(pools, targets, checkpoint_weights=[1])
    with pytest.raises(ValueError, match="target_groups has 3 labels"):
        less_scores(pools[0], targets[0], target_groups=["a", "b", "c"])


# ------------------------------------------------------------------------------------------------ TSDS
def test_tsds_uniform_stopping_rule_on_a_line():
    # One query at the origin, 100 candidates at distances 1..100 (shuffled).  KNN-Uniform stops at the first K with
    # (alpha/C) * sum_{k<=K} (d_{K+1} - d_k) >= (1 - alpha) * M, i.e. 0.1 * K(K+1)/2 >= 0.5 -> K = 3 (K = 2 gives 0.3).
    rng = np.random.default_rng(0)
    order = rng.permutation(100)
    pool = np.zeros((100, 2), np.float32)
    pool[order, 0] = np.arange(1, 101)
    query = np.zeros((1, 2), np.float32)
    dist = tsds_distribution(pool, query, alpha=0.5, C=5.0, sigma=0, normalize=False)
    nearest = order[:3]
    np.testing.assert_allclose(dist.probabilities[nearest], 1 / 3)
    assert dist.probabilities.sum() == pytest.approx(1) and np.count_nonzero(dist.probabilities) == 3
    assert dist.prefetch_k == 10  # min(max_K, N // 10), as the authors' code
    # alpha = 0.8: 0.16 * K(K+1)/2 >= 0.2 -> K(K+1) >= 2.5 -> K = 2.
    dist = tsds_distribution(pool, query, alpha=0.8, C=5.0, sigma=0, normalize=False)
    np.testing.assert_allclose(dist.probabilities[order[:2]], 0.5)


def test_tsds_kde_downweights_near_duplicates():
    # Query at the origin; candidates at distance 1 (rows 0 and 1, near-duplicates 0.01 apart), then 2, 3, 4, ...
    # sigma = 0.5: the duplicates have density ~2, the rest 1.  Water-filling with alpha = 0.5, C = 5 (stop when
    # 0.1 * cost >= 0.5): levels s = 0.5, 1, 2, 3 give costs ~0, 1, 3, 6 -> stop at s = 3 with rows 0-2 filled:
    # p = 1/(s rho) = 1/6, 1/6, 1/3, and the leftover 1/3 goes to the next row (distance 3).
    pool = np.zeros((60, 2), np.float32)
    pool[:, 0] = np.arange(60) + 1.0
    pool[0], pool[1] = [1.0, 0.0], [1.0, 0.01]
    query = np.zeros((1, 2), np.float32)
    p = tsds_distribution(pool, query, alpha=0.5, C=5.0, sigma=0.5, normalize=False).probabilities
    np.testing.assert_allclose(p[:4], [1 / 6, 1 / 6, 1 / 3, 1 / 3], rtol=1e-3)
    assert np.count_nonzero(p) == 4
    # KNN-Uniform on the same data: sum_{k<=K} (d_{K+1} - d_k) = 0, 2, 5 for K = 1, 2, 3 -> K = 3, 1/3 each.
    uniform = tsds_distribution(pool, query, alpha=0.5, C=5.0, sigma=0, normalize=False).probabilities
    np.testing.assert_allclose(uniform[:3], 1 / 3)
    assert np.count_nonzero(uniform) == 3


def test_tsds_selection_is_seeded_distinct_and_can_repeat():
    pool, targets = clustered(5, n=600, dim=16)
    a = select("tsds-kde", pool, targets, 40, {"seed": 3})
    b = select("tsds-kde", pool, targets, 40, {"seed": 3})
    c = select("tsds-kde", pool, targets, 40, {"seed": 4})
    assert a.rows == b.rows and a.rows != c.rows
    assert len(set(a.rows)) == len(a.rows) == 40
    with_repeats = select("tsds-uniform", pool, targets, 200, {"with_replacement": True, "alpha": 0.2})
    assert len(with_repeats.rows) == 200 and len(set(with_repeats.rows)) < 200
    assert with_repeats.rows == sorted(with_repeats.rows)
    small = select("tsds-uniform", pool, targets, 300, {"alpha": 0.9})  # mass on few rows: under-fill, not repeats
    assert len(small.rows) < 300 and any(n.startswith("under-filled") for n in small.notes)


# ------------------------------------------------------------------------------------------------ baselines
def test_random_baseline_is_the_seeded_permutation():
    pool = np.ones((30, 3), np.float32)
    result = select("random", pool, None, 7, {"seed": 11})
    assert result.rows == np.random.default_rng(11).permutation(30)[:7].tolist()
    assert select("random", None, None, 7, {"seed": 11}, n_pool=30).rows == result.rows


def test_embedding_baseline_ranks_by_text_similarity():
    pool_texts = ["The capital of France is Paris.", "Solve 12 + 30. The answer is 42.",
                  "Paint the fence green.", "What is 7 times 6? It is 42."]
    result = select("embedding", None, None, 2, pool_texts=pool_texts,
                    target_texts=["Compute 15 + 27 and give the number.", "Multiply 6 by 7."])
    assert sorted(result.rows) == [1, 3]
    assert result.reasons[0].startswith("mean embedding cosine")
    with pytest.raises(ValueError, match="no target texts"):
        select("embedding", None, None, 2, pool_texts=pool_texts, target_texts=[])


def test_round_robin_less_takes_each_targets_best_in_turn():
    # Two targets, x and y.  Three pool rows are nearly pure x, two lean to y but share some x: the top-k by the
    # mean cosine takes the two y-leaning rows first (they score on both targets); round robin alternates x's best
    # and y's best.
    pool = np.array([[1.0, 0.05, 0], [1.0, 0.1, 0], [1.0, 0.15, 0], [0.3, 1.0, 0], [0.4, 1.0, 0], [0, 0, 1.0]],
                    np.float32)
    targets = np.array([[1.0, 0, 0], [0, 1.0, 0]], np.float32)
    top = select("less", pool, targets, 4)
    assert top.rows == [4, 3, 2, 1]
    turns = select("less-rr", pool, targets, 5)
    assert turns.rows == [0, 3, 1, 4, 2]  # x's best, y's best, x's next, y's next, ...
    assert turns.reasons[1].startswith("turn of target 1") and turns.params["per"] == "target"
    # Per group: with both targets in one group there is one turn-taker, and the order is the group-mean top-k.
    grouped = select("less-rr", pool, targets, 4, {"per": "group"}, target_groups=["g", "g"])
    assert grouped.rows == top.rows
    split = select("less-rr", pool, targets, 4, {"per": "group"}, target_groups=["a", "b"])
    assert split.rows == [0, 3, 1, 4]
    with pytest.raises(ValueError, match="per must be 'target' or 'group'"):
        select("less-rr", pool, targets, 2, {"per": "row"})
    assert select("less-rr", pool, targets, 99).rows == [0, 3, 1, 4, 2, 5]  # the budget is clipped to the pool


def test_align_signs_points_every_component_towards_the_targets():
    rng = np.random.default_rng(5)
    targets = rng.normal(size=(12, 16)) + np.r_[3.0, np.zeros(15)]  # a mean target gradient along +x
    plain = core_knowledge(targets, n_components=5)
    aligned = core_knowledge(targets, n_components=5, align_signs=True)
    mean = targets.mean(axis=0)
    dots = plain.components @ mean
    assert (aligned.components @ mean >= 0).all()
    assert np.allclose(aligned.components, plain.components * np.sign(dots)[:, None])  # only signs change
    assert np.array_equal(aligned.weights, plain.weights)
    # With the signs flipped, the signed ranking follows: the anchor of a flipped component changes side.
    flipped = int(np.flatnonzero(dots < 0)[0]) if (dots < 0).any() else None
    if flipped is not None:
        pool = rng.normal(size=(50, 16)).astype(np.float32)
        unit = normalize_rows(pool)
        assert np.argmax(unit @ aligned.components[flipped]) == np.argmin(unit @ plain.components[flipped])


def test_centred_pool_walks_on_mean_removed_rows():
    from core.selection.g2is import centred_rows

    rng = np.random.default_rng(2)
    pool = (rng.normal(size=(40, 8)) + 5.0).astype(np.float32)  # a large shared direction
    unit = normalize_rows(pool)
    centred = centred_rows(unit)
    assert np.allclose(np.linalg.norm(centred, axis=1), 1, atol=1e-5)
    assert np.allclose(centred, normalize_rows(unit - unit.mean(axis=0)), atol=1e-6)
    plan = prepare_walk(pool, pool[:4] + rng.normal(size=(4, 8)).astype(np.float32), 6,
                        G2ISParams(center_pool=True, k=5, n_components=2))
    assert np.allclose(plan.train, centred, atol=1e-6)  # graph, scores and checks all see the centred rows
    assert plan.graph.k == 5
    with pytest.raises(ValueError, match="graph_rescale must be one of"):
        G2ISParams(graph_rescale="bogus")


def test_the_paper_profile_takes_no_remedy():
    pool = np.eye(6, 4, dtype=np.float32) + 0.1
    with pytest.raises(ValueError, match="g2is-paper is the authors' Algorithm 1: it takes no remedy \\(center_pool\\)"):
        select("g2is-paper", pool, pool[:2], 2, {"center_pool": True})
    paper = select("g2is-paper", pool, pool[:2], 2, {"k": 3})
    plain = select("g2is", pool, pool[:2], 2, {"k": 3, **PAPER_REMEDIES})
    assert paper.rows == plain.rows
