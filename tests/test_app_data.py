"""The Data page, run by ``streamlit.testing.v1.AppTest`` (its file uploader included) against a real store, the real
ingest and the real tiny-model tokenizer; and ``core.views.data``'s upload, overview and token functions directly."""
from __future__ import annotations

import html
import json
import re

import pytest
from conftest import REPO, chat_rows, write_jsonl
from streamlit.testing.v1 import AppTest

from core.config import FeatureSettings
from core.data.ingest import ingest_files
from core.features.modeling import encode_messages, load_tokenizer, resolve_model
from core.store import Store
from core.views import data as data_view
from core.views.text import markdown_text

MAIN = str(REPO / "app" / "main.py")
DATA = "../pages/data.py"  # relative to app/main.py


def open_data(project: str) -> AppTest:
    """The Data page of ``project``: switching before the first run skips the Features page (and its model)."""
    app = AppTest.from_file(MAIN, default_timeout=120)
    app.query_params["project"] = project
    app.switch_page(DATA).run()
    assert not app.exception, app.exception
    return app


def uploader(app: AppTest, role: str):
    (widget,) = [w for w in app.file_uploader if w.key.startswith(f"data-upload-{role}-")]
    return widget


def jsonl(records: list) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records).encode()


def shown(markdown: str) -> str:
    """The text a message element displays (the page backslash-escapes Markdown in user text)."""
    return re.sub(r"\\(.)", r"\1", markdown)


def tiny_project(store: Store, name: str, model_dir, max_tokens: int = 256) -> None:
    store.ensure_project(name, FeatureSettings(model=str(model_dir), max_tokens=max_tokens).to_dict())


def test_bad_upload_lists_each_bad_row_with_its_line_and_keeps_the_good_rows(cache, tiny_model_dir):
    store = Store()
    tiny_project(store, "mixed", tiny_model_dir)
    good = chat_rows(4, "good")
    content = jsonl([good[0], good[1],
                     '{"messages": [{"role": "user", "content": "cut off"',  # line 3: broken JSON
                     good[2],
                     {"id": "lonely", "messages": [{"role": "user", "content": "Anyone there?"}]},  # line 5
                     good[3]])
    app = open_data("mixed")
    uploader(app, "pool").set_value(("mixed.jsonl", content, "application/json")).run()
    assert not app.exception, app.exception

    assert any("2 bad row(s) were left out" in shown(w.value) for w in app.warning)
    assert any("4 pool rows" in shown(s.value) for s in app.success)
    tables = [d.value for d in app.dataframe]
    bad = next(t for t in tables if list(t.columns) == ["file", "line", "reason"])
    assert bad["line"].tolist() == [3, 5]
    assert set(bad["file"]) == {"mixed.jsonl"}
    assert "JSON" in bad["reason"][0]
    assert "last message must be from the assistant" in bad["reason"][1]
    files = next(t for t in tables if "rows read" in t.columns)
    assert files.to_dict("records")[0] | {"note": ""} == {"file": "mixed.jsonl", "format": "messages", "rows read": 4,
                                                          "bad rows": 2, "note": ""}
    assert [r.row_id for r in store.rows("mixed", "pool")] == ["good-0", "good-1", "good-2", "good-3"]
    # The errors are recorded at ingest too, so the page shows them again in a later session.
    total, recorded = store.ingest_errors("mixed")
    assert total == 2 and [e["line"] for e in recorded] == [3, 5]
    later = open_data("mixed")
    assert any("2 bad row(s) left out" in e.label for e in later.expander)
    assert any(list(t.columns) == ["role", "file", "line", "reason"] and t["line"].tolist() == [3, 5]
               for t in (d.value for d in later.dataframe))


