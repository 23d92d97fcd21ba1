"""One ingest command is one transaction (issue 15): every file of every role (``--pool`` and ``--targets``) or none.

A file rejected for any reason -- a bad row under ``--on-error fail``, a file that is not instruction data at all,
the store failing half-way through the write -- leaves the project's rows of every role exactly as they were,
including an earlier ingest's rows, and a project that did not exist is not created.  Real DuckDB files throughout.
"""
from __future__ import annotations

import json

import pytest
from conftest import chat_rows, make_project, write_jsonl

import core.store.rows as store_rows
from core.cli import main
from core.data.ingest import ingest_files, ingest_roles
from core.data.records import BadRowsError, FormatError
from core.store import Store, StoreError

BAD_ROLE = {"messages": [{"role": "bot", "content": "who am I?"}]}  # not a role the readers know


def project_state(store: Store, project: str) -> tuple:
    """Everything an ingest writes for a project: whether it exists, its rows of each role, its ingest report."""
    rows = {role: [(r.ordinal, r.row_id, r.content_hash, r.messages, r.format, r.source, r.file, r.line, r.group)
                   for r in store.rows(project, role)] for role in ("pool", "targets")}
    return project in store.projects(), rows, store.ingest_report(project)


def good_pool_and_bad_targets(folder):
    """A clean 8-row pool and a 4-row targets file whose line 3 is bad."""
    pool = write_jsonl(folder / "new-pool.jsonl", chat_rows(8, "fresh"))
    targets = chat_rows(4, "goal")
    targets[2] = BAD_ROLE
    return pool, write_jsonl(folder / "bad-targets.jsonl", targets)


def check_rejection_message(message: str, targets) -> None:
    assert f"{targets}:3: " in message, message  # the file and the line
    assert "--on-error skip" in message and "on_error='skip'" not in message, message  # the CLI flag


# ------------------------------------------------------------------------------------------------ CLI


@pytest.mark.reliability("input", "CLI ingest: good pool, targets with a bad row: nothing of a new project is written")
def test_cli_rejected_targets_leave_a_new_project_empty(tmp_path, cache, capsys, observed):
    pool, targets = good_pool_and_bad_targets(tmp_path)
    before = project_state(Store(), "p")
    assert before == (False, {"pool": [], "targets": []}, {"files": [], "errors": []})

    assert main(["ingest", "--project", "p", "--pool", str(pool), "--targets", str(targets)]) == 1
    captured = capsys.readouterr()
    check_rejection_message(captured.err, targets)
    assert "Traceback" not in captured.err and "nothing was ingested: project 'p' was not created" in captured.err
    assert project_state(Store(), "p") == before  # no pool rows either, and no project
    assert Store().row_counts("p") == {"pool": 0, "targets": 0, "eval": 0}
    observed.append(f"`python -m core ingest --pool ... --targets ...`, exit 1: {captured.err.strip()}")


@pytest.mark.reliability("input", "CLI ingest rejected for an existing project: its earlier pool and targets are kept")
def test_cli_rejected_targets_keep_an_existing_projects_rows(tmp_path, cache, capsys, observed):
    store = Store()
    make_project(tmp_path / "earlier", store, n_pool=10, n_targets=4)
    before = project_state(store, "p")
    assert len(before[1]["pool"]) == 10 and len(before[1]["targets"]) == 4

    pool, targets = good_pool_and_bad_targets(tmp_path)
    assert main(["ingest", "--project", "p", "--pool", str(pool), "--targets", str(targets)]) == 1
    err = capsys.readouterr().err
    check_rejection_message(err, targets)
    assert "nothing was ingested: project 'p' is unchanged" in err
    assert project_state(Store(), "p") == before  # the earlier pool was not replaced by the new one

    # The same files with the bad row fixed go in, both roles at once, replacing the earlier rows.
    write_jsonl(targets, chat_rows(4, "goal"))
    assert main(["ingest", "--project", "p", "--pool", str(pool), "--targets", str(targets)]) == 0
    assert "project p: 8 pool rows, 4 target rows" in capsys.readouterr().out
    assert [r.row_id for r in Store().rows("p", "pool")] == [f"fresh-{i}" for i in range(8)]
    observed.append(f"exit 1, rows of both roles unchanged: {err.strip().splitlines()[-1]}")


@pytest.mark.reliability("input", "CLI ingest --on-error skip with a targets file that is not JSON: nothing is written")
def test_cli_unreadable_second_file_leaves_nothing_even_in_skip_mode(tmp_path, cache, capsys, observed):
    store = Store()
    make_project(tmp_path / "earlier", store, n_pool=6, n_targets=3)
    before = project_state(store, "p")
    pool = write_jsonl(tmp_path / "new-pool.jsonl", chat_rows(8, "fresh"))
    targets = tmp_path / "targets.jsonl"
    targets.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)  # an image saved under the wrong name

    assert main(["ingest", "--project", "p", "--pool", str(pool), "--targets", str(targets), "--on-error", "skip"]) == 1
    err = capsys.readouterr().err
    assert str(targets) in err and "Traceback" not in err and "nothing was ingested" in err, err
    assert project_state(Store(), "p") == before
    observed.append(f"exit 1: {err.strip()}")


# ------------------------------------------------------------------------------------------------ Python API


