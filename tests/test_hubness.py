"""Hubness diagnostics of the kNN graph (``core.selection.hubness``, its views in ``core.views.graph``, ``python -m
core graph --stats`` and the Graph page's Hubness section): exact in-degrees, skewness, hubs, anti-hubs and
neighbour purity on hand-built neighbour arrays, then the command line and the page on tiny-model features."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import REPO, chat_rows, cli_project
from scipy.stats import skew
from streamlit.testing.v1 import AppTest

from core.cli import main
from core.selection.graph import GradientGraph
from core.selection.hubness import HUB_DOMINATED_SHARE_FACTOR, SourcePurity, hubness_stats
from core.selection.runs import DEFAULT_GEOMETRY, feature_index, load_project_features, project_graph
from core.store import Store
from core.views import graph as graph_view

MAIN = str(REPO / "app" / "main.py")


def ring(n: int, k: int) -> np.ndarray:
    """Row i's neighbours are i+1 .. i+k (mod n): every row is listed exactly k times."""
    return (np.arange(n)[:, None] + np.arange(1, k + 1)[None, :]) % n


def star(n: int) -> np.ndarray:
    """k=3: every row but 0 lists row 0 first, then the next two rows of a ring over 1..n-1; row 0 lists 1, 2, 3."""
    others = np.arange(1, n)
    rows = [[1, 2, 3]] + [[0, others[i % (n - 1)], others[(i + 1) % (n - 1)]] for i in range(1, n)]
    return np.array(rows)


def test_a_star_is_hub_dominated():
    stats = hubness_stats(star(40))
    expected = np.array([39] + [3] * 3 + [2] * 36)  # 0: everyone's first; 1-3: also row 0's; the rest: the ring's 2
    np.testing.assert_array_equal(stats.in_degree, expected)
    assert stats.in_degree.sum() == 40 * 3 and stats.n == 40 and stats.k == 3
    assert stats.skewness == pytest.approx(skew(expected)) and stats.skewness > 5
    assert stats.max_in_degree == 39 and stats.top_hubs(3) == [(0, 39), (1, 3), (2, 3)]  # ties by the lower index
    assert stats.top_percent_rows == 1 and stats.top_percent_share == pytest.approx(39 / 120)
    assert stats.top_ten_share == pytest.approx((39 + 3 * 3 + 6 * 2) / 120)
    assert stats.top_percent_factor == pytest.approx(13.0) and 13.0 >= HUB_DOMINATED_SHARE_FACTOR
    assert stats.anti_hub_share == 0 and stats.hub_dominated and stats.level == "hub-dominated"
    verdict = stats.verdict()
    assert verdict.startswith("hub-dominated: the top 1% of rows (the top row) fill 32% of all neighbour slots, "
                              "13.0x their fair share of 2.5%; every row is somebody's neighbour; ")
    assert "the most-listed row is a neighbour of 39 of the other 39 rows" in verdict
    assert stats.purity_by_source == {}  # no sources given


def test_a_ring_is_balanced_with_skewness_zero():
    stats = hubness_stats(ring(50, 5))
    np.testing.assert_array_equal(stats.in_degree, np.full(50, 5))
    assert stats.skewness == 0.0  # constant in-degree: scipy's 0/0 is taken as no tail
    assert not stats.hub_dominated and stats.level == "balanced" and stats.anti_hub_share == 0
    assert stats.top_percent_share == pytest.approx(1 / 50) and stats.top_percent_factor == pytest.approx(1.0)
    assert stats.top_ten_share == pytest.approx(10 / 50)
    assert stats.verdict().startswith("balanced: the top 1% of rows (the top row) fill 2.0% of all neighbour slots, "
                                      "1.0x their fair share of 2.0%; every row is somebody's neighbour; "
                                      "in-degree skewness 0.00")


def two_hubs(n: int) -> np.ndarray:
    """k=2: every row lists rows 0 and 1 (those two list each other and row 2): n - 3 rows are nobody's neighbour."""
    neighbours = np.tile([0, 1], (n, 1))
    neighbours[0], neighbours[1] = [1, 2], [0, 2]
    return neighbours


def test_anti_hubs_and_the_top_percent_of_a_larger_pool():
    stats = hubness_stats(two_hubs(300))
    assert stats.top_hubs(3) == [(0, 299), (1, 299), (2, 2)]
    assert stats.anti_hub_share == pytest.approx(297 / 300) and stats.top_percent_rows == 3  # ceil(1% of 300)
    assert stats.top_percent_share == pytest.approx(1.0) and stats.hub_dominated
    assert "99% of rows are nobody's neighbour" in stats.verdict()
    assert "the top 1% of rows (the top 3 rows) fill 100% of all neighbour slots" in stats.verdict()