def test_a_file_that_is_not_json_is_refused_and_the_existing_rows_stay(cache, tmp_path, tiny_model_dir):
    store = Store()
    tiny_project(store, "kept", tiny_model_dir)
    ingest_files(store, "kept", "pool", [write_jsonl(tmp_path / "first.jsonl", chat_rows(5, "first"))])
    before = [r.content_hash for r in store.rows("kept", "pool")]

    app = open_data("kept")
    uploader(app, "pool").set_value(("notes.jsonl", b"name,score\nada,3\n", "text/csv")).run()
    assert not app.exception, app.exception
    (error,) = [shown(e.value) for e in app.error]
    assert "notes.jsonl" in error and "not JSON" in error and "notes.jsonl:1" in error
    assert "5 pool row(s) are unchanged" in error
    assert [r.content_hash for r in store.rows("kept", "pool")] == before
    # Every row bad is refused the same way, with each bad row's line.
    uploader(app, "pool").set_value(("empty.jsonl", jsonl([{"instruction": "only a question", "output": ""}]),
                                     "application/json")).run()
    (error,) = [shown(e.value) for e in app.error]
    assert "No usable pool rows in empty.jsonl" in error and "unchanged" in error
    bad = next(d.value for d in app.dataframe if list(d.value.columns) == ["file", "line", "reason"])
    assert bad.to_dict("records") == [{"file": "empty.jsonl", "line": 1,
                                       "reason": 'alpaca: "output" must be a non-empty string'}]
    assert [r.content_hash for r in store.rows("kept", "pool")] == before
    # The user's files are kept, whatever became of them.
    saved = sorted(p.name for p in (cache / "uploads" / "kept" / "pool").rglob("*.jsonl"))
    assert saved == ["empty.jsonl", "notes.jsonl"]


def test_creating_a_project_and_uploading_alpaca_files_fills_it_once(cache, tiny_model_dir):
    store = Store()
    tiny_project(store, "start", tiny_model_dir)
    app = open_data("start")
    app.text_input(key="data-new-project").input("no/slashes").run()
    app.button(key="data-create").click().run()
    assert any("may not contain '/'" in shown(e.value) for e in app.error)
    assert "no/slashes" not in store.projects()
    assert app.text_input(key="data-new-project").value == "no/slashes"  # kept, to be fixed

    app.text_input(key="data-new-project").input("alpaca-mix").run()
    app.button(key="data-create").click().run()
    assert not app.exception, app.exception
    assert "alpaca-mix" in store.projects()
    assert app.text_input(key="data-new-project").value == ""  # emptied once the project exists
    assert app.query_params["project"] == "alpaca-mix" and app.session_state["project"] == "alpaca-mix"
    assert any("Created project alpaca-mix" in shown(s.value) for s in app.success)

    pool = json.dumps([{"instruction": f"Add {i} and {i}.", "input": "", "output": f"{2 * i}", "source": "adds"}
                       for i in range(6)]).encode()
    targets = jsonl([{"instruction": f"Double {i}.", "output": f"{2 * i}", "subject": f"s{i % 2}"}
                     for i in range(3)])
    uploader(app, "pool").set_value(("adds.json", pool, "application/json")).run()
    uploader(app, "targets").set_value(("doubles.jsonl", targets, "application/json")).run()
    held_out = jsonl([{"instruction": f"Triple {i}.", "output": f"{3 * i}"} for i in range(2)])
    uploader(app, "eval").set_value(("triples.jsonl", held_out, "application/json")).run()
    assert not app.exception, app.exception
    assert store.row_counts("alpaca-mix") == {"pool": 6, "targets": 3, "eval": 2}
    assert [r.group for r in store.rows("alpaca-mix", "targets")] == ["s0", "s1", "s0"]
    assert {r.format for r in store.rows("alpaca-mix", "pool")} == {"alpaca"}
    assert [m.value for m in app.metric] == ["6", "3", "2"]
    preview = next(d.value for d in app.dataframe if "text" in d.value.columns)
    assert preview["text"][0] == "user: Add 0 and 0. → assistant: 0"

    # Reruns and the same file uploaded again do not ingest again.
    stamps = [f["ingested"] for f in store.ingested_files("alpaca-mix")]
    app.run()
    uploader(app, "pool").set_value(("adds.json", pool, "application/json")).run()
    assert [f["ingested"] for f in store.ingested_files("alpaca-mix")] == stamps
    # A group field given afterwards is a new request: the targets are read again with it.
    app.text_input(key="data-group-alpaca-mix").input("instruction").run()
    assert [r.group for r in store.rows("alpaca-mix", "targets")] == ["Double 0.", "Double 1.", "Double 2."]
    assert store.row_counts("alpaca-mix") == {"pool": 6, "targets": 3, "eval": 2}

    # Choosing another project switches the URL and the page to it.
    app.selectbox(key="data-project").set_value("start").run()
    assert not app.exception, app.exception
    assert app.query_params["project"] == "start" and app.session_state["project"] == "start"
    assert [m.value for m in app.metric] == ["0", "0", "0"]
    assert any("No rows yet" in i.value for i in app.info)


