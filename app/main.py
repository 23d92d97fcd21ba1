"""G2IS Explorer — the Streamlit entry point: ``streamlit run app/main.py``.

Picks the project (``?project=NAME`` in the URL, else the built-in demo), makes sure the demo exists, and
navigates over the pages in ``pages/``.  Pages are thin views over ``core``; the shared state they need (the
store and the current project) comes from ``app/session.py``.
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import session
from core.store import StoreError
from core.views.text import markdown_code, markdown_text

REPO = Path(__file__).resolve().parent.parent  # pages/ lies beside app/

st.set_page_config(page_title="G2IS Explorer", page_icon=":material/hub:", layout="wide")

# (file, title, icon) in the order of the workflow; the Features page opens first (it starts the demo's features).
PAGE_SPECS = [
    ("data.py", "Data", ":material/table:"),
    ("features.py", "Features", ":material/memory:"),
    ("map.py", "Map", ":material/scatter_plot:"),
    ("graph.py", "Graph", ":material/hub:"),
    ("walk.py", "Walk", ":material/route:"),
    ("compare.py", "Compare", ":material/compare_arrows:"),
    ("evaluate.py", "Evaluate", ":material/model_training:"),
    ("export.py", "Export", ":material/download:"),
]
PAGES = [
    st.Page(str(REPO / "pages" / file), title=title, icon=icon, url_path=file.removesuffix(".py"),
            default=file == "features.py")
    for file, title, icon in PAGE_SPECS if (REPO / "pages" / file).exists()
]

try:
    project = session.open_project()
    with st.sidebar:
        st.markdown("**G2IS Explorer**")
        st.caption(f"project {markdown_code(project)} · cache {markdown_code(session.store().root)}")
    navigation = st.navigation(PAGES)
    navigation.run()
except StoreError as error:  # the cache went bad under a running app (damaged file, full disk): a message
    st.error(f"The cache cannot be used: {markdown_text(error)}")
