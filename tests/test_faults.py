"""Faults, each really done (issue 5): a read-only or full cache folder, a truncated DuckDB file or feature chunk,
a model that does not load, a tokenizer without a chat template, CUDA out of memory, the Streamlit server killed
while a job runs (with and without its worker), and two sessions reading while a job writes.

How the faults are made real:
* read-only: tests run as root, and permission bits do not stop root's writes. So the check runs in a subprocess
  that drops to user ``nobody`` with ``conftest.BECOME_NOBODY``, after importing what it needs. The interpreter
  lives under /root, and the venv and ``core`` may sit in a checkout that nobody cannot read. The app's scripts
  are given to nobody as a readable copy. The test skips, naming the path, if nobody still cannot read what it
  needs (``conftest.skip_unless_nobody_can_read``). Run as an ordinary user, ``chmod`` alone is enough. A cache
  path that is a regular file is tried too (the same in any environment, and also in the app).
* full: a real ``ENOSPC`` from a 48 MiB tmpfs mounted for the test and filled with a file (needs root with
  CAP_SYS_ADMIN; the test skips, saying so, where mounting is not allowed).
* truncated files: ``os.truncate`` on the real DuckDB catalogue or a real feature chunk.
* CUDA out of memory: on a CPU, a real ``HookGradientComputer`` whose ``gradients`` raises the real
  ``torch.cuda.OutOfMemoryError`` for batches above a size; on a GPU (when one is lent), a real OOM under a
  per-process memory cap.
* kill -9: ``os.killpg(pid, SIGKILL)`` of the real ``streamlit run`` server and of the real worker process.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    BECOME_NOBODY,
    REPO,
    build_tiny_model,
    chat_rows,
    make_project,
    skip_unless_nobody_can_read,
    subprocess_env,
    tiny_settings,
    wait_for,
    write_jsonl,
)
from streamlit.testing.v1 import AppTest

from core import jobs
from core.cli import main
from core.config import FeatureSettings, ProjectionArguments
from core.data.ingest import ingest_files
from core.features.featurize import BatchSize, plan_features, run_features
from core.features.gradients import HookGradientComputer
from core.store import Store, cache_problem

MAIN = str(REPO / "app" / "main.py")
pytestmark = [pytest.mark.timeout(300)]


def shown(markdown: str) -> str:
    """The text a reader sees of an error whose Markdown source escapes punctuation (``a\\_b`` -> ``a_b``)."""
    return re.sub(r"\\(.)", r"\1", markdown)


def app_messages(app: AppTest) -> str:
    return " | ".join(shown(e.value) for e in app.error)


# ------------------------------------------------------------------------------------------- read-only cache

AS_UNPRIVILEGED = r"""
import os, pwd, sys
# Import first. After the drop to nobody, the interpreter's library (under /root) may be unreadable, and so may
# the venv and `core` (a 0700 clone).
import core.cli, core.selection.export, core.data.records, core.data.readers, core.data.ingest, core.jobs, core.features.modeling, core.data.projects  # noqa: E401
""" + BECOME_NOBODY + r"""
assert os.geteuid() != 0
probe = os.path.join(os.environ["G2IS_CACHE_DIR"], "probe")
try:  # the folder really is read-only for this process
    open(probe, "w").close()
    sys.exit("the cache folder is writable: the fault was not made")
except PermissionError:
    pass
sys.exit(core.cli.main(sys.argv[2:]))
"""


@pytest.fixture()
def shared_folder():
    """A folder every user may enter (pytest's tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="g2is-faults-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        for path in folder.rglob("*"):  # an unprivileged run (chmod path) must be able to delete it again
            if path.is_dir():
                path.chmod(0o755)
        folder.chmod(0o755)
        shutil.rmtree(folder, ignore_errors=True)


def readable_copy_of_the_app(folder: Path) -> Path:
    """Copy app/ and pages/ into ``folder``, readable by every user, and return the copy of app/main.py. The copy
    keeps the layout, because main.py finds pages/ beside app/."""
    for part in ("app", "pages"):
        shutil.copytree(REPO / part, folder / part, ignore=shutil.ignore_patterns("__pycache__"))
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder / "app" / "main.py"


def make_read_only(folder: Path) -> None:
    """0555 for the cache folder: as root that stops nobody-but-root, so the check runs as ``nobody``; as an
    ordinary user it stops the user."""
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)


