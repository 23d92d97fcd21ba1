"""Data page: choose or create a project, upload its pool and target files (formats detected, bad rows listed with
line and reason), and look at what it holds: counts, a preview, length and source charts, and one example's
tokens with the ones the loss trains on highlighted.  A thin view over ``core.views.data``."""
from __future__ import annotations

import streamlit as st

from app import session
from core.data.projects import project_settings
from core.features.modeling import ModelError
from core.store import ROLES
from core.views import data as data_view
from core.views.text import markdown_text

store, project = session.store(), session.project()
st.title("Data")

ROLE_LABELS = {"pool": "Pool", "targets": "Targets", "eval": "Evaluation"}


@st.cache_data(show_spinner=False, max_entries=16)
def overview_of(root: str, name: str, version: tuple) -> data_view.DataOverview:
    """Keyed by the cache folder and the rows' version, so a re-ingest (from any session or the CLI) refreshes it."""
    return data_view.data_overview(session.store(), name)


@st.cache_resource(show_spinner=False, max_entries=4)
def tokenizer_for(spec: str, root: str):
    """One tokenizer per model spec (and cache: the converted SmolLM2 lives there), shared by all sessions."""
    return data_view.load_project_tokenizer(spec)


# ------------------------------------------------------------------------------------------------ project
state = st.session_state


def choose_project() -> None:
    session.switch_project(state["data-project"])


def create_clicked() -> None:
    """Create (or open) the named project.  A callback runs before the widgets are drawn, so on success it can
    empty the name box (a widget's value cannot be set once the widget is drawn); a bad name stays, to be fixed."""
    try:
        name, created = data_view.create_project(store, state.get("data-new-project", ""))
    except ValueError as error:
        state["data-create-error"] = str(error)
        return
    state["data-flash"] = (f"Created project {name}: upload its pool and targets below." if created
                           else f"Project {name} already exists: opened it.")
    state["data-new-project"] = ""
    session.switch_project(name)


flash = state.pop("data-flash", None)
if flash:
    st.success(markdown_text(flash))
state["data-project"] = project  # follow the URL when the project was changed elsewhere
choice, creation = st.columns([2, 3], vertical_alignment="bottom")
choice.selectbox("Project", store.projects(), key="data-project", on_change=choose_project)
with creation:
    name_column, button_column = st.columns([3, 1], vertical_alignment="bottom")
    name_column.text_input("New project", key="data-new-project", placeholder="e.g. math-mix",
                           help=f"Names use {data_view.PROJECT_NAME_RULE}.")
    button_column.button("Create", key="data-create", on_click=create_clicked)
create_error = state.pop("data-create-error", None)
if create_error:
    st.error(markdown_text(create_error))

# ------------------------------------------------------------------------------------------------ uploads

st.subheader("Upload")
st.caption("`.jsonl`, `.json`, `.parquet`, `.csv` or `.tsv` files in Alpaca, ShareGPT, chat `messages` or "
           "prompt/completion form (columns for the tables), several per role. An upload ingests exactly the files "
           "dropped into it and *replaces* the role's rows with theirs; the box then empties, so a later upload "
           "never takes an earlier file along (switch on *Add to these files* to keep them). Bad rows are left out "
           "and listed. Uploads are kept under the cache's `uploads/` folder.")


def show_outcome(outcome: data_view.UploadOutcome) -> None:
    if outcome.ingested:
        st.success(f"{outcome.rows_after} {outcome.role} rows from {len(outcome.files)} file(s) "
                   f"(before: {outcome.rows_before}).")
    else:
        st.error(markdown_text(outcome.error))
    if outcome.files:
        st.dataframe(outcome.file_table(), hide_index=True)
    bad = outcome.error_table()
    if bad:
        if outcome.ingested:
            whole_file = " (line 0: the whole file)" if any(e["line"] == 0 for e in bad) else ""
            st.warning(f"{len(bad)} bad row(s) were left out{whole_file}:")
        st.dataframe(bad, hide_index=True)


def request_removal(role: str, path: str) -> None:
    state[f"data-remove-{role}-{project}"] = path


def upload_request(role: str, uploader_key: str, group_field: str | None) -> list[tuple[str, bytes]] | None:
    """The files to ingest in this run, decided before the uploader is drawn: the files just dropped (with the
    current ones when *Add to these files* is on), the current files less one the user removed, or the current
    targets again when the group field changed.  None: nothing to ingest."""
    current = state.get(f"data-current-{role}-{project}")
    removed = state.pop(f"data-remove-{role}-{project}", None)
    dropped = state.get(uploader_key) or []
    if dropped:
        # From this run on the page draws a new, empty uploader: Streamlit drops these files, so a later upload
        # never ingests them again.
        state[f"data-upload-round-{role}-{project}"] = state.get(f"data-upload-round-{role}-{project}", 0) + 1
        files = [(f.name, f.getvalue()) for f in dropped]
        if current is not None and state.get(f"data-add-{role}-{project}"):
            files = data_view.saved_files(current) + files
        return files
    if current is None:
        return None
    if removed is not None:
        return data_view.saved_files(current, leave_out=removed)
    if role == "targets" and group_field != state.get(f"data-group-used-{role}-{project}"):
        return data_view.saved_files(current)
    return None


