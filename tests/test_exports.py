"""Exports for the trainers people use: every format (chat messages, Alpaca, ShareGPT) in both containers (JSONL,
Parquet) read back by ``datasets.load_dataset`` as the expected records in selection order; the LLaMA-Factory
``dataset_info.json`` entry (its documented keys, tags that match our records, merged into an existing file);
the messages export through a real chat template; and the manifest's reproducibility fields -- on a real DuckDB
store, real selection runs, tiny-model features and a real (tiny) evaluation."""
from __future__ import annotations

import importlib.metadata
import json
import subprocess
from pathlib import Path

import pytest
from conftest import EXPLORE_PROJECT, REPO, chat_rows, write_jsonl

from core import jobs
from core.cli import main
from core.config import FineTuneArguments
from core.data.ingest import ingest_files
from core.evaluation.plan import plan_evaluation
from core.evaluation.run import launch_evaluation
from core.features.modeling import model_key, resolve_model
from core.selection import export as export_module
from core.selection.export import (
    DATASET_INFO,
    EXPORT_FILE_TYPES,
    EXPORT_FORMATS,
    SHAREGPT_SPEAKERS,
    export_selection,
    read_export,
    tool_version,
)
from core.selection.runs import run_selection
from core.store import Store

datasets = pytest.importorskip("datasets")

LOADERS = {"jsonl": "json", "parquet": "parquet"}
SPEAKERS = {"system": "system", "user": "human", "assistant": "gpt"}  # the ShareGPT speakers, written out


def turn(role: str, content: str) -> dict:
    return {"role": role, "content": content}


SYSTEM = turn("system", "You answer <b>tersely</b>.")
ROWS = [
    {"id": "with-system", "messages": [SYSTEM, turn("user", "2+2?"), turn("assistant", "4")]},
    {"id": "plain", "messages": [turn("user", "Capital of France?"), turn("assistant", "Paris.")]},
    {"id": "unicode", "messages": [turn("user", "Übersetze: 猫"), turn("assistant", "Katze 🐈")]},
    {"id": "two-exchanges", "messages": [turn("user", "Hi"), turn("assistant", "Hello"), turn("user", "Bye?"),
                                         turn("assistant", "Bye!")]},
    {"id": "two-users", "messages": [turn("user", "One."), turn("user", "Two?"), turn("assistant", "Three.")]},
]
MESSAGES = {row["id"]: row["messages"] for row in ROWS}
SINGLE = ["unicode", "with-system", "plain"]  # a selection Alpaca can hold, in selection order
CHATS = ["two-exchanges", "with-system", "two-users", "plain"]  # multi-turn rows: messages and ShareGPT only


@pytest.fixture()
def chats(tmp_path, cache) -> tuple[Store, dict[str, str]]:
    """Project ``chats`` (no features) with two stored runs: ``single`` (one exchange per row) and ``chats``."""
    store = Store()
    ingest_files(store, "chats", "pool", [write_jsonl(tmp_path / "pool.jsonl", ROWS)])
    store.ensure_project("chats", {})
    position = {row["id"]: n for n, row in enumerate(ROWS)}

    def save(ids: list[str], seed: int) -> str:
        return store.save_selection("chats", "random", {"seed": seed}, "no-features", len(ids),
                                    [(position[i], i, 1.0 / (rank + 1), "draw") for rank, i in enumerate(ids)], [], 0.0)

    return store, {"single": save(SINGLE, 0), "chats": save(CHATS, 1)}


def expected(fmt: str, ids: list[str]) -> list[dict]:
    """The records a loader should give, built by hand from the rows (not with the code under test)."""
    records = []
    for row_id in ids:
        messages = MESSAGES[row_id]
        if fmt == "messages":
            records.append({"id": row_id, "messages": messages})
        elif fmt == "sharegpt":
            records.append({"id": row_id, "conversations": [{"from": SPEAKERS[m["role"]], "value": m["content"]}
                                                            for m in messages]})
        else:
            system = [m["content"] for m in messages if m["role"] == "system"]
            user, assistant = (m["content"] for m in messages if m["role"] != "system")
            # (the JSON loader gives None where a row has no system prompt; the Parquet column holds null there)
            records.append({"id": row_id, "instruction": user, "input": "", "output": assistant,
                            "system": system[0] if system else None})
    return records


def load(path: Path, tmp_path: Path):
    file_type = "parquet" if path.suffix == ".parquet" else "jsonl"
    return datasets.load_dataset(LOADERS[file_type], data_files=str(path), split="train",
                                 cache_dir=str(tmp_path / "hf-datasets"))


