"""The Walk page, run by ``streamlit.testing.v1.AppTest`` on the real explore project (tiny-model features), the
real store and the real G2IS walk; and the walk view's figures on plain arrays."""
from __future__ import annotations

import base64
import dataclasses
import json
import time

import numpy as np
import pyarrow as pa
from conftest import REPO, make_project, tiny_settings
from streamlit.testing.v1 import AppTest

from core.selection.graph import normalize_rows
from core.selection.runs import feature_index, load_project_features, row_text, run_selection
from core.store import Store
from core.views.map import layout_key
from core.views.text import markdown_text
from core.views.walk import Pick, load_replay, map_backdrop, walk_path_figure

MAIN = str(REPO / "app" / "main.py")
WALK = "../pages/walk.py"  # relative to app/main.py
PLAY_SECONDS = 0.8  # pages/walk.py's tick while playing


def open_walk(project: str, **query: str) -> AppTest:
    app = AppTest.from_file(MAIN, default_timeout=120)
    app.query_params["project"] = project
    app.run()
    for name, value in query.items():
        app.query_params[name] = value
    app.switch_page(WALK).run()
    assert not app.exception, app.exception
    return app


def shown_step(app: AppTest) -> int:
    """The step number the page says it shows ("**Step 3 of 41** ...")."""
    (line,) = [m.value for m in app.markdown if m.value.startswith("**Step ")]
    return int(line.split()[1])


def event_message(app: AppTest) -> str:
    """The current event in words: the one success / warning / info box of the step panel."""
    boxes = [b.value for b in (*app.success, *app.warning, *app.info)
             if not b.value.startswith(("No map layout", "The walk's path needs"))]
    assert len(boxes) == 1, boxes
    return boxes[0]


def chart(app: AppTest, key: str) -> dict:
    """The plotly figure (as JSON) of the chart drawn with ``key``."""
    (element,) = [c for c in app.get("plotly_chart") if c.proto.id.endswith(f"-{key}")]
    return json.loads(element.proto.spec)


def values(data) -> list:
    """A plotly JSON array as a list (NaN, a line break, as None): plotly sends numpy arrays as base64 typed arrays
    ({"dtype", "bdata"})."""
    if isinstance(data, dict):
        data = np.frombuffer(base64.b64decode(data["bdata"]), dtype=np.dtype(data["dtype"])).tolist()
    return [None if isinstance(v, float) and np.isnan(v) else v for v in data]


def button(app: AppTest, label: str):
    (found,) = [b for b in app.button if b.label == label]
    return found


def expected_words(event: dict) -> str:
    """What the page must say for a stored event, written from the event's stored numbers."""
    def num(x: float) -> str:
        return f"{x:.2f}".replace("-", "\u2212")

    if event["kind"] == "component_start":
        return f"component {event['component']}: weight {event['weight']:.3f}"
    if event["kind"] == "anchor":
        return f"anchor: row {event['row']} from the"
    if event["kind"] == "fallback":
        return "fallback to global ranking"
    if event["kind"] == "component_end":
        return f"component {event['component']} done: {event['filled']} of {event['budget']}"
    if event["verdict"] == "taken":
        return f"rejected: row {event['row']} is already selected"
    if event["verdict"] == "conflict":
        return f"rejected: conflicts with row {event['conflict_row']}, dot {num(event['conflict_dot'])}"
    if event["verdict"] == "inconsistent":
        return (f"rejected: similarity would fall to {event['new_similarity'] / event['old_similarity']:.2f} of its "
                f"previous value, below \u03b4={event['delta']:g}")
    if event["phase"] == "local":
        return f"accepted: edge similarity {num(event['edge_similarity'])}"
    return f"accepted: global rank {event['position']}"


def pool_texts(store: Store, project: str) -> list[str]:
    return [row_text(r.messages) for r in store.rows(project, "pool")]  # the explore pool: every row has features


