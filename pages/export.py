"""Export page: pick a stored selection run and a format (chat messages, Alpaca, ShareGPT), write it with its
manifest under ``cache/exports/`` and download both.  A thin view over ``core.selection.export.export_selection``."""
from __future__ import annotations

import shlex
from pathlib import Path

import streamlit as st

from app import session
from core.selection.compare import METHOD_TITLES
from core.selection.export import EXPORT_FORMATS, export_selection
from core.views.evaluate import run_evaluation_caption
from core.views.text import markdown_code, markdown_text

FORMAT_TITLES = {"messages": "chat messages", "alpaca": "Alpaca", "sharegpt": "ShareGPT"}

store, project = session.store(), session.project()
st.title("Export a selection")

runs = store.selection_runs(project)
if not runs:
    st.info(f"Project **{markdown_text(project)}** has no selection yet. Run one on the Walk or Compare page "
            f"(or {markdown_code(f'python -m core select --project {shlex.quote(project)} ...')}), then export it here.")
    st.stop()


def run_label(run: dict) -> str:
    ratio = run["params"].get("ratio")
    budget = f"{run['selected']}/{run['budget']} rows" + (f" (ratio {ratio})" if ratio is not None else "")
    method = METHOD_TITLES.get(run["method"], run["method"])
    return f"{method} · {budget} · {run['created']:%Y-%m-%d %H:%M:%S} · {run['id']}"


wanted = st.query_params.get("run")  # ?run=ID opens the page on that run (links from other pages)
by_id = {run["id"]: run for run in runs}
run_id = st.selectbox("Selection run (newest first)", list(by_id),
                      index=list(by_id).index(wanted) if wanted in by_id else 0,
                      format_func=lambda i: run_label(by_id[i]), key="export-run")
run = by_id[run_id]
fmt = st.radio("Format", EXPORT_FORMATS, format_func=FORMAT_TITLES.get, horizontal=True, key="export-format")
if fmt == "alpaca":
    st.caption("Alpaca holds one user turn and one answer per row (a system prompt goes to its `system` field); "
               "a selection with longer chats cannot be written in it.")

with st.expander("Run details", expanded=False):
    st.markdown(f"Method **{markdown_text(run['method'])}**, {run['selected']} of {run['budget']} rows, "
                f"{run['seconds'] or 0:.1f} s, feature set {markdown_code(run['feature_key'])}, "
                f"run {markdown_code(run['id'])}.")
    st.json(run["params"])
evaluated = run_evaluation_caption(store, run["id"])
if evaluated:  # the run was judged on the Evaluate page
    st.caption(markdown_text(evaluated))
if run["notes"]:
    st.caption("Notes of the run (under-filled budgets, clipping, what the method decided):")
    st.text("\n".join(run["notes"]))

key = f"export:{project}:{run['id']}:{fmt}"
if st.button("Export", type="primary", key="export-button"):
    try:
        st.session_state[key] = export_selection(store, run["id"], fmt)
    except ValueError as error:
        st.error(f"Cannot export as {FORMAT_TITLES[fmt]}: {markdown_text(error)}")
    except OSError as error:
        st.error(f"Cannot write the export under {markdown_text(store.root / 'exports')}: {markdown_text(error)}")

manifest = st.session_state.get(key)
if manifest is not None:
    path, manifest_path = Path(manifest["path"]), Path(manifest["manifest_path"])
    if not path.exists() or not manifest_path.exists():
        st.warning(f"The export files at {markdown_code(path)} are gone; press Export to write them again.")
    else:
        st.success(f"Wrote {manifest['selected']} rows as {FORMAT_TITLES[fmt]} to {markdown_code(path)} "
                   f"and the manifest to {markdown_code(manifest_path)} (exported {manifest['exported_at']}).")
        data = path.read_bytes()
        left, right = st.columns(2)
        left.download_button("Download JSONL", data, file_name=path.name, mime="application/jsonl",
                             key="export-download-jsonl", on_click="ignore", icon=":material/download:")
        right.download_button("Download manifest", manifest_path.read_bytes(), file_name=manifest_path.name,
                              mime="application/json", key="export-download-manifest", on_click="ignore",
                              icon=":material/description:")
        st.caption("First rows of the file:")
        st.code("".join(data.decode("utf-8").splitlines(keepends=True)[:3]) or "(empty selection)", language="json")
