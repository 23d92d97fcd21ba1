"""The Compare and Export pages, run by ``streamlit.testing.v1.AppTest`` on the real explore project (tiny-model
features), the real store and the real selection methods."""
from __future__ import annotations

import json
from pathlib import Path

from conftest import REPO, write_jsonl
from streamlit.testing.v1 import AppTest

from core.data.ingest import ingest_files
from core.selection.compare import compare_runs, default_params, matches_defaults, plan_comparison
from core.selection.export import SHAREGPT_SPEAKERS
from core.selection.g2is import G2ISParams
from core.selection.runs import feature_index, run_selection
from core.store import Store
from core.views.text import markdown_text

MAIN = str(REPO / "app" / "main.py")
COMPARE, EXPORT = "../pages/compare.py", "../pages/export.py"  # relative to app/main.py


def open_page(project: str, page: str) -> AppTest:
    app = AppTest.from_file(MAIN, default_timeout=120)
    app.query_params["project"] = project
    # straight to the page: a first run on the default Features page would plan (and load) the project's model
    app.switch_page(page).run()
    assert not app.exception, app.exception
    return app


def chart(app: AppTest, key: str) -> dict:
    """The plotly figure (as JSON) of the chart drawn with ``key``."""
    (element,) = [c for c in app.get("plotly_chart") if c.proto.id.endswith(f"-{key}")]
    return json.loads(element.proto.spec)


# ------------------------------------------------------------------------------------------------ export

def written_jsonl(app: AppTest) -> tuple[list[dict], dict]:
    (success,) = app.success
    path = Path(success.value.split("`")[1])
    manifest_path = Path(success.value.split("`")[3])
    assert path.parent.name == "exports" and path.parent.parent == Store().root  # kept under cache/exports/
    assert [b.label for b in app.get("download_button")] == ["Download JSONL", "Download manifest"]
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return records, json.loads(manifest_path.read_text())


def test_export_page_writes_exactly_the_selected_rows_in_each_format(explore_project):
    _, project = explore_project
    store = Store()
    older = run_selection(store, project, "random", budget=5).run_id
    chosen = run_selection(store, project, "less", budget=9).run_id
    newest = run_selection(store, project, "random", budget=7, params={"seed": 3}).run_id
    expected = store.selection_rows(chosen)
    pool = {r.row_id: r.messages for r in store.rows(project, "pool")}

    app = open_page(project, EXPORT)
    assert app.selectbox(key="export-run").value == newest  # newest first
    assert [o.split(" · ")[-1] for o in app.selectbox(key="export-run").options] == [newest, chosen, older]
    app.selectbox(key="export-run").set_value(chosen).run()
    for fmt in ("messages", "alpaca", "sharegpt"):
        app.radio(key="export-format").set_value(fmt).run()
        app.button(key="export-button").click().run()
        assert not app.exception and not app.error
        records, manifest = written_jsonl(app)
        assert [r["id"] for r in records] == [row_id for _, row_id, _, _ in expected]  # same rows, same order
        for record in records:
            messages = pool[record["id"]]
            if fmt == "messages":
                assert record["messages"] == messages
            elif fmt == "alpaca":
                user, assistant = messages
                assert record == {"id": record["id"], "instruction": user["content"], "input": "",
                                  "output": assistant["content"]}
            else:
                assert record["conversations"] == [{"from": SHAREGPT_SPEAKERS[m["role"]], "value": m["content"]}
                                                   for m in messages]
        assert manifest["run_id"] == chosen and manifest["method"] == "less" and manifest["format"] == fmt
        assert manifest["ids"] == [row_id for _, row_id, _, _ in expected]
        assert manifest["scores"] == [score for _, _, score, _ in expected]
        assert manifest["feature_key"] == store.selection_run(chosen)["feature_key"]
        assert manifest["model"] == store.project_settings(project)["model"] and manifest["budget"] == 9
    assert sorted(p.name for p in (store.root / "exports").iterdir()) == sorted(
        f"{chosen}.{fmt}.{kind}" for fmt in ("messages", "alpaca", "sharegpt") for kind in ("jsonl", "manifest.json"))


