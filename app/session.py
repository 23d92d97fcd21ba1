"""What every page shares: the store (one per cache folder and process) and the project being explored.

The project comes from ``?project=NAME`` (so a link can be shared), else the session's last choice, else the
built-in demo, which is created on first use.  Errors reach the user as messages, never as tracebacks.
"""
from __future__ import annotations

import streamlit as st

from core.config import cache_dir
from core.demo import DEMO_PROJECT
from core.projects import create_demo_project
from core.store import Store, StoreError


@st.cache_resource(show_spinner=False)
def _store_for(root: str) -> Store:
    return Store(root)


def store() -> Store:
    """The store of ``$G2IS_CACHE_DIR`` (re-read on every run, so tests can point the app at their own cache)."""
    try:
        return _store_for(str(cache_dir()))
    except StoreError as error:
        st.error(f"The cache cannot be used: {error}")
        st.stop()


def open_project() -> str:
    """The current project's name, kept in the URL and the session."""
    current = store()
    wanted = st.query_params.get("project") or st.session_state.get("project") or DEMO_PROJECT
    if wanted == DEMO_PROJECT and DEMO_PROJECT not in current.projects():
        with st.spinner("Creating the demo project..."):
            create_demo_project(current)
    if wanted not in current.projects():
        st.error(f"There is no project {wanted!r} in {current.root}. "
                 f"Projects: {', '.join(current.projects()) or 'none'}. Opening the demo project instead.")
        wanted = DEMO_PROJECT
        if DEMO_PROJECT not in current.projects():
            create_demo_project(current)
    st.session_state["project"] = wanted
    st.query_params["project"] = wanted
    return wanted


def project() -> str:
    return st.session_state.get("project") or open_project()
