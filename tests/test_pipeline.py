"""The feature pipeline end to end on the tiny model: ingest -> features -> status -> dump, caching,
background workers, resume after a real ``kill -9``, and reading from another process while a job writes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, chat_rows, make_project, subprocess_env, tiny_settings, wait_for, write_jsonl

from core import jobs
from core.cli import main
from core.config import FeatureSettings, ProjectionArguments, WarmupArguments
from core.features.featurize import plan_features, run_features
from core.store import Store


def test_cli_ingest_features_status_dump_and_cache(tmp_path, cache, tiny_model_dir, capsys):
    pool = write_jsonl(tmp_path / "pool.jsonl", chat_rows(30, "pool"))
    targets = write_jsonl(tmp_path / "targets.jsonl", chat_rows(5, "target"))
    assert main(["ingest", "--project", "demo1", "--pool", str(pool), "--targets", str(targets)]) == 0
    assert "30 pool rows, 5 target rows" in capsys.readouterr().out
    args = ["features", "--project", "demo1", "--model", str(tiny_model_dir), "--max-tokens", "64", "--proj-dim", "256",
            "--warmup-fraction", "0.2", "--inline"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "estimate:" in out and "tokens" in out and "MiB" in out
    # Before promising a time, this machine's speed on a few real rows (issue 19: "149 tokens/s (assumed)" was 8x off).
    assert "measuring this machine's speed on 4 rows of the project" in out and "tokens/s (3 rows in" in out
    assert "measured on this machine with these settings" in out.split("estimate:")[1]
    # second run: everything comes from the cache
    assert main(args[:-1]) == 0
    assert "features cached" in capsys.readouterr().out

    assert main(["status", "--project", "demo1", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["rows"] == {"pool": 30, "targets": 5, "eval": 0}
    by_role = {f["role"]: f for f in status["features"]}
    assert by_role["pool"]["features"] == 30 and by_role["pool"]["gradient_type"] == "adam"
    assert by_role["targets"]["features"] == 5 and by_role["targets"]["gradient_type"] == "sgd"
    assert status["jobs"][0]["status"] == "done"

    out_dir = tmp_path / "dump"
    assert main(["dump-features", "--project", "demo1", "--out", str(out_dir)]) == 0
    pool_features = np.load(out_dir / "pool.npy")
    target_features = np.load(out_dir / "targets.npy")
    assert pool_features.dtype == np.float32 and pool_features.shape == (30, 256)
    assert target_features.shape == (5, 256)
    assert json.loads((out_dir / "pool_ids.json").read_text()) == [f"pool-{i}" for i in range(30)]
    assert json.loads((out_dir / "target_ids.json").read_text()) == [f"target-{i}" for i in range(5)]
    assert np.isfinite(pool_features).all() and (np.linalg.norm(pool_features, axis=1) > 0).all()
    # raw (un-normalised) features: norms vary from row to row
    assert np.std(np.linalg.norm(target_features, axis=1)) > 0


def test_features_are_reproducible_and_shared_across_limits(tmp_path, cache, tiny_model_dir):
    store = Store()
    make_project(tmp_path, store, n_pool=24)
    settings = tiny_settings(tiny_model_dir)
    run_features(store, "p", settings, limit=10, log=lambda _: None)
    plan = plan_features(store, "p", settings)
    assert plan.rows_to_compute == 14  # the first 10 pool rows (and the 6 targets) are cached
    run_features(store, "p", settings, log=lambda _: None)
    pool_config = plan.config_for("pool")
    ids, first, norms = store.feature_matrix("p", "pool", pool_config.key)
    assert len(ids) == 24 and np.allclose(np.linalg.norm(first, axis=1), norms, rtol=1e-5)

    other = Store(tmp_path / "other-cache")
    make_project(tmp_path, other, n_pool=24)
    run_features(other, "p", settings, log=lambda _: None)
    _, second, _ = other.feature_matrix("p", "pool", pool_config.key)
    assert np.array_equal(first, second)  # same inputs, same seed: bit-identical features


def test_a_warmup_of_zero_epochs_gives_finite_sign_like_pool_features(tmp_path, cache, tiny_model_dir):
    """epochs=0: the pool's Adam-aware features come from AdamW's zero moments (one step's m'/sqrt(v'), a
    sign-like gradient), which used to fail saving the checkpoint (one zeros tensor shared by both moments)."""
    store = Store()
    make_project(tmp_path, store, n_pool=8)
    settings = tiny_settings(tiny_model_dir, warmup=WarmupArguments(fraction=0.1, epochs=0))
    run_features(store, "p", settings, log=lambda _: None)
    plan = plan_features(store, "p", settings)
    assert plan.complete and [c.epoch for c in plan.checkpoints] == [0]
    _, pool, norms = store.feature_matrix("p", "pool", plan.config_for("pool").key)
    assert pool.shape == (8, 256) and np.isfinite(pool).all() and (norms > 0).all()


def test_several_warmup_checkpoints_are_walked_as_their_weighted_concatenation(tmp_path, cache, tiny_model_dir):
    """``checkpoints="all"``: the pool and targets a selection sees are [sqrt(w_c) x_c] over the checkpoints, so a
    dot product between pool rows is LESS's LR-weighted sum of per-checkpoint cosines."""
    from core.selection.runs import load_project_features

    store = Store()
    make_project(tmp_path, store, n_pool=10, n_targets=4)
    settings = tiny_settings(tiny_model_dir, warmup=WarmupArguments(fraction=0.3, epochs=2, batch_size=2, checkpoints="all"))
    store.ensure_project("p", settings.to_dict())
    run_features(store, "p", settings, log=lambda _: None)
    features = load_project_features(store, "p")
    weights = np.asarray(features.checkpoint_weights)
    assert len(features.pool_by_checkpoint) == 2 and weights.sum() == pytest.approx(1.0) and (weights > 0).all()
    assert features.pool.shape == (10, 512) and features.targets.shape == (4, 512)
    assert np.allclose(np.linalg.norm(features.pool, axis=1), 1.0, atol=1e-5)
    less_score = sum(w * m @ m.T for w, m in zip(weights, features.pool_by_checkpoint))
    assert np.allclose(features.pool @ features.pool.T, less_score, atol=1e-5)
    raw = [m / np.sqrt(w) for w, m in zip(weights, np.split(features.targets, 2, axis=1))]
    assert all(np.allclose(r, t, atol=1e-4) for r, t in zip(raw, features.targets_by_checkpoint))


def test_feature_keys_follow_what_changes_the_numbers(tmp_path, cache, tiny_model_dir, monkeypatch):
    """Same settings, same keys (the cache is found again); bf16 precision or a bumped FEATURE_CODE_VERSION give
    other keys, so features computed otherwise are never mistaken for these; batch size does not change them."""
    import core.features.featurize

    store = Store()
    make_project(tmp_path, store, n_pool=8)
    settings = tiny_settings(tiny_model_dir)

    def keys(**changes):
        plan = plan_features(store, "p", settings.replace(**changes))
        return [plan.warmup_run_key] + [c.key for c in plan.configs]

    default = keys()
    assert keys() == default and keys(batch_size=3) == default
    bf16 = keys(precision="bf16")
    assert bf16[0] == default[0] and not set(bf16[1:]) & set(default[1:])  # the same warmup, other features
    kronecker = keys(projection=ProjectionArguments("kronecker", 256))
    assert kronecker[0] == default[0] and not set(kronecker[1:]) & set(default[1:])
    assert keys(projection=ProjectionArguments("kronecker", 256, factor_dim=8))[1:] != kronecker[1:]
    assert keys(projection=ProjectionArguments(dim=256, factor_dim=8)) == default  # only kronecker uses it
    left = keys(truncation="left")  # left truncation encodes rows (the warmup's too) otherwise: all keys change
    assert not set(left) & set(default)
    monkeypatch.setattr(core.features.featurize, "FEATURE_CODE_VERSION", 2)
    bumped = keys()
    assert not set(bumped) & set(default) and not set(bumped) & set(bf16)


def test_kronecker_projection_job_from_the_cli(tmp_path, cache, tiny_model_dir, capsys):
    """A whole job with the factorised projection (rank 16 > factor dim 8: the targets' features come from
    activations on the CPU's hook computer, one row at a time); saved settings, status and the cache agree."""
    store = Store()
    make_project(tmp_path, store, n_pool=12, n_targets=4)
    args = ["features", "--project", "p", "--model", str(tiny_model_dir), "--max-tokens", "64", "--proj-dim", "256",
            "--proj-kind", "kronecker", "--proj-factor-dim", "8", "--lora-r", "16", "--warmup-fraction", "0.3"]
    assert main(args + ["--inline"]) == 0
    capsys.readouterr()
    assert main(args) == 0 and "features cached" in capsys.readouterr().out
    settings = FeatureSettings.from_dict(store.project_settings("p"))
    assert settings.projection == ProjectionArguments("kronecker", 256, factor_dim=8) and settings.lora.r == 16
    plan = plan_features(store, "p", settings)
    for role, rows in (("pool", 12), ("targets", 4)):
        ids, features, norms = store.feature_matrix("p", role, plan.config_for(role).key)
        assert features.shape == (rows, 256) and np.isfinite(features).all() and (norms > 0).all()
        cosines = (features / norms[:, None]) @ (features / norms[:, None]).T
        assert cosines[np.triu_indices(rows, 1)].max() < 0.999  # rows differ
    with pytest.raises(SystemExit):
        main(args[:-2] + ["--proj-kind", "logra"])
    assert "invalid choice: 'logra'" in capsys.readouterr().err


@pytest.mark.reliability("fault", "finished background workers are reaped, not left as zombies of the app server")
def test_a_finished_worker_is_reaped_not_left_a_zombie(tmp_path, cache, tiny_model_dir, observed):
    store = Store()
    store.ensure_project("empty", tiny_settings(tiny_model_dir).to_dict())  # no rows: the worker fails at once
    job_id = jobs.start_features_job(store, "empty", tiny_settings(tiny_model_dir))
    final = jobs.wait(store, job_id, timeout=120)
    assert final.status == "failed" and "has no pool rows" in final.job.message, final
    pid = store.job(job_id).pid
    stat = Path(f"/proc/{pid}/stat")

    def state() -> str | None:  # the process state letter (Z: a zombie), None once it is gone
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return None

    wait_for(lambda: state() is None, timeout=30, what=f"worker {pid} to be reaped (an exited child stays a zombie until its parent waits)")
    observed.append(f"worker {pid} of a failed job: gone from the process table once it exited")


def test_background_worker_and_bad_rows_are_recorded(tmp_path, cache, tiny_model_dir):
    store = Store()
    make_project(tmp_path, store, n_pool=12)
    # a row whose prompt fills the whole token budget cannot be trained on: recorded, and the job goes on
    from core.data.ingest import ingest_files

    rows = chat_rows(12, "pool") + [{"id": "too-long", "messages": [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "ok"}]}]
    ingest_files(store, "p", "pool", [write_jsonl(tmp_path / "pool2.jsonl", rows)])
    settings = tiny_settings(tiny_model_dir)
    job_id = jobs.start_features_job(store, "p", settings)
    final = jobs.wait(store, job_id, timeout=180)
    assert final.status == "done", (final, jobs.log_path(store, job_id).read_text()[-2000:])
    plan = plan_features(store, "p", settings)
    pool_key = plan.config_for("pool").key
    progress = store.feature_progress("p", "pool", pool_key)
    assert (progress["rows"], progress["features"], progress["errors"]) == (13, 12, 1)
    assert 0 < progress["truncated"] < 12  # some answers run past 64 tokens: kept, truncated, and counted
    assert store.feature_errors("p", "pool", pool_key) == [
        ("too-long", "answer truncated away: the prompt alone is longer than max_tokens=64 "
                     "(truncation 'left' would keep the answer)")]
    assert final.job.errors == 1 and final.job.done == final.job.total
    assert not final.alive


