"""Regenerate the screenshot gallery ``docs/screenshots/``: every page of the app on one project, shot in a real
browser (``streamlit run app/main.py`` on 127.0.0.1 and Debian's headless chromium driven by Python playwright,
the same harness as the browser tests, ``tests/browser.py``; never ``playwright install``).

    python scripts/screenshots.py --tiny                        # what made the committed screenshots
    python scripts/screenshots.py --cache cache --project demo  # a cache where the project's features exist
    python scripts/screenshots.py --cache cache --project demo --compute-features   # compute them first

``--tiny`` builds (or reuses) a cache under ``test-artifacts/screenshots-cache`` (or ``--cache``) holding the
built-in demo project (320 pool rows in seven sources, 16 math targets) whose features come from the tiny random
Llama the tests use (``tests/conftest.py``'s ``build_tiny_model``: 2 layers, 64 hidden, a 512-token BPE
vocabulary; 256 tokens, truncated from the left): a few minutes on two CPU cores, where the real demo model,
SmolLM2-135M, takes much longer.  The pictures then show the app's real pages on the real demo data, with
selections made from a random model's gradients.

Without ``--tiny`` the project must have complete features in ``--cache`` (default ``$G2IS_CACHE_DIR`` or
``./cache``), or ``--compute-features`` computes them inline with the project's own settings.  When the project
has no stored G2IS walk the script runs one at the default budget (as pressing **Run walk** would), so the Walk
and Export pages have something to show; the Map computes its layouts and Compare runs its methods on the first
visit, as they do for a user.  Each page is written as ``<out>/<page>.png`` (1280 px wide, the page's whole
height up to ``--max-height``, palette-compressed), and ``<out>/README.md`` lists them with what made them.
"""
from __future__ import annotations

import argparse
import io
import os
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the browser harness (tests/browser.py) and the tiny model (conftest)

from browser import (  # noqa: E402
    PAGE_CHECKS,
    PAGE_ORDER,
    AppServer,
    PageCheck,
    StreamlitPage,
    launch_chromium,
    missing_browser_reason,
    stop_job_workers,
)

DEFAULT_OUT = REPO / "docs" / "screenshots"
TINY_CACHE = REPO / "test-artifacts" / "screenshots-cache"
TITLES = {"data": "Data", "features": "Features", "map": "Map", "graph": "Graph", "walk": "Walk",
          "compare": "Compare", "evaluate": "Evaluate", "export": "Export"}
WHAT = {
    "data": "projects, uploads (each upload ingests exactly its files), row counts, the length and source charts "
            "and one row's tokens with the trained (assistant) ones marked",
    "features": "the feature settings, the cost estimate and the background feature job",
    "map": "UMAP of the gradient features beside UMAP of the text embeddings, coloured by source",
    "graph": "the hubness verdict and the kNN gradient graph around a row, communities laid out apart",
    "walk": "a stored G2IS walk: the PCA chart with each component's budget, one step in words, the similarity "
            "curve and the walk's path on the gradient map",
    "compare": "G2IS, LESS, TSDS and random at one budget: the Jaccard overlap and each selection's sources",
    "evaluate": "fine-tuning on selections, judged by held-out loss (the form; nothing is trained here)",
    "export": "a selection written as JSONL with its reproducibility manifest",
}
# Screenshots are shots of the pages' ready state (tests/browser.py PAGE_CHECKS), with a few more waits.
SHOT_CHECKS = dict(PAGE_CHECKS, evaluate=PageCheck(ready=("h1",)))
TINY_MODEL_NOTE = ("the tiny random Llama of the tests (tests/conftest.py `build_tiny_model`: 2 layers, hidden "
                   "size 64, a 512-token BPE vocabulary), max 256 tokens truncated from the left, a 256-d projection")


# ------------------------------------------------------------------------------------------------ the cache

def tiny_model_dir(cache: Path) -> Path:
    return cache.with_name(cache.name + "-tiny-model")


def build_tiny_cache(cache: Path, project: str) -> str:
    """The demo data as ``project`` with tiny-model features (built once; a rerun reuses what is there)."""
    from conftest import build_tiny_model

    from core.config import FeatureSettings, ProjectionArguments, WarmupArguments
    from core.data.projects import create_demo_project
    from core.store import Store

    model = tiny_model_dir(cache)
    if not (model / "config.json").is_file():
        print(f"building the tiny model in {model}")
        build_tiny_model(model)
    store = Store(cache)
    if project not in store.projects() or not any(store.row_counts(project).values()):
        create_demo_project(store, project)
    settings = FeatureSettings(model=str(model), max_tokens=256, truncation="left",
                               projection=ProjectionArguments(dim=256), warmup=WarmupArguments(fraction=0.1))
    store.ensure_project(project, settings.to_dict())
    return str(model)