def test_a_walk_runs_from_the_page_and_steps_next_back_and_jumps(explore_project):
    _, project = explore_project
    store = Store()
    app = open_walk(project)
    assert any("No walk has been run" in i.value for i in app.info)

    # delta = 1 on the tiny model's gradients: the walk rejects candidates as inconsistent and falls back.
    app.radio[0].set_value("rows").run()
    [n for n in app.number_input if n.label == "Rows"][0].set_value(12)
    [n for n in app.number_input if n.label.startswith("δ")][0].set_value(1.0)
    button(app, "Run walk").click().run()
    assert not app.exception, app.exception

    (run,) = store.selection_runs(project, "g2is")
    assert run["budget"] == 12 and run["params"]["delta"] == 1.0
    events = store.walk_events(run["id"])
    kinds = {(e["kind"], e.get("verdict")) for e in events}
    assert {("candidate", "inconsistent"), ("fallback", None)} <= kinds
    texts = pool_texts(store, project)
    assert shown_step(app) == 0 and expected_words(events[0]) in event_message(app)
    assert app.query_params["run"] in (run["id"], [run["id"]])

    button(app, "Next").click().run()
    assert shown_step(app) == 1 and events[1]["kind"] == "anchor"
    assert expected_words(events[1]) in event_message(app)
    assert texts[events[1]["row"]] in [c.value for c in app.code]  # the anchor row's text is shown
    button(app, "Next").click().run()
    assert shown_step(app) == 2 and expected_words(events[2]) in event_message(app)
    button(app, "Back").click().run()
    assert shown_step(app) == 1

    rejected = next(e for e in events if e.get("verdict") == "inconsistent")
    app.number_input(key="walk_step_input").set_value(rejected["step"]).run()
    assert shown_step(app) == rejected["step"]
    assert expected_words(rejected) in event_message(app)
    assert texts[rejected["row"]] in [c.value for c in app.code]
    where = (f"neighbour {rejected['position']} of the walk's current row {rejected['from_row']}"
             if rejected["phase"] == "local" else f"rank {rejected['position']} in the global ranking")
    assert any(where in t.value for t in app.text)
    fallback = next(e for e in events if e["kind"] == "fallback")
    app.number_input(key="walk_step_input").set_value(fallback["step"]).run()
    assert "fallback to global ranking" in event_message(app)
    assert texts[fallback["from_row"]] in [c.value for c in app.code]  # where the walk was stuck

    # Jump to the last component's start, then First.
    starts = [e for e in events if e["kind"] == "component_start"]
    assert len(starts) == 2
    app.selectbox(key="walk_component_jump").set_value(starts[-1]["component"]).run()
    assert shown_step(app) == starts[-1]["step"] and expected_words(starts[-1]) in event_message(app)
    button(app, "First").click().run()
    assert shown_step(app) == 0
    assert button(app, "First").disabled and button(app, "Back").disabled

    # Play advances one step per tick (AppTest drives no fragment timer: a rerun after a tick stands in for it).
    button(app, "Play").click().run()
    assert shown_step(app) == 0 and button(app, "Pause")
    time.sleep(PLAY_SECONDS)
    app.run()
    assert shown_step(app) == 1 and expected_words(events[1]) in event_message(app)
    button(app, "Pause").click().run()
    time.sleep(PLAY_SECONDS)
    app.run()
    assert shown_step(app) == 1 and button(app, "Play")

    # The running similarity curve holds exactly the picks so far; at the last step, the whole selection.
    app.number_input(key="walk_step_input").set_value(len(events) - 1).run()
    assert shown_step(app) == len(events) - 1 and button(app, "Next").disabled
    curve = chart(app, "walk_similarity")
    curve_points = sum(len(values(trace["y"])) for trace in curve["data"])
    assert curve_points == len(store.selection_rows(run["id"])) == run["selected"]
    variance = chart(app, "walk_variance")
    budgets = [e["budget"] for e in starts]
    # Each kept component's budget is its x-axis label (above its bar it sat on the cumulative line).
    ticks = dict(zip(variance["layout"]["xaxis"]["tickvals"], variance["layout"]["xaxis"]["ticktext"]))
    assert [f"budget<br>{b}" in ticks[e["component"]] for b, e in zip(budgets, starts)] == [True, True]
    assert "text" not in variance["data"][0]


def test_a_stored_walk_reopens_at_the_same_step_in_a_fresh_session_without_recomputing(explore_project):
    _, project = explore_project
    store = Store()
    # The tiny model's gradients all point one way (no conflicts); seeded random features over the same rows make
    # the real walk meet conflicts too.  k=5 keeps its graph apart from the project's stored one.
    features = load_project_features(store, project)
    pool = normalize_rows(np.random.default_rng(0).standard_normal(features.pool.shape).astype(np.float32))
    random_features = dataclasses.replace(features, pool=pool, pool_by_checkpoint=[pool])
    older = run_selection(store, project, "g2is", budget=6, params={"delta": 0.8, "k": 5},
                          features=random_features).run_id
    newest = run_selection(store, project, "g2is", budget=10, params={"delta": 0.95}).run_id
    events = store.walk_events(older)
    texts = pool_texts(store, project)

    # First session: open the older run from the run list and jump to a conflict.
    app = open_walk(project)
    assert app.selectbox(key="walk_run_choice").value == newest  # the newest run opens by default
    app.selectbox(key="walk_run_choice").set_value(older).run()
    assert shown_step(app) == 0
    conflict = next(e for e in events if e.get("verdict") == "conflict")
    app.number_input(key="walk_step_input").set_value(conflict["step"]).run()
    assert shown_step(app) == conflict["step"]
    first_message = event_message(app)
    assert expected_words(conflict) in first_message
    shown_code = [c.value for c in app.code]
    assert texts[conflict["row"]] in shown_code and texts[conflict["conflict_row"]] in shown_code
    url = {name: app.query_params[name] for name in ("run", "step")}
    url = {name: value[0] if isinstance(value, list) else value for name, value in url.items()}
    assert url == {"run": older, "step": str(conflict["step"])}

    # A fresh session with the same URL (a refresh, a shared link) shows the same run and step.
    again = open_walk(project, **url)
    assert again.selectbox(key="walk_run_choice").value == older
    assert shown_step(again) == conflict["step"] and event_message(again) == first_message
    assert [c.value for c in again.code] == shown_code
    assert [r["id"] for r in store.selection_runs(project, "g2is")] == [newest, older]  # nothing was re-run
    # Picks replayed from the stored events are the stored selection, in order.
    assert [p.row_id for p in load_replay(store, older).picks] == [r[1] for r in store.selection_rows(older)]