# ------------------------------------------------------------------------------------------------ formats x files

@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_every_export_loads_with_datasets_as_the_selected_records_in_order(chats, fmt, tmp_path):
    store, runs = chats
    ids = SINGLE if fmt == "alpaca" else CHATS
    run_id = runs["single" if fmt == "alpaca" else "chats"]
    loaded = {}
    for file_type in EXPORT_FILE_TYPES:
        manifest = export_selection(store, run_id, fmt, file_type=file_type)
        path = Path(manifest["path"])
        assert path.name == f"{run_id}.{fmt}.{file_type}" and path.parent == store.root / "exports"
        assert manifest["file_type"] == file_type and manifest["format"] == fmt and manifest["ids"] == ids
        dataset = load(path, tmp_path)
        assert len(dataset) == len(ids)
        assert dataset.to_list() == expected(fmt, ids)  # the same rows, in selection order
        if file_type == "parquet":  # (a JSONL row without a system prompt has no key, where datasets gives None)
            assert read_export(path) == dataset.to_list()
        loaded[file_type] = dataset
    # Parquet is only a container: the same columns, types and records as the JSONL
    assert loaded["parquet"].features == loaded["jsonl"].features
    assert loaded["parquet"].to_list() == loaded["jsonl"].to_list()
    # each container keeps its own manifest (it names its file and the file's hash)
    manifests = {t: store.root / "exports" / f"{run_id}.{fmt}{'.parquet' if t == 'parquet' else ''}.manifest.json"
                 for t in EXPORT_FILE_TYPES}
    for file_type, path in manifests.items():
        written = json.loads(path.read_text())
        assert written["file_type"] == file_type and written["path"].endswith(f".{file_type}")


def test_alpaca_parquet_without_system_prompts_has_no_system_column(chats, tmp_path):
    store, _ = chats
    run_id = store.save_selection("chats", "random", {"seed": 2}, "no-features", 2,
                                  [(1, "plain", 0.0, "draw"), (2, "unicode", 0.0, "draw")], [], 0.0)
    for file_type in EXPORT_FILE_TYPES:
        dataset = load(Path(export_selection(store, run_id, "alpaca", file_type=file_type)["path"]), tmp_path)
        assert dataset.column_names == ["id", "instruction", "input", "output"]
        assert [r["id"] for r in dataset] == ["plain", "unicode"]


def test_cli_export_parquet_by_suffix_or_flag_and_refuses_a_mislabelled_out(chats, tmp_path, capsys):
    store, runs = chats
    out = tmp_path / "trainer" / "picks.parquet"
    assert main(["export", "--project", "chats", "--run", runs["chats"], "--format", "sharegpt", "--out", str(out)]) == 0
    assert f"to {out}" in capsys.readouterr().out
    assert load(out, tmp_path).to_list() == expected("sharegpt", CHATS)  # --out's suffix chose Parquet
    assert json.loads((out.parent / "picks.parquet.manifest.json").read_text())["file_type"] == "parquet"
    assert (store.root / "exports" / f"{runs['chats']}.sharegpt.parquet").is_file()  # and the copy is kept
    assert not (out.parent / DATASET_INFO).exists()  # only on request

    assert main(["export", "--project", "chats", "--run", runs["single"], "--format", "alpaca", "--file-type",
                 "parquet", "--out", str(tmp_path / "x.jsonl")]) == 1
    assert "ends in .jsonl but the file type is parquet" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()
    assert main(["export", "--project", "chats", "--format", "messages", "--file-type", "parquet"]) == 0  # latest run
    latest = store.selection_runs("chats")[0]["id"]
    assert load(store.root / "exports" / f"{latest}.messages.parquet", tmp_path).to_list() == \
        expected("messages", [i for _, i, _, _ in store.selection_rows(latest)])


# ------------------------------------------------------------------------------------------------ LLaMA-Factory

def sharegpt_as_llamafactory_reads_it(record: dict, entry: dict) -> tuple[str, list[dict]] | None:
    """LLaMA-Factory's sharegpt reading of one record, after its data/README.md and converter: the ``messages``
    column, a leading ``system_tag`` turn as the system prompt, then user/assistant turns alternating (else the
    example is skipped: None).  Defaults are LLaMA-Factory's."""
    tags = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
            "system_tag": "system", **entry.get("tags", {})}
    turns = record[entry["columns"]["messages"]]
    system = ""
    if turns and turns[0][tags["role_tag"]] == tags["system_tag"]:
        system, turns = turns[0][tags["content_tag"]], turns[1:]
    wanted = (tags["user_tag"], tags["assistant_tag"])
    if len(turns) % 2 or any(t[tags["role_tag"]] != wanted[i % 2] for i, t in enumerate(turns)):
        return None
    roles = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant"}
    return system, [{"role": roles[t[tags["role_tag"]]], "content": t[tags["content_tag"]]} for t in turns]