def prepare(cache: Path, project: str, compute: bool) -> str:
    """Check (or compute) the project's features and store a default G2IS walk when it has none; returns the
    project's model."""
    from core.data.projects import project_settings
    from core.features.featurize import run_features
    from core.selection.methods import DEFAULT_RATIO
    from core.selection.runs import FeaturesMissing, feature_index, run_selection
    from core.store import Store

    store = Store(cache)
    if project not in store.projects():
        sys.exit(f"no project {project!r} in {cache} (projects: {', '.join(store.projects()) or 'none'})")
    settings = project_settings(store, project)
    try:
        feature_index(store, project)
    except FeaturesMissing as error:
        if not compute:
            sys.exit(f"{error}\nCompute them first (python -m core features --project {project} --inline), pass "
                     "--compute-features, or use --tiny.")
        print(f"computing the features of {project} with {settings.model} (inline)")
        started = time.perf_counter()
        run_features(store, project, settings, log=lambda text: None)
        print(f"  {time.perf_counter() - started:.0f} s")
        feature_index(store, project)
    if not store.selection_runs(project, "g2is"):
        print("storing a G2IS walk at the default budget")
        run_selection(store, project, "g2is", ratio=DEFAULT_RATIO)
    return settings.model


# ------------------------------------------------------------------------------------------------ the shots

def compressed_png(data: bytes) -> bytes:
    """The screenshot as a 256-colour PNG (a UI survives it; a third of the bytes or less)."""
    from PIL import Image

    image = Image.open(io.BytesIO(data)).convert("RGB")
    out = io.BytesIO()
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        out, format="PNG", optimize=True)
    return out.getvalue() if out.tell() < len(data) else data


def content_height(app: StreamlitPage) -> int:
    """Pixels the main area's content needs (Streamlit scrolls inside its own container, not the document)."""
    return int(app.page.evaluate("""() => {
        const block = document.querySelector('[data-testid="stMainBlockContainer"]')
            || document.querySelector('[data-testid="stMain"]');
        const top = block.getBoundingClientRect().top;
        return Math.ceil(top + block.scrollHeight + 48);
    }"""))


