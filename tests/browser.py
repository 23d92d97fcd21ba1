"""Browser-test plumbing: the app served by a real ``streamlit run`` and a headless Debian chromium driven by
Python playwright (environment.md §6).  The browser is the distribution's ``/usr/bin/chromium``; playwright's own
browser download (``playwright install``) is never used.

``AppServer`` starts ``streamlit run app/main.py`` on a free 127.0.0.1 port in its own process group with
``G2IS_CACHE_DIR`` pointing at a test cache and stops the whole group.  ``StreamlitPage`` holds the waits and
checks every browser test needs: a script run that has finished, Streamlit's exception and error elements,
screenshots under ``test-artifacts/``, bounding boxes and what plotly drew; ``show_page`` opens a page and waits
until it has rendered as ``PAGE_CHECKS`` says.  ``scripts/screenshots.py`` (the docs/screenshots/ gallery) uses
the same server, browser and page checks.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts" / "browser"

# The flags measured in environment.md §6: no sandbox (CI runs as root), no GPU, nothing that phones home.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]
REQUIRE_ENV = "G2IS_REQUIRE_BROWSER"  # set by .ci/run: there a missing browser is a failure, not a skip

APP_SELECTOR = '[data-testid="stApp"]'
IDLE_SELECTOR = '[data-testid="stApp"][data-test-script-state="notRunning"]'
EXCEPTION_SELECTOR = '[data-testid="stException"]'
ERROR_SELECTOR = '[data-testid="stAlertContentError"]'


def chromium_path() -> str | None:
    """The system chromium (``$G2IS_CHROMIUM`` overrides), or None."""
    configured = os.environ.get("G2IS_CHROMIUM")
    if configured:
        return configured if Path(configured).exists() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


def missing_browser_reason() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Python playwright is not installed (pip install -e '.[dev]')"
    if chromium_path() is None:
        return ("no chromium ($G2IS_CHROMIUM, or chromium on PATH; Debian: apt-get install -y chromium, "
                "which ./scripts/dev.sh test does when it can)")
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class AppServer:
    """``streamlit run app/main.py`` over one cache, in its own process group."""

    cache_root: Path
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> AppServer:
        env = dict(os.environ, G2IS_CACHE_DIR=str(self.cache_root), PYTHONUNBUFFERED="1")
        command = [
            sys.executable, "-m", "streamlit", "run", "app/main.py",
            "--server.port", str(self.port), "--server.address", "127.0.0.1", "--server.headless", "true",
            "--browser.gatherUsageStats", "false",
            # Other people edit pages/ while tests run: a file watcher would rerun the app under the test.
            "--server.fileWatcherType", "none",
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"streamlit exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as answer:
                    if answer.read().strip() == b"ok":
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"streamlit did not answer /_stcore/health within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL what is left after a few seconds."""
        if self.process is None or self.process.poll() is not None:
            return
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=grace)
                return
            except subprocess.TimeoutExpired:
                continue

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no server log)"


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)


