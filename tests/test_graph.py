"""The kNN gradient graph: exactness against brute force, torch vs faiss, ordering and tie rules, conflicts, edges."""
from __future__ import annotations

import numpy as np
import pytest

from core.selection.g2is import Candidate, G2ISParams, prepare_walk, result_from_events, walk_events
from core.selection.graph import (
    NO_NEIGHBOR,
    GradientGraph,
    build_graph,
    normalize_rows,
    rescaled_neighbors,
    resolve_backend,
    to_networkx,
)
from core.selection.hubness import hubness_stats


def brute_force(features: np.ndarray, k: int, k_neg: int):
    """Plain numpy: full float64 cosine matrix, one stable sort per row (descending, ties by lower index)."""
    unit = normalize_rows(features).astype(np.float64)
    sims = unit @ unit.T
    n = sims.shape[0]
    neighbors, similarities, conflicts, conflict_sims = [], [], [], []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        best = sorted(others, key=lambda j: (-sims[i, j], j))[:k]
        worst = sorted(others, key=lambda j: (sims[i, j], j))[:k_neg]
        neighbors.append(best)
        similarities.append(sims[i, best])
        conflicts.append(worst)
        conflict_sims.append(sims[i, worst])
    return sims, np.array(neighbors), np.array(similarities), np.array(conflicts), np.array(conflict_sims)


def assert_same_up_to_ties(sims: np.ndarray, expected_sims: np.ndarray, got_idx: np.ndarray, got_sims: np.ndarray):
    """Every returned neighbour has (to float32 rounding) the similarity the exact answer has at that place,
    so index differences can only be swaps among (near-)equal similarities."""
    np.testing.assert_allclose(got_sims, expected_sims, atol=2e-6)
    rows = np.arange(sims.shape[0])[:, None]
    np.testing.assert_allclose(sims[rows, got_idx], expected_sims, atol=2e-6)
    for i in range(got_idx.shape[0]):  # no self, no repeats
        assert i not in got_idx[i]
        assert len(set(got_idx[i].tolist())) == got_idx.shape[1]


@pytest.fixture(scope="module")
def clustered():
    rng = np.random.default_rng(7)
    centers = rng.standard_normal((8, 24))
    features = centers[rng.integers(0, 8, 400)] + 0.8 * rng.standard_normal((400, 24))
    features[10] = features[3]  # exact duplicate
    features[11] = 2.5 * features[3]  # same direction, other scale
    features[20] = 0.0  # zero row
    return features.astype(np.float32)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_matches_brute_force(clustered, backend):
    sims, nbr, nbr_sims, conf, conf_sims = brute_force(clustered, 12, 5)
    graph = build_graph(clustered, k=12, k_neg=5, backend=backend)
    assert graph.neighbors.dtype == np.int64 and graph.similarities.dtype == np.float32
    assert graph.neighbors.shape == (400, 12) and graph.conflicts.shape == (400, 5) and graph.k == 12
    assert_same_up_to_ties(sims, nbr_sims, graph.neighbors, graph.similarities)
    assert_same_up_to_ties(sims, conf_sims, graph.conflicts, graph.conflict_similarities)
    # On continuous data almost every row is identical, index for index.
    assert (graph.neighbors == nbr).all(axis=1).mean() > 0.97
    assert (graph.conflicts == conf).all(axis=1).mean() > 0.97


def test_torch_and_faiss_agree(clustered):
    a = build_graph(clustered, k=16, k_neg=4, backend="torch")
    b = build_graph(clustered, k=16, k_neg=4, backend="faiss")
    np.testing.assert_allclose(a.similarities, b.similarities, atol=2e-6)
    np.testing.assert_allclose(a.conflict_similarities, b.conflict_similarities, atol=2e-6)
    differs = a.neighbors != b.neighbors
    # Where the index differs, the two similarities at that place are equal to rounding (a tie, ordered by index).
    assert np.abs(a.similarities[differs] - b.similarities[differs]).max(initial=0) < 2e-6
    assert differs.any(axis=1).mean() < 0.03


