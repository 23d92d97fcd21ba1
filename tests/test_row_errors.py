"""Row errors keep their kind: a permanent one (the input itself) stays, a retriable one (a runtime failure)
is computed again by ``features --retry-errors``; a chunk where most rows fail stops the job instead."""
from __future__ import annotations

import pytest
from conftest import REPO, make_project, tiny_settings, write_jsonl
from streamlit.testing.v1 import AppTest

import core.features.featurize
from core import jobs
from core.cli import main
from core.data.ingest import ingest_files
from core.features.featurize import ERROR_RATE_LIMIT, ERROR_RATE_MIN_ROWS, plan_features, run_features
from core.features.gradients import LoopGradientComputer
from core.store import Store


class FailingComputer(LoopGradientComputer):
    """The real (CPU loop) gradient computer, raising a RuntimeError on the calls whose number is in ``fail`` (or all)."""

    fail: set[int] | None = set()  # None: every call fails
    calls = 0

    def gradients(self, rows):
        number = type(self).calls
        type(self).calls += 1
        if type(self).fail is None or number in type(self).fail:
            raise RuntimeError(f"injected failure on call {number}")
        return super().gradients(rows)


@pytest.fixture
def failing(monkeypatch):
    monkeypatch.setattr(core.features.featurize, "make_gradient_computer",
                        lambda model, pad, device, precision="float32", activations=False: FailingComputer(model, pad))
    FailingComputer.calls = 0
    return FailingComputer


def _errors(store: Store, key: str) -> dict[str, tuple[str, str]]:
    with store._connect() as con:  # (a test may read the table directly)
        rows = con.execute("SELECT r.row_id, e.error, e.kind FROM feature_errors e JOIN rows r "
                           "ON r.content_hash = e.content_hash WHERE e.config_key = ?", [key]).fetchall()
    return {row_id: (error, kind) for row_id, error, kind in rows}


@pytest.mark.reliability("fault", "a row's runtime error is retriable (features --retry-errors), an input error stays")
def test_retriable_error_is_retried_and_permanent_one_stays(tmp_path, cache, tiny_model_dir, failing, capsys, observed):
    store = Store()
    settings = tiny_settings(tiny_model_dir)
    make_project(tmp_path, store, n_pool=20, settings=settings)
    # An answer wholly cut off by max_tokens: the row itself is the problem (a permanent error).
    too_long = [{"id": "too-long", "messages": [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "ok"}]}]
    ingest_files(store, "p", "pool", [tmp_path / "p-pool.jsonl", write_jsonl(tmp_path / "pool2.jsonl", too_long)])
    failing.fail = {2}
    assert main(["features", "--project", "p", "--inline", "--no-probe"]) == 0
    key = plan_features(store, "p", settings).config_for("pool").key
    errors = _errors(store, key)
    assert errors["too-long"][1] == "permanent"
    retriable = [row_id for row_id, (_, kind) in errors.items() if kind == "retriable"]
    assert len(retriable) == 1 and "injected failure" in errors[retriable[0]][0], errors
    assert jobs.retriable_errors(store, plan_features(store, "p", settings)) == 1
    assert retriable[0] not in store.feature_row_ids("p", "pool", key)

    failing.fail = set()  # the failure is gone (a bigger GPU, ...)
    capsys.readouterr()
    assert main(["features", "--project", "p", "--inline", "--no-probe", "--retry-errors"]) == 0
    out = capsys.readouterr().out
    assert "retrying 1 row(s)" in out
    observed.append(f"`features --retry-errors`: {out.splitlines()[0]}; the too-long row keeps its permanent error")
    assert set(_errors(store, key)) == {"too-long"}  # the permanent error stays
    assert retriable[0] in store.feature_row_ids("p", "pool", key)
    assert store.feature_progress("p", "pool", key)["features"] == 20
    assert jobs.retriable_errors(store, plan_features(store, "p", settings)) == 0


@pytest.mark.reliability("fault", "most rows of a chunk fail: the job stops with the first traceback, records no errors")
def test_too_many_failures_in_a_chunk_stop_the_job(tmp_path, cache, tiny_model_dir, failing, observed):
    assert ERROR_RATE_MIN_ROWS == 5 and ERROR_RATE_LIMIT == 0.2
    store = Store()
    settings = tiny_settings(tiny_model_dir)
    make_project(tmp_path, store, n_pool=20, settings=settings)
    failing.fail = None
    assert main(["features", "--project", "p", "--inline", "--no-probe"]) != 0
    job = store.jobs("p")[0]
    assert job.status == "failed"
    assert "rows of a chunk failed" in job.message and "Traceback (most recent call last)" in job.message
    assert "injected failure on call 0" in job.message and "in gradients" in job.message, job.message
    plan = plan_features(store, "p", settings)
    for config in plan.configs:
        assert _errors(store, config.key) == {}  # nothing recorded: the rows are still to compute
    assert not plan.complete
    observed.append(f"job stopped: {job.message.splitlines()[0]}")


@pytest.mark.reliability("fault", "Features page: a Retry button recomputes the rows that failed with retriable errors")
def test_features_page_retries_the_failed_rows(tmp_path, cache, tiny_model_dir, failing, observed):
    store = Store()
    settings = tiny_settings(tiny_model_dir)
    make_project(tmp_path, store, n_pool=12, settings=settings)
    failing.fail = {3}
    run_features(store, "p", settings, log=lambda _: None)
    plan = plan_features(store, "p", settings)
    assert jobs.retriable_errors(store, plan) == 1
    app = AppTest.from_file(str(REPO / "app" / "main.py"), default_timeout=60)
    app.query_params["project"] = "p"
    app.run()
    assert not app.exception
    retry = next(b for b in app.button if b.label.startswith("Retry"))
    assert retry.label == "Retry 1 failed rows"
    retry.click().run()
    assert not app.exception
    job = store.jobs("p")[0]  # a background worker: the real computer, without the injected failure
    assert jobs.wait(store, job.id, timeout=120).status == "done", jobs.log_path(store, job.id).read_text()[-2000:]
    plan = plan_features(store, "p", settings)
    assert plan.complete and jobs.retriable_errors(store, plan) == 0
    assert store.feature_progress("p", "pool", plan.config_for("pool").key)["features"] == 12
    app.run()
    assert not app.exception and not [b for b in app.button if b.label.startswith("Retry")]
    observed.append(f"{retry.label!r} clicked: job {job.id} computed the row; no Retry button afterwards")