@pytest.mark.reliability("fault", "kill -9 of a feature job mid-chunk, then resume")
def test_resume_after_kill_9_recomputes_nothing_and_loses_nothing(tmp_path, cache, tiny_model_dir, observed):
    store = Store()
    make_project(tmp_path, store, n_pool=400)
    settings = tiny_settings(tiny_model_dir, chunk_rows=8, max_tokens=128)
    job_id = jobs.start_features_job(store, "p", settings)
    plan = plan_features(store, "p", settings)
    pool_key = plan.config_for("pool").key

    def chunks():
        return store.chunk_files(pool_key)

    wait_for(lambda: len(chunks()) >= 3, timeout=180)
    pid = store.job(job_id).pid
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: not jobs.worker_alive(store, job_id), timeout=10)
    assert jobs.job_view(store, job_id).status == "interrupted"
    before = {path: (Path(path).stat().st_mtime_ns, np.load(path).copy()) for path in chunks()}
    done_before = store.feature_progress("p", "pool", pool_key)["features"]
    assert 0 < done_before < 400
    observed.append(f"worker killed with SIGKILL while computing a chunk: {len(before)} chunks ({done_before}/400 "
                    f"pool rows) finished; stored status 'running', shown as 'interrupted' (its flock was free)")

    jobs.resume(store, job_id)
    final = jobs.wait(store, job_id, timeout=300)
    assert final.status == "done", jobs.log_path(store, job_id).read_text()[-2000:]
    progress = store.feature_progress("p", "pool", pool_key)
    assert progress["features"] == 400 and progress["errors"] == 0
    after = chunks()
    for path, (mtime, data) in before.items():  # finished chunks untouched
        assert path in after and Path(path).stat().st_mtime_ns == mtime and np.array_equal(np.load(path), data)
    # nothing computed twice: the chunk files hold exactly one row per pool row, and no orphan files remain
    files = sorted(store.feature_dir(pool_key).glob("*"))
    assert sorted(map(str, files)) == sorted(after)
    assert sum(np.load(f).shape[0] for f in files) == 400

    # and the result equals an uninterrupted run
    clean = Store(tmp_path / "clean")
    make_project(tmp_path, clean, n_pool=400)
    run_features(clean, "p", settings, log=lambda _: None)
    assert np.array_equal(store.feature_matrix("p", "pool", pool_key)[1], clean.feature_matrix("p", "pool", pool_key)[1])
    observed.append(f"resumed: 400/400 features; the {len(before)} finished chunk files untouched (same mtime and "
                    f"bytes); chunk files hold exactly 400 rows (none computed twice); the pool matrix equals an "
                    f"uninterrupted run in another cache bit for bit (np.array_equal)")