def test_blocks_do_not_change_the_result(clustered):
    whole = build_graph(clustered, k=8, backend="torch")
    blocked = build_graph(clustered, k=8, backend="torch", memory_bytes=12 * 400 * 7)  # 7-row blocks
    # Same neighbours in the same order; the values themselves may differ in the last bit (BLAS layout).
    np.testing.assert_array_equal(whole.neighbors, blocked.neighbors)
    np.testing.assert_allclose(whole.similarities, blocked.similarities, atol=1e-6)
    again = build_graph(clustered, k=8, backend="torch", memory_bytes=12 * 400 * 7)
    np.testing.assert_array_equal(again.similarities, blocked.similarities)  # repeatable bit for bit


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_near_duplicates_are_rescored_and_tie_by_index(clustered, backend):
    # Rows 3 and 10 are exact copies: every row must list them adjacent, 3 first.  Row 11 (2.5 x row 3) differs
    # from them only in the last bit after normalisation, so its place follows its correctly rounded cosine.
    graph = build_graph(clustered, k=40, backend=backend)
    unit = normalize_rows(clustered).astype(np.float64)
    for i in range(graph.n_nodes):
        listed = [j for j in graph.neighbors[i].tolist() if j in (3, 10, 11)]
        exact = {j: np.float32(unit[i] @ unit[j]) for j in listed}
        assert listed == sorted(listed, key=lambda j: (-exact[j], j)), (i, listed, exact)
        if 3 in listed and 10 in listed:
            assert listed.index(10) == listed.index(3) + 1 or (11 in listed and listed.index(10) == listed.index(3) + 2
                                                                 and exact[11] == exact[3])
    assert graph.neighbors[3][0] == 10 and graph.neighbors[10][0] == 3


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_hand_built_order_ties_and_conflicts(backend):
    # Unit circle: row 0 at 0 deg; rows 1 and 4 at +-36.87 deg (cos 0.8 exactly tied, since they differ only in the
    # sign of y and row 0 has y = 0); row 2 at 90 deg (cos 0); row 3 at 180 deg (cos -1).
    features = np.array([[1, 0], [0.8, 0.6], [0, 1], [-1, 0], [0.8, -0.6]], dtype=np.float32)
    graph = build_graph(features, k=4, k_neg=2, backend=backend)
    assert graph.neighbors[0].tolist() == [1, 4, 2, 3]  # the 0.8 tie goes to the lower index
    np.testing.assert_allclose(graph.similarities[0], [0.8, 0.8, 0, -1], atol=1e-6)
    assert graph.conflicts[0].tolist() == [3, 2]  # most negative first
    np.testing.assert_allclose(graph.conflict_similarities[0], [-1, 0], atol=1e-6)
    assert (np.diff(graph.similarities, axis=1) <= 0).all()
    assert (np.diff(graph.conflict_similarities, axis=1) >= 0).all()


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_ties_straddling_the_kth_place_take_the_lowest_indices(backend):
    # Row 0 = a; rows 1..9 = nine identical copies of b, all tied for row 0; k=3 must give exactly [1, 2, 3].
    a, b = np.array([1.0, 0.2, 0.0]), np.array([0.6, 0.8, 0.1])
    features = np.vstack([a] + [b] * 9 + [[-1.0, 0.0, 0.3]]).astype(np.float32)
    graph = build_graph(features, k=3, k_neg=3, backend=backend)
    assert graph.neighbors[0].tolist() == [1, 2, 3]
    # Copies of b see each other at cos 1 (tie): lowest indices other than self.
    assert graph.neighbors[5].tolist() == [1, 2, 3]
    assert graph.neighbors[1].tolist() == [2, 3, 4]
    # Row 0's least similar: row 10 first, then copies of b?  No: cos(a, b) > 0 > cos(a, row 10); the next two
    # least similar are the tied copies 1 and 2.
    assert graph.conflicts[0].tolist() == [10, 1, 2]


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_zero_rows_k_clipping_and_single_row(backend):
    features = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=np.float32)
    graph = build_graph(features, k=10, k_neg=10, backend=backend)
    assert graph.k == 2 and graph.neighbors.shape == (3, 2) and graph.conflicts.shape == (3, 2)
    assert graph.neighbors[0].tolist() == [1, 2]  # zero row: cosine 0 with everything, index order
    np.testing.assert_array_equal(graph.similarities[0], [0, 0])
    assert graph.neighbors[1].tolist() == [0, 2]  # 0 and 2 both at cosine 0 from row 1
    assert np.isfinite(graph.similarities).all()
    single = build_graph(np.ones((1, 4), np.float32), k=5, backend=backend)
    assert single.neighbors.shape == (1, 0) and single.k == 0