@pytest.mark.parametrize("file_type", EXPORT_FILE_TYPES)
def test_llamafactory_entries_have_the_documented_keys_and_read_our_records(chats, file_type, tmp_path):
    store, runs = chats
    folder = tmp_path / "data"
    entries = {}
    for fmt in EXPORT_FORMATS:
        run_id = runs["single" if fmt == "alpaca" else "chats"]
        out = folder / f"{fmt}-subset.{file_type}"
        manifest = export_selection(store, run_id, fmt, out, llamafactory=True)
        factory = manifest["llamafactory"]
        assert factory["dataset"] == f"{fmt}-subset" and factory["dataset_dir"] == str(folder)
        assert Path(factory["dataset_info"]) == (folder / DATASET_INFO).resolve()
        info = json.loads((folder / DATASET_INFO).read_text())
        entry = info[f"{fmt}-subset"]
        assert entry == factory["entry"] and entry["file_name"] == out.name  # relative to dataset_dir
        assert json.loads(Path(manifest["manifest_path"]).read_text())["llamafactory"]["entry"] == entry
        entries[fmt] = entry
        records = load(folder / entry["file_name"], tmp_path).to_list()
        if fmt == "alpaca":
            assert entry["formatting"] == "alpaca" and "tags" not in entry
            assert entry["columns"] == {"prompt": "instruction", "query": "input", "response": "output",
                                        "system": "system"}
            assert all(set(entry["columns"].values()) <= set(r) for r in records)
            continue
        assert entry["formatting"] == "sharegpt" and set(entry["columns"]) == {"messages"}
        assert set(entry["tags"]) == {"role_tag", "content_tag", "user_tag", "assistant_tag", "system_tag"}
        # the tags are our records' own keys and speakers: LLaMA-Factory reads back every chat that alternates
        read = [sharegpt_as_llamafactory_reads_it(r, entry) for r in records]
        assert [r["id"] for r, got in zip(records, read) if got is None] == ["two-users"] == factory["skipped_rows"]
        for row_id, got in zip(CHATS, read):
            if got is not None:
                messages = MESSAGES[row_id]
                has_system = messages[0]["role"] == "system"
                assert got == (messages[0]["content"] if has_system else "", messages[1:] if has_system else messages)
    assert entries["messages"]["columns"] == {"messages": "messages"}
    assert entries["messages"]["tags"] == {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                           "assistant_tag": "assistant", "system_tag": "system"}
    assert entries["sharegpt"]["columns"] == {"messages": "conversations"}
    assert entries["sharegpt"]["tags"] == {"role_tag": "from", "content_tag": "value", "user_tag": "human",
                                           "assistant_tag": "gpt", "system_tag": "system"}
    assert {v for k, v in entries["sharegpt"]["tags"].items() if k.endswith("_tag") and k not in
            ("role_tag", "content_tag")} == set(SHAREGPT_SPEAKERS.values())
    assert set(json.loads((folder / DATASET_INFO).read_text())) == {f"{fmt}-subset" for fmt in EXPORT_FORMATS}