def upload_section(role: str) -> None:
    group_key = f"data-group-{project}"
    group_field = ((state.get(group_key) or "").strip() or None) if role == "targets" else None
    uploader_key = f"data-upload-{role}-{project}-{state.get(f'data-upload-round-{role}-{project}', 0)}"
    outcome_key, current_key = f"data-outcome-{role}-{project}", f"data-current-{role}-{project}"
    try:
        files = upload_request(role, uploader_key, group_field)
    except OSError as error:
        files = None
        st.error(f"The saved upload cannot be read again ({markdown_text(error)}): upload the files again.")
    if files:
        signature = data_view.upload_signature(project, role, files, group_field)
        guard = f"data-ingested-{role}-{project}"
        # Ingest each distinct request (file contents + group field) once: the same files dropped again change
        # nothing (the rows would be the same).
        if state.get(guard) != signature:
            with st.spinner(f"Reading {len(files)} file(s)..."):
                outcome = data_view.ingest_uploads(store, project, role, files, group_field)
            state[outcome_key], state[guard] = outcome, signature
            if outcome.ingested:
                state[current_key] = outcome
                state[f"data-group-used-{role}-{project}"] = group_field
    st.file_uploader(f"{ROLE_LABELS[role]} files", type=["jsonl", "json", "parquet", "csv", "tsv"],
                     accept_multiple_files=True,
                     key=f"data-upload-{role}-{project}-{state.get(f'data-upload-round-{role}-{project}', 0)}")
    if role == "targets":
        st.text_input(
            "Group field (optional)", key=group_key, placeholder="e.g. subject or meta.task",
            help="Field naming each target's group (a dotted path reaches inside objects). Empty: the first of "
                 "group, subtask, task, subject, category.")
    outcome = state.get(outcome_key)
    if outcome is not None:
        show_outcome(outcome)
    current = state.get(current_key)
    if current is not None:
        listed = current.ingested_files
        st.caption(f"The {role} rows come from {len(listed)} file(s) of this session's uploads"
                   + (": remove one to ingest the others again." if len(listed) > 1 else "."))
        if len(listed) > 1:
            for number, saved in enumerate(listed):
                st.button(f"Remove {saved.name}", icon=":material/close:", key=f"data-remove-{role}-{project}-{number}",
                          on_click=request_removal, args=(role, saved.path))
        st.toggle("Add to these files", key=f"data-add-{role}-{project}",
                  help="On: the next upload is ingested together with the files listed here. Off: it replaces them.")


for role, column in zip(ROLES, st.columns(len(ROLES))):
    with column:
        upload_section(role)

# ------------------------------------------------------------------------------------------------ overview

overview = overview_of(str(store.root), project, store.rows_version(project))
st.subheader(f"Project {markdown_text(project)}")
metrics = st.columns(4)
for column, role in zip(metrics, ROLES):
    column.metric(f"{ROLE_LABELS[role]} rows", overview.rows[role])
    column.caption(f"{len(overview.sources.get(role, []))} source(s)")
if not any(overview.rows.values()):
    st.info("No rows yet: upload pool and target files above.")
    st.stop()

error_total, errors = data_view.recorded_errors(store, project)
with st.expander(f"Ingested files and bad rows ({error_total} bad row(s) left out)", expanded=bool(error_total)):
    st.dataframe(data_view.ingest_file_table(store, project), hide_index=True)
    if errors:
        if error_total > len(errors):
            st.caption(f"The first {len(errors)} of {error_total} bad rows:")
        st.dataframe(errors, hide_index=True)

role = st.radio("Rows of", [r for r in ROLES if overview.rows[r]], format_func=ROLE_LABELS.get, horizontal=True,
                key=f"data-role-{project}")
st.dataframe(data_view.preview_rows(store, project, role, limit=50), hide_index=True)

lengths, sources = st.columns(2)
with lengths:
    unit = st.radio("Length in", list(data_view.LENGTH_UNITS), format_func=data_view.LENGTH_UNITS.get,
                    horizontal=True, key="data-length-unit")
    histogram = overview.lengths[unit]
    st.plotly_chart(data_view.length_figure(histogram), width="stretch", key="data-lengths")
    medians = ", ".join(f"{r} {histogram.median[r]:.0f}" for r in histogram.median)
    note = f"Median: {medians}."
    if histogram.clipped_at is not None:
        longest = ", ".join(f"{r} {histogram.maximum[r]}" for r in histogram.maximum)
        note += f" The last bar also counts the longest 1% of rows (longest: {longest})."
    st.caption(note)
with sources:
    st.markdown("**Rows per source**")
    st.plotly_chart(data_view.source_figure(overview), width="stretch", key="data-sources")

# ------------------------------------------------------------------------------------------------ tokens

st.subheader("Tokens of one example")
settings = project_settings(store, project)
position = st.number_input(f"{ROLE_LABELS[role]} row #", min_value=0, max_value=overview.rows[role] - 1, value=0,
                           key=f"data-token-row-{role}-{project}")
row = data_view.example_row(store, project, role, int(position))
if row is None:
    st.warning(f"There is no {role} row #{position}.")
    st.stop()
st.text(f"id {row.row_id} · source {row.source} · {row.format}")
try:
    load_now = not data_view.tokenizer_needs_conversion(settings.model)
    if not load_now:
        st.info(f"The tokenizer of {markdown_text(settings.model)} is not ready: the first use converts "
                "the model once (\\~40 s).")
        load_now = st.button("Load the tokenizer", key="data-load-tokenizer")
    if load_now:
        with st.spinner(f"Loading the tokenizer of {markdown_text(settings.model)}..."):
            tokenizer = tokenizer_for(settings.model, str(store.root))
        view = data_view.token_view(tokenizer, row.messages, settings.max_tokens, truncation=settings.truncation)
except ModelError as error:
    st.error(f"The token view needs the project's model: {markdown_text(error)}")
else:
    if load_now:
        st.markdown(view.summary())
        if view.error:
            st.warning(f"The feature job cannot use this row: {markdown_text(view.error)}.")
        st.caption("Green: trained on (assistant tokens). Grey: context (prompt and template). Struck through: "
                   f"after max_tokens={settings.max_tokens}, never seen. Hover a token for its position and id.")
        st.html(view.html())
