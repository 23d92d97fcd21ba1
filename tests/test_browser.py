"""End to end in a real browser: ``streamlit run app/main.py`` on 127.0.0.1, driven by Debian chromium through
Python playwright (never ``playwright install``; see tests/browser.py and environment.md §6).

Every page that exists in ``pages/`` is opened on a project with complete tiny-model features, each page's plots,
graph canvas or main content is waited for, a screenshot of each is saved under ``test-artifacts/browser/``, and
any Streamlit exception element or unexpected error alert fails the test.  The demo project's Features page is
opened once too (its features run with the tiny model here, not SmolLM2).  One test drives upload → features →
walk → export through the widgets and checks the downloaded JSONL.

Without chromium or playwright the tests skip, except where ``G2IS_REQUIRE_BROWSER=1`` (CI) makes that a failure.
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from browser import StreamlitPage, module_browser, module_marks, module_server, page_for_test, stop_job_workers
from conftest import EXPLORE_PROJECT, REPO, chat_rows, write_jsonl

from core.config import FeatureSettings, ProjectionArguments, WarmupArguments
from core.data.demo import DEMO_PROJECT
from core.store import Store

pytestmark = module_marks()

# The workflow order of app/main.py; a page file nobody listed here yet is still opened (at the end).
PAGE_ORDER = ["data", "features", "map", "graph", "walk", "compare", "export"]
EXISTING_PAGES = sorted((p.stem for p in (REPO / "pages").glob("*.py") if not p.stem.startswith("_")),
                        key=lambda stem: (PAGE_ORDER.index(stem) if stem in PAGE_ORDER else len(PAGE_ORDER), stem))


@dataclass(frozen=True)
class PageCheck:
    """What shows that a page has rendered: selectors in the main area that must all appear, a selector that must
    appear inside an iframe (pyvis draws its graph in one), and buttons to press first when the page offers them
    (work a user starts once and the store then keeps, e.g. a map layout)."""

    ready: tuple[str, ...] = ("h1",)
    in_frame: str | None = None
    press_if_present: tuple[str | re.Pattern, ...] = ()  # button names (exact text or a pattern)
    expected_errors: tuple[str, ...] = ()
    timeout_ms: int = 60_000


def page_path(page_name: str) -> str:
    return page_name  # every page has its own URL (app/main.py: "/" forwards to /features)


PLOT = ".js-plotly-plot"
TABLE = '[data-testid="stDataFrame"]'
PAGE_CHECKS = {
    # Length histogram and source bars, and the token view with trained (assistant) tokens marked.
    "data": PageCheck(ready=("h1", f"{PLOT} >> nth=1", ".g2is-trained")),
    "features": PageCheck(ready=("h1", TABLE, 'text="All features are computed and cached."')),
    # A small project's map is computed on the first visit (UMAP + MiniLM; the first UMAP compiles, ~30-60 s).
    "map": PageCheck(ready=("h1", f"{PLOT} >> nth=1"), timeout_ms=150_000),
    # pyvis draws the neighbourhood of the first pool row into a canvas inside the page's iframe.
    "graph": PageCheck(ready=("h1", "iframe"), in_frame="canvas"),
    # The newest stored G2IS run (the fixture stores one) opens at step 0 with its charts.
    "walk": PageCheck(ready=("h1", PLOT, "text=/Step 0 of \\d+/")),
    # Compare runs the methods with no stored run at its default budget (one press), then plots.
    "compare": PageCheck(ready=("h1", TABLE, PLOT), press_if_present=(re.compile(r"^Run \d+ methods?$"),)),
    # Export writes the newest stored run (the fixture stores some) and offers both downloads.
    "export": PageCheck(ready=("h1", 'button:has-text("Download JSONL")', 'button:has-text("Download manifest")'),
                        press_if_present=("Export",)),
}


def tiny_settings(model_dir) -> FeatureSettings:
    return FeatureSettings(model=str(model_dir), max_tokens=64, projection=ProjectionArguments(dim=256),
                           warmup=WarmupArguments(fraction=0.1))


# ------------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def browser():
    """One headless chromium (Debian's, driven by playwright) for the whole module."""
    yield from module_browser()


@pytest.fixture(scope="module")
def browser_cache(browser, explore_cache_template, tiny_model_dir, tmp_path_factory):
    """A cache with project ``explore`` (complete tiny-model features plus stored G2IS, LESS and random runs, so
    the walk, compare and export pages have something to show) and the demo project set to the tiny model."""
    from core.data.projects import create_demo_project
    from core.selection.runs import load_project_features, run_selection

    root = tmp_path_factory.mktemp("browser") / "cache"
    shutil.copytree(explore_cache_template, root, ignore=shutil.ignore_patterns("*.lock"))
    store = Store(root)
    features = load_project_features(store, EXPLORE_PROJECT)
    for method in ("g2is", "less", "random"):
        run_selection(store, EXPLORE_PROJECT, method, ratio=0.2, features=features)
    create_demo_project(store)
    store.ensure_project(DEMO_PROJECT, tiny_settings(tiny_model_dir).to_dict())
    return root


@pytest.fixture(scope="module")
def app_server(browser_cache, tmp_path_factory, request):
    """``streamlit run app/main.py`` over the browser cache."""
    yield from module_server(browser_cache, tmp_path_factory.mktemp("server"), request, "streamlit.log")


@pytest.fixture()
def app(browser, app_server, request):
    yield from page_for_test(browser, app_server.url, request)


# ------------------------------------------------------------------------------------------------ tests

@pytest.mark.parametrize("page_name", EXISTING_PAGES)
def test_page_renders_without_errors(app, page_name):
    check = PAGE_CHECKS.get(page_name, PageCheck())
    app.open(page_path(page_name), project=EXPLORE_PROJECT, timeout_ms=check.timeout_ms)
    main = app.main()
    main.locator("h1").first.wait_for()
    for label in check.press_if_present:
        button = main.get_by_role("button", name=label, exact=True) if isinstance(label, str) \
            else main.get_by_role("button", name=label)
        # Elements render a moment after the run ends: wait for the button or for what it would produce.
        button.or_(main.locator(check.ready[-1])).first.wait_for(timeout=check.timeout_ms)
        if button.count():
            button.first.click()
            app.wait_idle(check.timeout_ms)
    for selector in check.ready:
        main.locator(selector).first.wait_for(state="visible", timeout=check.timeout_ms)
    if check.in_frame:
        main.frame_locator("iframe").first.locator(check.in_frame).first.wait_for(state="visible")
    app.wait_idle()
    app.screenshot(f"{EXPLORE_PROJECT}-{page_name}")
    assert app.problems(check.expected_errors) == []
    assert f"project {EXPLORE_PROJECT}" in app.page.locator('[data-testid="stSidebar"]').inner_text()


def test_every_page_has_its_own_url_and_the_root_opens_features(app):
    """/features used to answer "Page not found" (Streamlit serves its default page at "/" only)."""
    app.open("features", project=EXPLORE_PROJECT)
    app.main().locator("h1", has_text="Gradient features").wait_for()
    assert app.problems() == [] and app.page.url.split("?")[0].endswith("/features")
    app.open("", project=EXPLORE_PROJECT)
    app.main().locator("h1", has_text="Gradient features").wait_for()
    app.page.wait_for_url(re.compile(r"/features\?project=" + EXPLORE_PROJECT))
    assert app.problems() == []
    assert f"project {EXPLORE_PROJECT}" in app.page.locator('[data-testid="stSidebar"]').inner_text()
    links = app.page.locator('[data-testid="stSidebarNav"] a').all_inner_texts()
    assert "Start" not in " ".join(links) and "Features" in " ".join(links)


def test_demo_project_features_page_renders(app, browser_cache):
    """The demo's first visit starts its feature job in the background; the page shows it running (or done)."""
    app.open(page_path("features"), project=DEMO_PROJECT)
    main = app.main()
    main.locator("h1", has_text="Gradient features").wait_for()
    main.get_by_text("320 pool rows, 16 target rows").wait_for()
    main.locator('[data-testid="stProgress"], [data-testid="stDataFrame"]').first.wait_for()
    app.screenshot(f"{DEMO_PROJECT}-features")
    assert app.problems() == []
    store = Store(browser_cache)
    (job,) = store.jobs(DEMO_PROJECT)
    assert job.kind == "features"
    stop_job_workers(store.root)  # the run itself is not what this test is about: give the CPU back to the others


UPLOAD_PROJECT = "uploaded"


def go_to(app: StreamlitPage, link: str, title: str) -> None:
    """Follow a sidebar link (the session, and so the project, stays) and wait for the page's title."""
    app.page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=link, exact=True).click()
    app.main().locator("h1", has_text=title).wait_for()
    app.wait_idle()