def file_names(app: AppTest) -> list[str]:
    """The files of the upload outcome's file table (the last upload of the role shown first)."""
    return [list(d.value["file"]) for d in app.dataframe if "rows read" in d.value.columns]


def test_each_upload_ingests_only_its_own_files_and_a_file_can_be_removed(cache, tiny_model_dir):
    """Issue 19: a second upload in the same session used to ingest the first file too (a bad file came in with
    the good one and every row of the good one was reported as a duplicate id)."""
    store = Store()
    tiny_project(store, "uploads", tiny_model_dir)
    app = open_data("uploads")
    first = uploader(app, "pool")
    good, other = chat_rows(5, "good"), chat_rows(3, "other")
    first.set_value(("good.jsonl", jsonl(good), "application/json")).run()
    assert not app.exception, app.exception
    assert [r.row_id for r in store.rows("uploads", "pool")] == [r["id"] for r in good]
    # The uploader is a new, empty one after the ingest: Streamlit dropped good.jsonl.
    assert uploader(app, "pool").key != first.key and not uploader(app, "pool").value

    # The same ids again, in another file: only that file is ingested, so no row is a duplicate.
    again = [dict(r, messages=[r["messages"][0], {"role": "assistant", "content": "Another answer."}]) for r in good]
    uploader(app, "pool").set_value(("again.jsonl", jsonl(again), "application/json")).run()
    assert not app.exception, app.exception
    assert file_names(app) == [["again.jsonl"]]
    assert not any("bad row" in shown(w.value) for w in app.warning)
    assert [r.messages[1]["content"] for r in store.rows("uploads", "pool")] == ["Another answer."] * 5
    assert store.ingest_errors("uploads") == (0, [])

    # Several files in one upload are ingested together; each can be removed, which ingests the others again.
    uploader(app, "pool").set_value([("good.jsonl", jsonl(good), "application/json"),
                                     ("other.jsonl", jsonl(other), "application/json")]).run()
    assert store.row_counts("uploads")["pool"] == 8 and file_names(app) == [["good.jsonl", "other.jsonl"]]
    assert any("rows come from 2 file(s)" in c.value for c in app.caption)
    removers = {b.label: b for b in app.button if b.label.startswith("Remove ")}
    assert set(removers) == {"Remove good.jsonl", "Remove other.jsonl"}
    removers["Remove good.jsonl"].click().run()
    assert not app.exception, app.exception
    assert [r.row_id for r in store.rows("uploads", "pool")] == [r["id"] for r in other]
    assert file_names(app) == [["other.jsonl"]] and not [b for b in app.button if b.label.startswith("Remove ")]

    # "Add to these files": the next upload is ingested with the files listed.
    app.toggle(key="data-add-pool-uploads").set_value(True).run()
    uploader(app, "pool").set_value(("good.jsonl", jsonl(good), "application/json")).run()
    assert not app.exception, app.exception
    assert file_names(app) == [["other.jsonl", "good.jsonl"]] and store.row_counts("uploads")["pool"] == 8


def token_text(markup: str, kinds: str = "trained") -> str:
    spans = re.findall(rf'<span class="g2is-(?:{kinds})"[^>]*>(.*?)</span>', markup, flags=re.S)
    return "".join(html.unescape(s).replace("↵\n", "\n") for s in spans)