@pytest.mark.reliability("fault", "cache folder read-only (CLI, as user nobody)")
def test_read_only_cache_gives_a_clear_message_from_the_cli(shared_folder, observed):
    root = shared_folder / "cache"
    store = Store(root)
    pool = write_jsonl(shared_folder / "pool.jsonl", chat_rows(5, "pool"))
    pool.chmod(0o644)
    ingest_files(store, "p", "pool", [pool])
    make_read_only(root)
    skip_unless_nobody_can_read(root, pool)
    for args in (["status", "--project", "p"], ["ingest", "--project", "p", "--pool", str(pool)]):
        run = subprocess.run([sys.executable, "-c", AS_UNPRIVILEGED, str(REPO), *args], capture_output=True,
                             text=True, env=subprocess_env(root), timeout=120)
        assert run.returncode == 1, run.stderr[-2000:]
        assert "Traceback" not in run.stderr
        assert f"the cache folder {root} is not writable by this user" in run.stderr
        assert "G2IS_CACHE_DIR" in run.stderr and "make it writable" in run.stderr
        observed.append(f"`python -m core {args[0]}` as nobody: {run.stderr.strip()}")
    (root / "g2is.duckdb").chmod(0o644)
    root.chmod(0o755)
    assert Store(root).row_counts("p") == {"pool": 5, "targets": 0, "eval": 0}  # nothing was damaged by the attempts


APP_AS_UNPRIVILEGED = r"""
import os, pwd, sys
from streamlit.testing.v1 import AppTest
# A first run as root on a writable cache loads every module the app's first lines need. It opens project
# "warm" (tiny model), because the demo would start a real SmolLM2 features worker that outlives this process.
os.environ["G2IS_CACHE_DIR"] = sys.argv[3]
warm = AppTest.from_file(sys.argv[2], default_timeout=60)
warm.query_params["project"] = "warm"
warm.run()
assert not warm.exception, warm.exception
os.environ["G2IS_CACHE_DIR"] = sys.argv[4]
""" + BECOME_NOBODY + r"""
app = AppTest.from_file(sys.argv[2], default_timeout=60)
app.run()
print("EXCEPTIONS", len(app.exception))
for error in app.error:
    print("ERROR", error.value)
"""


@pytest.mark.reliability("fault", "cache folder read-only (app, as user nobody)")
def test_read_only_cache_gives_a_clear_message_in_the_app(shared_folder, tiny_model_dir, observed):
    writable, read_only = shared_folder / "warm", shared_folder / "cache"
    make_project(shared_folder / "warm-data", Store(writable), n_pool=4, n_targets=2, project="warm",
                 settings=tiny_settings(tiny_model_dir))
    Store(read_only)
    make_read_only(read_only)
    # Streamlit reads the script as nobody, and the checkout may be where nobody cannot read (a 0700 clone).
    # So nobody gets a readable copy of app/ and pages/. The modules are already imported from the checkout by
    # the first run, as root.
    script = readable_copy_of_the_app(shared_folder / "checkout")
    temp = shared_folder / "tmp"  # AppTest's own temp folder, made as root and left behind by nobody: removed with ours
    temp.mkdir()
    skip_unless_nobody_can_read(read_only, script)
    env = dict(subprocess_env(read_only), HOME=str(shared_folder), TMPDIR=str(temp))  # ~/.streamlit is looked for
    run = subprocess.run([sys.executable, "-c", APP_AS_UNPRIVILEGED, str(REPO), str(script), str(writable),
                          str(read_only)], capture_output=True, text=True, env=env, timeout=240, cwd=str(shared_folder))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "EXCEPTIONS 0" in run.stdout, run.stdout
    errors = [shown(line.removeprefix("ERROR ")) for line in run.stdout.splitlines() if line.startswith("ERROR ")]
    assert errors and f"the cache folder {read_only} is not writable by this user" in errors[0], run.stdout
    observed.append(f"app error as nobody: {errors[0]}")


@pytest.mark.reliability("fault", "cache path is a regular file")
def test_cache_path_that_is_a_file(tmp_path, monkeypatch, capsys, observed):
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("not a folder")
    monkeypatch.setenv("G2IS_CACHE_DIR", str(not_a_folder))
    assert main(["status", "--project", "p"]) == 1
    err = capsys.readouterr().err
    assert f"the cache folder {not_a_folder} is a file, not a folder" in err and "G2IS_CACHE_DIR" in err
    observed.append(f"CLI: {err.strip()}")
    app = AppTest.from_file(MAIN, default_timeout=60)
    app.run()
    assert not app.exception
    assert "is a file, not a folder" in app_messages(app)
    observed.append(f"app: {app_messages(app)}")


# ------------------------------------------------------------------------------------------------ full disk


