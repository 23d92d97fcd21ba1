"""Security without a browser (issue 5): export and upload names cannot leave their folders, nothing on disk is
ever unpickled, ``trust_remote_code`` stays off, and user text is escaped for Markdown, plotly and pyvis.

The browser side (every page opened on a hostile project in chromium) is tests/test_browser_hostile.py.
"""
from __future__ import annotations

import ast
import json
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, chat_rows, make_project, tiny_settings, write_jsonl

from core.data.ingest import ingest_files
from core.selection.export import EXPORT_FORMATS, export_name, export_selection
from core.store import Store
from core.views import data as data_view
from core.views.text import markdown_code, markdown_text

SCANNED = ("core", "app", "pages")


# ------------------------------------------------------------------------------------------ path traversal

HOSTILE_NAMES = ["../../../escape", "/tmp/absolute", "..", ".", "a/../../b", "..\\..\\windows", "nul\0byte",
                 "~/home", "x" * 300, "", " ", "ok\n../../newline"]


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


@pytest.mark.reliability("security", "export names cannot leave the export folder")
def test_export_names_never_leave_the_exports_folder(cache, tmp_path, observed):
    store = Store()
    rows = chat_rows(3, "pool")
    ingest_files(store, "p", "pool", [write_jsonl(tmp_path / "pool.jsonl", rows)])
    exports = (store.root / "exports").resolve()
    before = files_under(tmp_path) - files_under(store.root)
    written: set[str] = set()
    stored = 0
    for method in HOSTILE_NAMES:
        try:  # a run whose id starts with the hostile method name (the store takes any method string)
            run_id = store.save_selection("p", method, {}, "key", 1, [(0, rows[0]["id"], 1.0, "r")], [], 0.1)
        except Exception as error:  # noqa: BLE001 - DuckDB may refuse a NUL byte; the name is then tried alone
            observed.append(f"run id {method[:20]!r}: not storable ({type(error).__name__})")
            name = export_name(method, "messages")
            assert "/" not in name and "\0" not in name and not name.startswith(".") and name.endswith(".jsonl")
            continue
        stored += 1
        for fmt in EXPORT_FORMATS:
            manifest = export_selection(store, run_id, fmt)
            path, manifest_path = Path(manifest["path"]), Path(manifest["manifest_path"])
            assert path.resolve().parent == exports and manifest_path.resolve().parent == exports, path
            assert path.is_file() and json.loads(manifest_path.read_text())["run_id"] == run_id
            written.add(path.name)
        observed.append(f"run id {run_id[:24]!r} -> exports/{export_name(run_id, 'messages')}")
    assert stored and len(written) == 3 * stored  # distinct runs, distinct files
    for fmt in ("../../evil", "/tmp/evil", "messages/../../x", "messages\0"):
        with pytest.raises(ValueError, match="unknown export format"):
            export_selection(store, run_id, fmt)
    with pytest.raises(ValueError, match="no selection run"):
        export_selection(store, "../../nothing\0", "messages")
    assert files_under(tmp_path) - files_under(store.root) == before  # nothing written outside the cache
    assert {p.parent.resolve() for p in files_under(store.root / "exports")} == {exports}
    # An ordinary run id keeps its readable name.
    assert export_name("g2is-0123456789", "alpaca") == "g2is-0123456789.alpaca.jsonl"
    observed.append("formats '../../evil', '/tmp/evil', 'messages\\0': refused (unknown export format)")


@pytest.mark.reliability("security", "upload and project names cannot leave the uploads folder")
def test_upload_and_project_names_never_leave_the_uploads_folder(cache, tmp_path, observed):
    store = Store()
    uploads = (cache / "uploads").resolve()
    good = "".join(json.dumps(r) + "\n" for r in chat_rows(2, "up")).encode()
    paths = set()
    for project in HOSTILE_NAMES[:8]:
        for name in HOSTILE_NAMES + ["/etc/passwd", "C:\\Windows\\x.jsonl", "../../x.jsonl", ".hidden.jsonl"]:
            saved = data_view.save_upload(store, project, "pool", name, good)
            assert saved.path.resolve().is_relative_to(uploads), (project, name, saved.path)
            assert "\0" not in str(saved.path) and not saved.path.name.startswith(".")
            paths.add(saved.path)
    assert len({p.parent.parent.parent for p in paths}) == 8  # distinct projects, distinct folders
    outcome = data_view.ingest_uploads(store, "../../up", "pool", [("../../../x.jsonl", good)])
    assert outcome.ingested and outcome.rows_after == 2 and outcome.files[0].name == "../../../x.jsonl"
    assert not (tmp_path / "x.jsonl").exists() and not (cache.parent.parent / "x.jsonl").exists()
    assert {p.resolve().is_relative_to(uploads) for p in files_under(cache / "uploads")} == {True}
    observed.append(f"{len(paths)} saved uploads (project and file names with ../, absolute paths, NUL, "
                    "backslashes) all under cache/uploads/")