def test_bad_walk_settings_show_a_message_and_store_nothing(explore_project):
    _, project = explore_project
    store = Store()
    app = open_walk(project)
    budget_inputs = ("Rows", "Fraction of the pool")
    # Only the budget input of the chosen kind is shown (the kind is outside the form, so choosing reruns).
    assert [n.label for n in app.number_input if n.label in budget_inputs] == ["Fraction of the pool"]
    app.radio[0].set_value("rows").run()
    assert [n.label for n in app.number_input if n.label in budget_inputs] == ["Rows"]
    [n for n in app.number_input if n.label == "Rows"][0].set_value(0)
    button(app, "Run walk").click().run()
    assert not app.exception
    assert any("budget must be at least 1 row" in e.value for e in app.error)

    app.radio[0].set_value("fraction of the pool").run()
    assert [n.label for n in app.number_input if n.label in budget_inputs] == ["Fraction of the pool"]
    [n for n in app.number_input if n.label.startswith("δ")][0].set_value(0.0)
    button(app, "Run walk").click().run()
    assert not app.exception
    assert any(markdown_text("delta must lie in (0, 1]") in e.value for e in app.error)  # shown escaped
    assert store.selection_runs(project, "g2is") == []


def test_a_project_without_features_says_so_and_cannot_run_a_walk(tmp_path, cache, tiny_model_dir):
    store = Store()
    make_project(tmp_path, store, n_pool=8, n_targets=2, project="bare", settings=tiny_settings(tiny_model_dir))
    app = open_walk("bare")
    assert any("needs gradient features" in w.value and "no features" in w.value for w in app.warning)
    assert button(app, "Run walk").disabled
    (features_link,) = app.get("page_link")  # the Features page is the app's default page: its URL path is ""
    assert features_link.proto.label == "Open the Features page" and features_link.proto.page in ("", "features")
    assert any("No walk has been run" in i.value for i in app.info)


def test_partial_features_are_refused_until_the_user_allows_them(tmp_path, cache, tiny_model_dir):
    from core.features.featurize import run_features

    store = Store()
    settings = tiny_settings(tiny_model_dir)
    make_project(tmp_path, store, n_pool=30, n_targets=4, project="half", settings=settings)
    run_features(store, "half", settings, limit=12, log=lambda _: None)
    app = open_walk("half")
    assert any("18 of 30 pool rows have no feature yet" in shown for shown in (w.value.replace("\\", "")
                                                                             for w in app.warning))
    assert button(app, "Run walk").disabled
    (allow,) = [c for c in app.checkbox if c.label == "Allow partial features"]
    allow.check().run()
    assert not app.exception, app.exception
    assert any("pool: 12 of 30 rows have features" in c.value for c in app.caption)
    app.radio[0].set_value("rows").run()
    [n for n in app.number_input if n.label == "Rows"][0].set_value(4)
    button(app, "Run walk").click().run()
    assert not app.exception, app.exception
    (run,) = store.selection_runs("half", "g2is")
    assert run["params"]["coverage"] == {"pool": [12, 30], "targets": [4, 4]}
    assert any(note.startswith("partial selection: 18 pool rows") for note in run["notes"])


