"""Hostile text in a real browser: nobody's data runs as code in anybody's browser (issue 5, security).

A project whose name, row ids, sources, target groups, messages, bad rows and file names are all made of XSS and
Markdown payloads (``<script>``, ``<img onerror>``, ``javascript:`` links, ``</script>`` break-outs for the
inline scripts pyvis writes, ``:red[...]`` and ``$$`` maths) gets real tiny-model features, stored G2IS / LESS /
random runs and both map layouts.  The real ``streamlit run`` server serves it to Debian chromium (tests/browser.py)
and every page is opened: a test fails when any dialog opens (``page.on("dialog")``, which also sees dialogs of
iframes), when ``window.__pwned`` (which every payload sets) is set in the page or in any iframe (pyvis draws in
one), when the DOM holds an element a payload would have created (``img[src=x]``, an ``on*`` handler naming
``__pwned``, a ``javascript:`` link), or when the payload text is not shown literally where the page shows it
(as text, not interpreted).  A plotly point and a pyvis node are hovered and their tooltips must show the payload
as text.  Screenshots go to ``test-artifacts/browser/hostile-<page>.png``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import quote

import pytest
from browser import StreamlitPage, module_browser, module_marks, module_server, page_for_test
from conftest import write_jsonl

from core.config import FeatureSettings, ProjectionArguments, WarmupArguments
from core.data.demo import DEMO_PROJECT
from core.store import Store

pytestmark = module_marks()

PWN = "window.__pwned=1;alert(1)"
PAYLOADS = [
    f"<script>{PWN}</script>",
    f'<img src=x onerror="{PWN}">',
    f"[click me](javascript:{PWN})",
    f"</script><script>{PWN}</script>",
    ":red[RED] :material/warning: $$\\alert{x}$$ **bold** <!--",
    f'<svg onload="{PWN}"><a href="javascript:{PWN}">link</a></svg>',
    f'<iframe srcdoc="<script>parent.{PWN}</script>"></iframe>',
]
PROJECT = "pwn<img src=x onerror=alert(1)>[l](javascript:alert(1)):red[p]$x$"
FILE_STEM = "pool<img src=x onerror=alert(1)>"

# A project of 7 pool rows and 2 targets: under core.views.map.MIN_UMAP_POINTS, so the maps are PCA (no UMAP compile).
POOL_ROWS = 7

PAGES = ["data", "features", "map", "graph", "walk", "compare", "export"]
READY = {  # what shows that a page has rendered (as in tests/test_browser.py)
    "data": ("h1", ".g2is-trained"),
    "features": ("h1", '[data-testid="stDataFrame"]'),
    "map": ("h1", ".js-plotly-plot >> nth=1"),
    "graph": ("h1", "iframe"),
    "walk": ("h1", "text=/Step 0 of \\d+/"),
    "compare": ("h1", '[data-testid="stDataFrame"]'),
    "export": ("h1", 'button:has-text("Download JSONL")'),
}
PRESS = {"compare": re.compile(r"^Run \d+ methods?$"), "export": "Export"}

# Elements and attributes a payload would have created had it been interpreted as HTML.
INJECTED_DOM = """() => {
    const found = [];
    for (const el of document.querySelectorAll('img[src="x"], svg[onload], iframe[srcdoc*="__pwned"]:not([data-testid="stIFrame"])'))
        found.push(el.outerHTML.slice(0, 120));
    for (const el of document.querySelectorAll('a[href]'))
        if (/^\\s*javascript:/i.test(el.getAttribute('href'))) found.push(el.outerHTML.slice(0, 120));
    for (const el of document.querySelectorAll('*'))
        for (const attr of el.attributes)
            if (attr.name.startsWith('on') && attr.value.includes('__pwned')) found.push(el.outerHTML.slice(0, 120));
    for (const el of document.querySelectorAll('script'))
        if (el.textContent.includes('__pwned') && !el.textContent.includes('new vis.DataSet'))
            found.push('script: ' + el.textContent.slice(0, 120));
    return found;
}"""


def hostile_rows() -> tuple[list[dict], list[dict]]:
    pool = []
    for i in range(POOL_ROWS):
        payload = PAYLOADS[i % len(PAYLOADS)]
        row = {"id": f"id{i}{payload}", "messages": [
            {"role": "user", "content": f"Question {i}: {payload} What is {i} + {i}?"},
            {"role": "assistant", "content": f"{PAYLOADS[(i + 1) % len(PAYLOADS)]} The answer is {2 * i}."}]}
        if i % 3:  # the others take the file's (hostile) stem as their source
            row["source"] = f"src{i % 3}{PAYLOADS[(i + 2) % len(PAYLOADS)]}"
        pool.append(row)
    targets = [{"id": f"target{i}{PAYLOADS[i]}", "group": f"g{i}{PAYLOADS[i + 3]}", "messages": [
        {"role": "user", "content": f"{PAYLOADS[i + 1]} Add {i} and {i}."},
        {"role": "assistant", "content": f"{PAYLOADS[i + 2]} {2 * i}"}]} for i in range(2)]
    return pool, targets


@pytest.fixture(scope="module")
def browser():
    """One headless chromium (Debian's, driven by playwright) for the whole module."""
    yield from module_browser()


@pytest.fixture(scope="module")
def hostile_cache(browser, tiny_model_dir, tmp_path_factory) -> Path:
    """The hostile project with complete tiny-model features, G2IS/LESS/random runs and both map layouts."""
    from core.data.ingest import ingest_files
    from core.features.featurize import run_features
    from core.selection.runs import feature_index, load_project_features, run_selection
    from core.views import map as maps

    folder = tmp_path_factory.mktemp("hostile")
    store = Store(folder / "cache")
    pool, targets = hostile_rows()
    pool_file = write_jsonl(folder / f"{FILE_STEM}.jsonl", pool)
    with pool_file.open("a", encoding="utf-8") as out:  # one bad row, whose reason names hostile text
        out.write(json.dumps({"id": PAYLOADS[1], "messages": PAYLOADS[0]}) + "\n")
    ingest_files(store, PROJECT, "pool", [pool_file], on_error="skip")
    ingest_files(store, PROJECT, "targets", [write_jsonl(folder / f"targets{PAYLOADS[0]}.jsonl".replace("/", "_"),
                                                         targets)])
    settings = FeatureSettings(model=str(tiny_model_dir), max_tokens=256, projection=ProjectionArguments(dim=64),
                               warmup=WarmupArguments(fraction=0.3))
    store.ensure_project(PROJECT, settings.to_dict())
    run_features(store, PROJECT, settings, log=lambda text: None)
    features = load_project_features(store, PROJECT)
    for method in ("less", "random", "g2is"):  # g2is last: the newest run is the one Walk and Export open
        run_selection(store, PROJECT, method, ratio=0.5, features=features)
    index = feature_index(store, PROJECT)
    for space in maps.SPACES:
        maps.compute_map(store, PROJECT, space, index=index)
    return store.root


@pytest.fixture(scope="module")
def app_server(hostile_cache, tmp_path_factory, request):
    yield from module_server(hostile_cache, tmp_path_factory.mktemp("hostile-server"), request, "hostile-streamlit.log")


class Watch:
    """Dialogs of the page and its frames, as they open (each is dismissed so the page goes on)."""

    def __init__(self, page):
        self.dialogs: list[str] = []
        page.on("dialog", self._on_dialog)

    def _on_dialog(self, dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()


@pytest.fixture()
def app(browser, app_server, request):
    for page in page_for_test(browser, app_server.url, request, "hostile-"):
        page.watch = Watch(page.page)  # before any navigation: dialogs a payload opens are caught from the start
        yield page


def script_ran(app: StreamlitPage) -> list[str]:
    """What shows that data ran as code: dialogs, ``__pwned`` in any frame, elements a payload created."""
    found = list(app.watch.dialogs)
    for frame in app.page.frames:
        try:
            if frame.evaluate("() => window.__pwned !== undefined"):
                found.append(f"window.__pwned set in frame {frame.url[:80]!r}")
            found += [f"injected element in frame {frame.url[:60]!r}: {html}" for html in frame.evaluate(INJECTED_DOM)]
        except Exception as error:  # noqa: BLE001 - a detached frame (Streamlit re-renders) has nothing to check
            if "detached" not in str(error) and "destroyed" not in str(error):
                raise
    return found


def open_page(app: StreamlitPage, name: str) -> None:
    app.open(name, project=quote(PROJECT, safe=""), timeout_ms=150_000)
    main = app.main()
    main.locator("h1").first.wait_for()
    if name == "compare":  # the default 5 % of a 7-row pool is no row: ask for a number of rows instead
        main.get_by_text("number of rows", exact=True).click()
        app.wait_idle()
    label = PRESS.get(name)
    if label is not None:
        button = main.get_by_role("button", name=label, exact=True) if isinstance(label, str) \
            else main.get_by_role("button", name=label)
        button.or_(main.locator(READY[name][-1])).first.wait_for(timeout=120_000)
        if button.count():
            button.first.click()
            app.wait_idle(120_000)
    for selector in READY[name]:
        main.locator(selector).first.wait_for(state="visible", timeout=120_000)
    app.wait_idle()


def hover_plotly_point(app: StreamlitPage, plot_index: int = 0) -> str:
    """Move the mouse onto the first point of a plotly scatter and return the hover label's text."""
    plot = app.main().locator(".js-plotly-plot").nth(plot_index)
    plot.scroll_into_view_if_needed()
    point = plot.locator(".scatterlayer path.point").first
    box = point.bounding_box()
    assert box is not None, "the map has no drawn point to hover"
    app.page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    label = plot.locator(".hoverlayer .hovertext").first
    label.wait_for(state="attached", timeout=10_000)
    return label.text_content()


def hover_graph_node(app: StreamlitPage, node: int) -> str:
    """Move the mouse onto a pyvis node (its position from vis-network) and return the tooltip's text."""
    iframe = app.main().locator("iframe").first
    iframe.scroll_into_view_if_needed()
    frame = iframe.element_handle().content_frame()
    frame.wait_for_function("() => typeof network !== 'undefined' && network.getPositions")
    x, y = frame.evaluate("""(id) => {
        const p = network.canvasToDOM(network.getPositions([id])[id]);
        const r = document.getElementById('mynetwork').getBoundingClientRect();
        return [r.left + p.x, r.top + p.y];
    }""", node)
    box = iframe.bounding_box()
    app.page.mouse.move(box["x"] + x - 3, box["y"] + y - 3)
    app.page.mouse.move(box["x"] + x, box["y"] + y)
    frame.locator(".vis-tooltip:visible, div.popup").first.wait_for(state="attached", timeout=10_000)
    if frame.locator("div.popup").count():
        pytest.fail("pyvis draws node tooltips with innerHTML (its 'href' popup): user text would be HTML")
    return frame.locator(".vis-tooltip").inner_text()


@pytest.mark.reliability("security", "hostile text on every page (XSS, markdown, script break-out)")
@pytest.mark.parametrize("name", PAGES)
def test_hostile_project_page_runs_no_script(app, name, observed):
    missing = not (Path(__file__).resolve().parent.parent / "pages" / f"{name}.py").exists()
    if missing:
        pytest.skip(f"pages/{name}.py not written yet")
    open_page(app, name)
    main = app.main()
    shown = main.inner_text()
    checks: list[str] = []
    if name == "map":
        hover = hover_plotly_point(app)
        observed.append(f"map hover: {hover[:90]!r}")
        assert any(p[:12] in hover for p in PAYLOADS + [FILE_STEM]) or "<" in hover, hover
        checks.append("plotly hover")
    if name == "graph":
        tooltip = hover_graph_node(app, 0)  # pool row 0 (id0<script>...) is the neighbourhood's centre
        observed.append(f"pyvis tooltip: {tooltip.splitlines()[0][:90]!r}")
        assert tooltip.startswith(f"id0{PAYLOADS[0]} · "), tooltip  # the text itself, not &lt;script&gt;
        frame = app.main().locator("iframe").first.element_handle().content_frame()
        labels = frame.evaluate("() => nodes.get().map(node => node.label)")  # drawn as is on the canvas
        assert f"id0{PAYLOADS[0]}" in labels and f"id1{PAYLOADS[1]}" in labels, labels
        checks.append("pyvis tooltip and labels")
    if name == "walk":  # step 0 starts a component; step 1 is the anchor, a row named by its (hostile) id
        main.get_by_role("button", name="Next").click()
        main.get_by_text(re.compile(r"^Step 1 of \d+")).wait_for()
        app.wait_idle()
        shown = main.inner_text()
        assert "id" in shown and any(f"{p}" in shown for p in PAYLOADS), shown[:2000]  # row ids as plain text
        checks.append("walk rows as text")
    if name == "compare":
        legend = main.locator(".js-plotly-plot .legendtext").all_text_contents()  # source composition
        assert FILE_STEM in legend, legend
        checks.append("source legend as text")
    if name == "export":
        preview = main.locator('[data-testid="stCode"]').last.inner_text()
        assert "<script>" in preview or "<img" in preview or "javascript:" in preview, preview
        checks.append("export preview as text")
    if name == "data":
        assert f"id id0{PAYLOADS[0]} · source {FILE_STEM}" in shown, shown[:2000]
        tokens = main.locator(".g2is-tokens").inner_text()
        assert f"Question 0: {PAYLOADS[0]}" in tokens, tokens
        ticks = main.locator(".js-plotly-plot .ytick").all_text_contents()  # rows per source
        assert FILE_STEM in ticks, ticks
        checks.append("row id, token view and source axis as text")
    if name == "features":  # the project name is in the page's markdown
        assert f"Project {PROJECT}" in shown, shown[:500]
        checks.append("project name as text in markdown")
    app.page.wait_for_timeout(500)  # onerror / onload handlers fire asynchronously
    app.screenshot(f"hostile-{name}")
    ran = script_ran(app)
    observed.append(f"{name}: {len(ran)} script(s) ran, {len(app.watch.dialogs)} dialog(s); checked "
                    + (", ".join(checks) or "page DOM and frames"))
    assert ran == []
    assert app.problems() == []
    assert f"project {PROJECT}" in app.page.locator('[data-testid="stSidebar"]').inner_text()


@pytest.mark.reliability("security", "unknown project name from the URL shown as text")
def test_unknown_project_in_the_url_is_shown_as_text(app, hostile_cache, observed):
    """``?project=`` comes from whoever sent the link: the 'no such project' message must not render it."""
    name = "nope[click](javascript:alert(1)):red[x]<img src=x onerror=alert(1)>"
    app.open("data", project=quote(name, safe=""))  # (the Features page would start the demo's feature job)
    errors = app.page.locator('[data-testid="stAlertContentError"]').all_inner_texts()
    observed.append(f"message: {errors[0][:160] if errors else '(none)'}")
    assert any(name in text for text in errors), errors
    assert script_ran(app) == []
    assert Store(hostile_cache).jobs(DEMO_PROJECT) == []