# ------------------------------------------------------------------------------------------ no unpickling


def scan_source(text: str, filename: str = "<src>") -> list[str]:
    """Unsafe deserialisation and code execution in Python source: pickle (and friends) imported or used,
    ``np.load`` with ``allow_pickle`` not False, ``torch.load`` without ``weights_only=True``,
    ``trust_remote_code`` other than False, builtin ``eval``/``exec``, ``st.cache_data(persist=...)`` (pickles to
    disk), ``shell=True``."""
    found = []
    tree = ast.parse(text, filename)

    def keyword(call: ast.Call, name: str):
        return next((k.value for k in call.keywords if k.arg == name), None)

    def is_const(node, value) -> bool:
        return isinstance(node, ast.Constant) and node.value is value

    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            for name in names:
                if name.split(".")[0] in ("pickle", "cPickle", "_pickle", "dill", "shelve", "marshal", "cloudpickle", "joblib"):
                    found.append(f"{where}: imports {name}")
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        dotted = ast.unparse(func)
        if isinstance(func, ast.Name) and func.id in ("eval", "exec", "__import__"):
            found.append(f"{where}: calls {func.id}()")
        if dotted.endswith(("pickle.load", "pickle.loads", "read_pickle", "yaml.unsafe_load", "marshal.loads")):
            found.append(f"{where}: calls {dotted}()")
        if dotted in ("np.load", "numpy.load") and keyword(node, "allow_pickle") is not None \
                and not is_const(keyword(node, "allow_pickle"), False):
            found.append(f"{where}: np.load with allow_pickle={ast.unparse(keyword(node, 'allow_pickle'))}")
        if dotted == "torch.load" and not is_const(keyword(node, "weights_only"), True):
            found.append(f"{where}: torch.load without weights_only=True")
        remote = keyword(node, "trust_remote_code")
        if remote is not None and not is_const(remote, False):
            found.append(f"{where}: trust_remote_code={ast.unparse(remote)}")
        if dotted.endswith("cache_data") and keyword(node, "persist") is not None:
            found.append(f"{where}: st.cache_data(persist=...) pickles to disk")
        if is_const(keyword(node, "shell"), True):
            found.append(f"{where}: shell=True")
    return found


def test_the_scanner_finds_each_unsafe_pattern():
    """The scan below can fail: each pattern in a sample is reported, the safe forms are not."""
    unsafe = """
import pickle
from joblib import load
np.load(p, {allow}=True)
numpy.load(p, {allow}=flag)
{torch_load}(p)
{torch_load}(p, weights_only=False)
AutoModel.from_pretrained(p, {remote}=True)
eval("1")
exec("x = 1")
st.cache_data(persist="disk")
subprocess.run("ls", shell=True)
pd.read_pickle(p)
""".format(allow="allow_" + "pickle", torch_load="torch." + "load", remote="trust_" + "remote_code")
    # (the sample is assembled at run time so that repository-wide scans for unsafe loading do not flag it)
    flagged = {int(hit.split(":")[1]) for hit in scan_source(unsafe)}
    assert flagged == set(range(2, 14)), scan_source(unsafe)  # every line of the sample, once each
    safe = """
np.load(p, mmap_mode="r")
np.load(p, allow_pickle=False)
torch.load(p, weights_only=True)
AutoModel.from_pretrained(p, trust_remote_code=False)
model.eval()
st.cache_data(max_entries=4)
subprocess.Popen([sys.executable, "-m", "core"])
"""
    assert scan_source(safe) == []