def before_shot(app: StreamlitPage, page_name: str) -> None:
    """Page-specific steps that make a shot show more than the first state."""
    main = app.main()
    if page_name == "map":
        # Coloured by the G2IS walk's picks: where gradient selection went on the map.
        main.locator('[data-testid="stRadio"]').filter(has_text="Colour by").get_by_text("a selection run").click()
        app.wait_idle()
        selectbox = main.locator('[data-testid="stSelectbox"]').filter(has_text="Selection run")
        if not selectbox.inner_text().split("\n")[-1].startswith("g2is ·"):
            selectbox.click()
            app.page.get_by_role("option", name=re.compile(r"^g2is ·")).first.click()
            app.wait_idle()
        main.locator(".js-plotly-plot >> nth=1").wait_for()
    if page_name == "walk":
        # A step into the walk, so that its path on the map has a few picks.
        last = main.get_by_text("Step 0 of ").first.inner_text().split(" of ")[1].split()[0]
        step = main.get_by_role("spinbutton", name="Step")
        step.fill(str(max(1, int(last) // 3)))
        step.press("Enter")
        app.wait_idle()
    # No focus ring on the last widget used, and the page from its top.
    app.page.evaluate("() => document.activeElement && document.activeElement.blur()")
    app.page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollTo(0, 0)")
    app.page.wait_for_timeout(500)


def shoot(cache: Path, project: str, out: Path, pages: list[str], width: int, height: int,
          max_height: int) -> list[tuple[str, Path, int]]:
    from playwright.sync_api import sync_playwright

    log_folder = REPO / "test-artifacts" / "screenshots"
    server = AppServer(cache, log_folder / "streamlit.log").start()
    shots = []
    try:
        with sync_playwright() as playwright:
            chromium = launch_chromium(playwright)
            for page_name in pages:
                context = chromium.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
                context.set_default_timeout(120_000)
                app = StreamlitPage(context.new_page(), server.url)
                started = time.perf_counter()
                try:
                    app.show_page(page_name, project, SHOT_CHECKS.get(page_name, PageCheck()))
                    before_shot(app, page_name)
                    problems = app.problems(SHOT_CHECKS.get(page_name, PageCheck()).expected_errors)
                    if problems:
                        print(f"  {page_name}: the page shows {problems}", file=sys.stderr)
                    app.page.set_viewport_size({"width": width, "height": max(height, min(content_height(app),
                                                                                         max_height))})
                    app.page.wait_for_timeout(800)  # charts relayout to the new size
                    app.wait_idle()
                    raw = app.page.screenshot(full_page=False)
                except Exception:
                    app.screenshot(f"FAILED-{page_name}", log_folder)
                    print(f"{page_name} failed; the server log is {server.log_path}", file=sys.stderr)
                    raise
                finally:
                    context.close()
                path = out / f"{page_name}.png"
                out.mkdir(parents=True, exist_ok=True)
                path.write_bytes(compressed_png(raw))
                size = path.stat().st_size
                shots.append((page_name, path, size))
                print(f"  {path.relative_to(REPO) if path.is_relative_to(REPO) else path}: {size / 1024:.0f} KB "
                      f"({time.perf_counter() - started:.0f} s)")
            chromium.close()
    finally:
        server.stop()
        stop_job_workers(cache)
    return shots


def write_readme(out: Path, shots: list[tuple[str, Path, int]], project: str, model_note: str, command: str,
                 width: int) -> Path:
    lines = [
        "# Screenshots",
        "",
        f"Every page of G2IS Explorer on project `{project}`, shot in headless chromium at {width} px wide by "
        "`scripts/screenshots.py` (not by hand). Regenerate them with",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Features: {model_note}. Taken {datetime.now(timezone.utc):%Y-%m-%d}.",
        "",
        "`--tiny` builds a cache with the built-in demo data (320 pool rows in seven sources, 16 math targets) "
        "and computes its features with that tiny model in a few minutes on two CPU cores, so the selections "
        "come from a random model's gradients. For pictures of the demo's own model (SmolLM2-135M-Instruct, "
        "much slower on a CPU), compute its features first (`python -m core features --project demo --inline`, "
        "or the Features page) and run `python scripts/screenshots.py --cache cache --project demo`; any "
        "project with complete features works the same way (`--compute-features` computes them inline).",
        "",
    ]
    for page_name, path, _ in shots:
        lines += [f"## {TITLES.get(page_name, page_name.title())}", "",
                  f"{WHAT.get(page_name, '')[:1].upper()}{WHAT.get(page_name, '')[1:]}.", "",
                  f"![{TITLES.get(page_name, page_name)} page]({path.name})", ""]
    path = out / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, help="cache folder (default: $G2IS_CACHE_DIR or ./cache; with "
                                                   f"--tiny: {TINY_CACHE.relative_to(REPO)})")
    parser.add_argument("--project", default=None, help="project to show (default: demo)")
    parser.add_argument("--tiny", action="store_true", help="build the demo project with tiny-model features")
    parser.add_argument("--compute-features", action="store_true",
                        help="compute missing features inline with the project's settings (slow for SmolLM2)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder of the PNGs and README.md")
    parser.add_argument("--pages", default=",".join(PAGE_ORDER), help="comma-separated page names")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900, help="smallest viewport height")
    parser.add_argument("--max-height", type=int, default=2600, help="tallest shot (px)")
    args = parser.parse_args(argv)

    reason = missing_browser_reason()
    if reason:
        sys.exit(f"cannot take screenshots: {reason}")
    from core.data.demo import DEMO_PROJECT

    project = args.project or DEMO_PROJECT
    cache = (args.cache or (TINY_CACHE if args.tiny else Path(os.environ.get("G2IS_CACHE_DIR") or REPO / "cache")))
    cache = cache.resolve()
    if args.tiny:
        build_tiny_cache(cache, project)
    model = prepare(cache, project, args.compute_features or args.tiny)
    pages = [name.strip() for name in args.pages.split(",") if name.strip()]
    unknown = [name for name in pages if not (REPO / "pages" / f"{name}.py").exists()]
    if unknown:
        sys.exit(f"no such page: {', '.join(unknown)}")
    print(f"shooting {len(pages)} pages of project {project} in {cache}")
    shots = shoot(cache, project, args.out.resolve(), pages, args.width, args.height, args.max_height)
    if args.tiny:
        model_note = TINY_MODEL_NOTE
        command = "python scripts/screenshots.py --tiny" + (f" --project {project}" if args.project else "")
    else:
        model_note = f"model `{model}` (the project's settings)"
        command = f"python scripts/screenshots.py --cache CACHE --project {project}"
    if set(pages) >= set(p for p in PAGE_ORDER if (REPO / "pages" / f"{p}.py").exists()):
        print(write_readme(args.out.resolve(), shots, project, model_note, command, args.width))
    return 0


if __name__ == "__main__":
    sys.exit(main())