def test_normalize_rows_keeps_zero_rows_zero():
    unit = normalize_rows(np.array([[3, 4], [0, 0], [-2, 0]], dtype=np.float32))
    np.testing.assert_allclose(unit, [[0.6, 0.8], [0, 0], [-1, 0]], atol=1e-7)
    assert unit.dtype == np.float32


def test_bad_arguments():
    with pytest.raises(ValueError, match="backend"):
        build_graph(np.ones((3, 2), np.float32), backend="annoy")
    with pytest.raises(ValueError, match="non-empty"):
        build_graph(np.ones((0, 2), np.float32))


def test_auto_backend_is_torch_at_every_size():
    """``auto`` no longer switches to faiss above a row count (bench/graph_backends.py: torch faster and bounded
    in memory at N=100,000 on CPU); faiss stays an explicit choice."""
    assert resolve_backend("auto") == "torch"
    assert resolve_backend("torch") == "torch" and resolve_backend("faiss") == "faiss"
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("annoy")


def test_to_networkx_weights_kinds_and_subsets():
    features = np.array([[1, 0], [0.8, 0.6], [0, 1], [-1, 0], [0.8, -0.6]], dtype=np.float32)
    graph = build_graph(features, k=2, k_neg=1)
    full = to_networkx(graph)
    assert full.number_of_nodes() == 5
    assert full.edges[0, 1]["kind"] == "similar" and full.edges[0, 1]["weight"] == pytest.approx(0.8, abs=1e-6)
    assert full.edges[0, 3]["kind"] == "conflict" and full.edges[0, 3]["weight"] == pytest.approx(-1, abs=1e-6)
    assert all(d["weight"] < 0 for _, _, d in full.edges(data=True) if d["kind"] == "conflict")
    sub = to_networkx(graph, nodes=[0, 1, 2])
    assert set(sub.nodes) == {0, 1, 2}
    assert all(u in (0, 1, 2) and v in (0, 1, 2) for u, v in sub.edges)
    assert not sub.has_edge(0, 3) and sub.has_edge(0, 1)
    directed = to_networkx(graph, directed=True, include_conflicts=False)
    assert directed.is_directed() and directed.number_of_edges() == 5 * 2
    with pytest.raises(ValueError, match="node ids"):
        to_networkx(graph, nodes=[7])


def test_graph_dataclass_fields():
    graph = build_graph(np.eye(4, dtype=np.float32), k=2, k_neg=1)
    assert isinstance(graph, GradientGraph) and graph.n_nodes == 4 and graph.k_neg == 1


def hub_pool(n: int = 400, dim: int = 64, seed: int = 0) -> np.ndarray:
    """Random rows sharing a strong common direction of varying weight: the rows with the largest share of it are
    near everyone (hubs), as in the gradient features of issue 17."""
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(n, dim)).astype(np.float32)
    rows[:, 0] += rng.gamma(1.0, 2.0, size=n).astype(np.float32)
    return rows


@pytest.mark.parametrize("rescale", ["csls", "local"])
def test_rescaled_graphs_cut_the_hubs(rescale):
    rows = hub_pool()
    plain = build_graph(rows, k=10)
    fixed = build_graph(rows, k=10, rescale=rescale)
    plain_in = np.bincount(plain.neighbors.ravel(), minlength=len(rows))
    fixed_in = np.bincount(fixed.neighbors.ravel(), minlength=len(rows))
    assert plain_in.max() > 60 and fixed_in.max() < plain_in.max() / 2, (plain_in.max(), fixed_in.max())
    assert fixed.neighbors.shape == (len(rows), 10) and not (fixed.neighbors == np.arange(len(rows))[:, None]).any()
    assert all(len(set(row)) == 10 for row in fixed.neighbors)
    # The kept neighbours come from each row's 4k nearest, and their listed similarity is their cosine.
    unit = normalize_rows(rows)
    cosines = unit @ unit.T
    for i in (0, 17, 399):
        nearest = set(np.argsort(-np.where(np.arange(len(rows)) == i, -np.inf, cosines[i]), kind="stable")[:40])
        assert set(fixed.neighbors[i]) <= nearest
        assert np.allclose(fixed.similarities[i], cosines[i, fixed.neighbors[i]], atol=1e-5)
    assert np.array_equal(fixed.conflicts, plain.conflicts)  # conflict edges are not rescaled