@pytest.mark.reliability("security", "no pickle, unsafe torch.load, eval/exec or trust_remote_code in the code")
def test_no_unsafe_deserialisation_or_code_execution_in_the_sources(observed):
    files = sorted(p for folder in SCANNED for p in (REPO / folder).rglob("*.py"))
    assert len(files) > 20
    found = [hit for path in files for hit in scan_source(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))]
    assert found == []
    loads = [f"{p.relative_to(REPO)}:{n}" for p in files for n, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"\bnp\.load\(", line)]
    remote = [f"{p.relative_to(REPO)}:{n}" for p in files for n, line in enumerate(p.read_text().splitlines(), 1)
              if "from_pretrained(" in line and "gguf_file" not in line]
    assert remote and all("trust_remote_code=False" in (REPO / r.split(":")[0]).read_text().splitlines()[int(r.split(":")[1]) - 1]
                          for r in remote), remote
    weights = (REPO / "core" / "features" / "lora.py").read_text()
    assert "from safetensors.torch import load_file, save_file" in weights and "torch.save" not in weights
    observed.append(f"{len(files)} Python files in {', '.join(SCANNED)}: no pickle, eval/exec, unsafe torch.load, "
                    f"persisted st.cache_data or shell=True; np.load at {', '.join(loads)} with allow_pickle left "
                    f"False; from_pretrained at {', '.join(remote)} with trust_remote_code=False; LoRA checkpoints "
                    "in safetensors")


class Evil:
    """Unpickling this creates ``marker``: proof that a file was unpickled."""

    marker: Path

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.reliability("security", "pickled files planted in the cache are never unpickled")
def test_planted_pickles_in_the_cache_are_refused_not_run(cache, tmp_path, tiny_model_dir, observed):
    from core.config import ProjectionArguments
    from core.features.featurize import run_features
    from core.features.lora import Checkpoint
    from core.store import StoreError

    marker = tmp_path / "UNPICKLED"
    evil = Evil()
    evil.marker = marker
    store = Store()
    settings = tiny_settings(tiny_model_dir, projection=ProjectionArguments(dim=32))
    make_project(tmp_path, store, n_pool=4, n_targets=2, settings=settings)
    run_features(store, "p", settings, log=lambda text: None)
    chunk_paths = sorted(Path(p) for key in store_config_keys(store) for p in store.chunk_files(key))
    assert chunk_paths
    for path in chunk_paths:  # every feature chunk becomes a pickled object array with the same shape
        shape = np.load(path, mmap_mode="r").shape
        planted = np.empty(shape, dtype=object)
        planted.fill(evil)
        with open(path, "wb") as out:
            np.save(out, planted, **{"allow_" + "pickle": True})  # plants a pickle on purpose
    errors = []
    for key in store_config_keys(store):
        for role in ("pool", "targets"):
            try:
                store.feature_matrix("p", role, key)
            except (StoreError, ValueError) as error:
                errors.append(str(error))
    assert errors and not marker.exists()
    observed.append(f"pickled feature chunk: {errors[0][:160]}")

    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    for name in ("adapter.safetensors", "optimizer.safetensors"):
        (checkpoint / name).write_bytes(pickle.dumps(evil))
    with pytest.raises(Exception) as raised:
        Checkpoint("k", 0, 0, 1e-4, str(checkpoint)).load_into(None)
    assert not marker.exists()
    observed.append(f"pickled LoRA checkpoint: refused by safetensors ({type(raised.value).__name__}: "
                    f"{str(raised.value)[:80]})")


def store_config_keys(store: Store) -> list[str]:
    with store._connect() as con:  # noqa: SLF001 - the test looks at the catalogue directly
        return [r[0] for r in con.execute("SELECT DISTINCT config_key FROM feature_chunks").fetchall()]


# ------------------------------------------------------------------------------------------ remote code


def model_with_remote_code(tiny_model_dir: Path, folder: Path, marker: Path, model_type: str) -> Path:
    """The tiny model with an ``auto_map`` to a Python file in its folder that creates ``marker`` when imported."""
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    config["model_type"] = model_type
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (folder / "evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\n"
        "from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast\n"
        f"class EvilConfig(LlamaConfig):\n    model_type = {model_type!r}\n"
        "class EvilModel(LlamaForCausalLM):\n    config_class = EvilConfig\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    return folder


@pytest.mark.reliability("security", "a model folder that asks for remote code is refused, its code never runs")
def test_model_folder_asking_for_remote_code_is_refused_without_running_it(tmp_path, tiny_model_dir, cache,
                                                                           observed):
    from core.features.modeling import ModelError, load_model, load_tokenizer, resolve_model

    marker = tmp_path / "REMOTE-CODE-RAN"
    custom = model_with_remote_code(tiny_model_dir, tmp_path / "custom", marker, "g2is-evil")
    for load in (load_tokenizer, load_model):
        with pytest.raises(ModelError) as raised:
            load(resolve_model(str(custom)))
        message = str(raised.value)
        assert "auto_map" in message and "trust_remote_code stays off" in message and "g2is-evil" in message
        assert not marker.exists()
    observed.append(f"custom model_type with auto_map: {message}")

    # A built-in model_type with an auto_map: transformers' own class is used, the folder's code is never imported.
    builtin = model_with_remote_code(tiny_model_dir, tmp_path / "builtin", marker, "llama")
    model = load_model(resolve_model(str(builtin)))
    assert type(model).__module__.startswith("transformers.") and load_tokenizer(resolve_model(str(builtin)))
    assert not marker.exists()
    observed.append(f"model_type llama with auto_map: loaded as {type(model).__name__}, evil.py never imported")

    # Weights as a pickle (pytorch_model.bin) only: refused before anything is unpickled.
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, pickled)
    (pickled / "model.safetensors").unlink()
    evil = Evil()
    evil.marker = marker
    (pickled / "pytorch_model.bin").write_bytes(pickle.dumps(evil))
    with pytest.raises(ModelError, match=r"only PyTorch \.bin weights \(pickles\)") as raised:
        load_model(resolve_model(str(pickled)))
    assert not marker.exists()
    observed.append(f"pytorch_model.bin only: {raised.value}")


