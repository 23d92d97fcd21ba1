"""What every page shares: the store (one per cache folder and process) and the project being explored.

The project comes from ``?project=NAME`` (so a link can be shared), else the session's last choice, else the
built-in demo, which is created on first use.  Errors reach the user as messages, never as tracebacks.
"""
from __future__ import annotations

import json
from pathlib import Path

import streamlit as st
from streamlit.errors import StreamlitAPIException

from core.config import cache_dir
from core.data.demo import DEMO_PROJECT
from core.data.projects import create_demo_project
from core.features.modeling import ModelError
from core.jobs import progress_text, running_job
from core.selection.runs import FeatureIndex, FeaturesIncomplete, FeaturesMissing, feature_index
from core.store import Store, StoreError
from core.views.map import layout_info, load_layout
from core.views.text import markdown_text


@st.cache_resource(show_spinner=False)
def _store_for(root: str) -> Store:
    return Store(root)


def store() -> Store:
    """The store of ``$G2IS_CACHE_DIR`` (re-read on every run, so tests can point the app at their own cache)."""
    try:
        return _store_for(str(cache_dir()))
    except StoreError as error:
        st.error(f"The cache cannot be used: {markdown_text(error)}")
        st.stop()


def open_project() -> str:
    """The current project's name, kept in the URL and the session."""
    current = store()
    wanted = st.query_params.get("project") or st.session_state.get("project") or DEMO_PROJECT
    if wanted == DEMO_PROJECT and DEMO_PROJECT not in current.projects():
        with st.spinner("Creating the demo project..."):
            create_demo_project(current)
    if wanted not in current.projects():
        # The name comes from the URL, i.e. from whoever sent the link: shown as text, never as Markdown.
        st.error(f"There is no project {markdown_text(repr(wanted))} in {markdown_text(current.root)}. "
                 f"Projects: {markdown_text(', '.join(current.projects()) or 'none')}. Opening the demo project instead.")
        wanted = DEMO_PROJECT
        if DEMO_PROJECT not in current.projects():
            create_demo_project(current)
    st.session_state["project"] = wanted
    st.query_params["project"] = wanted
    return wanted


def project() -> str:
    return st.session_state.get("project") or open_project()


def switch_project(name: str) -> None:
    """Make ``name`` the current project in the URL and the session; main.py's ``open_project`` picks it up on
    the next run (call from a widget callback, or follow with ``st.rerun()``)."""
    st.session_state["project"] = name
    st.query_params["project"] = name


PAGES_DIR = Path(__file__).resolve().parent.parent / "pages"


def page_link(page: str, label: str, icon: str | None = None) -> None:
    """A link to a file of ``pages/``.  ``st.page_link`` resolves relative paths against app/main.py, so the
    file is passed as an absolute path; when the page is not part of the app the label is shown as text."""
    try:
        st.page_link(str(PAGES_DIR / page), label=label, icon=icon)
    except StreamlitAPIException:
        st.markdown(f"See the **{page.removesuffix('.py').title()}** page.")


@st.cache_resource(show_spinner=False, max_entries=32)
def _feature_index_for(_store: Store, root: str, project: str, rows_version: tuple, settings: str) -> FeatureIndex:
    # The index needs the tokenizer and every row id (a second or more at 50k rows), so it is kept per process.
    # Its inputs are the project's rows and settings (both in the key) and its complete features, which never
    # change once complete; an incomplete project raises, and exceptions are not cached.
    return feature_index(_store, project)


def current_feature_index(project: str) -> FeatureIndex:
    """The project's FeatureIndex (cached); raises ``FeaturesMissing`` or ``ValueError`` like ``feature_index``."""
    current = store()
    settings = json.dumps(current.project_settings(project), sort_keys=True)
    return _feature_index_for(current, str(current.root), project, current.rows_version(project), settings)


@st.cache_resource(show_spinner=False, max_entries=8)
def _feature_request_for(_store: Store, root: str, project: str, settings: str, _settings, state: str):
    from core.jobs import request_features

    return request_features(_store, project, _settings)