def test_dataset_info_is_merged_never_clobbered(chats, tmp_path, capsys):
    store, runs = chats
    folder = tmp_path / "LLaMA-Factory" / "data"
    folder.mkdir(parents=True)
    theirs = {"alpaca_en_demo": {"file_name": "alpaca_en_demo.json"},
              "glaive": {"file_name": "glaive.json", "formatting": "sharegpt", "columns": {"messages": "conversations",
                                                                                          "tools": "tools"}}}
    (folder / DATASET_INFO).write_text(json.dumps(theirs, indent=2))
    out = folder / "g2is.jsonl"
    assert main(["export", "--project", "chats", "--run", runs["chats"], "--format", "messages", "--out", str(out),
                 "--llamafactory"]) == 0
    captured = capsys.readouterr()
    assert "LLaMA-Factory: dataset 'g2is'" in captured.out and "dataset: g2is" in captured.out
    assert "would skip 1 rows" in captured.err and "two-users" in captured.err
    info = json.loads((folder / DATASET_INFO).read_text())
    assert list(info) == ["alpaca_en_demo", "glaive", "g2is"] and {k: info[k] for k in theirs} == theirs
    assert info["g2is"]["file_name"] == "g2is.jsonl"
    # exporting again under the same name replaces its entry (now the Parquet file), the others stay
    export_selection(store, runs["chats"], "messages", folder / "g2is.parquet", llamafactory=True)
    info = json.loads((folder / DATASET_INFO).read_text())
    assert list(info) == ["alpaca_en_demo", "glaive", "g2is"] and info["g2is"]["file_name"] == "g2is.parquet"
    # the kept copy under cache/exports/ has its own catalogue there
    kept = json.loads((store.root / "exports" / DATASET_INFO).read_text())
    assert kept[f"{runs['chats']}.messages"]["file_name"] == f"{runs['chats']}.messages.parquet"
    assert not list(folder.glob(".*partial"))  # written atomically

    # a dataset_info.json that is not JSON is refused, never overwritten, and nothing is written at all
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / DATASET_INFO).write_text("{not json")
    with pytest.raises(ValueError, match="cannot be read as JSON"):
        export_selection(store, runs["single"], "alpaca", broken / "a.parquet", llamafactory=True)
    assert sorted(p.name for p in broken.iterdir()) == [DATASET_INFO]
    assert (broken / DATASET_INFO).read_text() == "{not json"
    assert not (store.root / "exports" / f"{runs['single']}.alpaca.parquet").exists()


# ------------------------------------------------------------------------------------------------ chat template