def test_token_view_highlights_the_trained_tokens_and_marks_the_cut(cache, tmp_path, tiny_model_dir):
    store = Store()
    tiny_project(store, "tokens", tiny_model_dir, max_tokens=48)
    question = "What is <b>the capital</b> of France?"
    answer = "The capital of France is Paris."
    long_question = " ".join(["Natalia sold clips to her friends in April."] * 12)
    rows = [{"id": "short", "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]},
            {"id": "long", "messages": [{"role": "user", "content": long_question},
                                        {"role": "assistant", "content": answer}]}]
    ingest_files(store, "tokens", "pool", [write_jsonl(tmp_path / "pool.jsonl", rows)])

    app = open_data("tokens")
    (markup,) = [h.value for h in app.html]
    assert token_text(markup) == answer + "<|im_end|>\n"  # exactly the answer and its end-of-turn marker
    assert question in token_text(markup, "context")
    assert "<b>" not in markup and "&lt;" in markup  # the row's text is escaped
    assert "g2is-cut" not in markup
    tokenizer = load_tokenizer(resolve_model(str(tiny_model_dir)))
    encoded = encode_messages(tokenizer, rows[0]["messages"], 48)
    assert markup.count('class="g2is-trained"') == sum(encoded.loss_mask)
    assert markup.count('class="g2is-context"') == encoded.n_tokens - sum(encoded.loss_mask)

    app.number_input(key="data-token-row-pool-tokens").set_value(1).run()
    assert not app.exception, app.exception
    (markup,) = [h.value for h in app.html]
    assert "✂ max_tokens=48" in markup
    assert 'class="g2is-trained"' not in markup  # the long prompt pushes the answer past the cut
    assert any("answer truncated away" in shown(w.value) for w in app.warning)
    assert any("Truncated at max_tokens=48" in m.value for m in app.markdown)


def test_upload_names_cannot_leave_the_uploads_folder(cache):
    store = Store()
    assert data_view.safe_file_name("../../etc/passwd.jsonl") == "passwd.jsonl"
    assert data_view.safe_file_name("..\\..\\x y$.json") == "x_y_.json"
    assert data_view.safe_file_name("...") == "upload"
    saved = data_view.save_upload(store, "../evil", "pool", "../../../outside.jsonl", b"{}\n")
    uploads = (cache / "uploads").resolve()
    assert saved.path.resolve().is_relative_to(uploads) and saved.path.read_bytes() == b"{}\n"
    assert saved.path.name == "outside.jsonl"
    with pytest.raises(ValueError, match="may not contain"):
        data_view.check_project_name("a b")
    with pytest.raises(ValueError, match="at most 64"):
        data_view.check_project_name("x" * 65)
    assert data_view.check_project_name(" ok-1.v_2 ") == "ok-1.v_2"
    escaped = markdown_text("**x** [y](javascript:z) $1$ <b>")
    assert "**" not in escaped and "](" not in escaped and "$1$" not in escaped and "<b>" not in escaped
    assert shown(escaped) == "**x** [y](javascript:z) $1$ <b>"


def test_overview_counts_sources_and_bins_every_row(cache, tmp_path):
    store = Store()
    rows = chat_rows(30, "pool")
    for i, row in enumerate(rows):
        row["source"] = "<img src=x>" if i % 3 == 0 else "plain"
    ingest_files(store, "overview", "pool", [write_jsonl(tmp_path / "pool.jsonl", rows)])
    ingest_files(store, "overview", "targets", [write_jsonl(tmp_path / "t.jsonl", chat_rows(4, "t"))])
    overview = data_view.data_overview(store, "overview")
    assert overview.rows == {"pool": 30, "targets": 4, "eval": 0}
    assert overview.sources == {"pool": [("plain", 20), ("<img src=x>", 10)], "targets": [("t", 4)]}
    for histogram in overview.lengths.values():
        assert {role: sum(counts) for role, counts in histogram.counts.items()} == {"pool": 30, "targets": 4}
    first = store.rows("overview", "pool", limit=1)[0]
    text = " ".join(m["content"] for m in first.messages)
    lengths = store.row_lengths("overview", "pool").to_pylist()[0]
    assert lengths["chars"] == len(text) and lengths["words"] == len(text.split())
    figure = data_view.source_figure(overview)
    labels = [label for trace in figure.data for label in trace.y]
    assert "&lt;img src=x&gt;" in labels and "<img src=x>" not in labels