@pytest.mark.reliability("input", "ingest_roles: good pool, targets with a bad row: no role is written")
def test_api_rejected_targets_leave_every_role_as_it_was(tmp_path, cache, observed):
    store = Store()
    pool, targets = good_pool_and_bad_targets(tmp_path)
    with pytest.raises(BadRowsError) as raised:
        ingest_roles(store, "new", {"pool": [pool], "targets": [targets]})
    check_rejection_message(str(raised.value), targets)
    assert [(e.file, e.line) for e in raised.value.errors] == [(str(targets), 3)]
    assert project_state(store, "new") == (False, {"pool": [], "targets": []}, {"files": [], "errors": []})

    make_project(tmp_path / "earlier", store, n_pool=10, n_targets=4)
    before = project_state(store, "p")
    with pytest.raises(BadRowsError):
        ingest_roles(store, "p", {"pool": [pool], "targets": [targets]}, on_error="fail")
    assert project_state(store, "p") == before

    results = ingest_roles(store, "p", {"pool": [pool], "targets": [targets]}, on_error="skip")
    assert {role: r.rows for role, r in results.items()} == {"pool": 8, "targets": 3}
    assert [(e.file, e.line) for e in results["targets"].errors] == [(str(targets), 3)]
    assert store.row_counts("p") == {"pool": 8, "targets": 3, "eval": 0}
    observed.append(f"BadRowsError: {str(raised.value).splitlines()[0]}")


@pytest.mark.reliability("input", "ingest_roles: the second pool file is not instruction data: nothing is written")
def test_api_format_error_in_a_later_file_leaves_nothing(tmp_path, cache, observed):
    store = Store()
    make_project(tmp_path / "earlier", store, n_pool=10, n_targets=4)
    before = project_state(store, "p")
    first = write_jsonl(tmp_path / "first.jsonl", chat_rows(5, "first"))
    second = write_jsonl(tmp_path / "second.jsonl", [{"question": "q", "answer": "a"}] * 3)  # unknown format
    targets = write_jsonl(tmp_path / "targets.jsonl", chat_rows(3, "goal"))
    for mode in ("fail", "skip"):
        with pytest.raises(FormatError, match="no record is in a known instruction format") as raised:
            ingest_roles(store, "p", {"targets": [targets], "pool": [first, second]}, on_error=mode)
        assert str(second) in str(raised.value)
        assert project_state(store, "p") == before  # the targets, staged first, were not written either
    observed.append(f"FormatError: {raised.value}")


@pytest.mark.reliability("input", "the store fails half-way through writing the roles: the transaction rolls back")
def test_store_failure_between_roles_rolls_back_both(tmp_path, cache, monkeypatch, observed):
    store = Store()
    make_project(tmp_path / "earlier", store, n_pool=10, n_targets=4)
    before = project_state(store, "p")
    pool = write_jsonl(tmp_path / "pool.jsonl", chat_rows(8, "fresh"))
    targets = write_jsonl(tmp_path / "targets.jsonl", chat_rows(3, "goal"))

    real = store_rows._replace_role
    written: list[str] = []

    def fail_on_targets(con, project, role, *args):
        if role == "targets":  # the pool's rows are already in the (uncommitted) transaction
            assert con.execute("SELECT count(*) FROM rows WHERE project = ? AND role = 'pool'",
                               [project]).fetchone()[0] == 8
            raise StoreError("the disk of the cache folder is full (simulated)")
        written.append(role)
        return real(con, project, role, *args)

    monkeypatch.setattr(store_rows, "_replace_role", fail_on_targets)
    with pytest.raises(StoreError, match="simulated") as raised:
        ingest_roles(store, "p", {"pool": [pool], "targets": [targets]})
    assert written == ["pool"]
    assert project_state(store, "p") == before
    with pytest.raises(StoreError):  # a new project is not left behind either
        ingest_roles(store, "new", {"pool": [pool], "targets": [targets]})
    assert "new" not in store.projects()
    monkeypatch.undo()

    results = ingest_roles(store, "p", {"pool": [pool], "targets": [targets]})
    assert store.row_counts("p") == {"pool": 8, "targets": 3, "eval": 0} and results["pool"].rows == 8
    observed.append(f"StoreError while writing the targets: {raised.value}; pool and targets unchanged")


def test_ingest_files_still_replaces_one_role_and_keeps_the_other(tmp_path, cache):
    store = Store()
    make_project(tmp_path / "earlier", store, n_pool=10, n_targets=4)
    targets_before = project_state(store, "p")[1]["targets"]
    result = ingest_files(store, "p", "pool", [write_jsonl(tmp_path / "pool.jsonl", chat_rows(7, "fresh"))])
    assert result.role == "pool" and result.rows == 7 and not result.errors
    assert project_state(store, "p")[1]["targets"] == targets_before
    report = store.ingest_report("p")
    assert sorted((f["role"], f["rows"]) for f in report["files"]) == [("pool", 7), ("targets", 4)]
    with pytest.raises(ValueError, match="no targets files given"):
        ingest_roles(store, "p", {"pool": [tmp_path / "pool.jsonl"], "targets": []})
    with pytest.raises(ValueError, match="role must be one of"):
        ingest_roles(store, "p", {"pools": [tmp_path / "pool.jsonl"]})
    assert json.dumps(project_state(store, "p")[1]["pool"][0][3])  # stored messages are plain JSON
