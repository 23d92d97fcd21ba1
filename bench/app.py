"""Benchmark: the app's speed standard at 50,000 cached pool rows -- every page renders in under 3 s and a walk
step answers in under 200 ms (issue 4: "replay from stored events; send the browser only what it draws").

Run from the repo root (the first run builds the project and caches it under ``cache/bench-app``: 37 minutes on 2
cores loaded by other jobs, 32 of them MiniLM for the text map; later runs reuse it and take about a minute)::

    python bench/app.py [--rows 50000] [--warm-runs 3] [--next-clicks 20] [--pages walk,map] [--threads 2]
    python bench/app.py --profile map,walk-next       # where the time of a page (or a walk step) goes

``--profile`` prints cProfile tables of the script thread for a cold page render or a walk step (``walk-next``,
``walk-jump``): the project's functions by cumulative time, then everything by own time.

Skips (exit 0, with a message) when ``../shared/data`` is absent.

What is real and what is synthetic in the cached project ``bench-app``:

* Rows: real.  50,000 rows sampled (seeded, file order kept) from the 54,688 rows of ``../shared/data/pool/*.jsonl``
  and the 100 GSM8K test rows of ``../shared/data/targets/gsm8k.jsonl`` as targets, ingested with
  ``core.data.ingest.ingest_files(..., on_error="skip")``.
* Model: the tiny random Llama of the tests (``tests/conftest.py`` ``build_tiny_model``: 2 layers, hidden 64, a
  512-token byte-level BPE vocabulary trained on six sentences), projection dim 512, LoRA r=8.  ``max_tokens`` is 512,
  not 64: that tokenizer spends ~1.5 characters per token, so at 64 tokens every GSM8K target and ~90 % of the pool
  fail with "answer truncated away" and the project would have no target features at all.
* Features: the real pipeline (``core.features.featurize.run_features``) runs first on a probe project of ``--probe-rows``
  pool rows to measure its rate.  If the whole pool would take longer than ``--feature-budget`` seconds (it does: the
  probe handled 7.2 rows/s on the loaded 2 cores, ~2 hours for 50,000), the main project gets the real warmup, real target
  features and a real feature for pool row 0 (``run_features(..., limit=1)``), and the other pool rows get seeded
  synthetic clustered vectors written through the store's own API (``Store.register_feature_config`` /
  ``write_chunk`` under the config key of ``core.features.featurize.plan_features``), so ``feature_index`` sees the set
  complete.  Synthetic vectors: a few cluster centres per source (half of the math sources' centres lean towards
  the real target features), within-cluster cosine ~0.3, row norms around the real pool row's.  Their token counts
  are the real ones of the tiny tokenizer; unlike the real pipeline, rows whose answer is cut away still get a
  vector, so all 50,000 pool rows have features (a worst case for the pages).
* Artifacts: real, computed by the project's own code on those features: the gradient map (``core.views.map.compute_map``:
  PCA-50 + UMAP of 50,100 points), the text map (MiniLM + UMAP; MiniLM embeds ~20 full rows/s here, so when all rows
  would take longer than ``--text-budget`` seconds each text is cut to its first ``--text-chars`` characters before
  embedding -- the layout still has every row), the kNN graph (``project_graph``, k=32), the G2IS walk run
  (``run_selection(..., "g2is", ratio=0.01)`` with its events), and LESS, TSDS (both variants), random and G2IS runs at
  the Compare page's default budget (5 %) for Compare and Export.  The embedding baseline is not run (it embeds all
  50,000 full texts: ~40 minutes here), so the Compare page lists it as "not run yet".

What is measured, in one process, with ``streamlit.testing.v1.AppTest`` on ``app/main.py``: for every page the first
render in a fresh AppTest after clearing ``st.cache_data`` and ``st.cache_resource`` (cold) and the median of
``--warm-runs`` reruns of the same AppTest (warm); on the Walk page the median time of a click on Next, of a jump to
a far step and of Play's tick (a rerun while playing); and the bytes each page hands the browser (plotly specs and
their hover texts, iframe documents, dataframes, all elements).  Each time is given twice: the script body as timed
inside Streamlit's script thread (what a server spends; the verdict uses it) and the whole ``AppTest.run`` (which
adds AppTest's own work: ~0.2 s per fresh AppTest for its component scan, a few ms of polling per run).  AppTest
times the server side only: no websocket transfer and no browser drawing (the byte counts stand for those).  It also
reruns the whole page on every click, whereas in a browser a click inside the walk's step panel (an ``st.fragment``)
reruns only that fragment: the Next/jump/tick rows are upper bounds, and a "walk fragment" row gives the step panel's
own share of a Next click (cProfile).  The step as a user gets it is then timed in a real browser
(``--browser-clicks``): ``streamlit run`` on the bench cache and headless Debian chromium, from the click on Next
until the new step's heading is drawn, measured inside the page.  Before the timed pass every page is opened once (imports, numba compilation),
so "cold" means cold caches in a warm process: the first visit after a server start or a cache clear.  The run ends
with ``figure: NAME = VALUE`` lines.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

# Before numpy and torch load: 2 threads suit the 2 shared cores (``--threads`` also caps them after import).
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the test suite's helpers (conftest, browser) are not part of the package

SHARED_DATA = REPO.parent / "shared" / "data"

PROJECT = "bench-app"
PROBE_PROJECT = "bench-app-probe"
PAGES = ["data", "features", "map", "graph", "walk", "compare", "export"]
PROFILE_TARGETS = PAGES + ["walk-next", "walk-jump"]
RENDER_TARGET_S = 3.0
STEP_TARGET_S = 0.2
MAX_TOKENS = 512
PROJECTION_DIM = 512
COMPARE_RATIO = 0.05  # pages/compare.py's default fraction
COMPARE_METHODS = ["g2is", "less", "tsds-kde", "tsds-uniform", "random"]
MATH_SOURCES = {"gsm8k_train", "flan_cot"}  # the sources whose synthetic clusters lean towards the GSM8K targets
MAIN = str(REPO / "app" / "main.py")


def say(text: str = "") -> None:
    print(text, flush=True)


def load_text() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} cores"


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    value = function(*args, **kwargs)
    return value, time.perf_counter() - started


class SetupRecord:
    """Seconds per setup step and the choices made, kept next to the cache so a later run can still report them."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {"seconds": {}, "facts": {}}

    def step(self, name: str, seconds: float) -> None:
        self.data["seconds"][name] = round(seconds, 2)
        self.save()

    def fact(self, name: str, value) -> None:
        self.data["facts"][name] = value
        self.save()

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=1, sort_keys=True))