def test_a_skewed_tail_that_holds_few_slots_is_skewed_not_dominated():
    # A 2,000-row ring (k=8) in which 100 rows swap their first neighbour for row 0: one hub of in-degree 108
    # (skewness far above 1) holding only 108 / 16,000 = 0.7% of the slots, 1.4x the top 1%'s fair share.
    neighbours = ring(2000, 8)
    neighbours[1000:1100, 0] = 0
    stats = hubness_stats(neighbours)
    assert stats.in_degree[0] == 108 and stats.skewness > 1 and not stats.hub_dominated
    assert stats.level == "skewed" and stats.verdict().startswith("skewed: in-degree skewness ")


def test_purity_by_source_is_exact():
    sources = ["a", "a", "a", "a", "b", "b"]
    neighbours = np.array([[1, 4], [0, 2], [4, 5], [0, 1], [5, 0], [4, 3]])
    stats = hubness_stats(neighbours, sources)
    np.testing.assert_array_equal(stats.in_degree, [3, 2, 1, 1, 3, 2])
    # a: own-source shares 1/2, 1, 0, 1 -> 0.625; b: 1/2, 1/2 -> 0.5
    assert stats.purity_by_source == {"a": SourcePurity(4, 4 / 6, 0.625, 7 / 4), "b": SourcePurity(2, 2 / 6, 0.5, 2.5)}
    assert list(stats.purity_by_source) == ["a", "b"]  # largest source first
    assert graph_view.purity_table(stats) == [
        {"source": "a", "rows": 4, "pool share (%)": 66.7, "own-source neighbours (%)": 62.5, "mean in-degree": 1.8},
        {"source": "b", "rows": 2, "pool share (%)": 33.3, "own-source neighbours (%)": 50.0, "mean in-degree": 2.5},
    ]
    # A row without a source counts as the source "".
    none = hubness_stats(ring(4, 1), ["x", None, None, "x"])
    assert none.purity_by_source == {"": SourcePurity(2, 0.5, 0.5, 1.0), "x": SourcePurity(2, 0.5, 0.5, 1.0)}


def test_bad_input_and_an_edgeless_graph():
    with pytest.raises(ValueError, match="0..2"):
        hubness_stats(np.array([[1], [2], [3]]))
    with pytest.raises(ValueError, match="2 sources for 3 rows"):
        hubness_stats(ring(3, 1), ["a", "b"])
    with pytest.raises(ValueError, match="integer"):
        hubness_stats(np.ones((3, 1)))
    empty = hubness_stats(np.zeros((1, 0), np.int64), ["a"])
    assert empty.level == "empty" and not empty.hub_dominated and empty.verdict().startswith("empty:")
    assert empty.purity_by_source["a"].rows == 1 and np.isnan(empty.purity_by_source["a"].purity)
    assert graph_view.purity_table(empty)[0]["own-source neighbours (%)"] is None
    assert list(graph_view.hubness_figure(empty).data[0].y) == [1]  # the one row, in-degree 0


def test_hub_table_and_figure():
    stats = hubness_stats(star(40))
    ids = [f"row-{i}" for i in range(40)]
    texts = [f"text of\nrow {i} " + "word " * 50 for i in range(40)]
    sources = ["hub"] + ["other"] * 39
    table = graph_view.hub_table(stats, ids, texts, sources, count=2, preview_chars=20)
    assert table == [
        {"id": "row-0", "source": "hub", "in-degree": 39, "listed by (% of rows)": 100.0, "text": "text of row 0 word …"},
        {"id": "row-1", "source": "other", "in-degree": 3, "listed by (% of rows)": 7.7, "text": "text of row 1 word …"},
    ]
    # Mappings of the hubs only do as well as whole lists.
    assert graph_view.hub_table(stats, ids, {0: texts[0], 1: texts[1]}, {0: "hub", 1: "other"}, count=2,
                                preview_chars=20) == table

    figure = graph_view.hubness_figure(stats)
    (bars,) = figure.data
    assert dict(zip(bars.customdata, bars.y)) == {"2": 36, "3": 3, "39": 1} and sum(bars.y) == 40
    (line,) = figure.layout.shapes
    assert line.x0 == line.x1 == 3 and figure.layout.yaxis.type is None  # 36 : 1 is below LOG_Y_RATIO

    figure = graph_view.hubness_figure(hubness_stats(two_hubs(300)))
    assert figure.layout.yaxis.type == "log"  # 297 anti-hubs next to single hubs
    # k=1, every row lists row 0 (row 0 lists row 1): in-degrees up to 999, drawn in 9-wide bins.
    pointing = np.zeros((1000, 1), np.int64)
    pointing[0] = 1
    (bars,) = graph_view.hubness_figure(hubness_stats(pointing)).data
    assert dict(zip(bars.customdata, bars.y)) == {"0-8": 999, "999-1007": 1}