@dataclass
class StreamlitPage:
    """A playwright page on the app, with the waits and checks the browser tests share."""

    page: object  # playwright.sync_api.Page
    base_url: str

    def open(self, path: str = "", project: str | None = None, timeout_ms: int = 60_000) -> None:
        query = f"?project={project}" if project else ""
        self.page.goto(f"{self.base_url}/{path}{query}", wait_until="domcontentloaded")
        self.page.wait_for_selector(APP_SELECTOR, timeout=timeout_ms)
        self.wait_idle(timeout_ms)

    def wait_idle(self, timeout_ms: int = 60_000) -> None:
        """Wait until the script run the last action started has finished (Streamlit marks the app element).

        A short pause first: a click reaches the server asynchronously, so the app can still say "notRunning"
        for a moment after an action that starts a run."""
        self.page.wait_for_timeout(300)
        self.page.wait_for_selector(IDLE_SELECTOR, timeout=timeout_ms)

    def main(self):
        return self.page.locator('[data-testid="stMain"]')

    def problems(self, expected_errors: tuple[str, ...] = ()) -> list[str]:
        """Streamlit exception elements, and error alerts whose text contains none of ``expected_errors``."""
        found = [f"exception: {text}" for text in self.page.locator(EXCEPTION_SELECTOR).all_inner_texts()]
        found += [f"error alert: {text}" for text in self.page.locator(ERROR_SELECTOR).all_inner_texts()
                  if not any(expected in text for expected in expected_errors)]
        # st.navigation answers an unknown URL path with a dialog and silently runs the default page instead.
        found += [f"dialog: {text}" for text in self.page.locator('[role="dialog"]').all_inner_texts()
                  if "Page not found" in text]
        return found

    def screenshot(self, name: str, folder: Path | None = None) -> Path:
        """``<folder>/<name>.png`` (default: test-artifacts/browser/) of the whole page."""
        folder = folder or ARTIFACTS
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def screenshot_of(self, locator, name: str, folder: Path | None = None) -> Path:
        """``<folder>/<name>.png`` (default: test-artifacts/browser/) of one element."""
        folder = folder or ARTIFACTS
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.png"
        locator.screenshot(path=str(path))
        return path

    def plot(self, nth: int = 0, within=None):
        """The ``nth`` plotly chart in the main area (or in ``within``), once drawn."""
        chart = (within or self.main()).locator(PLOT).nth(nth)
        chart.wait_for(state="visible")
        return chart

    def boxes(self, locator) -> list[dict]:
        """Bounding boxes ({x, y, width, height}, page pixels) of every visible element of ``locator``."""
        return [box for box in (item.bounding_box() for item in locator.all()) if box and box["width"] and box["height"]]

    def figure(self, chart) -> dict:
        """What plotly drew in ``chart`` (a ``.js-plotly-plot`` element, plotly's graph div), read from its full
        data and layout: each trace's name, type, marker size, colour, opacity and symbol, the title and the axis
        and legend titles."""
        return chart.evaluate("""gd => {
            const text = part => (part && part.text) || "";
            const layout = gd._fullLayout;
            return {
                traces: gd._fullData.map(t => ({name: t.name, type: t.type, visible: t.visible,
                    marker: t.marker ? {size: t.marker.size, color: t.marker.color, opacity: t.marker.opacity,
                                        symbol: t.marker.symbol} : null})),
                title: text(layout.title), xaxis: text(layout.xaxis && layout.xaxis.title),
                yaxis: text(layout.yaxis && layout.yaxis.title), legend: text(layout.legend && layout.legend.title),
            };
        }""")

    def show_page(self, page_name: str, project: str, check: PageCheck | None = None) -> None:
        """Open a page on ``project`` and wait until it has rendered as ``check`` (default: ``PAGE_CHECKS``)
        says: press its buttons when the page offers them, then wait for its ready selectors and frame."""
        check = check or PAGE_CHECKS.get(page_name, PageCheck())
        self.open(page_name, project=project, timeout_ms=check.timeout_ms)
        main = self.main()
        main.locator("h1").first.wait_for()
        for label in check.press_if_present:
            button = main.get_by_role("button", name=label, exact=True) if isinstance(label, str) \
                else main.get_by_role("button", name=label)
            # Elements render a moment after the run ends: wait for the button or for what it would produce.
            button.or_(main.locator(check.ready[-1])).first.wait_for(timeout=check.timeout_ms)
            if button.count():
                button.first.click()
                self.wait_idle(check.timeout_ms)
        for selector in check.ready:
            main.locator(selector).first.wait_for(state="visible", timeout=check.timeout_ms)
        if check.in_frame:
            main.frame_locator("iframe").first.locator(check.in_frame).first.wait_for(
                state="visible", timeout=check.timeout_ms)
        self.wait_idle(check.timeout_ms)


def overlap(a: dict, b: dict, margin: float = 0.0) -> bool:
    """Whether two bounding boxes intersect (by more than ``margin`` pixels each way)."""
    return (a["x"] + margin < b["x"] + b["width"] and b["x"] + margin < a["x"] + a["width"]
            and a["y"] + margin < b["y"] + b["height"] and b["y"] + margin < a["y"] + a["height"])


# ------------------------------------------------------------------------------------------ pages and checks
# The workflow order of app/main.py.
PAGE_ORDER = ["data", "features", "map", "graph", "walk", "compare", "evaluate", "export"]


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