def test_the_mutual_graph_keeps_only_pairs_that_list_each_other():
    rows = hub_pool()
    plain = build_graph(rows, k=10)
    mutual = build_graph(rows, k=10, rescale="mutual")
    listed = {(i, int(j)) for i in range(len(rows)) for j in plain.neighbors[i]}
    for i in range(len(rows)):
        kept = mutual.neighbours_of(i)
        # exactly the plain list's mutual entries, in the plain list's order, then padding
        assert kept.tolist() == [int(j) for j in plain.neighbors[i] if (int(j), i) in listed]
        assert (mutual.neighbors[i, len(kept):] == NO_NEIGHBOR).all()
        places = [plain.neighbors[i].tolist().index(j) for j in kept]
        assert np.array_equal(mutual.similarities[i, :len(kept)], plain.similarities[i, places])
        assert np.isnan(mutual.similarities[i, len(kept):]).all()
    assert np.array_equal(mutual.degree, [len(mutual.neighbours_of(i)) for i in range(len(rows))])
    # symmetric, so every in-degree equals the out-degree (at most k): the hubs are gone
    stats = hubness_stats(mutual.neighbors)
    assert np.array_equal(stats.in_degree, mutual.degree) and stats.max_in_degree <= 10
    assert hubness_stats(plain.neighbors).max_in_degree > 60
    # the padding is no edge anywhere
    edges = to_networkx(mutual, include_conflicts=False)
    assert edges.number_of_edges() == mutual.degree.sum() // 2 and not edges.has_node(-1)


def test_a_walk_on_a_mutual_graph_steps_only_along_mutual_edges():
    rows = hub_pool(120, 16)
    targets = rows[:6] + 0.1
    params = G2ISParams(graph_rescale="mutual", k=8, n_components=2)
    plan = prepare_walk(rows, targets, 20, params)
    assert (plan.graph.neighbors == NO_NEIGHBOR).any()
    events = list(walk_events(plan, record_candidates=True))
    result = result_from_events(plan, events)
    assert len(result.rows) == 20 and len(set(result.rows)) == 20
    listed = {(i, int(j)) for i in range(len(rows)) for j in plan.graph.neighbours_of(i)}
    local = [e for e in events if isinstance(e, Candidate) and e.phase == "local"]
    assert any(e.verdict == "accepted" for e in local) and all((e.from_row, e.row) in listed for e in local)


def test_csls_ranks_by_the_penalised_score():
    # Row 0's two candidates have the same cosine; the one that is close to everything (a hub) loses the tie.
    cands = np.array([[1, 2], [0, 2], [0, 1]])
    cosines = np.array([[0.5, 0.5], [0.9, 0.5], [0.9, 0.5]], np.float32)
    neighbors, similarities = rescaled_neighbors(cands, cosines, 1, "csls")
    # r = mean cosine of each row's nearest 1: r0 = 0.5, r1 = 0.9, r2 = 0.9 -> row 0: both candidates have r 0.9,
    # so the tie goes to the lower index; row 1: 2*0.9 - 0.9 - r0 = 0.4 vs 2*0.5 - 0.9 - r2 = -0.8 -> row 0.
    assert neighbors[:, 0].tolist() == [1, 0, 0]
    cosines[0] = [0.5, 0.49]
    cands[0] = [1, 2]
    r_hub = np.array([0.5, 0.9, 0.1], np.float32)  # make row 2 a non-hub: its own nearest cosine is small
    cosines[2] = [0.1, 0.05]
    neighbors, _ = rescaled_neighbors(cands, cosines, 1, "csls")
    assert neighbors[0, 0] == 2, r_hub  # 2*0.49 - r(2)=0.1 beats 2*0.5 - r(1)=0.9
    with pytest.raises(ValueError, match="rescale must be one of"):
        build_graph(hub_pool(20, 8), k=3, rescale="bogus")