def feature_request(project: str, settings, status: dict):
    """``core.jobs.request_features`` for the Features page, cached on what it reads: the project's rows,
    settings, feature sets and jobs (all in ``status``, from ``core.data.projects.project_status``).  Planning loads
    the tokenizer and reads every row key (most of a second at 50k rows); any change to those inputs plans anew."""
    current = store()
    state = json.dumps([current.rows_version(project), status["features"],
                        [(j["id"], j["status"], j["done"]) for j in status["jobs"]]], sort_keys=True, default=str)
    return _feature_request_for(current, str(current.root), project, json.dumps(settings.to_dict(), sort_keys=True),
                                settings, state)


def forget_feature_requests() -> None:
    """Plan the Features page's request anew on the next run (after a speed measurement changed its estimate)."""
    _feature_request_for.clear()


def partial_features(project: str, error: FeaturesIncomplete, key: str) -> FeatureIndex | None:
    """Offer to go on with the rows whose features are done; the partial index when the user ticks the box.

    It is not cached: while a job runs, the finished rows change from one rerun to the next."""
    if not st.checkbox("Allow partial features", key=key,
                       help="Select from the rows whose features are done; the run records its coverage."):
        return None
    index = feature_index(store(), project, allow_partial=True)
    st.caption(" · ".join(f"{role}: {covered} of {total} rows have features"
                          for role, (covered, total) in index.coverage.items()))
    return index


JOB_POLL_S = 5  # how often a page waiting for a feature job redraws its progress


def feature_job_progress(project: str) -> bool:
    """While the project's feature job runs: its progress bar (rows done, ETA), redrawn every ``JOB_POLL_S``, and a
    link to the Features page; the whole page runs again once the job ends.  False when no feature job runs."""
    if running_job(store(), project) is None:
        return False

    @st.fragment(run_every=JOB_POLL_S)
    def watch() -> None:
        current = running_job(store(), project)
        if current is None:
            st.rerun()  # the job ended: the page itself now finds the features (or says why not)
        job = current.job
        st.progress(min(1.0, job.done / job.total) if job.total else 0.0,
                    text=markdown_text(f"The feature {progress_text(current)}."))

    watch()
    page_link("features.py", "Watch or cancel it on the Features page", ":material/memory:")
    return True


def features_or_stop(project: str, needed_for: str, allow_partial_key: str | None = None) -> FeatureIndex:
    """The project's FeatureIndex, or a message that says what to do (and the page stops there): the running feature
    job's progress when there is one (``feature_job_progress``), else a link to start it.

    With ``allow_partial_key`` an incomplete project offers the Allow partial features checkbox of that key."""
    try:
        return current_feature_index(project)
    except FeaturesIncomplete as error:
        if running_job(store(), project) is not None:
            st.info(f"{needed_for} needs the gradient features of every row: they are being computed now.")
        else:
            st.warning(f"{needed_for} needs the gradient features of every row. {markdown_text(error)}")
        index = partial_features(project, error, allow_partial_key) if allow_partial_key else None
        if index is not None:
            return index
        if not feature_job_progress(project):
            page_link("features.py", "Compute the features on the Features page", ":material/memory:")
    except FeaturesMissing as error:
        if feature_job_progress(project):
            st.info(f"{needed_for} needs the gradient features: they are being computed now.")
        else:
            st.warning(f"{needed_for} needs the gradient features. {markdown_text(error)}")
            page_link("features.py", "Compute the features on the Features page", ":material/memory:")
    except (ModelError, ValueError, OSError) as error:
        st.error(f"The project's features cannot be read: {markdown_text(error)}")
    st.stop()


@st.cache_resource(show_spinner=False, max_entries=8)
def _layout_for(_store: Store, root: str, key: str, _info: dict):
    return load_layout(_store, _info)


def map_layout(project: str, space: str, index: FeatureIndex):
    """The stored map layout of ``space`` for the current features (cached for good: a layout never changes
    under its key), or None when it has not been computed."""
    current = store()
    info = layout_info(current, project, space, index)
    return _layout_for(current, str(current.root), info["key"], info) if info else None