PLOT = ".js-plotly-plot"
TABLE = '[data-testid="stDataFrame"]'
PAGE_CHECKS = {
    # Length histogram and source bars, and the token view with trained (assistant) tokens marked.
    "data": PageCheck(ready=("h1", f"{PLOT} >> nth=1", ".g2is-trained")),
    "features": PageCheck(ready=("h1", TABLE, 'text="All features are computed and cached."')),
    # A small project's map is computed on the first visit (UMAP + MiniLM; the first UMAP compiles, ~30-60 s).
    "map": PageCheck(ready=("h1", f"{PLOT} >> nth=1"), timeout_ms=150_000),
    # pyvis draws the neighbourhood of the first pool row into a canvas inside the page's iframe.
    "graph": PageCheck(ready=("h1", "iframe"), in_frame="canvas", press_if_present=("Build the graph",)),
    # The newest stored G2IS run opens at step 0 with its charts.
    "walk": PageCheck(ready=("h1", PLOT, "text=/Step 0 of \\d+/")),
    # Compare runs the methods with no stored run at its default budget (one press), then plots.
    "compare": PageCheck(ready=("h1", TABLE, PLOT), press_if_present=(re.compile(r"^Run \d+ methods?$"),)),
    # Export writes the newest stored run and offers both downloads.
    "export": PageCheck(ready=("h1", 'button:has-text("Download JSONL")', 'button:has-text("Download manifest")'),
                        press_if_present=("Export",)),
}


def module_marks() -> list:
    """``pytestmark`` of a browser test module: a 300 s timeout, and a skip when there is no browser here, unless
    ``G2IS_REQUIRE_BROWSER=1`` (CI), where the ``browser`` fixture fails instead.  Decided at collection: a
    fixture's skip would come only after the session fixtures (tiny model, features) were built."""
    import pytest

    marks = [pytest.mark.timeout(300)]
    reason = missing_browser_reason()
    if reason and os.environ.get(REQUIRE_ENV) != "1":
        marks.append(pytest.mark.skip(reason=reason))
    return marks


def module_browser():
    """Body of a module-scoped ``browser`` fixture: one headless chromium for the whole module."""
    import pytest
    from playwright.sync_api import sync_playwright

    reason = missing_browser_reason()
    if reason:  # only reached under G2IS_REQUIRE_BROWSER=1 (else the module is skipped)
        pytest.fail(f"{REQUIRE_ENV}=1 but {reason}")
    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


def stop_job_workers(cache_root: Path) -> None:
    """Kill the feature workers the app started: they run in their own sessions (they outlive a closed tab by
    design), so stopping the server's process group does not stop them."""
    from core.store import Store

    store = Store(cache_root)
    for project in store.projects():
        for job in store.jobs(project):
            if job.pid and job.status in ("queued", "running", "cancelling"):
                try:
                    os.killpg(job.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


def module_server(cache_root: Path, log_folder: Path, request, log_name: str):
    """Body of a module-scoped ``app_server`` fixture: ``streamlit run app/main.py`` over ``cache_root``; at the
    end the server and any job worker it started are stopped, and its log is kept as test-artifacts/browser/
    ``log_name`` when a test of the module failed."""
    server = AppServer(cache_root, log_folder / "streamlit.log").start()
    failed_before = request.session.testsfailed
    try:
        yield server
    finally:
        server.stop()
        stop_job_workers(cache_root)
        if request.session.testsfailed > failed_before:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shutil.copy(server.log_path, ARTIFACTS / log_name)


def page_for_test(browser, base_url: str, request, screenshot_prefix: str = ""):
    """Body of an ``app`` fixture: a fresh browser context (own session, downloads allowed) on the running app,
    as a ``StreamlitPage``; a screenshot is saved when the test fails."""
    context = browser.new_context(viewport={"width": 1400, "height": 1600}, accept_downloads=True)
    context.set_default_timeout(60_000)
    page = StreamlitPage(context.new_page(), base_url)
    failed_before = request.session.testsfailed
    try:
        yield page
    finally:
        if request.session.testsfailed > failed_before:
            try:
                page.screenshot(f"FAILED-{screenshot_prefix}{request.node.name}")
            except Exception:  # noqa: BLE001 - a broken page must not hide the test's own failure
                pass
        context.close()