def test_export_page_reports_rows_a_format_cannot_hold(tmp_path, cache):
    """A multi-turn chat cannot be an Alpaca record: the page shows export.py's message and writes nothing;
    a system prompt goes to Alpaca's ``system`` field and stays a turn in the other formats."""
    def turn(role: str, content: str) -> dict:
        return {"role": role, "content": content}

    system = turn("system", "You answer <b>tersely</b>.")
    rows = [
        {"id": "with-system", "messages": [system, turn("user", "2+2?"), turn("assistant", "4")]},
        {"id": "two-exchanges", "messages": [turn("user", "Hi"), turn("assistant", "Hello"), turn("user", "Bye"),
                                             turn("assistant", "Bye!")]},
    ]
    store = Store()
    ingest_files(store, "chats", "pool", [write_jsonl(tmp_path / "pool.jsonl", rows)])
    store.ensure_project("chats", {})
    both = store.save_selection("chats", "random", {"seed": 0}, "no-features", 2,
                                [(1, "two-exchanges", 0.0, "draw 1"), (0, "with-system", 0.0, "draw 2")], [], 0.0)

    app = open_page("chats", EXPORT)
    app.radio(key="export-format").set_value("alpaca").run()
    app.button(key="export-button").click().run()
    assert not app.exception and not app.success and not app.get("download_button")
    (error,) = app.error
    assert "two-exchanges" in error.value and "4-turn chat" in error.value and "Alpaca" in error.value
    assert not (store.root / "exports").exists() or not any((store.root / "exports").iterdir())

    app.radio(key="export-format").set_value("messages").run()
    app.button(key="export-button").click().run()
    records, _ = written_jsonl(app)
    assert records == [{"id": "two-exchanges", "messages": rows[1]["messages"]},
                       {"id": "with-system", "messages": rows[0]["messages"]}]

    only_system = store.save_selection("chats", "random", {"seed": 1}, "no-features", 1,
                                       [(0, "with-system", 0.0, "draw 1")], ["under-filled: 1 of 2"], 0.0)
    app.run()  # the new run appears in the list
    app.selectbox(key="export-run").set_value(only_system).run()
    assert any("under-filled: 1 of 2" in t.value for t in app.text)  # the run's notes are shown
    app.radio(key="export-format").set_value("alpaca").run()
    app.button(key="export-button").click().run()
    assert not app.error
    records, manifest = written_jsonl(app)
    assert records == [{"id": "with-system", "instruction": "2+2?", "input": "", "output": "4",
                        "system": system["content"]}]
    assert manifest["ids"] == ["with-system"] and manifest["notes"] == ["under-filled: 1 of 2"]
    assert both != only_system


def test_export_page_without_runs_shows_a_hint(explore_project):
    _, project = explore_project
    app = open_page(project, EXPORT)
    assert not app.error and not app.get("download_button")
    assert any("no selection yet" in i.value and "Walk or Compare" in i.value for i in app.info)


# ------------------------------------------------------------------------------------------------ compare

