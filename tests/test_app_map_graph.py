"""The Map and Graph pages and their core (``core.views.map``, ``core.views.graph``): layouts computed once and read
back from the store, the tiny-project fallback, escaped user text in plotly hovers and pyvis titles, conflict
edges drawn apart from similarity edges, and the pages themselves through ``AppTest`` on real tiny-model features.

The first test of a process that runs UMAP pays numba's compilation of UMAP's kernels (~30 s on 2 cores)."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import REPO, chat_rows, write_jsonl
from streamlit.testing.v1 import AppTest

from core.config import FeatureSettings, ProjectionArguments, WarmupArguments
from core.data.ingest import ingest_files
from core.features.featurize import run_features
from core.selection.graph import build_graph, to_networkx
from core.selection.runs import FeaturesMissing, feature_index, run_selection
from core.store import Store
from core.views import graph as graph_view
from core.views import map as maps

MAIN = str(REPO / "app" / "main.py")
SCRIPT = "<script>alert('map')</script>"


def vis_dataset(page: str, name: str) -> list[dict]:
    """The nodes or edges a pyvis page hands to vis-network (``name = new vis.DataSet([...]);``)."""
    match = re.search(rf"{name} = new vis\.DataSet\((\[.*?\])\);", page, re.S)
    assert match, f"no {name} DataSet in the page"
    return json.loads(match.group(1))


def figure_spec(element) -> dict:
    return json.loads(element.proto.spec)


def test_layouts_are_computed_once_then_read_from_the_store(explore_project):
    root, project = explore_project
    store = Store(root)
    index = feature_index(store, project)
    assert maps.load_map(store, project, "gradient", index) is None

    gradient = maps.compute_map(store, project, "gradient", index=index)
    n = len(index.pool_ids) + len(index.target_ids)
    assert gradient.row_ids == index.pool_ids + index.target_ids  # pool in feature order, then the targets
    assert gradient.roles == ["pool"] * 60 + ["targets"] * 6 and gradient.n_pool == 60
    assert gradient.x.shape == gradient.y.shape == (n,) and gradient.x.dtype == np.float32
    assert np.isfinite(gradient.x).all() and np.ptp(gradient.x) > 0 and np.ptp(gradient.y) > 0
    assert gradient.method == "umap" and "PCA-50" in gradient.note
    assert set(gradient.sources[:60]) == {"math", "code", "chat"}
    assert gradient.previews[0] and len(max(gradient.previews, key=len)) <= maps.PREVIEW_CHARS
    (stored,) = store.map_layouts(project)

    again = maps.compute_map(store, project, "gradient", index=index)  # already stored: read, not recomputed
    assert store.map_layouts(project) == [stored]
    loaded = maps.load_map(store, project, "gradient", index)
    for points in (again, loaded):
        assert points.key == stored["key"] and points.row_ids == gradient.row_ids
        np.testing.assert_array_equal(points.x, gradient.x)
        np.testing.assert_array_equal(points.y, gradient.y)

    text = maps.compute_map(store, project, "text", index=index)
    assert text.row_ids == gradient.row_ids and text.x.shape == (n,)
    assert not np.allclose(text.x, gradient.x)
    assert len(store.map_layouts(project)) == 2 and len(store.map_layouts(project, space="text")) == 1

    # The graph view places nodes at their map positions (scaled; y flipped for the canvas).
    stored_graph = graph_view.build_stored_graph(store, project, index)
    assert graph_view.stored_graph(store, index).key == stored_graph.key
    nodes, capped = graph_view.neighbourhood_nodes(stored_graph.graph, 0, hops=1, per_node=8)
    conflicts = int((stored_graph.graph.conflict_similarities[0] < 0).sum())  # (the centre's negative edges join)
    assert nodes[0] == 0 and len(nodes) == 9 + conflicts and not capped
    view = graph_view.subgraph_view(store, project, index, stored_graph.graph, nodes, centre=0, points=gradient,
                                    layout="map")
    assert not view.notes
    map_colors = maps.colour_by_source(gradient).colors  # a source has the same colour on both pages
    assert view.colors == {source: map_colors[source] for source in ("math", "code", "chat")}
    xs = np.array([view.positions[node][0] for node in nodes])
    ys = np.array([view.positions[node][1] for node in nodes])
    assert np.array_equal(np.argsort(xs, kind="stable"), np.argsort(gradient.x[nodes], kind="stable"))
    assert np.array_equal(np.argsort(ys, kind="stable"), np.argsort(-gradient.y[nodes], kind="stable"))


def test_tiny_project_uses_pca_and_escapes_user_text_everywhere(cache, tmp_path, tiny_model_dir):
    store = Store()
    rows = chat_rows(6, "pool")
    rows[2]["messages"][0]["content"] = f"Please run {SCRIPT} & tell me <b>why</b>"
    rows[2]["id"], rows[2]["source"] = "evil<img src=x>", "web<i>"
    ingest_files(store, "tiny", "pool", [write_jsonl(tmp_path / "pool.jsonl", rows)])
    ingest_files(store, "tiny", "targets", [write_jsonl(tmp_path / "targets.jsonl", chat_rows(2, "target"))])
    settings = FeatureSettings(model=str(tiny_model_dir), max_tokens=256, projection=ProjectionArguments(dim=64),
                               warmup=WarmupArguments(fraction=0.5))
    store.ensure_project("tiny", settings.to_dict())
    run_features(store, "tiny", settings, log=lambda text: None)
    index = feature_index(store, "tiny")

    points = maps.compute_map(store, "tiny", "gradient", index=index)
    assert len(points) == 8 and points.method == "pca" and "PCA" in points.note and "UMAP" in points.note
    assert np.isfinite(points.x).all() and np.ptp(points.x) > 0

    figure = maps.scatter_figure(points, maps.colour_by_source(points))
    hovers = [text for trace in figure.data for text in trace.hovertext]
    (evil_hover,) = [text for text in hovers if "evil" in text]
    assert "&lt;script&gt;alert(&#x27;map&#x27;)&lt;/script&gt;" in evil_hover and "<script>" not in evil_hover
    assert "evil&lt;img src=x&gt;" in evil_hover and "web&lt;i&gt;" in evil_hover
    assert "web&lt;i&gt;" in [trace.name for trace in figure.data]

    stored = graph_view.build_stored_graph(store, "tiny", index)
    assert stored.graph.n_nodes == 6 and stored.graph.k == 5  # k clipped to n - 1
    centre = index.pool_ids.index("evil<img src=x>")
    nodes, _ = graph_view.neighbourhood_nodes(stored.graph, centre, hops=1)
    view = graph_view.subgraph_view(store, "tiny", index, stored.graph, nodes, centre=centre, points=points)
    page = graph_view.network_html(view)
    assert "<script>alert" not in page and "<img src=x>" not in page and "<b>why" not in page
    (node,) = [n for n in vis_dataset(page, "nodes") if n["id"] == centre]
    # vis-network draws labels on a canvas and shows string titles as text, so they carry the raw text; the page
    # itself never contains it unescaped (asserted above: pyvis serialises the data with JSON escaping)
    assert node["label"] == "evil<img src=x>"
    assert node["title"].startswith("evil<img src=x> · web<i> · degree ")
    assert f"Please run {SCRIPT} & tell me <b>why</b>" in node["title"]
    assert node["x"] is not None and node["physics"] is False


def test_conflict_edges_are_drawn_red_and_dashed_and_neighbourhoods_are_capped():
    rng = np.random.default_rng(3)
    graph = build_graph(rng.normal(size=(40, 16)).astype(np.float32), k=6, k_neg=3, backend="torch")
    assert (graph.conflict_similarities[0] < 0).all()  # random directions: the least similar rows are negative

    nodes, capped = graph_view.neighbourhood_nodes(graph, 0, hops=2, per_node=4)
    assert not capped and set(graph.neighbors[0, :4]) <= set(nodes) and set(graph.conflicts[0]) <= set(nodes)
    small, capped = graph_view.neighbourhood_nodes(graph, 0, hops=3, per_node=6, max_nodes=5)
    assert capped and len(small) == 5 and small[0] == 0

    subgraph = to_networkx(graph, nodes)
    view = graph_view.GraphView(
        nodes=nodes, graph=subgraph, row_ids={n: f"row-{n}" for n in nodes},
        sources={n: ("a", "b")[n % 2] for n in nodes}, previews={n: f"text {n}" for n in nodes},
        positions={n: (float(n), float(-n)) for n in nodes}, centre=0)
    assert view.conflict_edges >= 3 and view.similar_edges > 0
    edges = vis_dataset(graph_view.network_html(view), "edges")
    assert len(edges) == subgraph.number_of_edges()
    for edge in edges:
        kind = subgraph.edges[edge["from"], edge["to"]]["kind"]
        style = graph_view.CONFLICT_STYLE if kind == "conflict" else graph_view.SIMILAR_STYLE
        assert (edge["color"], edge["dashes"]) == (style["color"], style["dashes"])
        assert edge["title"].startswith(kind) and edge["arrows"] == {"to": {"enabled": False}}
    assert {e["dashes"] for e in edges} == {True, False}

    summary = graph_view.graph_summary(view)
    assert summary.nodes == len(nodes) and summary.conflict_edges == view.conflict_edges
    assert summary.sources == {"a": sum(n % 2 == 0 for n in nodes), "b": sum(n % 2 == 1 for n in nodes)}
    assert summary.top_degree[0]["degree"] == max(d for _, d in subgraph.degree())


def test_communities_are_laid_out_apart_and_labels_show_on_hover_past_a_few_dozen_nodes():
    """Issue 19: at map positions a neighbourhood sat in two cramped UMAP clusters with every label drawn."""
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(3, 16)) * 4
    features = np.concatenate([c + rng.normal(size=(30, 16)) for c in centres]).astype(np.float32)
    graph = build_graph(features, k=8, k_neg=2, backend="torch")
    nodes = list(range(90))
    subgraph = to_networkx(graph, nodes)
    positions, communities = graph_view.community_layout(subgraph, nodes)
    assert sorted(n for group in communities for n in group) == nodes and len(communities) >= 3
    assert (positions, communities) == graph_view.community_layout(subgraph, nodes)  # deterministic
    coords = np.array([positions[n] for n in nodes])
    nearest = np.sort(np.linalg.norm(coords[:, None] - coords[None], axis=2), axis=1)[:, 1]
    span = np.ptp(coords, axis=0).max()
    # Spread: no two nodes on top of each other, and a node's nearest neighbour a few percent of the drawing away.
    assert nearest.min() > 0.005 * span and np.median(nearest) > 0.02 * span
    # Communities apart: each community's box is disjoint from the others'.
    boxes = [(coords[g].min(axis=0), coords[g].max(axis=0)) for g in ([nodes.index(n) for n in c] for c in communities)]
    for i, (low_a, high_a) in enumerate(boxes):
        for low_b, high_b in boxes[i + 1:]:
            assert (high_a < low_b).any() or (high_b < low_a).any()

    def labels(count: int) -> list[str]:
        chosen = nodes[:count]
        view = graph_view.GraphView(chosen, to_networkx(graph, chosen), {n: f"row-{n}" for n in chosen},
                                    {n: "s" for n in chosen}, {n: "" for n in chosen},
                                    {n: (float(n), 0.0) for n in chosen}, centre=0)
        return [node["label"] for node in vis_dataset(graph_view.network_html(view), "nodes")]

    assert labels(graph_view.LABELLED_NODES) == [f"row-{n}" for n in range(graph_view.LABELLED_NODES)]
    many = labels(graph_view.LABELLED_NODES + 1)
    assert many[0] == "row-0" and set(many[1:]) == {" "}  # the centre keeps its label; the others show on hover


def open_page(page: str, project: str) -> AppTest:
    app = AppTest.from_file(MAIN, default_timeout=240)
    app.query_params["project"] = project
    app.run()
    app.switch_page(f"../pages/{page}.py").run()
    assert not app.exception, app.exception
    return app


def test_map_page_draws_both_maps_colours_by_a_selection_and_lists_selected_rows(explore_project):
    root, project = explore_project
    store = Store(root)
    run = run_selection(store, project, "random", budget=10)
    app = open_page("map", project)  # 66 rows: both layouts are computed on the first visit
    charts = app.get("plotly_chart")
    assert len(charts) == 2 and len(store.map_layouts(project)) == 2
    spec = figure_spec(charts[0])
    assert {trace["name"] for trace in spec["data"]} == {"math", "code", "chat", "target"}
    assert sum(len(trace["hovertext"]) for trace in spec["data"]) == 66

    app.radio[0].set_value("a selection run").run()
    assert not app.exception
    spec = figure_spec(app.get("plotly_chart")[1])
    names = {trace["name"]: len(trace["hovertext"]) for trace in spec["data"]}
    assert names == {"picked by random": 10, "not picked": 50, "target": 6}
    # No legend text twice (the title was "picked by random" too), and the picks are drawn over the target stars,
    # bigger than the rest of the pool.
    assert spec["layout"]["legend"]["title"]["text"] == f"run {run.run_id}"
    assert [trace["name"] for trace in spec["data"]][-2:] == ["target", "picked by random"]
    sizes = {trace["name"]: trace["marker"]["size"] for trace in spec["data"]}
    assert sizes["picked by random"] > sizes["not picked"]

    # A lasso on the gradient map: streamlit hands back the points' customdata (point indices).
    points = maps.load_map(store, project, "gradient")
    first_pick = store.selection_rows(run.run_id)[0][1]
    chosen = [3, points.row_ids.index(first_pick), 62]
    app.session_state["map-gradient"] = {"selection": {"points": [{"customdata": i} for i in chosen],
                                                       "point_indices": [], "box": [], "lasso": []}}
    app.run()
    assert not app.exception
    assert any(m.value.startswith(f"{len(set(chosen))} rows selected") for m in app.markdown)
    table = app.dataframe[0].value
    assert list(table["id"]) == [points.row_ids[i] for i in sorted(set(chosen))]
    assert list(table["role"])[-1] == "targets" and all(text for text in table["text"])


def test_graph_page_builds_the_graph_once_then_shows_a_neighbourhood(explore_project):
    root, project = explore_project
    store = Store(root)
    app = open_page("graph", project)
    assert any("has not been built yet" in i.value for i in app.info)
    assert not app.get("iframe")
    app.button[0].click().run()
    assert not app.exception
    index = feature_index(store, project)
    assert store.latest_graph(index.feature_key) is not None
    (frame,) = app.get("iframe")
    page = frame.proto.srcdoc
    nodes = vis_dataset(page, "nodes")
    assert nodes[0]["label"] == index.pool_ids[0] and len(nodes) > 1
    assert not any("spring layout" in i.value for i in app.info)  # communities need no map
    app.radio(key="graph-layout").set_value("map").run()
    assert any("spring layout" in i.value for i in app.info)  # no map stored in this copy yet
    app.radio(key="graph-layout").set_value("communities").run()
    assert any(m.value.startswith(f"**{len(nodes)} nodes**") for m in app.markdown)
    assert [m.label for m in app.metric][:3] == ["Nodes", "Mean degree", "Components"]

    app.text_input[0].set_value("no-such-row").run()
    assert not app.exception and any("no pool row with this id" in w.value for w in app.warning)
    assert app.code[0].value.splitlines() == index.pool_ids[:5] and not app.get("iframe")

    run_selection(store, project, "random", budget=12)
    app.text_input[0].set_value(index.pool_ids[5]).run()
    app.radio[0].set_value("Rows of a selection run").run()
    assert not app.exception
    assert len(vis_dataset(app.get("iframe")[0].proto.srcdoc, "nodes")) == 12


def test_pages_without_features_say_what_to_do(cache, tmp_path, tiny_model_dir):
    store = Store()
    ingest_files(store, "bare", "pool", [write_jsonl(tmp_path / "pool.jsonl", chat_rows(4, "pool"))])
    ingest_files(store, "bare", "targets", [write_jsonl(tmp_path / "targets.jsonl", chat_rows(2, "target"))])
    store.ensure_project("bare", FeatureSettings(model=str(tiny_model_dir), max_tokens=64).to_dict())
    with pytest.raises(FeaturesMissing):
        feature_index(store, "bare")
    for page in ("map", "graph"):
        app = open_page(page, "bare")
        assert any("no features for its current settings" in w.value for w in app.warning)
        assert [link.label for link in app.get("page_link")] == ["Compute the features on the Features page"]
        assert not app.get("plotly_chart") and not app.get("iframe")


def test_pages_show_a_running_feature_job_instead_of_asking_to_start_one(cache, tmp_path, tiny_model_dir, capsys):
    """Issue 19: Map, Graph, Walk, Compare and `core select` used to say "run `python -m core features`" while that
    job was already running.  A real job row whose worker lock is held (by this process) is a running job."""
    from core import jobs
    from core.cli import main

    store = Store()
    ingest_files(store, "busy", "pool", [write_jsonl(tmp_path / "pool.jsonl", chat_rows(4, "pool"))])
    ingest_files(store, "busy", "targets", [write_jsonl(tmp_path / "targets.jsonl", chat_rows(2, "target"))])
    settings = FeatureSettings(model=str(tiny_model_dir), max_tokens=64)
    store.ensure_project("busy", settings.to_dict())
    job_id = jobs.start_features_job(store, "busy", settings, spawn=False)
    with jobs._hold_lock(store, job_id):
        store.update_job(job_id, status="running", done=30, total=120, rate=2.0, phase="pool features")
        for page in ("map", "graph", "walk", "compare"):
            app = open_page(page, "busy")
            assert not app.exception, page
            shown = " ".join(p.proto.text for p in app.get("progress")).replace("\\", "")  # (markdown-escaped)
            assert f"job {job_id} running (pool features): 30 of 120 rows (25%), about 45 s left" in shown, page
            assert [link.label for link in app.get("page_link")] == ["Watch or cancel it on the Features page"], page
            assert not any("python -m core features" in w.value for w in app.warning), page
        assert main(["select", "--project", "busy", "--method", "less", "--budget", "2"]) != 0
        error = capsys.readouterr().err
        assert f"the feature job {job_id} running" in error and "30 of 120 rows" in error
        assert "run `python -m core features" not in error
        store.update_job(job_id, status="done")
    app = open_page("map", "busy")  # the job is over and left no features: back to the way to start one
    assert [link.label for link in app.get("page_link")] == ["Compute the features on the Features page"]
