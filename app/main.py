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
# Every page has its own URL: Streamlit serves its default page at "/" only (its url_path would be "Page not found"),
# so the default is a hidden page that forwards to Features, whose URL is then /features like any other page's.
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
    st.Page(str(REPO / "pages" / file), title=title, icon=icon, url_path=file.removesuffix(".py"))
    for file, title, icon in PAGE_SPECS if (REPO / "pages" / file).exists()
]
FIRST_PAGE = next(page for page in PAGES if page.url_path == "features")
START_PAGE = st.Page(lambda: None, title="Start", url_path="start", default=True, visibility="hidden")
PAGES.insert(0, START_PAGE)

try:
    navigation = st.navigation(PAGES)
    if navigation.url_path == START_PAGE.url_path:
        # Forward before anything is shown: the first page then opens the project (and says so if the URL's
        # project does not exist) in its own run, where a message stays on screen.
        st.switch_page(FIRST_PAGE, query_params=dict(st.query_params))
    project = session.open_project()
    with st.sidebar:
        st.markdown("**G2IS Explorer**")
        st.caption(f"project {markdown_code(project)} · cache {markdown_code(session.store().root)}")
    navigation.run()
except StoreError as error:  # the cache went bad under a running app (damaged file, full disk): a message
    st.error(f"The cache cannot be used: {markdown_text(error)}")
