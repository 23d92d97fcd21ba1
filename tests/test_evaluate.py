"""Evaluation by fine-tuning on the tiny model: a fine-tune lowers the loss on what it trained on and touches
nothing but its adapter, a seed gives the same numbers, rows that guided a selection never evaluate it, and a
killed evaluation job resumes without training a finished unit again."""
from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from conftest import chat_rows, make_project, tiny_settings, wait_for, write_jsonl

from core import jobs
from core.cli import main
from core.config import FineTuneArguments
from core.evaluation.finetune import measure_unit, prepare_examples
from core.evaluation.plan import plan_evaluation
from core.evaluation.report import evaluation_report
from core.evaluation.rows import EvaluationOverlap, split_targets
from core.evaluation.run import launch_evaluation
from core.features.featurize import run_features
from core.features.modeling import encode_messages, load_model, load_tokenizer, resolve_model
from core.store import Store

# A small, fast fine-tune: the tiny random model needs a large rate to move in a few steps.
FAST = FineTuneArguments(learning_rate=5e-3, epochs=2, batch_size=2, seeds=2, generate_tokens=4)


def number_rows(n: int, prefix: str) -> list[dict]:
    """Chat rows whose answers end in a checkable number (as GSM8K's), in groups g0/g1."""
    rows = chat_rows(n, prefix)
    for i, row in enumerate(rows):
        row["messages"][-1]["content"] += f" So the answer is {i + 2}."
        row["group"] = f"g{i % 2}"
    return rows


@pytest.fixture()
def evaluated_project(tmp_path, cache, tiny_model_dir):
    """Project "p" with 30 pool rows, 8 numbered targets and their features."""
    store = Store()
    settings = tiny_settings(tiny_model_dir)
    make_project(tmp_path, store, n_pool=30, settings=settings)
    from core.data.ingest import ingest_files

    ingest_files(store, "p", "targets", [write_jsonl(tmp_path / "numbered.jsonl", number_rows(8, "target"))])
    run_features(store, "p", settings, log=lambda _: None)
    return store


def test_a_fine_tune_lowers_its_training_loss_and_changes_only_its_adapter(tiny_model_dir):
    resolved = resolve_model(str(tiny_model_dir))
    tokenizer = load_tokenizer(resolved)

    class Row:  # what prepare_examples reads of a stored row
        def __init__(self, record):
            self.row_id, self.messages = record["id"], record["messages"]

    rows = [Row(r) for r in chat_rows(6, "train")]
    examples = prepare_examples(tokenizer, rows, 64)
    train = [encode_messages(tokenizer, row.messages, 64) for row in rows]
    device = torch.device("cpu")
    args = FineTuneArguments(learning_rate=2e-2, epochs=4, batch_size=2, seeds=1, generate_tokens=0)
    before = measure_unit(resolved, tokenizer, device, None, examples, args, None)
    after = measure_unit(resolved, tokenizer, device, train, examples, args, seed=0)
    assert all(a < b for a, b in zip(after.row_losses, before.row_losses)), (before.row_losses, after.row_losses)
    assert sum(after.row_losses) < 0.98 * sum(before.row_losses), (before.row_losses, after.row_losses)  # (-3 %: a random tiny model learns slowly)
    assert len(after.curve) == args.epochs * 3 and after.curve[-1] < after.curve[0]  # 6 rows / 2 per step x 4 epochs

    base = dict(load_model(resolved).named_parameters())
    trained = dict(after.model.named_parameters())
    lora = {name for name in trained if "lora_" in name}
    assert lora and all(param.requires_grad for name, param in trained.items() if name in lora)
    for name, param in trained.items():  # every base weight is exactly what it was
        if name not in lora:
            base_name = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(param, base[base_name]), name
    again = measure_unit(resolved, tokenizer, device, None, examples, args, None)
    assert again.row_losses == before.row_losses  # the base model on disk is untouched

    same = measure_unit(resolved, tokenizer, device, train, examples, args, seed=0)
    other = measure_unit(resolved, tokenizer, device, train, examples, args, seed=1)
    assert same.row_losses == after.row_losses and same.curve == after.curve  # a seed gives the same numbers
    assert other.row_losses != after.row_losses