READER = r"""
import json, sys, time
import numpy as np
from core.store import Store
store, job_id, pool_key, seconds = Store(), sys.argv[2], sys.argv[3], float(sys.argv[4])
seen, reads, last = [], 0, -1
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    job = store.job(job_id)
    ids, matrix, norms = store.feature_matrix("p", "pool", pool_key)
    progress = store.feature_progress("p", "pool", pool_key)
    # each read is its own snapshot: the matrix (read first) never runs ahead of the count read after it
    assert matrix.shape[0] == len(ids) == len(norms) == len(set(ids)) <= progress["features"], (matrix.shape, progress)
    if len(ids):
        assert np.allclose(np.linalg.norm(matrix, axis=1), norms, rtol=1e-4), "catalogue and chunk files disagree"
    assert matrix.shape[0] >= last, "feature count went backwards"
    last = matrix.shape[0]
    seen.append(last)
    reads += 1
    if job.status in ("done", "failed"):
        break
    time.sleep(0.01)  # a busy reader (the app polls a few times a second), but not a spin loop
print(json.dumps({"reads": reads, "seen": sorted(set(seen)), "status": job.status}))
"""


@pytest.mark.reliability("fault", "another process reads one project while a job writes")
def test_another_process_reads_while_a_job_writes(tmp_path, cache, tiny_model_dir, observed):
    store = Store()
    make_project(tmp_path, store, n_pool=300)
    settings = tiny_settings(tiny_model_dir, chunk_rows=4, max_tokens=128)
    plan = plan_features(store, "p", settings)
    pool_key = plan.config_for("pool").key
    job_id = jobs.start_features_job(store, "p", settings)
    reader = subprocess.run(
        [sys.executable, "-c", READER, str(REPO), job_id, pool_key, "240"],
        capture_output=True, text=True, env=subprocess_env(cache), timeout=300,
    )
    assert reader.returncode == 0, reader.stderr[-3000:]
    result = json.loads(reader.stdout)
    assert result["status"] == "done"
    assert result["reads"] > 5 and len(result["seen"]) > 3  # it really read while chunks were landing
    assert result["seen"][-1] == 300
    observed.append(f"a reader process made {result['reads']} reads (status, feature matrix, counts) while the "
                    f"worker wrote chunks; {len(result['seen'])} distinct feature counts seen, never decreasing, "
                    f"matrix rows always equal to ids and norms; no lock error")
    assert jobs.wait(store, job_id, timeout=60).status == "done"