def test_compare_page_runs_methods_and_shows_overlap_composition_and_unique_rows(explore_project):
    _, project = explore_project
    store = Store()
    stored_less = run_selection(store, project, "less", budget=12).run_id
    run_selection(store, project, "random", budget=11)  # another budget: not part of this comparison

    app = open_page(project, COMPARE)
    app.radio(key="compare-budget-kind").set_value("number of rows").run()
    app.number_input(key="compare-rows").set_value(12).run()
    app.multiselect(key="compare-methods").set_value(["g2is", "less", "tsds-kde", "random", "embedding"]).run()
    assert any("Stored at this budget: less." in i.value and "g2is, tsds-kde, random, embedding" in i.value
               for i in app.info)
    app.button(key="compare-run").click().run()
    assert not app.exception and not app.error
    assert not [b for b in app.button if b.key == "compare-run"] and not app.info  # redrawn: nothing left to run

    # the stored LESS run was reused, each other method ran once and was stored at the same budget
    runs = {r["method"]: r for r in store.selection_runs(project) if r["budget"] == 12}
    assert sorted(runs) == ["embedding", "g2is", "less", "random", "tsds-kde"]
    assert runs["less"]["id"] == stored_less and len(store.selection_runs(project, "less")) == 1
    labels = ["g2is", "less", "tsds-kde", "random", "embedding"]
    table = app.dataframe[0].value
    assert list(table["method"]) == labels and list(table["run"]) == [runs[m]["id"] for m in labels]

    (notes,) = app.text  # every run's notes, named by method
    assert runs["g2is"]["notes"] and all(f"{m}: {note}" in notes.value for m in labels for note in runs[m]["notes"])

    selected = {m: {row_id for _, row_id, _, _ in store.selection_rows(runs[m]["id"])} for m in labels}
    assert all(len(ids) == 12 for ids in selected.values())
    heatmap = chart(app, "compare-jaccard")["data"][0]
    assert heatmap["x"] == labels and heatmap["y"] == labels
    for i, a in enumerate(labels):
        for j, b in enumerate(labels):
            expected = len(selected[a] & selected[b]) / len(selected[a] | selected[b])
            assert abs(heatmap["z"][i][j] - expected) < 1e-12, (a, b)
            assert heatmap["customdata"][i][j] == len(selected[a] & selected[b])
        assert heatmap["z"][i][i] == 1.0
    assert any(heatmap["z"][i][j] < 1.0 for i in range(5) for j in range(5) if i != j)  # the methods differ

    source_of = {r.row_id: r.source for r in store.rows(project, "pool")}
    bars = chart(app, "compare-composition")["data"]
    assert {b["name"] for b in bars} == {"math", "code", "chat"}
    for bar in bars:
        assert bar["x"] == ["pool", *labels]
        assert bar["customdata"] == [20] + [sum(source_of[i] == bar["name"] for i in selected[m]) for m in labels]

    unique = app.dataframe[1].value
    expected_unique = {(m, row_id) for m in labels for row_id in selected[m]
                       if not any(row_id in selected[other] for other in labels if other != m)}
    assert set(zip(unique["method"], unique["id"])) == expected_unique
    for _, row in unique.iterrows():
        assert row["source"] == source_of[row["id"]]

    # a second visit reuses everything: no new runs, and the page needs no Run button
    again = open_page(project, COMPARE)
    again.radio(key="compare-budget-kind").set_value("number of rows").run()
    again.number_input(key="compare-rows").set_value(12).run()
    again.multiselect(key="compare-methods").set_value(labels).run()
    assert not again.exception and not [b for b in again.button if b.key == "compare-run"]
    assert chart(again, "compare-jaccard")["data"][0]["z"] == heatmap["z"]
    assert len([r for r in store.selection_runs(project) if r["budget"] == 12]) == 5


def test_compare_runs_reports_each_runs_notes_and_duplicate_methods(explore_project):
    _, project = explore_project
    store = Store()
    first = run_selection(store, project, "random", budget=80).run_id  # clipped to the 60-row pool: a note
    second = run_selection(store, project, "random", budget=60, params={"seed": 7}).run_id
    comparison = compare_runs(store, [first, second])
    assert comparison.labels == [f"random ({first})", f"random ({second})"]
    assert any("clipped to 60" in note for note in comparison.runs[0].notes)
    assert comparison.jaccard.tolist() == [[1.0, 1.0], [1.0, 1.0]]  # both took the whole pool
    assert comparison.unique_counts == {comparison.labels[0]: 0, comparison.labels[1]: 0} and not comparison.unique_rows
    assert comparison.composition.tolist() == [[20, 20, 20], [20, 20, 20]]


def test_compare_page_hints_without_features_or_runs(explore_project):
    root, project = explore_project
    store = Store()
    # a project with rows but no features: a warning that links to the Features page
    for role, row_id in (("pool", "a"), ("targets", "t")):
        chat = [{"role": "user", "content": f"question {row_id}"}, {"role": "assistant", "content": f"answer {row_id}"}]
        path = write_jsonl(root.parent / f"bare-{role}.jsonl", [{"id": row_id, "messages": chat}])
        ingest_files(store, "bare", role, [path])
    store.ensure_project("bare", store.project_settings(project))
    app = open_page("bare", COMPARE)
    assert not app.error and any("no features" in w.value for w in app.warning)
    assert [link.label for link in app.get("page_link")] == ["Compute the features on the Features page"]

    # features but no runs yet: say to press Run, draw nothing
    app = open_page(project, COMPARE)
    assert not app.error and not app.get("plotly_chart")
    assert any("No method has a stored selection at this budget yet" in i.value for i in app.info)
    assert [b.key for b in app.button] == ["compare-run"]