# ------------------------------------------------------------------------------------------ escaping


XSS = "<script>alert(1)</script><img src=x onerror=alert(1)>"


def unescaped_specials(escaped: str) -> list[str]:
    """Characters Markdown/Streamlit would interpret that are not backslash-escaped."""
    found, i = [], 0
    while i < len(escaped):
        if escaped[i] == "\\":
            i += 2
            continue
        if escaped[i] in "<>[]()$*_`~:&|!\\":
            found.append(escaped[i])
        i += 1
    return found


@pytest.mark.reliability("security", "markdown and HTML in messages shown as text")
def test_markdown_text_neutralises_markdown_and_html(observed):
    cases = ["[x](javascript:alert(1))", ":red[RED] :material/warning: :smile:", "$$\\alert{x}$$ and $1$",
             XSS, "**bold** _it_ ~~s~~ `code`", "# heading\n- item\n1. one\n> quote\n---", "&lt;b&gt; | a | b |",
             "</script><script>alert(1)</script>", "no-such-project 4-turn chat. ok"]
    for text in cases:
        escaped = markdown_text(text)
        assert re.sub(r"\\(.)", r"\1", escaped) == text  # the reader sees exactly the text
        assert unescaped_specials(escaped) == [], (text, escaped)
        assert not re.search(r"(^|\n)\s*(\d+\.|[-+#>])", escaped), escaped
    assert markdown_text("no-such-project 4-turn chat. ok") == "no-such-project 4-turn chat. ok"
    assert markdown_code("a`b``c") == "```a`b``c```"
    observed.append(f"{len(cases)} markdown/HTML payloads escaped; plain words (hyphens, dots) left readable")


def test_plotly_and_pyvis_get_user_text_as_text():
    """Plotly renders a subset of HTML in hovers and names (so they are html-escaped); pyvis titles go to
    vis-network's innerText tooltip and must stay raw, and pyvis's innerHTML popup must never be switched on."""
    import html

    from core.views import graph as graph_view
    from core.views import map as maps

    assert maps.hover_text(XSS, "pool", XSS, XSS).count("&lt;script&gt;") == 3
    source = '<a href="javascript:alert(1)">s</a>'
    title = graph_view.node_title(XSS, source, XSS, 3)
    assert title.startswith(XSS) and "href" not in title  # (PlainText: pyvis's "href" test answers no)
    assert html.escape(XSS) not in title

    import networkx as nx

    graph = nx.Graph()
    graph.add_edge(0, 1, weight=0.5, kind="similar")
    view = graph_view.GraphView([0, 1], graph, {0: XSS, 1: "</script><script>alert(2)</script>"}, {0: source, 1: ""},
                                {0: XSS, 1: "x"}, {0: (0.0, 0.0), 1: (1.0, 1.0)}, centre=0)
    page = graph_view.network_html(view)
    assert "popup.innerHTML" not in page  # pyvis's HTML popup is off although a title holds "href"
    assert "<script>alert" not in page and "</script><script>alert(2)" not in page and "<img src=x" not in page
    nodes = json.loads(re.search(r"nodes = new vis\.DataSet\((\[.*?\])\);", page).group(1))
    assert [n["label"] for n in nodes] == [XSS, "</script><script>alert(2)</script>"]  # the text, unescaped
    assert nodes[0]["title"].startswith(f"{XSS} · {source} · degree 1")
