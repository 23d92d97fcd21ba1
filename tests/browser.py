"""Browser-test plumbing: the app served by a real ``streamlit run`` and a headless Debian chromium driven by
Python playwright (environment.md §6).  The browser is the distribution's ``/usr/bin/chromium``; playwright's own
browser download (``playwright install``) is never used.

``AppServer`` starts ``streamlit run app/main.py`` on a free 127.0.0.1 port in its own process group with
``G2IS_CACHE_DIR`` pointing at a test cache and stops the whole group.  ``StreamlitPage`` holds the waits and
checks every browser test needs: a script run that has finished, Streamlit's exception and error elements, and
screenshots under ``test-artifacts/``.
"""
from __future__ import annotations

import os
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

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


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