def test_messages_export_goes_through_the_chat_template(chats, tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    store, runs = chats
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    assert tokenizer.chat_template
    for file_type in EXPORT_FILE_TYPES:
        dataset = load(Path(export_selection(store, runs["chats"], "messages", file_type=file_type)["path"]),
                       tmp_path)
        for record in dataset:
            text = tokenizer.apply_chat_template(record["messages"], tokenize=False)
            assert all(m["content"] in text for m in record["messages"])
            assert text == tokenizer.apply_chat_template(MESSAGES[record["id"]], tokenize=False)
            ids = tokenizer.apply_chat_template(record["messages"], tokenize=True)
            ids = ids["input_ids"] if hasattr(ids, "keys") else ids
            assert len(ids) > 0


# ------------------------------------------------------------------------------------------------ manifest

FAST = FineTuneArguments(learning_rate=5e-3, epochs=1, batch_size=2, seeds=1, generate_tokens=0)


def git_head() -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def test_manifest_carries_what_a_reproducibility_section_needs(explore_project, tiny_model_dir, tmp_path):
    _, project = explore_project
    store = Store()
    ingest_files(store, project, "eval", [write_jsonl(tmp_path / "eval.jsonl", chat_rows(4, "eval"))])
    run = run_selection(store, project, "g2is", budget=5, k=8)
    chosen = store.selection_rows(run.run_id)
    plan = plan_evaluation(store, project, runs=[run.run_id], args=FAST)
    job_id, _ = launch_evaluation(store, plan, spawn=False)
    assert jobs.run_job(store, job_id) == 0

    manifest = export_selection(store, run.run_id, "messages", file_type="parquet")
    assert json.loads(Path(manifest["manifest_path"]).read_text()) == {
        k: v for k, v in manifest.items() if k != "manifest_path"}
    # the keys the manifest always had
    assert manifest["run_id"] == run.run_id and manifest["project"] == EXPLORE_PROJECT
    assert manifest["model"] == str(tiny_model_dir) and manifest["format"] == "messages"
    assert manifest["ids"] == [row_id for _, row_id, _, _ in chosen]  # in selection order
    assert manifest["scores"] == [score for _, _, score, _ in chosen] and manifest["selected"] == len(chosen)
    assert manifest["feature_key"] == run.features.feature_key and manifest["selected_at"] and manifest["exported_at"]
    # tool version: the checkout's commit when git has one, else the package version
    head = git_head()
    assert manifest["tool"]["name"] == "g2is-explorer" and manifest["tool"]["package_version"]
    assert manifest["tool"]["git_commit"] == head and manifest["tool"]["version"] == (head or manifest["tool"]["package_version"])
    # model and its weights hash, feature settings
    weights = manifest["model_weights"]
    assert weights["spec"] == str(tiny_model_dir)
    assert weights["weights_hash"] == model_key(resolve_model(str(tiny_model_dir)))
    assert weights["chat_template_hash"]
    features = manifest["features"]
    assert features["verified"] is True and features["feature_key"] == run.features.feature_key
    assert features["settings"] == store.project_settings(project)
    assert {c["role"] for c in features["configs"]} == {"pool", "targets"}
    assert all(c["model"] == weights["weights_hash"] and c["max_tokens"] == 64 and c["projection"]["dim"] == 256
               for c in features["configs"])
    # method, profile, parameters, budget, coverage
    assert manifest["method"] == "g2is" and manifest["params"] == store.selection_run(run.run_id)["params"]
    assert manifest["params"]["k"] == 8 and manifest["profile"]["name"] == "default"
    assert manifest["budget"] == 5
    assert manifest["coverage"] == {"pool": [60, 60], "targets": [6, 6]} and manifest["partial_features"] is False
    # the evaluation result
    evaluation = manifest["evaluation"]
    assert evaluation["id"] == plan.id and evaluation["complete"] is True and manifest["other_evaluations"] == []
    assert evaluation["result"]["method"] == "g2is" and run.run_id in evaluation["result"]["run_ids"]
    assert isinstance(evaluation["result"]["mean"], float) and len(evaluation["result"]["losses"]) == 1
    assert evaluation["result"]["vs_random"] is not None and evaluation["result"]["verdict"]
    assert evaluation["random"]["method"] == "random" and evaluation["zero_shot"]["loss"] > 0
    assert evaluation["training"]["seeds"] == 1 and "4 rows of the evaluation file" in evaluation["evaluated_on"]
    assert sorted(evaluation["evaluation_rows"]["ids"]) == sorted(f"eval-{i}" for i in range(4))

    # Once the project's settings change, the run's feature sets are named as candidates, not verified
    settings = store.project_settings(project)
    store.ensure_project(project, {**settings, "max_tokens": 32})
    later = export_selection(store, run.run_id, "alpaca")
    assert later["features"]["verified"] is False and later["features"]["settings"] is None
    assert later["model_weights"]["weights_hash"] == weights["weights_hash"]
    assert {c["key"] for c in later["features"]["configs"]} <= {c["key"] for c in features["configs"]}
    assert later["evaluation"]["id"] == plan.id


def test_an_export_never_fails_for_want_of_git(chats, monkeypatch):
    store, runs = chats

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    tool_version.cache_clear()
    monkeypatch.setattr(export_module.subprocess, "run", no_git)
    try:
        manifest = export_selection(store, runs["single"], "alpaca")
    finally:
        tool_version.cache_clear()
    assert manifest["tool"]["git_commit"] is None and manifest["tool"]["git_dirty"] is None
    assert manifest["tool"]["version"] == manifest["tool"]["package_version"] == importlib.metadata.version(
        "g2is-explorer")
    assert manifest["profile"] is None and manifest["evaluation"] is None
    assert manifest["model_weights"] is None and manifest["features"]["verified"] is False


# ------------------------------------------------------------------------------------------------ the page

def test_export_page_writes_parquet_and_the_llamafactory_entry_and_shows_the_manifest(chats):
    from streamlit.testing.v1 import AppTest

    store, runs = chats
    app = AppTest.from_file(str(REPO / "app" / "main.py"), default_timeout=120)
    app.query_params["project"] = "chats"
    app.query_params["run"] = runs["chats"]
    app.switch_page("../pages/export.py").run()
    assert not app.exception, app.exception
    app.radio(key="export-file-type").set_value("parquet").run()
    app.checkbox(key="export-llamafactory").check().run()
    app.button(key="export-button").click().run()
    assert not app.exception and not app.error
    (success,) = app.success
    path = Path(success.value.split("`")[1])
    assert path == store.root / "exports" / f"{runs['chats']}.messages.parquet"
    assert [b.label for b in app.get("download_button")] == ["Download Parquet", "Download manifest",
                                                              "Download dataset_info.json"]
    assert read_export(path) == expected("messages", CHATS)
    codes = [c.value for c in app.code]
    assert any(f'dataset: "{runs["chats"]}.messages"' in c for c in codes)  # the training config's lines
    assert any('"role_tag": "role"' in c for c in codes)  # the entry
    assert any("two-users" in w.value for w in app.warning)  # LLaMA-Factory would skip it
    (shown,) = [json.loads(j.value) for j in app.json if "manifest_version" in json.loads(j.value)]  # (and params)
    assert shown["ids"] == CHATS and shown["file_type"] == "parquet" and shown["tool"]["name"] == "g2is-explorer"