@pytest.fixture()
def small_disk():
    """A real 48 MiB filesystem (tmpfs) of our own, so that filling it gives a real ENOSPC.  Mounted outside
    pytest's tmp_path: a concurrent pytest session may rename or clean old tmp folders under a mount."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command: a full disk cannot be made here")
    mount_point = Path(tempfile.mkdtemp(prefix="g2is-small-disk-"))
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        mount_point.rmdir()
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root with CAP_SYS_ADMIN): {made.stderr.strip()}")
    try:
        yield mount_point
    finally:
        for attempt in range(50):  # a worker that just exited may still hold its log open for a moment
            lazy = ["-l"] if attempt == 49 else []
            if subprocess.run(["umount", *lazy, str(mount_point)], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        shutil.rmtree(mount_point, ignore_errors=True)


def fill(disk: Path) -> Path:
    """Write a file until the disk says ENOSPC; returns it (delete it to free the space)."""
    filler = disk / "filler"
    with pytest.raises(OSError) as full:
        with open(filler, "wb") as handle:
            while True:
                handle.write(b"\0" * (1 << 16))
                handle.flush()
    assert full.value.errno == 28  # ENOSPC
    return filler


def test_a_short_numpy_write_on_a_full_disk_is_named_as_a_full_disk(small_disk):
    """np.save reports a short write as a bare OSError("N requested and M written"), without an errno: the CI run
    of the job test below once met exactly that, and the user must still read "the disk is full"."""
    filler = fill(small_disk)
    filler.write_bytes(b"\0" * (filler.stat().st_size - (1 << 14)))  # leave 16 KiB: the open works, the write stops short
    target = small_disk / "chunk.partial"
    with pytest.raises(OSError) as short:
        with open(target, "wb") as handle:
            np.save(handle, np.ones((256, 256), dtype=np.float32))
            handle.flush()
    problem = cache_problem(small_disk, target, short.value)
    assert problem is not None and "is full" in problem, (short.value, short.value.errno)


@pytest.mark.reliability("fault", "cache disk full during a feature job, then resume")
def test_full_disk_during_a_job_then_resume(small_disk, tiny_model_dir, monkeypatch, capsys, observed):
    root = small_disk / "cache"
    monkeypatch.setenv("G2IS_CACHE_DIR", str(root))
    store = Store(root)
    settings = tiny_settings(tiny_model_dir, chunk_rows=4)
    make_project(small_disk / "input", store, n_pool=60, settings=settings)
    pool_key = plan_features(store, "p", settings).config_for("pool").key
    job_id = jobs.start_features_job(store, "p", settings)
    wait_for(lambda: store.chunk_files(pool_key), timeout=120, what="a first chunk")
    filler = fill(small_disk)  # the disk fills while the worker writes chunks
    jobs.wait(store, job_id, timeout=120)
    wait_for(lambda: not jobs.worker_alive(store, job_id), timeout=30, what="the worker to exit")
    ended = jobs.job_view(store, job_id)
    # The worker could not always record why it stopped (the catalogue lives on the full disk too): either it
    # did, or the job shows as interrupted with the disk named as the likely cause.
    assert ended.status in ("failed", "interrupted"), ended
    assert ("is full" in ended.job.message and "free some space" in ended.job.message) or \
        ("free some space first" in ended.job.message), ended.job.message
    observed.append(f"job while the disk filled: {ended.status}: {ended.job.message}")

    assert main(["ingest", "--project", "other", "--pool", str(small_disk / "input" / "p-pool.jsonl")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"the disk of the cache folder {root} is full" in err, err
    observed.append(f"`python -m core ingest` on the full disk: {err.strip()}")

    kept = store.chunk_files(pool_key)
    assert kept and all(Path(path).is_file() for path in kept)  # finished chunks survived
    filler.unlink()
    jobs.resume(store, job_id)
    final = jobs.wait(store, job_id, timeout=180)
    assert final.status == "done", jobs.log_path(store, job_id).read_text()[-2000:]
    progress = store.feature_progress("p", "pool", pool_key)
    assert (progress["features"], progress["errors"]) == (60, 0)
    assert kept <= store.chunk_files(pool_key)  # resumed from the chunks that were there
    assert not list(store.feature_dir(pool_key).glob("*.partial"))  # no half-written file left behind
    observed.append(f"after freeing space and resuming: {final.status}, {progress['features']}/60 pool features")


# ----------------------------------------------------------------------------------------- truncated files


@pytest.mark.reliability("fault", "truncated DuckDB catalogue")
def test_truncated_duckdb_file(explore_project, capsys, observed):
    root, project = explore_project
    database = root / "g2is.duckdb"
    os.truncate(database, database.stat().st_size // 2)
    assert main(["status", "--project", project]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"the cache database {database} is damaged or truncated" in err and f"mv {database}" in err, err
    observed.append(f"CLI: {err.strip()}")
    app = AppTest.from_file(MAIN, default_timeout=60)
    app.query_params["project"] = project
    app.run()
    assert not app.exception
    assert "is damaged or truncated" in app_messages(app)
    observed.append(f"app: {app_messages(app)}")


@pytest.mark.reliability("fault", "truncated feature chunk (.npy)")
def test_truncated_feature_chunk_is_reported_and_recomputed(tmp_path, cache, tiny_model_dir, capsys, observed):
    store = Store()
    # (chunks by rows only: a loaded machine must not add a time-based flush, so the chunk count is known)
    settings = tiny_settings(tiny_model_dir, chunk_rows=8, chunk_seconds=3600.0)
    make_project(tmp_path, store, n_pool=24, settings=settings)
    run_features(store, "p", settings, log=lambda _: None)
    pool_key = plan_features(store, "p", settings).config_for("pool").key
    _, before, _ = store.feature_matrix("p", "pool", pool_key)
    chunks = sorted(store.chunk_files(pool_key))
    assert len(chunks) == 3
    damaged = Path(chunks[1])
    untouched = {path: Path(path).stat().st_mtime_ns for path in chunks if path != str(damaged)}
    os.truncate(damaged, damaged.stat().st_size - 100)
    capsys.readouterr()  # (loading the model printed progress bars)
    assert main(["dump-features", "--project", "p", "--out", str(tmp_path / "dump")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"feature chunk {damaged} is damaged or truncated" in err, err
    assert "python -m core features --project p" in err
    observed.append(f"CLI dump-features: {err.strip()}")
    map_page = AppTest.from_file(str(REPO / "pages" / "map.py"), default_timeout=60)
    map_page.session_state["project"] = "p"
    map_page.run()
    assert not map_page.exception
    assert "is damaged or truncated" in app_messages(map_page), [m.value for m in map_page.main]
    observed.append(f"Map page: {app_messages(map_page)}")
    features_page = AppTest.from_file(str(REPO / "pages" / "features.py"), default_timeout=60)
    features_page.session_state["project"] = "p"
    features_page.run()
    assert not features_page.exception
    assert any(b.label == "Compute features" for b in features_page.button)  # the page offers the recomputation
    assert "8 feature rows" in " ".join(i.value for i in features_page.info)

    assert main(["features", "--project", "p", "--inline"]) == 0
    capsys.readouterr()
    _, after, _ = store.feature_matrix("p", "pool", pool_key)
    assert np.array_equal(before, after)  # the 8 rows were computed again, bit for bit
    assert all(Path(path).stat().st_mtime_ns == mtime for path, mtime in untouched.items())  # others kept
    assert not damaged.exists() and len(store.chunk_files(pool_key)) == 3
    observed.append("`python -m core features` again: the damaged chunk's 8 rows recomputed bit for bit, "
                    "the 2 other chunks untouched")


# ------------------------------------------------------------------------------------------- broken models


def damaged_model(kind: str, tiny_model_dir: Path, folder: Path) -> Path:
    if kind == "no chat template":
        return build_tiny_model(folder, chat_template=None)
    shutil.copytree(tiny_model_dir, folder)
    if kind == "truncated weights":
        weights = folder / "model.safetensors"
        os.truncate(weights, weights.stat().st_size // 2)
    elif kind == "no weights":
        (folder / "model.safetensors").unlink()
    elif kind == "config.json not JSON":
        (folder / "config.json").write_text("{not json")
    elif kind == "no tokenizer files":
        for file in folder.glob("tokenizer*"):
            file.unlink()
    return folder


MODEL_FAULTS = {  # fault -> what the message must say
    "no chat template": "has no chat template",
    "truncated weights": "is damaged or truncated; download or save the model again",
    "no weights": "has no weights",
    "config.json not JSON": "cannot be read as JSON",
    "no tokenizer files": "has no tokenizer files (tokenizer.json and tokenizer_config.json)",
}


@pytest.mark.parametrize("fault", [pytest.param(fault, marks=pytest.mark.reliability(
    "fault", "tokenizer without a chat template" if fault == "no chat template" else f"model does not load: {fault}"))
    for fault in MODEL_FAULTS])
def test_model_faults_give_clear_messages(fault, tmp_path, cache, tiny_model_dir, capsys, observed):
    model = damaged_model(fault, tiny_model_dir, tmp_path / "model")
    store = Store()
    make_project(tmp_path, store, n_pool=6, settings=tiny_settings(model, projection=ProjectionArguments(dim=64)))
    capsys.readouterr()  # (building the model printed a progress bar)
    assert main(["features", "--project", "p"]) == 1  # the project's settings name the model
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ") and MODEL_FAULTS[fault] in err, err
    assert "or choose another model" in err or "add a chat_template" in err
    assert store.jobs("p") == []  # refused before any job started
    observed.append(f"{fault}, CLI: {err.strip()}")

    page = AppTest.from_file(str(REPO / "pages" / "features.py"), default_timeout=60)
    page.session_state["project"] = "p"
    page.run()
    assert not page.exception
    assert MODEL_FAULTS[fault] in app_messages(page), app_messages(page)
    observed.append(f"{fault}, Features page: {app_messages(page)}")


# --------------------------------------------------------------------------------------- CUDA out of memory


class OutOfMemoryAbove(HookGradientComputer):
    """The real batched (CUDA code path) gradient computer, run on the CPU, that raises the real
    ``torch.cuda.OutOfMemoryError`` for a batch larger than ``limit`` examples, as a GPU would."""

    limit = 3
    attempts: list[int] = []

    def _capture(self, rows):  # the batched forward+backward, where a GPU runs out of memory
        type(self).attempts.append(len(rows))
        if len(rows) > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate a batch of {len(rows)}")
        return super()._capture(rows)


@pytest.mark.reliability("fault", "CUDA out of memory shrinks the batch (CPU check of the code path)")
def test_out_of_memory_halves_the_batch_and_goes_on(tmp_path, tiny_model_dir, monkeypatch, observed):
    import core.features.featurize

    settings = tiny_settings(tiny_model_dir, batch_size=8, chunk_rows=8)
    results = {}
    for name, computer in (("clean", HookGradientComputer), ("oom", OutOfMemoryAbove)):
        monkeypatch.setattr(core.features.featurize, "make_gradient_computer", lambda model, pad, device, precision="float32", activations=False, c=computer: c(model, pad))
        store = Store(tmp_path / name)
        make_project(tmp_path / name, store, n_pool=20)
        lines: list[str] = []
        OutOfMemoryAbove.attempts = []
        plan = run_features(store, "p", settings, log=lines.append)
        results[name] = (store.feature_matrix("p", "pool", plan.config_for("pool").key), lines)
    (ids, oom_matrix, _), lines = results["oom"]
    (clean_ids, clean_matrix, _), _ = results["clean"]
    attempts = OutOfMemoryAbove.attempts
    assert ids == clean_ids and len(ids) == 20  # no row lost
    assert np.allclose(oom_matrix, clean_matrix, rtol=1e-4, atol=1e-6)  # the same features in smaller batches
    assert attempts[:2] == [8, 4] and max(attempts[2:]) <= 2  # halved twice, and stays halved for later batches
    halvings = [line for line in lines if line.startswith("out of GPU memory with a batch of")]
    assert [line.split(" rows")[0].rsplit(" ", 1)[-1] for line in halvings] == ["8", "4"], lines
    assert "continuing with at most" in halvings[0] and "(4 rows of this length)" in halvings[0]
    assert "(2 rows of this length)" in halvings[1]
    observed.append(f"batch sizes tried: {attempts}")
    observed.append("log: " + "; ".join(line for line in lines if "GPU" in line))


class OutOfMemoryAboveTokens(HookGradientComputer):
    """The real batched computer, out of memory when a batch's padded tokens (rows x longest row) pass a budget,
    as activation memory on a GPU does."""

    budget = 60
    batches: list[tuple[int, int]] = []  # (rows, longest) of each batch that fitted

    def _capture(self, rows):
        longest = max(row.n_tokens for row in rows)
        if len(rows) * longest > self.budget:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory: {len(rows)} x {longest} tokens")
        type(self).batches.append((len(rows), longest))
        return super()._capture(rows)


def test_batch_size_follows_row_length_once_memory_ran_out(tiny_model_dir):
    """With no batch size to tune: after one out-of-memory error the padded-token cap lets short rows share big
    batches and gives long rows small ones; every row gets the features a batch-of-one run gives."""
    from core.features.featurize import FeatureEngine
    from core.features.lora import add_lora
    from core.features.modeling import EncodedRow, load_model, load_tokenizer, resolve_model
    from core.store import RowKey

    settings = tiny_settings(tiny_model_dir, batch_size=32, chunk_rows=1000)
    resolved = resolve_model(settings.model)
    pad_id = load_tokenizer(resolved).pad_token_id
    model = add_lora(load_model(resolved), settings.lora)
    lengths = [4] * 12 + [8] * 6 + [20] * 4  # short rows first, as the engine sorts them
    generator = torch.Generator().manual_seed(0)
    encoded, todo = {}, []
    for i, n in enumerate(lengths):
        ids = tuple(int(t) for t in torch.randint(5, 200, (n,), generator=generator))
        encoded[f"h{i}"] = EncodedRow(ids, (False,) + (True,) * (n - 1), n)
        todo.append(RowKey(i, f"r{i}", f"h{i}"))
    lines: list[str] = []
    OutOfMemoryAboveTokens.batches = []
    engine = FeatureEngine.build(model, pad_id, torch.device("cpu"), settings, lines.append)
    engine.computer = OutOfMemoryAboveTokens(model, pad_id)
    engine.size.value = settings.batch_size  # (build gives the CPU loop batches of 1)
    streamed = np.concatenate([chunk.matrix for chunk in engine.chunks(todo, encoded, settings)])
    engine.computer, engine.size.value, engine.size.tokens = HookGradientComputer(model, pad_id), 1, None
    one_by_one = np.concatenate([chunk.matrix for chunk in engine.chunks(todo, encoded, settings)])
    assert np.allclose(streamed, one_by_one, rtol=1e-4, atol=1e-6)
    batches = OutOfMemoryAboveTokens.batches
    assert sum(rows for rows, _ in batches) == len(lengths)
    assert all(rows * longest <= OutOfMemoryAboveTokens.budget for rows, longest in batches)
    by_length = {longest: max(rows for rows, top in batches if top == longest) for _, longest in batches}
    assert by_length[4] > by_length[8] > by_length[20] >= 1, batches
    # The first batch was all 22 rows (padded to the longest, 20); a few halvings of the cap, then none.
    assert lines[0].startswith("out of GPU memory with a batch of 22 rows x 20 tokens") and len(lines) <= 3, lines


def test_out_of_memory_for_a_single_example_is_that_rows_error(tiny_model_dir):
    """Even one example does not fit: the row gets an error that says what to do, and the batch size is 1."""
    from core.features.featurize import _features_for
    from core.features.modeling import EncodedRow
    from core.store import StoredRow

    class AlwaysOutOfMemory:
        def gradients(self, rows):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    rows = [StoredRow(i, f"r{i}", f"h{i}", [], "messages", "s", "f", i, None) for i in range(4)]
    encoded = {r.content_hash: EncodedRow((1, 2, 3), (False, True, True), 3) for r in rows}
    size = BatchSize(4, log=lambda _: None)
    out = _features_for(rows, encoded, AlwaysOutOfMemory(), None, None, None, tiny_settings(tiny_model_dir), size)
    assert [r.message for r in out] == ["out of GPU memory even for a single example (3 tokens): lower --max-tokens"] * 4
    assert all("OutOfMemoryError" in r.traceback for r in out)
    assert size.tokens == 3 and not size.fits(2, 3)  # one 3-token row per batch from now on


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here; the CPU test above runs the same code path")
@pytest.mark.reliability("fault", "CUDA out of memory shrinks the batch (real GPU)")
def test_real_cuda_out_of_memory_halves_the_batch(tiny_model_dir, observed):
    from core.features.featurize import _features_for
    from core.features.gradients import HookGradientComputer
    from core.features.lora import add_lora
    from core.features.modeling import encode_messages, load_model, load_tokenizer, resolve_model
    from core.features.projection import make_projector
    from core.store import StoredRow

    settings = tiny_settings(tiny_model_dir, max_tokens=512, batch_size=32)
    resolved = resolve_model(settings.model)
    tokenizer = load_tokenizer(resolved)
    model = add_lora(load_model(resolved, "cuda"), settings.lora)
    computer = HookGradientComputer(model, tokenizer.pad_token_id)
    projector = make_projector(settings.projection)
    long = [dict(r, messages=[{"role": "user", "content": r["messages"][0]["content"] * 12},
                              {"role": "assistant", "content": r["messages"][1]["content"] * 12}])
            for r in chat_rows(32, "gpu")]
    rows = [StoredRow(i, r["id"], f"h{i}", r["messages"], "messages", "s", "f", i, None) for i, r in enumerate(long)]
    encoded = {r.content_hash: encode_messages(tokenizer, r.messages, settings.max_tokens) for r in rows}
    # What one example needs, measured; then a cap that fits a few examples but not 32.
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    single = [projector.project(computer.gradients([encoded[rows[0].content_hash]])).cpu().numpy()[0]]
    per_example = torch.cuda.max_memory_allocated() - base
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(min(1.0, (torch.cuda.memory_reserved() + 6 * per_example) / total))
    try:
        lines: list[str] = []
        size = BatchSize(32, log=lines.append)
        out = _features_for(rows, encoded, computer, projector, None, None, settings, size)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert all(isinstance(result, np.ndarray) for result in out), [r for r in out if not isinstance(r, np.ndarray)][:2]
    assert size.tokens is not None and lines, lines
    assert np.allclose(out[0], single[0], rtol=1e-3, atol=1e-5)
    observed.append(f"per-example peak {per_example / 2**20:.1f} MiB; " + "; ".join(lines))


# ----------------------------------------------------------------------------------- two sessions, one job


@pytest.mark.reliability("fault", "two sessions read one project while a job writes")
def test_two_sessions_read_while_a_job_writes(tmp_path, cache, tiny_model_dir, observed):
    """Two reader threads (what two browser sessions of one app server are) and the Features page in AppTest
    read the project over and over while a real worker writes chunks: no lock error, and every read is a
    consistent snapshot (matrix rows match ids and norms, counts never go down)."""
    store = Store()
    settings = tiny_settings(tiny_model_dir, chunk_rows=4)
    make_project(tmp_path, store, n_pool=120, settings=settings)
    pool_key = plan_features(store, "p", settings).config_for("pool").key
    job_id = jobs.start_features_job(store, "p", settings)
    problems: list[str] = []
    seen: dict[int, list[int]] = {0: [], 1: []}
    stop = threading.Event()

    def session(number: int) -> None:
        from core.data.projects import project_status

        last = -1
        while not stop.is_set():
            try:
                status = project_status(store, "p")
                ids, matrix, norms = store.feature_matrix("p", "pool", pool_key)
                if not (matrix.shape[0] == len(ids) == len(norms) == len(set(ids))):
                    problems.append(f"torn read: {matrix.shape} {len(ids)} {len(norms)}")
                if len(ids) and not np.allclose(np.linalg.norm(matrix, axis=1), norms, rtol=1e-4):
                    problems.append("matrix and catalogue disagree")
                if len(ids) < last:
                    problems.append(f"feature count went down: {last} -> {len(ids)}")
                last = len(ids)
                seen[number].append(last)
                if status["jobs"][0]["status"] not in jobs.ACTIVE:
                    return
            except Exception as error:  # noqa: BLE001 - any error is the finding
                problems.append(f"{type(error).__name__}: {error}")
                return

    readers = [threading.Thread(target=session, args=(n,)) for n in (0, 1)]
    for reader in readers:
        reader.start()
    page_runs = 0
    try:
        while any(reader.is_alive() for reader in readers):
            page = AppTest.from_file(str(REPO / "pages" / "features.py"), default_timeout=60)
            page.session_state["project"] = "p"
            page.run()
            assert not page.exception, page.exception
            page_runs += 1
    finally:
        stop.set()
        for reader in readers:
            reader.join(timeout=60)
    assert problems == []
    assert jobs.wait(store, job_id, timeout=120).status == "done"
    for number in (0, 1):
        assert len(set(seen[number])) > 3, seen[number]  # each session saw chunks land while it read
    observed.append(f"session reads: {len(seen[0])} and {len(seen[1])}; Features page runs: {page_runs}; "
                    f"distinct feature counts seen: {len(set(seen[0]))} and {len(set(seen[1]))}; no error, "
                    f"no torn read")


# ------------------------------------------------------------------------------- the app server killed


def browser_missing() -> str | None:
    from browser import REQUIRE_ENV, missing_browser_reason

    reason = missing_browser_reason()
    return None if reason is None or os.environ.get(REQUIRE_ENV) == "1" else reason


@pytest.fixture()
def chromium():
    reason = browser_missing()
    if reason:
        pytest.skip(reason)
    from browser import launch_chromium
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            yield browser
        finally:
            browser.close()


ROWS = 600  # ~30 s of tiny-model work on 2 busy cores: the job outlives a server restart


@pytest.fixture()
def server_project(request, tmp_path, cache, tiny_model_dir):
    """A cache with project ``srv`` (tiny model, enough rows that its job runs for a while), and a cleanup that
    stops every worker the app started (they run in their own sessions, outside the server's process group)."""
    store = Store()
    rows = getattr(request, "param", ROWS)
    make_project(tmp_path, store, n_pool=rows, project="srv", settings=tiny_settings(tiny_model_dir, chunk_rows=8))
    servers: list = []
    try:
        yield store, servers
    finally:
        for server in servers:
            server.stop()
        for job in store.jobs("srv"):
            if job.pid:
                try:
                    os.killpg(job.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


def start_server(store: Store, servers: list, tmp_path: Path):
    from browser import AppServer

    server = AppServer(store.root, tmp_path / f"streamlit-{len(servers)}.log").start()
    servers.append(server)
    return server


def open_features(chromium, server):
    from browser import StreamlitPage

    context = chromium.new_context(viewport={"width": 1400, "height": 1400})
    context.set_default_timeout(60_000)
    page = StreamlitPage(context.new_page(), server.url)
    try:
        page.open("", project="srv")  # the Features page is the app's default page
        page.main().locator("h1", has_text="Gradient features").wait_for()
    except Exception as error:  # say what the browser showed and what the server logged
        body = page.page.inner_text("body")[-1500:] if not page.page.is_closed() else ""
        raise AssertionError(f"the Features page did not open: {error}\npage: {body}\nserver log: "
                             f"{server.log_tail(3000)}") from error
    return page


def launch_from_the_page(chromium, server, store: Store) -> str:
    """Press Compute features in a real browser and wait until the job has written a chunk."""
    page = open_features(chromium, server)
    page.main().get_by_role("button", name="Compute features").click()
    page.main().get_by_text("Running job").wait_for()
    page.page.context.close()
    (job,) = store.jobs("srv")
    settings = FeatureSettings.from_dict(job.params["settings"])
    pool_key = plan_features(store, "srv", settings).config_for("pool").key
    wait_for(lambda: store.chunk_files(pool_key), timeout=120, what="a first chunk")
    return job.id


def kill_server(server) -> None:
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=10)


def progress_text(page) -> str:
    return page.main().locator('[data-testid="stProgress"]').first.inner_text()


@pytest.mark.reliability("fault", "app server killed (kill -9) while a job runs; the worker survives")
def test_server_killed_the_worker_goes_on_and_the_restarted_page_shows_it(chromium, server_project, tmp_path, observed):

    store, servers = server_project
    job_id = launch_from_the_page(chromium, start_server(store, servers, tmp_path), store)
    worker = store.job(job_id).pid
    kill_server(servers[-1])
    assert jobs.worker_alive(store, job_id), "the worker died with the server"
    done_at_kill = store.job(job_id).done
    observed.append(f"server killed with kill -9; worker {worker} alive: True (own session), job at "
                    f"{done_at_kill}/{store.job(job_id).total}")

    page = open_features(chromium, start_server(store, servers, tmp_path))
    main = page.main()
    main.get_by_text("Running job").wait_for()
    first = progress_text(page)
    numbers = lambda text: tuple(map(int, re.search(r"(\d+)/(\d+)", text).groups()))  # noqa: E731
    wait_for(lambda: numbers(progress_text(page))[0] > numbers(first)[0], timeout=60, poll=0.5,
             what="the restarted page's progress to move")
    observed.append(f"restarted page: 'Running job', progress {first!r} then {progress_text(page)!r}")
    main.get_by_text("All features are computed and cached.").wait_for(timeout=240_000)
    assert page.problems() == []
    final = jobs.job_view(store, job_id)
    assert final.status == "done" and store.job(job_id).pid == worker  # the same worker finished it
    observed.append(f"the same worker finished: {final.status}; page: 'All features are computed and cached.'")


@pytest.mark.parametrize("server_project", [200], indirect=True)  # the job need not outlive anything here
@pytest.mark.reliability("fault", "app server and worker killed (kill -9), restarted, resumed from the page")
def test_server_and_worker_killed_then_resumed_from_the_page(chromium, server_project, tmp_path, observed):
    store, servers = server_project
    rows = store.row_counts("srv")["pool"]
    job_id = launch_from_the_page(chromium, start_server(store, servers, tmp_path), store)
    job = store.job(job_id)
    settings = FeatureSettings.from_dict(job.params["settings"])
    pool_key = plan_features(store, "srv", settings).config_for("pool").key
    kill_server(servers[-1])
    os.killpg(job.pid, signal.SIGKILL)
    wait_for(lambda: not jobs.worker_alive(store, job_id), timeout=10, what="the worker's lock to be released")
    assert store.job(job_id).status == "running"  # what the row says: nobody could record the kill
    assert jobs.job_view(store, job_id).status == "interrupted"  # what everyone is shown: the lock is free
    chunks_before = {path: Path(path).stat().st_mtime_ns for path in store.chunk_files(pool_key)}
    observed.append(f"server and worker killed with kill -9 at {job.done}/{job.total}; stored status 'running', "
                    f"shown as 'interrupted' (the worker's flock is free)")

    page = open_features(chromium, start_server(store, servers, tmp_path))
    main = page.main()
    main.get_by_text("interrupted", exact=True).wait_for()
    main.get_by_text("the worker stopped without finishing").wait_for()
    page.screenshot("faults-server-and-worker-killed")
    main.get_by_role("button", name="Resume job").click()
    main.get_by_text("Running job").wait_for()
    observed.append("restarted page: job listed as 'interrupted' with 'the worker stopped without finishing ... "
                    "resume to continue'; pressed 'Resume job', the page showed 'Running job'")
    main.get_by_text("All features are computed and cached.").wait_for(timeout=240_000)
    assert page.problems() == []
    assert jobs.job_view(store, job_id).status == "done" and len(store.jobs("srv")) == 1  # resumed, not restarted
    progress = store.feature_progress("srv", "pool", pool_key)
    assert (progress["features"], progress["errors"]) == (rows, 0)
    after = store.chunk_files(pool_key)
    assert all(path in after and Path(path).stat().st_mtime_ns == mtime for path, mtime in chunks_before.items())
    assert sum(np.load(path, mmap_mode="r").shape[0] for path in after) == rows  # nothing computed twice
    observed.append(f"resumed job done: {rows}/{rows} pool features, the {len(chunks_before)} chunks finished before "
                    f"the kill untouched, no row computed twice")