def test_split_is_seeded_per_group_and_disjoint(evaluated_project):
    targets = evaluated_project.rows("p", "targets")
    guide, held = split_targets(targets, 0.5, seed=3)
    assert {r.row_id for r in guide}.isdisjoint({r.row_id for r in held}) and len(guide) + len(held) == len(targets)
    assert sorted(r.group for r in held) == ["g0", "g0", "g1", "g1"]  # half of each group
    assert [r.row_id for r in split_targets(targets, 0.5, seed=3)[1]] == [r.row_id for r in held]
    assert [r.row_id for r in split_targets(targets, 0.5, seed=4)[1]] != [r.row_id for r in held]


@pytest.mark.reliability("input", "evaluation rows that guided a selection are refused")
def test_rows_that_guided_a_selection_never_evaluate_it(evaluated_project, tmp_path, capsys, observed):
    store = evaluated_project
    # An evaluation file that repeats a target row.
    targets = [json.loads(line) for line in (tmp_path / "numbered.jsonl").read_text().splitlines()]
    write_jsonl(tmp_path / "eval.jsonl", [dict(targets[3], id="held-3")] + number_rows(3, "eval"))
    code = main(["evaluate", "--project", "p", "--methods", "less", "--budget", "4", "--eval-file",
                 str(tmp_path / "eval.jsonl")])
    err = capsys.readouterr().err
    assert code == 1 and "1 of 4 evaluation rows are also target rows (held-3 = target target-3)" in err, err
    observed.append(f"evaluation file repeating a target: {err.strip()}")

    # A run guided by every target cannot be evaluated on a split of those targets...
    assert main(["select", "--project", "p", "--method", "less", "--budget", "4", "--json"]) == 0
    run_id = json.loads(capsys.readouterr().out)["run"]
    code = main(["evaluate", "--project", "p", "--runs", run_id, "--eval-split", "0.5"])
    err = capsys.readouterr().err
    assert code == 1 and f"run {run_id} (less) was guided by every target row" in err, err
    observed.append(f"stored run + --eval-split: {err.strip()}")
    # ... while the same method run on the split's selection half can.
    plan = plan_evaluation(store, "p", methods=["less"], budget=4, split=0.5, args=FAST)
    less = next(arm for arm in plan.arms if arm.method == "less")
    run = store.selection_run(less.run_ids[0])
    assert run["params"]["targets"]["rows"] == 4
    assert len(plan.rows["ids"]) == 4 and run["params"]["targets"]["guide_key"] == plan.rows["guide_key"]
    with pytest.raises(EvaluationOverlap):  # the same run, now stored, against another split seed
        plan_evaluation(store, "p", runs=[run["id"]], split=0.5, split_seed=1, args=FAST)
    plan_evaluation(store, "p", runs=[run["id"]], split=0.5, args=FAST)  # its own split: accepted