def test_upload_features_walk_export_in_the_browser(app, browser_cache, tiny_model_dir, tmp_path):
    """The whole workflow through the widgets: upload pool and targets on the Data page, compute tiny-model
    features on the Features page, run and step a walk, export it and check the downloaded JSONL."""
    missing = [name for name in ("data", "walk", "export") if not (REPO / "pages" / f"{name}.py").exists()]
    if missing:
        pytest.skip(f"pages not written yet: {', '.join(missing)}")
    store = Store(browser_cache)
    # A new, empty project whose model is the tiny test model (the default SmolLM2 takes minutes on a CPU).
    store.ensure_project(UPLOAD_PROJECT, tiny_settings(tiny_model_dir).to_dict())
    pool = chat_rows(40, "uploaded-pool")
    for i, row in enumerate(pool):
        row["source"] = ("math", "code")[i % 2]
    pool_file = write_jsonl(tmp_path / "pool.jsonl", pool)
    target_file = write_jsonl(tmp_path / "targets.jsonl", chat_rows(4, "uploaded-target"))
    main = app.main()

    app.open("data", project=UPLOAD_PROJECT)
    main.get_by_text("No rows yet").wait_for()
    for label, path, done in (("Pool files", pool_file, "40 pool rows from 1 file(s)"),
                              ("Targets files", target_file, "4 targets rows from 1 file(s)")):
        uploader = main.locator('[data-testid="stFileUploader"]').filter(has_text=label)
        uploader.locator('input[type="file"]').set_input_files(path)
        main.get_by_text(done).wait_for()
        app.wait_idle()
    main.locator(".g2is-trained").first.wait_for()  # the token view of the first pool row
    app.screenshot("workflow-1-data")
    assert app.problems() == []
    assert store.row_counts(UPLOAD_PROJECT) == {"pool": 40, "targets": 4, "eval": 0}

    go_to(app, "Features", "Gradient features")
    main.get_by_role("button", name="Compute features").click()
    main.get_by_text("All features are computed and cached.").wait_for(timeout=180_000)
    app.wait_idle()
    app.screenshot("workflow-2-features")
    assert app.problems() == []

    go_to(app, "Walk", "Gradient walk")
    fraction = main.get_by_role("spinbutton", name="Fraction of the pool")
    fraction.fill("0.25")  # 10 of the 40 pool rows
    fraction.press("Tab")  # a number input commits its value when it loses focus
    main.get_by_role("button", name="Run walk").click()
    main.get_by_text(re.compile(r"^Step 0 of \d+")).wait_for(timeout=120_000)
    app.wait_idle()
    main.get_by_role("button", name="Next").click()
    main.get_by_text(re.compile(r"^Step 1 of \d+")).wait_for()
    app.wait_idle()
    app.screenshot("workflow-3-walk")
    assert app.problems() == []
    (run,) = store.selection_runs(UPLOAD_PROJECT)
    assert run["method"] == "g2is" and run["budget"] == 10

    go_to(app, "Export", "Export a selection")
    main.get_by_role("button", name="Export", exact=True).click()
    download_button = main.get_by_role("button", name="Download JSONL")
    download_button.wait_for()
    with app.page.expect_download() as download_info:
        download_button.click()
    download = download_info.value
    with app.page.expect_download() as manifest_info:
        main.get_by_role("button", name="Download manifest").click()
    app.screenshot("workflow-4-export")
    assert app.problems() == []

    records = [json.loads(line) for line in Path(download.path()).read_text(encoding="utf-8").splitlines()]
    chosen = [row_id for _, row_id, _, _ in store.selection_rows(run["id"])]
    assert download.suggested_filename.endswith(".jsonl")
    assert 0 < len(records) == run["selected"] <= 10
    assert [record["id"] for record in records] == chosen  # exactly the walk's rows, in selection order
    uploaded = {row["id"]: row["messages"] for row in pool}
    assert all(record["messages"] == uploaded[record["id"]] for record in records)
    manifest = json.loads(Path(manifest_info.value.path()).read_text(encoding="utf-8"))
    assert (manifest["run_id"], manifest["method"], manifest["format"]) == (run["id"], "g2is", "messages")
    assert manifest["ids"] == chosen and manifest["model"] == str(tiny_model_dir)
