"""The Evaluate page (and the evaluation captions of Compare and Export), run by ``streamlit.testing.v1.AppTest``
on the explore project (tiny-model features) with a real evaluation trained on the tiny model; one test opens
the page in chromium (tests/browser.py)."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import zipfile
from pathlib import Path

import pytest
from browser import REQUIRE_ENV, missing_browser_reason, module_browser, module_server, page_for_test
from conftest import EXPLORE_PROJECT, REPO, chat_rows, write_jsonl
from streamlit.testing.v1 import AppTest

from core import jobs
from core.config import FineTuneArguments
from core.data.ingest import ingest_files
from core.evaluation.plan import plan_evaluation
from core.evaluation.report import evaluation_report
from core.evaluation.run import launch_evaluation
from core.store import Store
from core.views.evaluate import adapter_zip
from core.views.text import markdown_text

MAIN = str(REPO / "app" / "main.py")
EVALUATE, COMPARE, EXPORT = "../pages/evaluate.py", "../pages/compare.py", "../pages/export.py"  # from app/main.py
# A small, fast fine-tune: the tiny random model needs a large rate to move in a few steps; no decoding.
FAST = FineTuneArguments(learning_rate=5e-3, epochs=1, batch_size=2, seeds=2, generate_tokens=0)
LESS_BUDGET = 6


@pytest.fixture(scope="module")
def evaluated_template(explore_cache_template, tmp_path_factory) -> tuple[Path, str, str]:
    """A copy of the explore cache with an evaluation file (4 rows) and a finished evaluation of LESS at 6 rows
    (2 seeds) beside random and zero-shot, trained inline: (cache root, evaluation id, the LESS run's id)."""
    folder = tmp_path_factory.mktemp("evaluated")
    root = folder / "cache"
    shutil.copytree(explore_cache_template, root, ignore=shutil.ignore_patterns("*.lock"))
    store = Store(root)
    ingest_files(store, EXPLORE_PROJECT, "eval", [write_jsonl(folder / "eval.jsonl", chat_rows(4, "eval"))])
    plan = plan_evaluation(store, EXPLORE_PROJECT, methods=["less"], budget=LESS_BUDGET, args=FAST)
    job_id, how = launch_evaluation(store, plan, spawn=False)
    assert how == "started" and jobs.run_job(store, job_id) == 0
    assert evaluation_report(store, plan.id).complete
    less = next(arm for arm in plan.arms if arm.method == "less")
    return root, plan.id, less.run_ids[0]


@pytest.fixture()
def evaluated_project(evaluated_template, tmp_path, monkeypatch) -> tuple[Store, str, str]:
    """A private copy of the evaluated cache (adapter folders stay in the template: tests only read them)."""
    template, evaluation_id, run_id = evaluated_template
    root = tmp_path / "cache"
    shutil.copytree(template, root, ignore=shutil.ignore_patterns("*.lock"))
    monkeypatch.setenv("G2IS_CACHE_DIR", str(root))
    return Store(root), evaluation_id, run_id


def open_page(page: str, project: str = EXPLORE_PROJECT, **query) -> AppTest:
    app = AppTest.from_file(MAIN, default_timeout=180)
    app.query_params["project"] = project
    for name, value in query.items():
        app.query_params[name] = value
    app.switch_page(page).run()  # straight to the page (the default Features page would load the model)
    assert not app.exception, app.exception
    return app


def chart(app: AppTest, key: str) -> dict:
    (element,) = [c for c in app.get("plotly_chart") if c.proto.id.endswith(f"-{key}")]
    return json.loads(element.proto.spec)


def texts(elements) -> str:
    return "\n".join(element.value for element in elements)


# ------------------------------------------------------------------------------------------------ evaluate

def test_evaluate_page_without_an_evaluation_offers_to_plan_one(explore_project):
    app = open_page(EVALUATE)
    assert not app.error and not app.get("plotly_chart")
    assert "No evaluation in this project yet" in texts(app.info)
    assert app.radio(key="evaluate-rows-source").value == "split"  # no evaluation file: a split of the targets
    assert app.multiselect(key="evaluate-methods").value == ["g2is"]
    defaults = FineTuneArguments()  # the expander shows FineTuneArguments' defaults
    assert app.number_input(key="evaluate-seeds").value == defaults.seeds
    assert app.number_input(key="evaluate-epochs").value == defaults.epochs
    assert app.number_input(key="evaluate-generate").value == defaults.generate_tokens
    assert app.number_input(key="evaluate-max-tokens").value is None  # the features' max tokens
    assert app.button(key="evaluate-plan").label == "Plan"


def test_evaluate_page_shows_a_finished_evaluation(evaluated_project):
    store, evaluation_id, _ = evaluated_project
    report = evaluation_report(store, evaluation_id)
    app = open_page(EVALUATE)
    assert not app.error
    assert app.selectbox(key="evaluate-shown").value == evaluation_id
    assert app.radio(key="evaluate-rows-source").value == "eval"  # the project has an evaluation file now
    shown = texts(app.markdown)
    for verdict in report.verdicts():
        assert markdown_text(verdict) in shown, (verdict, shown)
    assert "All 5 units finished." in texts(app.caption)
    assert "4 rows of the evaluation file" in texts(app.caption)

    heldout = chart(app, "evaluate-heldout")
    less, random, zero = report.arm("LESS"), report.arm("random"), report.zero_shot
    means = {trace["name"]: trace["y"][0] for trace in heldout["data"] if trace.get("name")}
    assert means == pytest.approx({"LESS": less.mean, "random": random.mean})
    seed_dots = [trace["y"] for trace in heldout["data"] if not trace.get("name")]
    assert sorted(map(sorted, seed_dots)) == sorted([sorted(less.losses), sorted(random.losses)])
    lines = sorted(shape["y0"] for shape in heldout["layout"]["shapes"])
    assert lines == pytest.approx(sorted([random.mean, zero.mean]))
    labels = " ".join(a["text"] for a in heldout["layout"]["annotations"])
    assert "zero-shot: " in labels and f"random at {LESS_BUDGET} rows" in labels

    curves = chart(app, "evaluate-curves")["data"]
    assert len(curves) == 4  # (LESS, random) x 2 seeds; zero-shot trains nothing
    assert all(len(trace["y"]) == LESS_BUDGET // FAST.batch_size for trace in curves)  # one point per optimizer step
    assert len({trace["line"]["color"] for trace in curves}) == 2  # one colour per arm

    (table,) = app.dataframe
    assert list(table.value["selection"]) == ["LESS", "random", "zero-shot"]
    assert list(table.value["seeds"]) == [2, 2, 1]

    downloads = app.get("download_button")
    assert sorted(b.proto.label for b in downloads) == ["LESS, seed 0", "LESS, seed 1", "random, seed 0",
                                                       "random, seed 1"]
    archive = zipfile.ZipFile(io.BytesIO(adapter_zip(less.adapters[0])))
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(archive.namelist())
    with pytest.raises(ValueError, match="adapter folder .* is gone"):
        adapter_zip(store.root / "no-such-adapter")


def test_evaluate_page_plans_and_launches_a_job(evaluated_project):
    store, earlier, _ = evaluated_project
    app = open_page(EVALUATE)
    app.multiselect(key="evaluate-methods").set_value(["g2is"])
    app.radio(key="evaluate-budget-kind").set_value("number of rows").run()
    app.number_input(key="evaluate-rows").set_value(4)
    for key, value in {"evaluate-seeds": 1, "evaluate-epochs": 1, "evaluate-lr": 5e-3, "evaluate-batch": 2,
                       "evaluate-generate": 0}.items():
        app.number_input(key=key).set_value(value)
    app.run()
    app.button(key="evaluate-plan").click().run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    estimate = texts(app.info)
    # g2is and random (1 seed each) train; zero-shot is the finished evaluation's (same rows, same model).
    assert "Estimate: 2 units to train and measure \\(1 cached\\)" in estimate, estimate
    (planned,) = [e for e in store.evaluations(EXPLORE_PROJECT) if e["id"] != earlier]
    assert app.selectbox(key="evaluate-shown").value == planned["id"]  # the new plan is shown, pending
    assert "1 of 3 units finished" in texts(app.caption)  # (the cached zero-shot)

    app.button(key="evaluate-launch").click().run()
    assert not app.exception
    (job,) = [j for j in store.jobs(EXPLORE_PROJECT) if j.params.get("evaluation") == planned["id"]]
    try:
        assert jobs.wait(store, job.id, timeout=300).status == "done", jobs.log_path(store, job.id).read_text()[-2000:]
    finally:
        if jobs.worker_alive(store, job.id):
            os.killpg(store.job(job.id).pid, signal.SIGKILL)
    app.run()
    assert not app.exception and not app.error
    assert "All 3 units finished." in texts(app.caption)
    assert markdown_text("G2IS: held-out loss") in texts(app.markdown)
    assert len(app.get("plotly_chart")) == 2 and len(app.get("download_button")) == 2


def test_a_running_evaluation_shows_its_progress_and_can_be_cancelled(evaluated_project):
    store, evaluation_id, _ = evaluated_project
    job_id = jobs.start_job(store, EXPLORE_PROJECT, "evaluate", {"evaluation": evaluation_id}, spawn=False)
    store.update_job(job_id, phase="LESS, seed 0 (1/5)", done=3, total=12)  # (queued: no worker is needed to show it)
    app = open_page(EVALUATE)
    assert not app.error
    (progress,) = app.get("progress")
    assert "LESS, seed 0 (1/5): 3/12 steps" in progress.proto.text
    assert "An evaluation job is running" in texts(app.info)  # no second one is planned meanwhile
    assert "evaluate-plan" not in [button.key for button in app.button]
    app.button(key=f"evaluate-cancel-{job_id}").click().run()
    assert not app.exception
    assert store.job(job_id).status == "cancelling"


def test_an_evaluation_file_that_repeats_a_target_is_an_error_not_an_exception(explore_project, tmp_path):
    root, project = explore_project
    store = Store(root)
    targets = [dict(r, group=f"g{i % 2}") for i, r in enumerate(chat_rows(6, "target"))]  # the explore targets
    ingest_files(store, project, "eval", [write_jsonl(tmp_path / "eval.jsonl",
                                                      [dict(targets[2], id="held-2")] + chat_rows(2, "eval"))])
    app = open_page(EVALUATE)
    assert app.radio(key="evaluate-rows-source").value == "eval"
    app.button(key="evaluate-plan").click().run()
    assert not app.exception
    (error,) = app.error
    assert markdown_text("1 of 3 evaluation rows are also target rows (held-2 = target target-2)") in error.value
    assert store.evaluations(project) == []


# ------------------------------------------------------------------------------------------------ compare, export

def test_compare_and_export_show_the_evaluation_of_a_run(evaluated_project):
    store, evaluation_id, run_id = evaluated_project
    verdict = evaluation_report(store, evaluation_id).arm("LESS").verdict.removeprefix("LESS: ")
    caption = markdown_text(f"Evaluated ({evaluation_id}): {verdict}")

    app = open_page(COMPARE)
    app.radio(key="compare-budget-kind").set_value("number of rows").run()
    app.number_input(key="compare-rows").set_value(LESS_BUDGET)
    app.multiselect(key="compare-methods").set_value(["less"]).run()
    assert not app.exception and not app.error
    assert caption in texts(app.caption), texts(app.caption)

    app = open_page(EXPORT, run=run_id)
    assert app.selectbox(key="export-run").value == run_id
    assert caption in texts(app.caption), texts(app.caption)


# ------------------------------------------------------------------------------------------------ browser

@pytest.fixture(scope="module")
def browser():
    yield from module_browser()


@pytest.fixture(scope="module")
def evaluated_server(evaluated_template, tmp_path_factory, request):
    template, _, _ = evaluated_template
    root = tmp_path_factory.mktemp("evaluated-browser") / "cache"
    shutil.copytree(template, root, ignore=shutil.ignore_patterns("*.lock"))
    yield from module_server(root, tmp_path_factory.mktemp("server"), request, "streamlit-evaluate.log")


@pytest.fixture()
def browser_page(browser, evaluated_server, request):
    yield from page_for_test(browser, evaluated_server.url, request, "evaluate-")


@pytest.mark.timeout(300)
@pytest.mark.skipif(bool(missing_browser_reason()) and os.environ.get(REQUIRE_ENV) != "1",
                    reason=str(missing_browser_reason()))
def test_evaluate_page_in_the_browser_shows_verdicts_and_charts(browser_page):
    browser_page.open("evaluate", project=EXPLORE_PROJECT)
    main = browser_page.main()
    main.locator("h1", has_text="Evaluate selections").wait_for()
    main.get_by_text("LESS: held-out loss").first.wait_for(state="visible")
    main.get_by_text("zero-shot (no training): held-out loss").first.wait_for(state="visible")
    main.locator(".js-plotly-plot").nth(1).wait_for(state="visible")  # held-out loss and training curves
    main.get_by_role("button", name="LESS, seed 0").wait_for()
    browser_page.wait_idle()
    browser_page.screenshot(f"{EXPLORE_PROJECT}-evaluate-finished")
    assert browser_page.problems() == []
    assert "Evaluated on 4 rows of the evaluation file" in main.inner_text()
