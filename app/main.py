"""G2IS Explorer — the Streamlit entry point: ``streamlit run app/main.py``.

Picks the project (``?project=NAME`` in the URL, else the built-in demo), makes sure the demo exists, and
navigates over the pages in ``pages/``.  Pages are thin views over ``core``; the shared state they need (the
store and the current project) comes from ``app/session.py``.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `streamlit run app/main.py` puts app/ on the path, not the repo root
    sys.path.insert(0, str(REPO))

import streamlit as st  # noqa: E402

from app import session  # noqa: E402

st.set_page_config(page_title="G2IS Explorer", page_icon=":material/hub:", layout="wide")

PAGES = [
    st.Page(str(REPO / "pages" / "features.py"), title="Features", icon=":material/memory:", url_path="features", default=True),
]

project = session.open_project()
with st.sidebar:
    st.markdown("**G2IS Explorer**")
    st.caption(f"project `{project}` · cache `{session.store().root}`")
navigation = st.navigation(PAGES)
navigation.run()
