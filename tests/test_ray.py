"""Feature runs on a Ray cluster (core/distributed.py), on a local 2-CPU cluster shared by the module's tests:
the result equals a single-machine run, a worker killed mid-shard is retried, and a cancelled run resumes.

The Ray tests skip when Ray is not installed (it is optional: the `ray` extra); the message a user gets
then is tested here too, without a cluster."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_project, tiny_settings

from core.cli import main
from core.features.featurize import Cancelled, plan_features, run_features
from core.store import Store

N_POOL = 40


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    # Workers are separate processes on this interpreter, where `pip install -e .` made `core` importable.
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir) -> dict:
    """The single-machine run every Ray run is compared with: {role: {row id: (feature, norm)}}."""
    folder = tmp_path_factory.mktemp("ray-reference")
    store = Store(folder / "cache")
    make_project(folder, store, n_pool=N_POOL)
    run_features(store, "p", tiny_settings(tiny_model_dir), log=lambda _: None)
    return stored_features(store, tiny_model_dir)


def stored_features(store: Store, model_dir: Path) -> dict:
    plan = plan_features(store, "p", tiny_settings(model_dir))
    out = {}
    for role in ("pool", "targets"):
        ids, matrix, norms = store.feature_matrix("p", role, plan.config_for(role).key)
        out[role] = {row_id: (vector, norm) for row_id, vector, norm in zip(ids, matrix, norms)}
    return out


def assert_equals_reference(store: Store, model_dir: Path, reference: dict) -> None:
    got = stored_features(store, model_dir)
    for role in ("pool", "targets"):
        assert got[role].keys() == reference[role].keys()
        for row_id, (vector, norm) in reference[role].items():
            # Same code, same CPU kernels: bit-identical here; the tolerance allows other thread counts' sums.
            np.testing.assert_allclose(got[role][row_id][0], vector, rtol=1e-6, atol=1e-6 * np.abs(vector).max(),
                                       err_msg=f"{role} row {row_id}")
            assert got[role][row_id][1] == pytest.approx(norm, rel=1e-6)


def assert_nothing_computed_twice(store: Store, model_dir: Path) -> None:
    plan = plan_features(store, "p", tiny_settings(model_dir))
    for config in plan.configs:
        stored = store.feature_progress("p", config.role, config.key)["features"]
        assert sum(np.load(path).shape[0] for path in store.chunk_files(config.key)) == stored


def new_project(tmp_path: Path, settings=None) -> Store:
    store = Store(tmp_path / "cache")
    make_project(tmp_path, store, n_pool=N_POOL)
    if settings is not None:
        store.ensure_project("p", settings.to_dict())
    return store


def test_cli_ray_run_equals_a_single_machine_run(ray_cluster, reference, tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setenv("G2IS_CACHE_DIR", str(tmp_path / "cache"))
    store = new_project(tmp_path, tiny_settings(tiny_model_dir))
    # This process is already connected (the fixture's cluster): the run uses that connection.
    assert main(["features", "--project", "p", "--ray", "auto"]) == 0
    assert "Ray: " in capsys.readouterr().out
    job = store.jobs("p")[0]
    assert job.status == "done" and job.params["ray"] == "auto" and job.done == job.total
    assert plan_features(store, "p", tiny_settings(tiny_model_dir)).complete
    assert_equals_reference(store, tiny_model_dir, reference)
    assert_nothing_computed_twice(store, tiny_model_dir)

    from core.selection.runs import load_project_features

    features = load_project_features(store, "p")  # the selection side reads it as any cache
    assert features.pool.shape == (N_POOL, 256) and len(features.target_ids) == len(reference["targets"])
    assert main(["features", "--project", "p", "--ray", "auto"]) == 0
    assert "features cached" in capsys.readouterr().out


@pytest.mark.reliability("fault", "a Ray worker process dies mid-shard")
def test_a_killed_worker_is_retried_and_the_result_is_unchanged(ray_cluster, reference, tmp_path, tiny_model_dir, observed):
    from core.features.distributed import run_features_ray

    store = new_project(tmp_path)
    marker = tmp_path / "worker-killed"
    lines = []
    plan = run_features_ray(store, "p", tiny_settings(tiny_model_dir), address=None, log=lines.append,
                            kill_worker_once=marker)
    assert marker.exists()  # the first attempt of shard 0 ran and killed its worker process (os._exit)
    assert plan.complete  # ... and Ray ran the shard again
    assert_equals_reference(store, tiny_model_dir, reference)
    assert_nothing_computed_twice(store, tiny_model_dir)
    observed.append(f"{lines[-1]}; the worker computing shard 0 exited (os._exit(1)) on its first attempt; Ray ran "
                    "the shard again and the run completed: features equal a single-machine run's, each row stored once")


def test_cancel_then_resume_computes_only_the_missing_rows(ray_cluster, reference, tmp_path, tiny_model_dir):
    from core.features.distributed import run_features_ray

    store = new_project(tmp_path)
    settings = tiny_settings(tiny_model_dir)
    phases = []  # should_cancel is also asked during the warmup: cancel only once a chunk has been written
    with pytest.raises(Cancelled):
        run_features_ray(store, "p", settings, address=None, log=lambda _: None, shard_rows=5,
                         report=lambda progress: phases.append(progress.phase),
                         should_cancel=lambda: any("Ray" in phase for phase in phases))
    remaining = plan_features(store, "p", settings)
    assert remaining.checkpoints and not remaining.missing_checkpoints  # the warmup is stored once
    pool_key = remaining.config_for("pool").key
    assert 0 < store.feature_progress("p", "pool", pool_key)["features"] < N_POOL
    chunks_before = store.chunk_files(pool_key)

    reports = []
    plan = run_features_ray(store, "p", settings, address=None, log=lambda _: None, report=reports.append)
    assert plan.complete
    assert reports[-1].total == remaining.rows_to_compute  # this run planned only the missing rows
    assert reports[-1].done == reports[-1].total
    assert chunks_before <= store.chunk_files(pool_key)  # what the first run stored is kept as it is
    assert_equals_reference(store, tiny_model_dir, reference)
    assert_nothing_computed_twice(store, tiny_model_dir)


def test_resume_of_a_cancelled_ray_job_runs_a_background_driver(ray_cluster, reference, tmp_path, tiny_model_dir):
    """``resume JOB`` (the CLI's and the Features page's) on a Ray job: a background worker process becomes the
    driver of its own local Ray instance (the job's address is "local") and finishes the job."""
    from core import jobs
    from core.features.distributed import run_features_ray

    store = new_project(tmp_path)
    settings = tiny_settings(tiny_model_dir)
    job_id = jobs.start_features_job(store, "p", settings, spawn=False, ray_address="local")
    phases = []
    with pytest.raises(Cancelled):  # the first part of the job, then a cancel (as `cancel JOB` would)
        run_features_ray(store, "p", settings, address=None, job_id=job_id, log=lambda _: None, shard_rows=5,
                         report=lambda progress: phases.append(progress.phase),
                         should_cancel=lambda: any("Ray" in phase for phase in phases))
    store.update_job(job_id, status="cancelled")
    jobs.resume(store, job_id)
    final = jobs.wait(store, job_id, timeout=300)
    log = jobs.log_path(store, job_id).read_text(errors="replace")
    assert final.status == "done", log[-3000:]
    assert "Ray: " in log  # the background worker drove a Ray run, not a local one
    assert_equals_reference(store, tiny_model_dir, reference)
    assert_nothing_computed_twice(store, tiny_model_dir)


def test_a_worker_with_other_model_files_refuses_to_compute(ray_cluster, tiny_model_dir):
    from core.features.distributed import Shard, WorkerSpec, _compute_shard, _shard_result
    from core.features.featurize import CheckpointPlan, FeatureConfig
    from core.features.modeling import ModelError

    spec = WorkerSpec(tiny_settings(tiny_model_dir), "not-these-weights", 0, use_gpu=False)
    ref = ray_cluster.remote(_compute_shard).options(max_retries=0).remote(spec, "ckpt", "sgd", [None], [], {}, None)
    shard = Shard(0, FeatureConfig("k", "pool", "sgd", CheckpointPlan("ckpt", 1)), [])
    with pytest.raises(ModelError, match="every node needs the same model files"):
        _shard_result(ray_cluster, ref, shard)


def test_without_ray_the_cli_says_how_to_install_it(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setenv("G2IS_CACHE_DIR", str(tmp_path / "cache"))
    new_project(tmp_path, tiny_settings(tiny_model_dir))
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError, as when not installed
    assert main(["features", "--project", "p", "--ray", "auto"]) == 1
    assert "Ray is not installed: pip install -e '.[ray]'" in capsys.readouterr().err
    assert Store().jobs("p") == []  # refused before any job was recorded