def test_compare_uses_default_runs_unless_a_stored_run_is_pinned(explore_project):
    """A δ=0.5 walk made on the Walk page at the compare budget is not "the G2IS column": Compare runs G2IS with
    its defaults (δ=0.8) and shows them; picking the δ=0.5 run for G2IS uses it instead, without running anything."""
    _, project = explore_project
    store = Store()
    walk = run_selection(store, project, "g2is", budget=12, params={"delta": 0.5, "val_k": 0.5, "k": 32}).run_id
    stored_random = run_selection(store, project, "random", budget=12).run_id  # the defaults: reused

    # the plan: defaults matched, the walk only a candidate, and pinned on request
    index = feature_index(store, project)
    defaults = default_params("g2is", index)
    assert defaults["delta"] == G2ISParams.delta == 0.8 and defaults["k"] == G2ISParams.k
    assert not matches_defaults(store.selection_run(walk)["params"], defaults)
    assert matches_defaults({**defaults, "record_candidates": False, "ratio": 0.2}, defaults)  # recording keys
    plan = plan_comparison(store, project, ["g2is", "random", "less"], budget=12, index=index)
    assert plan.missing == ["g2is", "less"] and plan.stored["random"]["id"] == stored_random
    assert [r["id"] for r in plan.candidates["g2is"]] == [walk] and [r["id"] for r in plan.ignored("g2is")] == [walk]
    assert plan.caption("g2is").startswith("g2is · δ=0.8 · val_k=0.5 · k=32 (defaults, not run yet; 1 stored run")
    pinned = plan_comparison(store, project, ["g2is", "random"], budget=12, index=index, pinned={"g2is": walk})
    assert pinned.missing == [] and pinned.stored["g2is"]["id"] == walk and pinned.pinned == {"g2is"}
    assert pinned.caption("g2is") == f"g2is · δ=0.5 · val_k=0.5 · k=32 (picked run {walk})"
    try:
        plan_comparison(store, project, ["g2is"], budget=11, index=index, pinned={"g2is": walk})
    except ValueError as error:
        assert "at 11 rows" in str(error)
    else:
        raise AssertionError("a run of another budget was pinned")

    app = open_page(project, COMPARE)
    app.radio(key="compare-budget-kind").set_value("number of rows").run()
    app.number_input(key="compare-rows").set_value(12).run()
    app.multiselect(key="compare-methods").set_value(["g2is", "random"]).run()
    assert any("Stored at this budget: random." in i.value and "Not run yet: g2is." in i.value for i in app.info)
    shown = [m.value for m in app.markdown]
    assert any(markdown_text("g2is · δ=0.8 · val_k=0.5 · k=32 (defaults, not run yet") in v for v in shown)
    assert any(markdown_text(f"random · seed=0 (stored run {stored_random}, defaults)") in v for v in shown)
    choice = app.selectbox(key="compare-pin-g2is")
    assert choice.value is None and choice.options[0] == "run with the defaults"
    assert choice.options[1].startswith("g2is · δ=0.5 · val_k=0.5 · k=32 · ") and choice.options[1].endswith(walk)

    app.button(key="compare-run").click().run()
    assert not app.exception and not app.error
    fresh = [r for r in store.selection_runs(project, "g2is") if r["id"] != walk]
    assert len(fresh) == 1 and fresh[0]["budget"] == 12 and fresh[0]["params"]["delta"] == 0.8
    table = app.dataframe[0].value
    assert list(table["run"]) == [fresh[0]["id"], stored_random]
    assert list(table["parameters"]) == ["g2is · δ=0.8 · val_k=0.5 · k=32", "random · seed=0"]
    assert list(table["chosen"]) == ["defaults", "defaults"]

    # pin the walk: its column is the δ=0.5 run, shown as picked; nothing runs
    app.selectbox(key="compare-pin-g2is").set_value(walk).run()
    assert not app.exception and not app.error and not [b for b in app.button if b.key == "compare-run"]
    table = app.dataframe[0].value
    assert list(table["run"]) == [walk, stored_random]
    assert list(table["parameters"]) == ["g2is · δ=0.5 · val_k=0.5 · k=32", "random · seed=0"]
    assert list(table["chosen"]) == ["picked", "defaults"]
    assert any(markdown_text(f"g2is · δ=0.5 · val_k=0.5 · k=32 (picked run {walk})") in m.value for m in app.markdown)
    assert len(store.selection_runs(project, "g2is")) == 2

    # back to the defaults: the fresh default run again
    app.selectbox(key="compare-pin-g2is").set_value(None).run()
    assert list(app.dataframe[0].value["run"]) == [fresh[0]["id"], stored_random]