def test_cli_evaluates_methods_beside_random_and_zero_shot(evaluated_project, capsys):
    code = main(["evaluate", "--project", "p", "--methods", "g2is,less", "--budget", "6", "--eval-split", "0.5",
                 "--seeds", "2", "--epochs", "1", "--lr", "5e-3", "--generate-tokens", "4", "--inline", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    labels = [arm["label"] for arm in result["arms"]]
    assert labels == ["G2IS", "LESS", "random", "zero-shot"]
    for arm in result["arms"][:3]:
        assert arm["budget"] == 6 and len(arm["losses"]) == 2 and all(x > 0 for x in arm["losses"])
        assert arm["spread"] is not None and all(0 <= a <= 1 for a in arm["accuracies"])
    random = result["arms"][2]
    assert len(set(random["run_ids"])) == 2  # one random draw per seed
    assert result["arms"][0]["vs_random"] == pytest.approx(
        (result["arms"][0]["mean"] - random["mean"]) / random["mean"])
    assert result["zero_shot_loss"] == result["arms"][3]["mean"] and result["complete"]
    assert "vs random (2 seed(s)" in result["arms"][0]["verdict"]
    assert "estimate: " in captured.err and "units to train" in captured.err

    # Asking again trains nothing: every unit is cached.
    assert main(["evaluate", "--project", "p", "--methods", "g2is,less", "--budget", "6", "--eval-split", "0.5",
                 "--seeds", "2", "--epochs", "1", "--lr", "5e-3", "--generate-tokens", "4", "--inline"]) == 0
    out = capsys.readouterr().out
    assert "all 7 units are finished and cached" in out and "G2IS: held-out loss" in out, out


@pytest.mark.reliability("fault", "an evaluation job killed mid-way resumes without retraining finished units")
def test_killed_evaluation_job_resumes_without_redoing_finished_units(evaluated_project, observed):
    store = evaluated_project
    args = FineTuneArguments(learning_rate=5e-3, epochs=3, batch_size=2, seeds=2, generate_tokens=0)
    plan = plan_evaluation(store, "p", methods=["less"], budget=8, split=0.5, args=args)
    job_id, how = launch_evaluation(store, plan)
    assert how == "started"
    keys = [unit.key for unit in plan.units]
    first = wait_for(lambda: store.eval_units(keys), timeout=180, what="a first finished unit")
    assert jobs.job_view(store, job_id).status == "running"
    os.killpg(store.job(job_id).pid, signal.SIGKILL)
    wait_for(lambda: not jobs.worker_alive(store, job_id), timeout=30, what="the killed worker to be gone")
    assert jobs.job_view(store, job_id).status == "interrupted"
    finished = store.eval_units(keys)
    assert 0 < len(finished) < len(keys)
    again, how = launch_evaluation(store, plan_evaluation(store, "p", methods=["less"], budget=8, split=0.5, args=args))
    assert (again, how) == (job_id, "resumed")
    assert jobs.wait(store, job_id, timeout=300).status == "done", jobs.log_path(store, job_id).read_text()[-2000:]
    log = jobs.log_path(store, job_id).read_text()
    assert f"{len(keys) - len(finished)} of {len(keys)} units to run" in log, log[-2000:]
    done = store.eval_units(keys)
    assert len(done) == len(keys)
    for key, unit in finished.items():
        assert done[key] == unit  # (the same stored numbers: not trained again)
    report = evaluation_report(store, plan.id)
    assert report.complete and all(arm.mean is not None for arm in report.arms)
    observed.append(f"killed after {len(first)} of {len(keys)} units; the resumed job ran the other "
                    f"{len(keys) - len(finished)}")


def test_a_target_whose_answer_does_not_fit_is_left_out_of_the_split(evaluated_project, tmp_path, tiny_model_dir):
    store = evaluated_project
    from core.data.ingest import ingest_files

    too_long = {"id": "too-long", "group": "g0",
                "messages": [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "So the answer is 3."}]}
    ingest_files(store, "p", "targets", [write_jsonl(tmp_path / "targets2.jsonl", number_rows(8, "target") + [too_long])])
    run_features(store, "p", tiny_settings(tiny_model_dir), log=lambda _: None)  # too-long: a permanent row error
    plan = plan_evaluation(store, "p", methods=["less"], budget=4, split=0.5, args=FAST)  # no FeaturesMissing
    assert plan.rows["left_out"] == ["too-long"] and "too-long" not in plan.rows["ids"]
    assert any("1 target row(s) left out: their answer does not fit 64 tokens" in note for note in plan.notes)
    assert len(plan.rows["ids"]) + plan.rows["guide_rows"] == 8