def test_cancel_then_resume(tmp_path, cache, tiny_model_dir):
    store = Store()
    make_project(tmp_path, store, n_pool=300)
    settings = tiny_settings(tiny_model_dir, chunk_rows=4, max_tokens=128)
    pool_key = plan_features(store, "p", settings).config_for("pool").key
    job_id = jobs.start_features_job(store, "p", settings)
    wait_for(lambda: len(store.chunk_files(pool_key)) >= 2, timeout=180)
    jobs.cancel(store, job_id)
    cancelled = jobs.wait(store, job_id, timeout=60)
    assert cancelled.status == "cancelled" and cancelled.resumable
    partial = store.feature_progress("p", "pool", pool_key)["features"]
    assert 0 < partial < 300
    # the rate is recorded after every chunk, so the resumed job's estimate is this machine's, not an assumption
    request = jobs.request_features(store, "p", settings)
    assert request.estimate.rate_source == "these settings" and request.estimate.tokens_per_s > 0
    assert jobs.find_resumable(store, "p", settings, None).job.id == job_id
    jobs.resume(store, job_id)
    assert jobs.wait(store, job_id, timeout=300).status == "done"
    assert store.feature_progress("p", "pool", pool_key)["features"] == 300


def test_clear_errors_for_missing_project_rows_and_model(tmp_path, cache, tiny_model_dir, capsys):
    assert main(["features", "--project", "nothing", "--model", str(tiny_model_dir), "--inline"]) == 1
    assert "has no pool rows" in capsys.readouterr().err
    rows = chat_rows(3)
    pool = write_jsonl(tmp_path / "pool.jsonl", rows + [rows[1]])
    assert main(["ingest", "--project", "q", "--pool", str(pool), "--targets", str(pool)]) == 1
    err = capsys.readouterr().err
    assert f"{pool}:4: duplicate id 'row-1'" in err and "line" not in Store().row_counts("q")  # nothing written
    assert Store().row_counts("q") == {"pool": 0, "targets": 0, "eval": 0}
    assert main(["ingest", "--project", "q", "--pool", str(pool), "--targets", str(pool), "--on-error", "skip"]) == 0
    assert "3 rows (messages), 1 skipped" in capsys.readouterr().out
    assert main(["features", "--project", "q", "--model", str(tmp_path / "missing-model"), "--inline"]) == 1
    assert "neither 'smollm2'" in capsys.readouterr().err
