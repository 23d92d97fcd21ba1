"""Selection on a project's stored features through the CLI: graph, select (every method), walk --steps,
export in every format, and dump-features with graph.npy -- tiny model, real store, real files."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import chat_rows, cli_project, write_jsonl

from core.cli import main
from core.selection.export import export_selection
from core.selection.runs import METHOD_ALIASES
from core.store import Store


@pytest.fixture()
def project_with_features(tmp_path, cache, tiny_model_dir, capsys):
    pool = chat_rows(60, "pool")
    pool[5]["messages"].insert(0, {"role": "system", "content": "Be brief."})
    return cli_project(tmp_path, tiny_model_dir, pool, capsys)


def test_graph_select_walk_export_and_dump(project_with_features, tmp_path, capsys):
    project = project_with_features
    assert main(["graph", "--project", project, "--k", "8"]) == 0
    out = capsys.readouterr().out
    assert "60 nodes, k=8" in out
    assert main(["graph", "--project", project, "--k", "8"]) == 0  # cached now
    assert "60 nodes" in capsys.readouterr().out

    selections = {}
    for method in ("g2is", "less", "tsds", "random", "embedding"):
        code = main(["select", "--project", project, "--method", method, "--budget", "6", "--k", "8", "--json"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        printed = json.loads(captured.out)
        ids = printed["rows"]
        assert printed["run"] == Store().selection_runs(project, METHOD_ALIASES.get(method, method))[0]["id"]
        assert 1 <= len(ids) <= 6 and len(set(ids)) == len(ids) and all(i.startswith("pool-") for i in ids)
        selections[method] = ids
    # the same inputs give the same picks in the same order
    assert main(["select", "--project", project, "--method", "g2is", "--budget", "6", "--k", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == selections["g2is"]

    assert main(["walk", "--project", project, "--budget", "6", "--k", "8", "--steps", "--delta", "0.9"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    kinds = [line.split()[0] for line in lines[:-1]]
    assert kinds[0] == "component_start" and "anchor" in kinds and kinds[-1] == "component_end"
    run_id = lines[-1].split()[1].rstrip(":")
    store = Store()
    events = store.walk_events(run_id)
    assert len(events) == len(lines) - 1 and [e["kind"] for e in events] == kinds
    accepted = [e["row"] for e in events if e["kind"] == "anchor" or e.get("verdict") == "accepted"]
    assert [r[0] for r in store.selection_rows(run_id)] == accepted  # the selection is what the events accept

    for fmt in ("messages", "sharegpt", "alpaca"):
        target = tmp_path / f"out.{fmt}.jsonl"
        code = main(["export", "--project", project, "--run", run_id, "--format", fmt, "--out", str(target)])
        err = capsys.readouterr().err
        chosen = [r[1] for r in store.selection_rows(run_id)]
        assert code == 0, err
        records = [json.loads(line) for line in target.read_text().splitlines()]
        assert [r["id"] for r in records] == chosen
        key = {"messages": "messages", "sharegpt": "conversations", "alpaca": "instruction"}[fmt]
        assert all(key in r for r in records)
        if fmt == "alpaca" and "pool-5" in chosen:
            assert records[chosen.index("pool-5")]["system"] == "Be brief."
        manifest = json.loads((tmp_path / f"out.{fmt}.manifest.json").read_text())
        assert manifest["ids"] == chosen and manifest["method"] == "g2is" and manifest["feature_key"]
        assert (store.root / "exports" / f"{run_id}.{fmt}.jsonl").read_text() == target.read_text()

    assert main(["graph", "--project", project, "--k", "8", "--geometry", "cosine"]) == 0
    assert main(["dump-features", "--project", project, "--out", str(tmp_path / "dump"), "--geometry", "cosine"]) == 0
    graph = np.load(tmp_path / "dump" / "graph.npy")
    assert graph.dtype == np.int64 and graph.shape == (60, 8)
    pool = np.load(tmp_path / "dump" / "pool.npy")
    unit = pool / np.linalg.norm(pool, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    row_sims = np.take_along_axis(sims, graph, axis=1)
    assert (np.diff(row_sims, axis=1) <= 1e-6).all()  # neighbours by descending similarity
    assert np.allclose(row_sims[:, 0], sims.max(axis=1), atol=1e-5)


def test_select_without_k_walks_the_graph_the_user_built(project_with_features, capsys):
    project = project_with_features
    assert main(["select", "--project", project, "--method", "g2is", "--budget", "6"]) == 0
    assert "no graph is stored for these features: building the default one (k=32)" in capsys.readouterr().err
    store = Store()
    assert [g["k"] for g in store.graphs(store.selection_runs(project)[0]["feature_key"])] == [32]
    assert main(["graph", "--project", project, "--k", "8", "--k-conflict", "3"]) == 0
    capsys.readouterr()
    # two graphs now: without --k, select says so and walks the default (k=32) one
    assert main(["select", "--project", project, "--method", "g2is", "--budget", "6"]) == 0
    assert "2 graphs are stored for these features (k = 32, 8): walking the default one (k=32)" in capsys.readouterr().err
    assert store.selection_runs(project, "g2is")[0]["params"]["k"] == 32


def test_select_without_k_uses_the_only_stored_graph(project_with_features, capsys):
    project = project_with_features
    assert main(["graph", "--project", project, "--k", "8", "--k-conflict", "3"]) == 0
    capsys.readouterr()
    assert main(["select", "--project", project, "--method", "g2is", "--budget", "6", "--json"]) == 0
    captured = capsys.readouterr()
    assert "walking the stored graph" in captured.err and "(k=8, 3 conflict edges per row" in captured.err
    store = Store()
    run = store.selection_runs(project, "g2is")[0]
    assert run["params"]["k"] == 8 and len(store.graphs(run["feature_key"])) == 1  # no default graph was built
    assert len(json.loads(captured.out)["rows"]) == 6


def test_partial_features_are_refused_unless_allowed_and_the_run_records_its_coverage(tmp_path, cache,
                                                                                     tiny_model_dir, capsys):
    pool, targets = chat_rows(30, "pool"), chat_rows(4, "target")
    assert main(["ingest", "--project", "part", "--pool", str(write_jsonl(tmp_path / "pool.jsonl", pool)),
                 "--targets", str(write_jsonl(tmp_path / "targets.jsonl", targets))]) == 0
    # a second project over the same feature config, all of whose rows are done
    assert main(["ingest", "--project", "done", "--pool", str(write_jsonl(tmp_path / "small.jsonl", pool[:12])),
                 "--targets", str(tmp_path / "targets.jsonl")]) == 0
    for project, limit in (("part", ["--limit", "12"]), ("done", [])):
        assert main(["features", "--project", project, "--model", str(tiny_model_dir), "--max-tokens", "64",
                     "--proj-dim", "256", "--warmup-fraction", "0.1", "--inline", *limit]) == 0
    capsys.readouterr()
    assert main(["select", "--project", "part", "--method", "less", "--budget", "4"]) == 1
    err = capsys.readouterr().err
    assert "project 'part': 18 of 30 pool rows have no feature yet" in err, err
    assert "python -m core features --project part" in err and "--allow-partial" in err
    assert Store().selection_runs("part") == []
    assert main(["select", "--project", "done", "--method", "less", "--budget", "4"]) == 0  # its own rows are done
    capsys.readouterr()

    assert main(["select", "--project", "part", "--method", "less", "--budget", "4", "--allow-partial",
                 "--out", str(tmp_path / "subset.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "note: partial selection: 18 pool rows had no feature yet" in out
    assert "note: features cover 12 of 30 pool rows and 4 of 4 targets rows" in out
    run = Store().selection_runs("part")[0]
    assert run["params"]["coverage"] == {"pool": [12, 30], "targets": [4, 4]}
    manifest = json.loads((tmp_path / "subset.manifest.json").read_text())
    assert manifest["params"]["coverage"] == {"pool": [12, 30], "targets": [4, 4]}
    assert any("partial selection" in note for note in manifest["notes"])


def test_select_reports_clear_errors(project_with_features, cache, capsys):
    assert main(["select", "--project", "nope", "--method", "less", "--budget", "3"]) == 1
    assert "no project 'nope'" in capsys.readouterr().err
    assert main(["select", "--project", project_with_features, "--method", "less", "--ratio", "1.5"]) == 1
    assert "ratio must lie in (0, 1]" in capsys.readouterr().err
    assert main(["select", "--project", project_with_features, "--method", "g2is", "--budget", "3", "--param", "bogus=1"]) == 1
    assert "unknown parameter" in capsys.readouterr().err
    assert main(["select", "--project", project_with_features, "--method", "less", "--budget", "500"]) == 0
    assert "clipped to 60" in capsys.readouterr().out


def test_project_features_are_normalised_once_and_every_method_picks_as_on_raw_features(explore_project):
    """The pool is L2-normalised in place at load (no method makes its own copy); each method picks exactly the
    rows it picks from the raw stored features."""
    from core.selection.graph import build_graph
    from core.selection.methods import select
    from core.selection.runs import feature_index, load_project_features, project_graph

    _, project = explore_project
    store = Store()
    features = load_project_features(store, project)
    norms = np.linalg.norm(features.pool.astype(np.float64), axis=1)
    assert np.allclose(norms[norms > 0], 1.0, atol=1e-6)
    index = feature_index(store, project)
    _, raw, _ = store.feature_matrix(project, "pool", index.config_keys["pool"][-1])  # the explore pool is in id order
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)  # the stored features are not unit: the test can fail
    graph, _ = project_graph(store, features, k=8)
    assert np.array_equal(graph.neighbors, build_graph(raw, k=8).neighbors)
    context = {"g2is": {"graph": graph}, "less": {"target_groups": features.target_groups}}
    for method in ("g2is", "less", "tsds-uniform", "tsds-kde"):
        on_raw = select(method, raw, features.targets, 10, None, **context.get(method, {}))
        on_unit = select(method, features.pool, features.targets, 10, None, pool_is_unit=True, **context.get(method, {}))
        assert on_unit.rows == on_raw.rows and np.allclose(on_unit.scores, on_raw.scores), method
    with pytest.raises(ValueError, match="needs the raw pool features"):
        select("tsds-kde", features.pool, features.targets, 10, {"normalize": False}, pool_is_unit=True)


def test_a_remedy_walks_a_graph_of_its_own_geometry(project_with_features, capsys):
    project = project_with_features
    assert main(["graph", "--project", project, "--k", "8"]) == 0  # a stored graph the default walk would use
    capsys.readouterr()
    assert main(["select", "--project", project, "--method", "g2is", "--budget", "6", "--k", "8",
                 "--param", "center_pool=true", "--param", 'graph_rescale="csls"', "--json"]) == 0
    run_id = json.loads(capsys.readouterr().out)["run"]
    store = Store()
    run = store.selection_run(run_id)
    assert run["params"]["center_pool"] is True and run["params"]["graph_rescale"] == "csls"
    assert run["params"]["align_signs"] is True  # every remedy is recorded: this one is the default profile's
    geometries = sorted(info["geometry"] for info in store.graphs(run["feature_key"]))
    assert geometries == ["centred", "centred+csls"]  # (`graph` built the default walk's: centred)
    manifest = export_selection(store, run_id, "messages", None)
    assert manifest["profile"] == {"name": "default", "center_pool": True, "graph_rescale": "csls",
                                   "align_signs": True}
    assert main(["select", "--project", project, "--method", "g2is-paper", "--budget", "6", "--json"]) == 0
    paper = json.loads(capsys.readouterr().out)["run"]
    assert export_selection(store, paper, "messages", None)["profile"]["name"] == "paper"