@pytest.fixture()
def project_with_features(tmp_path, cache, tiny_model_dir, capsys):
    """tests/test_selection_cli.py's project, with three sources in the pool."""
    pool = chat_rows(60, "pool")
    for i, row in enumerate(pool):
        row["source"] = ("math", "code", "chat")[i % 3]
    return cli_project(tmp_path, tiny_model_dir, pool, capsys)


def test_graph_stats_prints_the_verdict_hubs_and_purity(project_with_features, capsys):
    project = project_with_features
    assert main(["graph", "--project", project, "--k", "8", "--geometry", "cosine", "--stats"]) == 0
    out = capsys.readouterr().out
    with capsys.disabled():  # what a user sees, shown with -s
        print(out)
    store = Store()
    features = load_project_features(store, project)
    graph, _ = project_graph(store, features, k=8)
    stats = hubness_stats(graph.neighbors, features.pool_sources)
    lines = out.splitlines()
    assert lines[0].startswith("graph ") and "60 nodes, k=8" in lines[0]
    assert lines[1] == f"hubness: {stats.verdict()}"
    assert f"in-degree skewness {stats.skewness:.3f}; max in-degree {stats.max_in_degree} (k=8)" in lines[2]
    start = lines.index("top 10 hubs:") + 2
    for line, (row, degree) in zip(lines[start:start + 10], stats.top_hubs(10)):
        assert line.split()[:3] == [features.pool_ids[row], features.pool_sources[row], str(degree)]
        assert line.split(None, 3)[3] == " ".join(features.pool_texts[row].split())[:59] + "…"
    purity = lines[lines.index("top 10 hubs:") + 12:]
    assert purity[0].startswith("neighbour purity by source") and len(purity) == 5
    assert {line.split()[0] for line in purity[2:]} == {"math", "code", "chat"}
    assert all(line.split()[1] == "20" and line.split()[2] == "33.3%" for line in purity[2:])

    assert main(["graph", "--project", project, "--k", "8", "--geometry", "cosine", "--json"]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert "60 nodes, k=8" in captured.err  # stdout is the JSON's
    assert printed["verdict"] == stats.verdict() and printed["level"] == stats.level and printed["k"] == 8
    assert [hub["id"] for hub in printed["hubs"]] == [features.pool_ids[row] for row, _ in stats.top_hubs(10)]
    assert {row["source"] for row in printed["purity_by_source"]} == {"math", "code", "chat"}


def test_graph_page_shows_the_hubness_section(explore_project):
    root, project = explore_project
    store = Store(root)
    index = feature_index(store, project)
    stored = graph_view.build_stored_graph(store, project, index)
    stats = graph_view.stored_hubness(store, project, index.pool_ids, stored.graph)
    app = AppTest.from_file(MAIN, default_timeout=240)
    app.query_params["project"] = project
    app.run()
    app.switch_page("../pages/graph.py").run()
    assert not app.exception, app.exception
    shown = app.warning if stats.hub_dominated else app.info
    assert any(message.value.startswith("**Hubness:** ") and "neighbour slots" in message.value for message in shown)
    (expander,) = [e for e in app.expander if e.label.startswith("Hubness")]
    assert len(expander.get("plotly_chart")) == 1
    hubs, purity = (frame.value for frame in expander.dataframe)
    assert list(hubs["id"]) == [index.pool_ids[row] for row, _ in stats.top_hubs(10)]
    assert list(hubs["in-degree"]) == [degree for _, degree in stats.top_hubs(10)] and all(hubs["text"])
    assert set(purity["source"]) == {"math", "code", "chat"} and list(purity["rows"]) == [20, 20, 20]
    assert app.get("iframe")  # the neighbourhood view still follows

    # A hub-dominated graph (stored as the newest of these features) turns the verdict into a warning.
    n = len(index.pool_ids)
    star_graph = GradientGraph(neighbors=star(n), similarities=np.tile(np.float32([0.9, 0.8, 0.7]), (n, 1)),
                               conflicts=((np.arange(n) + n // 2) % n)[:, None],
                               conflict_similarities=np.full((n, 1), -0.1, np.float32), k=3)
    store.save_graph("star", index.feature_key, star_graph, "torch", 0.0, DEFAULT_GEOMETRY)  # (the page's geometry)
    app.run()
    assert not app.exception, app.exception
    assert any(w.value.startswith("**Hubness:** hub-dominated") for w in app.warning), [w.value for w in app.warning]
    (expander,) = [e for e in app.expander if e.label.startswith("Hubness")]
    assert list(expander.dataframe[0].value["in-degree"])[:2] == [n - 1, 3]