def test_the_walk_path_is_drawn_on_the_stored_gradient_map(explore_project):
    _, project = explore_project
    store = Store()
    run = run_selection(store, project, "g2is", budget=8, params={"delta": 0.8})
    events = store.walk_events(run.run_id)
    last = len(events) - 1

    app = open_walk(project, run=run.run_id, step=str(last))
    assert any(i.value.startswith("No map layout has been computed") for i in app.info)
    assert [link.proto.page for link in app.get("page_link")][-1].endswith("map")  # a link to the Map page
    assert not [c for c in app.get("plotly_chart") if c.proto.id.endswith("-walk_map")]

    # A layout as the Map page stores it (here: pool index i at (i, i mod 7), so positions are easy to check).
    index = feature_index(store, project)
    ids = index.pool_ids + index.target_ids
    x = np.arange(len(ids), dtype=np.float32)
    y = x % 7
    roles = ["pool"] * len(index.pool_ids) + ["targets"] * len(index.target_ids)
    points = pa.table({"point": pa.array(range(len(ids)), pa.int32()), "row_id": ids, "role": roles,
                       "source": [""] * len(ids), "preview": [""] * len(ids), "x": x, "y": y})
    store.save_map_layout(layout_key(project, index.feature_key, "gradient", 0), project, index.feature_key,
                          "gradient", "pca", 0, "", 0.0, points)

    app = open_walk(project, run=run.run_id, step=str(last))
    figure = chart(app, "walk_map")
    traces = {trace["name"]: trace for trace in figure["data"]}
    assert len(values(traces["pool"]["x"])) == len(index.pool_ids)
    assert values(traces["targets"]["x"]) == x[len(index.pool_ids):].tolist()
    expected = []
    for n, pick in enumerate(e for e in events if e["kind"] == "anchor" or e.get("verdict") == "accepted"):
        if pick["kind"] == "anchor" and n:
            expected.append(None)  # each component's walk is its own line
        expected.append(float(pick["row"]))
    assert values(traces["walk so far"]["x"]) == expected
    assert len([v for v in expected if v is not None]) == 8

    # Back at the first anchor, the path is that one row and the star marks it.
    anchor = next(e for e in events if e["kind"] == "anchor")
    app.number_input(key="walk_step_input").set_value(anchor["step"]).run()
    traces = {trace["name"]: trace for trace in chart(app, "walk_map")["data"]}
    assert values(traces["walk so far"]["x"]) == values(traces["this step"]["x"]) == [float(anchor["row"])]


def test_the_walk_path_is_drawn_over_a_sampled_map_with_escaped_hover_text():
    rng = np.random.default_rng(1)
    ids = [f"row-{i}" for i in range(300)] + ["<b>evil</b>", "target-<i>0</i>"]
    roles = ["pool"] * 301 + ["targets"]
    sources = ["math"] * 150 + ["code"] * 151 + ["<script>x</script>"]
    x, y = rng.normal(size=302), rng.normal(size=302)
    backdrop = map_backdrop(ids, roles, sources, x, y, limit=100)
    assert backdrop.sampled and len(backdrop.x) == 100 and backdrop.pool_rows == 301
    assert list(backdrop.target_x) == [x[301]]
    assert backdrop.target_hover[0] == "target-&lt;i&gt;0&lt;/i&gt;<br>&lt;script&gt;x&lt;/script&gt;"
    picks = [Pick(1, 0, 3, "row-3", 0.9), Pick(2, 0, 300, "<b>evil</b>", 0.8), Pick(9, 1, 7, "row-7", 0.7)]
    figure = walk_path_figure(backdrop, picks, current_row_id="row-7")
    path = next(t for t in figure.data if t.name == "walk so far")
    # Components are separate lines (a gap between them), every pick sits at its own map position.
    assert values(path.x) == [x[3], x[300], None, x[7]] and values(path.y) == [y[3], y[300], None, y[7]]
    assert path.text[1] == "pick 2 · component 0<br>&lt;b&gt;evil&lt;/b&gt;"
    star = next(t for t in figure.data if t.name == "this step")
    assert list(star.x) == [x[7]]
    # A title and named axes; the pool is drawn in a grey dark enough to see (it was lightgrey, 4 px).
    assert figure.layout.title.text.startswith("The walk's path on the gradient map (3 accepted rows")
    assert (figure.layout.xaxis.title.text, figure.layout.yaxis.title.text) == ("gradient map, UMAP 1",
                                                                                "gradient map, UMAP 2")
    pool = next(t for t in figure.data if t.name == "pool (sample)")
    red, green, blue = (int(pool.marker.color[i:i + 2], 16) for i in (1, 3, 5))
    assert pool.marker.size >= 6 and (0.2126 * red + 0.7152 * green + 0.0722 * blue) / 255 < 0.65
    assert map_backdrop(ids, roles, sources, x, y, method="pca").method == "pca"
    # No picks yet: an empty path, no error.
    empty = walk_path_figure(backdrop, [], None)
    assert len(next(t for t in empty.data if t.name == "walk so far").x) == 0
