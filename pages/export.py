"""Export page: pick a stored selection run, a format (chat messages, Alpaca, ShareGPT) and a file type (JSONL,
Parquet), write it with its manifest (and, if asked, a LLaMA-Factory ``dataset_info.json`` entry) under
``cache/exports/``, show the manifest and download the files.  A thin view over
``core.selection.export.export_selection``."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import streamlit as st

from app import session
from core.selection.compare import run_label
from core.selection.export import EXPORT_FILE_TYPES, EXPORT_FORMATS, export_preview, export_selection
from core.views.evaluate import run_evaluation_caption
from core.views.text import markdown_code, markdown_text

FORMAT_TITLES = {"messages": "chat messages", "alpaca": "Alpaca", "sharegpt": "ShareGPT"}
FILE_TYPE_TITLES = {"jsonl": "JSONL", "parquet": "Parquet"}
FILE_TYPE_MIMES = {"jsonl": "application/jsonl", "parquet": "application/vnd.apache.parquet"}

store, project = session.store(), session.project()
st.title("Export a selection")

runs = store.selection_runs(project)
if not runs:
    st.info(f"Project **{markdown_text(project)}** has no selection yet. Run one on the Walk or Compare page "
            f"(or {markdown_code(f'python -m core select --project {shlex.quote(project)} ...')}), then export it here.")
    st.stop()


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
file_type = st.radio("File type", EXPORT_FILE_TYPES, format_func=FILE_TYPE_TITLES.get, horizontal=True,
                     key="export-file-type")
if file_type == "parquet":
    st.caption("The same records as the JSONL, one Parquet row per example in selection order: "
               '`datasets.load_dataset("parquet", data_files=...)` reads them as the JSONL reads with "json".')
llamafactory = st.checkbox("LLaMA-Factory dataset_info.json entry", key="export-llamafactory",
                           help="Also write this export's entry into dataset_info.json beside the file (merged with "
                                "the entries already there), so LLaMA-Factory trains on it with `dataset_dir` set to "
                                "that folder and `dataset: NAME`, without editing anything.")

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

key = f"export:{project}:{run['id']}:{fmt}:{file_type}:{llamafactory}"
if st.button("Export", type="primary", key="export-button"):
    try:
        st.session_state[key] = export_selection(store, run["id"], fmt, file_type=file_type, llamafactory=llamafactory)
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
        factory = manifest.get("llamafactory")
        info_path = Path(factory["dataset_info"]) if factory else None
        columns = st.columns(3 if info_path is not None and info_path.exists() else 2)
        columns[0].download_button(f"Download {FILE_TYPE_TITLES[file_type]}", path.read_bytes(), file_name=path.name,
                                   mime=FILE_TYPE_MIMES[file_type], key=f"export-download-{file_type}",
                                   on_click="ignore", icon=":material/download:")
        columns[1].download_button("Download manifest", manifest_path.read_bytes(), file_name=manifest_path.name,
                                   mime="application/json", key="export-download-manifest", on_click="ignore",
                                   icon=":material/description:")
        if len(columns) == 3:
            columns[2].download_button("Download dataset_info.json", info_path.read_bytes(), file_name=info_path.name,
                                       mime="application/json", key="export-download-dataset-info",
                                       on_click="ignore", icon=":material/dataset:")
        st.caption("First rows of the file" + (" (as `datasets` reads them):" if file_type == "parquet" else ":"))
        st.code(export_preview(path, 3), language="json")
        if factory:
            st.markdown(f"**LLaMA-Factory**: dataset {markdown_code(factory['dataset'])} in "
                        f"{markdown_code(factory['dataset_info'])}. In the training config:")
            st.code(f"dataset_dir: {json.dumps(factory['dataset_dir'])}\ndataset: {json.dumps(factory['dataset'])}",
                    language="yaml")
            st.code(json.dumps({factory["dataset"]: factory["entry"]}, indent=2), language="json")
            if factory["skipped_rows"]:
                st.warning(f"LLaMA-Factory would skip {len(factory['skipped_rows'])} rows whose turns do not "
                           f"alternate user/assistant, e.g. {markdown_text(', '.join(factory['skipped_rows'][:3]))}.")
        with st.expander("Manifest (provenance for the paper: tool version, model and weights hash, feature "
                         "settings, method, parameters, budget, coverage, ids, evaluation)", expanded=False):
            st.json(manifest, expanded=1)