# ================================================================================================== setup

def write_inputs(work: Path, rows: int, seed: int) -> tuple[Path, Path]:
    """``rows`` pool lines sampled from every pool file (seeded; file order kept) and all GSM8K target lines."""
    work.mkdir(parents=True, exist_ok=True)
    pool_path = work / f"pool_{rows}_seed{seed}.jsonl"
    if not pool_path.exists():
        lines = []
        for source_file in sorted((SHARED_DATA / "pool").glob("*.jsonl")):
            # split on "\n" only: str.splitlines() also breaks at U+2028 and friends inside JSON strings
            lines += [line for line in source_file.read_text(encoding="utf-8").split("\n") if line.strip()]
        picked = sorted(random.Random(seed).sample(range(len(lines)), min(rows, len(lines))))
        pool_path.write_text("".join(lines[i] + "\n" for i in picked), encoding="utf-8")
    targets_path = work / "targets_gsm8k.jsonl"
    if not targets_path.exists():
        targets_path.write_text((SHARED_DATA / "targets" / "gsm8k.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    return pool_path, targets_path


def project_settings_for(model_dir: Path):
    from core.config import FeatureSettings, ProjectionArguments

    return FeatureSettings(model=str(model_dir), max_tokens=MAX_TOKENS, projection=ProjectionArguments(dim=PROJECTION_DIM))


def ingest(store, project: str, pool_path: Path, targets_path: Path, settings) -> None:
    from core.data.ingest import ingest_files

    if project not in store.projects():
        ingest_files(store, project, "pool", [pool_path], on_error="skip")
        ingest_files(store, project, "targets", [targets_path], on_error="skip")
    store.ensure_project(project, settings.to_dict())


def probe_feature_rate(store, work: Path, pool_path: Path, targets_path: Path, settings, probe_rows: int,
                       record: SetupRecord) -> dict:
    """The real pipeline's pool rate (rows that got a gradient per second) on a small probe project."""
    if "probe" in record.data["facts"]:
        return record.data["facts"]["probe"]
    from core.features.featurize import run_features

    probe_pool = work / f"probe_pool_{probe_rows}.jsonl"
    lines = [line + "\n" for line in pool_path.read_text(encoding="utf-8").split("\n") if line.strip()]
    # A seeded sample across all sources: the pool's first rows (one source, short rows) would flatter the rate.
    picked = sorted(random.Random(1).sample(range(len(lines)), min(probe_rows, len(lines))))
    probe_pool.write_text("".join(lines[i] for i in picked), encoding="utf-8")
    ingest(store, PROBE_PROJECT, probe_pool, targets_path, settings)
    phases: list[tuple[str, float, int, int]] = []

    def report(progress) -> None:
        if not phases or phases[-1][0] != progress.phase:
            phases.append((progress.phase, time.perf_counter(), progress.done, progress.errors))

    say(f"  probe: real features of {probe_rows} pool rows + the targets (warmup included) ...")
    _, seconds = timed(run_features, store, PROBE_PROJECT, settings, report=report, log=lambda text: None)
    pool_phase = next(n for n, p in enumerate(phases) if p[0].startswith("pool features"))
    start, end = phases[pool_phase], phases[pool_phase + 1]
    counts = store.feature_progress(PROBE_PROJECT, "pool", _config_keys(store, PROBE_PROJECT, settings)["pool"])
    pool_seconds = end[1] - start[1]
    probe = {"rows": probe_rows, "seconds_total": round(seconds, 1), "pool_seconds": round(pool_seconds, 1),
             "pool_features": counts["features"], "pool_errors": counts["errors"],
             # rows handled per second (a row whose answer is cut away is recorded as an error at no cost)
             "rows_per_s": (counts["features"] + counts["errors"]) / pool_seconds if pool_seconds > 0 else None}
    record.fact("probe", probe)
    record.step("probe_real_features", seconds)
    return probe


def _config_keys(store, project: str, settings) -> dict[str, str]:
    from core.features.featurize import plan_features

    plan = plan_features(store, project, settings)
    return {role: plan.config_for(role).key for role in ("pool", "targets")}


def synthetic_pool_vectors(sources: list[str], targets: np.ndarray, scale: float, dim: int, seed: int):
    """Seeded clustered vectors, one per pool row, in blocks; see the module docstring."""
    rng = np.random.default_rng(seed)
    unit_targets = targets / np.maximum(np.linalg.norm(targets, axis=1, keepdims=True), 1e-12)
    counts: dict[str, int] = {}
    for source in sources:
        counts[source] = counts.get(source, 0) + 1
    centres: dict[str, np.ndarray] = {}
    for source in sorted(counts):
        n_centres = int(np.clip(round(np.sqrt(counts[source]) / 10), 2, 12))
        directions = rng.standard_normal((n_centres, dim))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        if source in MATH_SOURCES:
            for j in range(n_centres // 2):
                lean = unit_targets[rng.choice(len(unit_targets), 5, replace=False)].mean(axis=0)
                directions[j] = 0.8 * lean / np.linalg.norm(lean) + 0.6 * directions[j]
                directions[j] /= np.linalg.norm(directions[j])
        centres[source] = directions.astype(np.float32)
    noise_sigma = np.float32(np.sqrt(2.3 / dim))  # 1 / (1 + dim * sigma^2) ~ 0.3: cosine of two rows of a cluster
    out = np.empty((len(sources), dim), dtype=np.float32)
    for start in range(0, len(sources), 4096):
        block = sources[start:start + 4096]
        picks = np.stack([centres[s][rng.integers(len(centres[s]))] for s in block])
        noise = rng.standard_normal((len(block), dim), dtype=np.float32) * noise_sigma
        norms = rng.uniform(0.5, 2.0, (len(block), 1)).astype(np.float32) * np.float32(scale)
        vectors = picks + noise
        out[start:start + len(block)] = vectors / np.linalg.norm(vectors, axis=1, keepdims=True) * norms
    return out


def write_synthetic_pool(store, project: str, settings, seed: int) -> int:
    """Fill every pool row without a feature (or recorded error) with a synthetic vector, through the store's API."""
    from dataclasses import asdict

    from core.features.featurize import _base_description, plan_features
    from core.features.modeling import encode_messages, load_tokenizer, resolve_model
    from core.store import FeatureRowEntry

    tokenizer = load_tokenizer(resolve_model(settings.model))
    plan = plan_features(store, project, settings, tokenizer=tokenizer)
    pool_config, targets_config = plan.config_for("pool"), plan.config_for("targets")
    todo = plan.missing[pool_config.key]
    if not todo:
        return 0
    _, targets, _ = store.feature_matrix(project, "targets", targets_config.key)
    _, _, norms = store.feature_matrix(project, "pool", pool_config.key)
    scale = float(np.median(norms)) if len(norms) else float(np.median(np.linalg.norm(targets, axis=1)))
    vectors = synthetic_pool_vectors([row.source or "" for row in todo], targets, scale, settings.projection.dim, seed)
    store.register_feature_config(
        pool_config.key, pool_config.gradient_type, pool_config.checkpoint.key, settings.projection.dim,
        settings.storage_dtype,
        {**_base_description(settings, plan.model_key, plan.template_key), "role": "pool",
         "epoch": pool_config.checkpoint.epoch, "projection": asdict(settings.projection),
         "synthetic": "bench/app.py: seeded clustered vectors, not gradients"},
    )
    chunk = 4096
    for start in range(0, len(todo), chunk):
        rows = todo[start:start + chunk]
        entries = []
        for offset, row in enumerate(rows):
            encoded = encode_messages(tokenizer, row.messages, settings.max_tokens)
            vector = vectors[start + offset]
            entries.append(FeatureRowEntry(row.content_hash, offset, float(np.linalg.norm(vector)),
                                           len(encoded.input_ids), encoded.full_length > settings.max_tokens))
        store.write_chunk(pool_config.key, "synthetic", vectors[start:start + len(rows)], entries, [],
                          settings.storage_dtype)
        say(f"    synthetic pool features: {start + len(rows):,} / {len(todo):,}")
    return len(todo)


def ensure_features(store, project: str, settings, probe: dict, args, record: SetupRecord) -> None:
    from core.features.featurize import run_features
    from core.selection.runs import FeaturesMissing, feature_index

    try:
        feature_index(store, project)
        return
    except FeaturesMissing:
        pass
    pool_rows = store.row_counts(project)["pool"]
    rate = probe.get("rows_per_s") or 0.0
    projected = pool_rows / rate if rate else float("inf")
    mode = args.features
    if mode == "auto":
        mode = "real" if projected <= args.feature_budget else "synthetic"
    say(f"  real pipeline: {rate:.1f} pool rows/s in the probe -> {pool_rows:,} rows would take "
        f"{projected / 60:.0f} min (budget {args.feature_budget / 60:.0f} min): {mode} pool features")
    record.fact("features", {"mode": mode, "projected_real_seconds": round(projected), "pool_rows": pool_rows})

    def progress_log(text: str) -> None:
        say(f"    [features] {text}")

    if mode == "real":
        last = [0.0]

        def report(progress) -> None:
            if time.perf_counter() - last[0] >= 60:
                last[0] = time.perf_counter()
                rate = f", {progress.rate:.0f} rows/s" if progress.rate else ""
                say(f"    [features] {progress.phase}: {progress.done:,} / {progress.total:,}{rate}")

        _, seconds = timed(run_features, store, project, settings, report=report, log=progress_log)
        record.step("features_real", seconds)
        return
    _, seconds = timed(run_features, store, project, settings, limit=1, log=progress_log)
    record.step("features_real_warmup_targets_row0", seconds)
    written, seconds = timed(write_synthetic_pool, store, project, settings, args.seed)
    record.step("features_synthetic_pool", seconds)
    say(f"  {written:,} synthetic pool vectors in {seconds:.0f} s")


def ensure_maps(store, project: str, args, record: SetupRecord) -> None:
    import core.selection.embeddings
    from core.selection.runs import feature_index
    from core.views import map as maps

    index = feature_index(store, project)
    if maps.layout_info(store, project, "gradient", index) is None:
        _, seconds = timed(maps.compute_map, store, project, "gradient", index=index)
        record.step("map_gradient", seconds)
        say(f"  gradient map (PCA-50 + UMAP of {len(index.pool_ids) + len(index.target_ids):,} points): {seconds:.0f} s")
    if maps.layout_info(store, project, "text", index) is None:
        texts = [maps.row_text(r.messages) for r in store.rows(project, "pool", limit=128)]
        _, sample_seconds = timed(core.selection.embeddings.embed_texts, texts)
        n_points = len(index.pool_ids) + len(index.target_ids)
        projected = n_points * sample_seconds / len(texts)
        cut = projected > args.text_budget
        say(f"  MiniLM: {len(texts) / sample_seconds:.1f} full texts/s -> {projected / 60:.0f} min for all "
            f"{n_points:,} (budget {args.text_budget / 60:.0f} min)"
            + (f": texts cut to their first {args.text_chars} characters" if cut else ""))
        record.fact("text_map", {"full_texts_per_s": round(len(texts) / sample_seconds, 1),
                                 "cut_to_chars": args.text_chars if cut else None})
        embed = core.selection.embeddings.embed_texts
        if cut:
            # compute_map imports embed_texts from core.selection.embeddings at call time: the cut happens there and nowhere else.
            core.selection.embeddings.embed_texts = lambda all_texts, **kw: embed([t[:args.text_chars] for t in all_texts], **kw)
        try:
            _, seconds = timed(maps.compute_map, store, project, "text", index=index)
        finally:
            core.selection.embeddings.embed_texts = embed
        record.step("map_text", seconds)
        say(f"  text map: {seconds:.0f} s")


def ensure_graph_and_runs(store, project: str, record: SetupRecord) -> str:
    """The graph (k=32), the selection runs of Compare at its default budget, then the walk run (newest G2IS run, so
    it is the one the Walk page opens).  Returns the walk run's id."""
    from core.selection.methods import budget_from
    from core.selection.runs import feature_index, load_project_features, project_graph, run_selection

    index = feature_index(store, project)
    walk = [r for r in store.selection_runs(project, "g2is")
            if r["feature_key"] == index.feature_key and r["params"].get("ratio") == 0.01]
    compare_budget, _ = budget_from(len(index.pool_ids), ratio=COMPARE_RATIO)
    stored = {r["method"] for r in store.selection_runs(project)
              if r["feature_key"] == index.feature_key and r["budget"] == compare_budget}
    missing = [m for m in COMPARE_METHODS if m not in stored]
    if walk and not missing and store.latest_graph(index.feature_key):
        return walk[0]["id"]
    features, seconds = timed(load_project_features, store, project, index)
    record.step("load_project_features", seconds)
    say(f"  features loaded: pool {features.pool.shape}, targets {features.targets.shape} in {seconds:.1f} s")
    (_, info), seconds = timed(project_graph, store, features, k=32)
    if seconds > 1.0:
        record.step("graph_k32", seconds)
    say(f"  graph k=32 ({info['backend']}): {seconds:.0f} s")
    for method in missing:
        run, seconds = timed(run_selection, store, project, method, ratio=COMPARE_RATIO, features=features,
                             record_events=False)
        record.step(f"run_{method}_ratio_{COMPARE_RATIO}", seconds)
        say(f"  {method} at ratio {COMPARE_RATIO}: {len(run.result.rows)} rows in {seconds:.0f} s")
    if walk:
        return walk[0]["id"]
    run, seconds = timed(run_selection, store, project, "g2is", ratio=0.01, features=features)
    record.step("run_g2is_walk_ratio_0.01", seconds)
    say(f"  G2IS walk at ratio 0.01: {len(run.result.rows)} rows, {run.events:,} events in {seconds:.0f} s")
    return run.run_id


def setup(args) -> tuple[object, str, SetupRecord]:
    from conftest import build_tiny_model  # tests/ (browser_walk_steps puts it on sys.path too)

    from core.store import Store

    args.cache.mkdir(parents=True, exist_ok=True)
    record = SetupRecord(args.cache / "setup.json")
    store = Store(args.cache)
    started = time.perf_counter()
    pool_path, targets_path = write_inputs(args.cache / "inputs", args.rows, args.seed)
    model_dir = args.cache / "tiny-llama"
    if not (model_dir / "config.json").exists():
        _, seconds = timed(build_tiny_model, model_dir)
        record.step("tiny_model", seconds)
    settings = project_settings_for(model_dir)
    if PROJECT not in store.projects():
        _, seconds = timed(ingest, store, PROJECT, pool_path, targets_path, settings)
        record.step("ingest", seconds)
    counts = store.row_counts(PROJECT)
    say(f"project {PROJECT}: {counts['pool']:,} pool rows, {counts['targets']} targets ({load_text()})")
    probe = probe_feature_rate(store, args.cache / "inputs", pool_path, targets_path, settings, args.probe_rows, record)
    ensure_features(store, PROJECT, settings, probe, args, record)
    ensure_maps(store, PROJECT, args, record)
    walk_run = ensure_graph_and_runs(store, PROJECT, record)
    say(f"setup ready in {time.perf_counter() - started:.0f} s this run ({load_text()})")
    return store, walk_run, record


# ============================================================================================= measuring

class ScriptClock:
    """Times -- and, with ``profiler`` set, profiles -- the script body itself, inside Streamlit's script thread.

    An ``AppTest.run`` also pays for things a running server does not do per page view: a fresh AppTest scans the
    installed packages for components (~0.5 s here), and every run polls for the script's end and parses the element
    tree.  The script body (``app/main.py`` and the page, reruns included) is what a server spends on a page view, so
    the table shows both.  cProfile only sees the thread that enabled it, hence the profiling here too."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.profiler = None
        from streamlit.runtime.scriptrunner import script_runner

        original = script_runner.exec_func_with_error_handling

        def exec_timed(func, ctx):
            started = time.perf_counter()
            if self.profiler is not None:
                self.profiler.enable()
            try:
                return original(func, ctx)
            finally:
                if self.profiler is not None:
                    self.profiler.disable()
                self.seconds += time.perf_counter() - started

        script_runner.exec_func_with_error_handling = exec_timed

    def run(self, run) -> tuple[float, float]:
        """(AppTest wall seconds, script seconds) of ``run()`` (an ``AppTest.run`` or a widget's ``.run``)."""
        self.seconds = 0.0
        _, wall = timed(run)
        return wall, self.seconds


CLOCK: ScriptClock | None = None


def clock() -> ScriptClock:
    global CLOCK
    if CLOCK is None:
        CLOCK = ScriptClock()
    return CLOCK


def page_app(page: str, **query: str):
    from streamlit.testing.v1 import AppTest

    app = AppTest.from_file(MAIN, default_timeout=900)
    app.query_params["project"] = PROJECT
    for name, value in query.items():
        app.query_params[name] = value
    app.switch_page(f"../pages/{page}.py")
    return app


def quiet_streamlit() -> None:
    """AppTest outside a server logs a warning on every run and cache clear ("missing ScriptRunContext"): turn
    streamlit's loggers down to errors (called again after the warm-up pass, for loggers made meanwhile)."""
    import logging

    import streamlit.config
    import streamlit.logger

    streamlit.config.get_config_options()  # parsing the config sets the log level: parse it first, then override
    streamlit.logger.set_log_level(logging.ERROR)  # the loggers made so far, and the level of those made later
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("streamlit"):
            logging.getLogger(name).setLevel(logging.ERROR)


def clear_streamlit_caches() -> None:
    import streamlit as st

    quiet_streamlit()
    st.cache_data.clear()
    st.cache_resource.clear()


def elements(node):
    children = getattr(node, "children", None)
    if children is None:
        yield node
        return
    for child in children.values():
        yield from elements(child)


def _points_in(trace: dict) -> int:
    x = trace.get("x")
    if isinstance(x, dict) and "bdata" in x:
        return len(base64.b64decode(x["bdata"])) // np.dtype(x["dtype"]).itemsize
    if isinstance(x, list):
        return len(x)
    z = trace.get("z")
    return sum(len(r) for r in z) if isinstance(z, list) else 0


def payload(app) -> dict:
    """What the page hands the browser: plotly specs, iframe documents, dataframes and all element protos, in bytes."""
    out = {"plot_bytes": 0, "hover_bytes": 0, "frame_bytes": 0, "table_bytes": 0, "all_bytes": 0, "plots": 0,
           "points": 0, "elements": 0}
    for element in elements(app._tree):
        proto = getattr(element, "proto", None)
        if proto is None or not hasattr(proto, "ByteSize"):
            continue
        out["elements"] += 1
        out["all_bytes"] += proto.ByteSize()
        kind = getattr(element, "type", "")
        if kind == "plotly_chart":
            out["plots"] += 1
            out["plot_bytes"] += len(proto.spec.encode("utf-8"))
            traces = json.loads(proto.spec).get("data", [])
            out["points"] += sum(_points_in(t) for t in traces)
            out["hover_bytes"] += sum(len(json.dumps(t.get(field), ensure_ascii=False).encode("utf-8"))
                                      for t in traces for field in ("hovertext", "text") if t.get(field) is not None)
        elif hasattr(proto, "srcdoc") and proto.srcdoc:
            out["frame_bytes"] += len(proto.srcdoc.encode("utf-8"))
        elif kind in ("arrow_data_frame", "dataframe", "table") and hasattr(proto, "data"):
            out["table_bytes"] += len(proto.data)
    return out


def problems(app) -> list[str]:
    return [e.value if hasattr(e, "value") else str(e) for e in app.exception] + \
        [f"error: {e.value}" for e in app.error]


def measure_page(page: str, warm_runs: int, query: dict) -> dict:
    clear_streamlit_caches()
    app = page_app(page, **query)
    cold_wall, cold = clock().run(app.run)
    result = {"page": page, "cold": cold, "cold_wall": cold_wall, "problems": problems(app), "payload": payload(app)}
    warm, warm_wall = [], []
    for _ in range(warm_runs):
        wall, seconds = clock().run(app.run)
        warm.append(seconds)
        warm_wall.append(wall)
    result.update(warm=statistics.median(warm), warm_wall=statistics.median(warm_wall), warm_all=warm, app=app)
    return result


def walk_button(app, label: str):
    (found,) = [b for b in app.button if b.label == label]
    return found


def shown_step(app) -> int:
    (line,) = [m.value for m in app.markdown if m.value.startswith("**Step ")]
    return int(line.split()[1])


def measure_walk_steps(app, clicks: int, jumps: int, ticks: int) -> dict:
    """Next clicks, far jumps and Play's ticks on an open Walk page: (wall, script) seconds of each."""
    out: dict = {}
    next_times = []
    for _ in range(clicks):
        before = shown_step(app)
        next_times.append(clock().run(walk_button(app, "Next").click().run))
        assert shown_step(app) == before + 1, "Next did not advance"
    out["next"] = next_times
    out["panel"] = [step_panel_seconds(app) for _ in range(min(clicks, 5))]
    last = int(app.number_input(key="walk_step_input").max)
    far_steps = [last // 2, last - 3, last // 4, (3 * last) // 4, 7][:jumps]
    jump_times = []
    for step in far_steps:
        jump_times.append(clock().run(app.number_input(key="walk_step_input").set_value(step).run))
        assert shown_step(app) == step, f"jump to {step} shows {shown_step(app)}"
    out["jump"], out["last_step"] = jump_times, last
    app.number_input(key="walk_step_input").set_value(0).run()
    walk_button(app, "Play").click().run()
    tick_times = []
    for _ in range(ticks):
        before = shown_step(app)
        app.session_state["walk_played_at"] = 0.0  # the tick is due (as after PLAY_SECONDS in the browser)
        tick_times.append(clock().run(app.run))
        assert shown_step(app) == before + 1, "a tick did not advance"
    out["tick"] = tick_times
    walk_button(app, "Pause").click().run()
    return out


def step_panel_seconds(app) -> float:
    """Seconds spent in pages/walk.py's ``step_panel`` (the fragment a browser reruns on Next) during one Next click,
    from cProfile (its overhead included; and a whole-page run re-reads the event window, which a fragment rerun
    skips): an upper bound for the step as a browser gets it."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    clock().profiler = profiler
    try:
        clock().run(walk_button(app, "Next").click().run)
    finally:
        clock().profiler = None
    return sum(entry[3] for (file, _, name), entry in pstats.Stats(profiler).stats.items()
               if name == "step_panel" and file.endswith("walk.py"))


# Runs in the page: clicks Next and resolves with the milliseconds until the new step's heading is in the DOM and
# the next animation frame (so it has been laid out and painted).  Timed in the browser itself: playwright's own
# waits poll with back-off (up to 500 ms between checks), too coarse for a 200 ms target.
NEXT_CLICK_JS = """(step) => new Promise((resolve, reject) => {
  const wanted = `Step ${step} of`;
  const next = [...document.querySelectorAll('button')].find(b => b.textContent.includes('Next'));
  if (!next) { reject(new Error('no Next button')); return; }
  const started = performance.now();
  const done = () => requestAnimationFrame(() => resolve(performance.now() - started));
  const watcher = new MutationObserver(() => {
    if (document.body.textContent.includes(wanted)) { watcher.disconnect(); done(); }
  });
  watcher.observe(document.body, {subtree: true, childList: true, characterData: true});
  setTimeout(() => { watcher.disconnect(); reject(new Error(`step ${step} not shown within 30 s`)); }, 30000);
  next.click();
})"""


def browser_walk_steps(cache: Path, walk_run: str, clicks: int) -> dict:
    """Next clicks in a real browser: ``streamlit run app/main.py`` on the bench cache and headless Debian chromium
    (tests/browser.py's plumbing), only the step panel's fragment rerunning.  Each click is timed in the page from
    the click until the new step's heading is drawn (``NEXT_CLICK_JS``): what a user waits for, the server's run,
    the websocket and the browser's drawing of every element the step changes included."""
    from browser import AppServer, StreamlitPage, launch_chromium, missing_browser_reason
    from playwright.sync_api import sync_playwright

    reason = missing_browser_reason()
    if reason:
        return {"skipped": reason}
    server = AppServer(cache.resolve(), REPO / "test-artifacts" / "bench-app-browser.log").start(timeout=180)
    shown = []
    try:
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            page = StreamlitPage(browser.new_page(viewport={"width": 1400, "height": 1000}), server.url)
            page.page.goto(f"{server.url}/walk?project={PROJECT}&run={walk_run}&step=0", wait_until="domcontentloaded")
            page.page.wait_for_selector("text=Step 0 of", timeout=300_000)
            page.wait_idle(300_000)
            for step in range(1, clicks + 1):
                page.page.wait_for_timeout(700)  # a user's pace: the previous step's plots are drawn
                shown.append(page.page.evaluate(NEXT_CLICK_JS, step) / 1000)
                page.wait_idle(30_000)
            problems = page.problems()
            browser.close()
    finally:
        server.stop()
    return {"shown": shown, "problems": problems}


def core_walk_breakdown(store, walk_run: str) -> dict:
    """The walk step's pieces outside Streamlit, to see which part of a step costs what."""
    from core.selection.runs import feature_index
    from core.views import walk as walk_view
    from core.views.map import layout_info, load_layout

    index, index_seconds = timed(feature_index, store, PROJECT)
    replay, replay_seconds = timed(walk_view.load_replay, store, walk_run)
    step = replay.last_step // 2
    (view, window), jump_seconds = timed(walk_view.read_step, store, replay, step, index.pool_ids, None)
    _, inside_seconds = timed(walk_view.read_step, store, replay, step + 1, index.pool_ids, window)
    picks = replay.picks_until(step)
    similarity, similarity_seconds = timed(walk_view.similarity_figure, picks, replay.components)
    points = load_layout(store, layout_info(store, PROJECT, "gradient", index))
    backdrop = walk_view.map_backdrop(points.row_ids, points.roles, points.sources, points.x, points.y)
    focus = view.row or view.from_row
    path, path_seconds = timed(walk_view.walk_path_figure, backdrop, picks, focus.row_id if focus else None)
    return {"feature_index_s": index_seconds, "load_replay_s": replay_seconds, "read_step_new_window_s": jump_seconds,
            "read_step_in_window_s": inside_seconds, "similarity_figure_s": similarity_seconds,
            "walk_path_figure_s": path_seconds, "similarity_figure_bytes": len(similarity.to_json()),
            "walk_path_figure_bytes": len(path.to_json()), "events": replay.event_count, "picks": len(replay.picks)}


def verdict(seconds: float, target: float) -> str:
    return "ok" if seconds < target else "OVER"


def megabytes(n: int) -> str:
    return f"{n / 1e6:.2f}"


# ============================================================================================= profiling

def profile(targets: list[str], walk_run: str, top: int) -> None:
    import cProfile
    import io
    import pstats

    project_code = rf"{REPO}/(core|pages|app)/"
    for target in targets:
        page = "walk" if target.startswith("walk") else target
        clear_streamlit_caches()
        app = page_app(page, **({"run": walk_run} if page == "walk" else {}))
        profiler = cProfile.Profile()
        if target == page:
            what, action = "cold render", app.run
        else:
            app.run()
            app.run()
            if target == "walk-next":
                what, action = "click on Next", walk_button(app, "Next").click().run
            else:
                last = int(app.number_input(key="walk_step_input").max)
                what, action = "jump to a far step", app.number_input(key="walk_step_input").set_value(last // 2).run
        clock().profiler = profiler
        try:
            wall, script = clock().run(action)
        finally:
            clock().profiler = None
        say(f"\n=== {target} ({what}): script {script:.2f} s, AppTest {wall:.2f} s; profile of the script thread")
        for title, key, restrict in (("cumulative, project code", "cumulative", project_code),
                                     ("own time, everything", "tottime", None)):
            buffer = io.StringIO()
            stats = pstats.Stats(profiler, stream=buffer)
            stats.sort_stats(key)
            stats.print_stats(*([restrict] if restrict else []), top)
            text = buffer.getvalue()
            body = text[text.find("   ncalls"):] if "   ncalls" in text else text
            say(f"--- {title}, top {top}\n{body.rstrip().replace(str(REPO) + '/', '')}")


# ================================================================================================== main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000,
                        help="pool rows sampled from ../shared/data/pool (another size needs another --cache)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=REPO / "cache" / "bench-app")
    parser.add_argument("--threads", type=int, default=2, help="OMP / torch threads (the machine has 2 shared cores)")
    parser.add_argument("--warm-runs", type=int, default=3)
    parser.add_argument("--next-clicks", type=int, default=20)
    parser.add_argument("--jumps", type=int, default=5)
    parser.add_argument("--ticks", type=int, default=5)
    parser.add_argument("--browser-clicks", type=int, default=20,
                        help="Next clicks timed in a real browser (Debian chromium + playwright); 0 skips it")
    parser.add_argument("--pages", default=",".join(PAGES), help="comma-separated subset of " + ",".join(PAGES))
    parser.add_argument("--profile", default="", help="comma-separated subset of " + ",".join(PROFILE_TARGETS)
                        + ": print cProfile tables instead of the benchmark")
    parser.add_argument("--profile-top", type=int, default=30)
    parser.add_argument("--features", choices=["auto", "real", "synthetic"], default="auto")
    parser.add_argument("--probe-rows", type=int, default=200)
    parser.add_argument("--feature-budget", type=float, default=600.0, help="seconds the real pool features may take")
    parser.add_argument("--text-budget", type=float, default=600.0, help="seconds MiniLM may take on full texts")
    parser.add_argument("--text-chars", type=int, default=160, help="cut texts to this before embedding, if over budget")
    args = parser.parse_args()
    pages = [p for p in args.pages.split(",") if p]
    unknown = set(pages) - set(PAGES) | set(t for t in args.profile.split(",") if t) - set(PROFILE_TARGETS)
    if unknown:
        parser.error(f"unknown page(s) {', '.join(sorted(unknown))}")
    if not (SHARED_DATA / "pool").is_dir() or not (SHARED_DATA / "targets" / "gsm8k.jsonl").is_file():
        say(f"skipped: shared data not found at {SHARED_DATA}")
        return 0

    os.environ["G2IS_CACHE_DIR"] = str(args.cache.resolve())  # the app's store (core.config.cache_dir)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    say(f"bench/app.py: {args.threads} threads, {load_text()}")
    store, walk_run, record = setup(args)
    say("setup steps (seconds, as first built): "
        + ", ".join(f"{k} {v:.0f}" for k, v in record.data["seconds"].items()))
    say("setup choices: " + json.dumps(record.data["facts"]))

    # Every page once, untimed: imports, numba's compilation, the tokenizer's first load -- a server's start-up.
    import importlib

    importlib.import_module("streamlit.testing.v1")  # its loggers exist from here on
    quiet_streamlit()
    started = time.perf_counter()
    for page in PAGES:
        clock().run(page_app(page, **({"run": walk_run} if page == "walk" else {})).run)
    quiet_streamlit()
    say(f"\nprocess warm-up (every page once, imports included): {time.perf_counter() - started:.1f} s")
    if args.profile:
        profile([t for t in args.profile.split(",") if t], walk_run, args.profile_top)
        return 0

    say(f"measuring with streamlit.testing.v1.AppTest, server side only (no transfer, no browser drawing): "
        f"'script' = the script body in Streamlit's script thread, 'AppTest' = the whole AppTest.run; cold = fresh "
        f"AppTest after clearing st.cache_data/st.cache_resource, warm = median of {args.warm_runs} reruns. "
        f"{load_text()}")
    results = {}
    for page in pages:
        results[page] = measure_page(page, args.warm_runs, {"run": walk_run} if page == "walk" else {})
        r = results[page]
        say(f"  {page}: cold {r['cold']:.2f} s (AppTest {r['cold_wall']:.2f}), warm {r['warm']:.2f} s "
            f"({', '.join(f'{s:.2f}' for s in r['warm_all'])})" + (f"  PROBLEMS: {r['problems']}" if r['problems'] else ""))
    steps = None
    if "walk" in results:
        steps = measure_walk_steps(results["walk"]["app"], args.next_clicks, args.jumps, args.ticks)
        breakdown = core_walk_breakdown(store, walk_run)
    browser_steps = browser_walk_steps(args.cache, walk_run, args.browser_clicks) if args.browser_clicks else None
    say(f"done measuring ({load_text()})")

    say(f"\n{'':<15}{'script s':>17}{'AppTest s':>17}")
    say(f"{'page':<15}{'cold':>8}{'warm':>9}{'cold':>8}{'warm':>9}{'target':>8}  {'verdict':<9}{'plots MB':>9}"
        f"{'hovers MB':>10}{'frames MB':>10}{'tables MB':>10}{'all MB':>8}{'points':>8}")
    figures: dict[str, float] = {}
    for page, r in results.items():
        p = r["payload"]
        worst = max(r["cold"], r["warm"])
        say(f"{page:<15}{r['cold']:>8.2f}{r['warm']:>9.2f}{r['cold_wall']:>8.2f}{r['warm_wall']:>9.2f}"
            f"{RENDER_TARGET_S:>8.1f}  {verdict(worst, RENDER_TARGET_S) + ('+ERR' if r['problems'] else ''):<9}"
            f"{megabytes(p['plot_bytes']):>9}{megabytes(p['hover_bytes']):>10}{megabytes(p['frame_bytes']):>10}"
            f"{megabytes(p['table_bytes']):>10}"
            f"{megabytes(p['all_bytes']):>8}{p['points']:>8,}")
        figures[f"{page}_cold_render_s"] = r["cold"]
        figures[f"{page}_warm_render_s"] = r["warm"]
        figures[f"{page}_cold_apptest_s"] = r["cold_wall"]
        figures[f"{page}_browser_bytes"] = p["all_bytes"]
    if steps:
        say(f"{'':<15}{'median script s':>17}{'median AppTest s':>17}")
        for name, key in (("walk Next", "next"), ("walk jump", "jump"), ("walk Play tick", "tick")):
            walls, scripts = [w for w, _ in steps[key]], [t for _, t in steps[key]]
            median = statistics.median(scripts)
            say(f"{name:<15}{median:>17.3f}{statistics.median(walls):>17.3f}{STEP_TARGET_S:>8.1f}  "
                f"{verdict(median, STEP_TARGET_S):<9}(n={len(scripts)}; script min {min(scripts):.3f}, "
                f"max {max(scripts):.3f} s)")
            figures[f"walk_{key}_step_ms"] = 1000 * median
            figures[f"walk_{key}_apptest_ms"] = 1000 * statistics.median(walls)
        panel = statistics.median(steps["panel"])
        say(f"{'walk fragment':<15}{panel:>17.3f}{'':>17}{STEP_TARGET_S:>8.1f}  {verdict(panel, STEP_TARGET_S):<9}"
            f"(n={len(steps['panel'])}; step_panel's share of a Next click, from cProfile)")
        figures["walk_step_fragment_ms"] = 1000 * panel
        say(f"  (warm. AppTest reruns the whole page on a click; in a browser a click inside the step panel reruns "
            f"only that fragment, so the first three rows are upper bounds and the fragment row is closer to what a "
            f"browser waits for. The run has {steps['last_step'] + 1:,} events.)")
        say("walk step pieces called directly: " + ", ".join(
            f"{k} {v * 1000:.0f} ms" if k.endswith("_s") else f"{k} {v:,}" for k, v in breakdown.items()))
    if browser_steps and "skipped" in browser_steps:
        say(f"walk Next in a browser: skipped ({browser_steps['skipped']})")
    elif browser_steps:
        for name, key in (("walk Next in a browser", "shown"),):
            median = statistics.median(browser_steps[key])
            say(f"{name:<26}{median:>8.3f} s  target {STEP_TARGET_S:.1f}  {verdict(median, STEP_TARGET_S):<5}"
                f"(n={len(browser_steps[key])}; min {min(browser_steps[key]):.3f}, "
                f"90th percentile {np.percentile(browser_steps[key], 90):.3f}, max {max(browser_steps[key]):.3f})")
            figures[f"walk_browser_next_{key}_ms"] = 1000 * median
        if browser_steps["problems"]:
            say(f"  browser saw: {browser_steps['problems']}")
    problems_seen = {page: r["problems"] for page, r in results.items() if r["problems"]}
    if problems_seen:
        say(f"pages that showed errors or exceptions: {problems_seen}")
    say(f"\nnote: server-side times only (AppTest); 'all MB' is the size of every element proto of the render (what "
        f"goes over the websocket, before compression); 'points' are the plotly markers drawn. {load_text()}")
    for name, value in figures.items():
        say(f"figure: {name} = {value:.0f}" if name.endswith("bytes") else f"figure: {name} = {value:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
