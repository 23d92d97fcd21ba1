"""Map page: UMAP of the pool and target gradient features next to the same rows in text-embedding space,
coloured by source or by a stored selection; a box or lasso selection lists the rows' text.  A thin view over
``core.views.map`` (layouts are computed once, stored, and read back on every visit)."""
from __future__ import annotations

import streamlit as st

from app import session
from core.selection.compare import run_label
from core.views import map as maps
from core.views.text import markdown_text

store, project = session.store(), session.project()
st.title("Gradient map")
index = session.features_or_stop(project, "The map")
n_points = len(index.pool_ids) + len(index.target_ids)
layouts = {space: session.map_layout(project, space, index) for space in maps.SPACES}
missing = [space for space, points in layouts.items() if points is None]
if missing:
    auto = n_points < maps.AUTO_COMPUTE_ROWS
    if not auto:
        st.info(f"The map of these {n_points:,} rows has not been computed yet. It loads the gradient features, "
                "reduces them with PCA to 50 dimensions and runs UMAP, and embeds every row's text with MiniLM "
                "(minutes for large pools); the result is stored, so this happens once.")
    if auto or st.button("Compute the map", type="primary"):
        for space in missing:
            with st.spinner(f"Computing the {space} layout of {n_points:,} rows (the first UMAP of a server "
                            "process also compiles its kernels, ~30 s)..."):
                try:
                    maps.compute_map(store, project, space, index=index)
                    layouts[space] = session.map_layout(project, space, index)
                except (RuntimeError, ValueError, OSError, ImportError, MemoryError) as error:
                    st.error(f"The {space} layout could not be computed: {markdown_text(error)}")
if all(points is None for points in layouts.values()):
    st.stop()

colour_mode = st.radio("Colour by", ["source", "a selection run"], horizontal=True)
picked_ids: list[str] = []
reference = next(points for points in layouts.values() if points is not None)
colouring = maps.colour_by_source(reference)
if colour_mode == "a selection run":
    runs = store.selection_runs(project)
    if not runs:
        st.info("No selection runs yet: run one on the Walk or Compare page, then colour the map by its picks.")
    else:
        runs_by_id = {run["id"]: run for run in runs}
        run = runs_by_id[st.selectbox("Selection run", list(runs_by_id),
                                      format_func=lambda i: run_label(runs_by_id[i]))]
        picked_ids = maps.selection_picks(store, run["id"])
        colouring = maps.colour_by_selection(reference, picked_ids, name=f"picked by {run['method']}",
                                             title=f"run {run['id']}")

positions = reference.positions()
drawn = maps.drawn_points(reference, keep=[positions[i] for i in picked_ids if i in positions])
if len(drawn) < len(reference):
    st.caption(f"Drawing {len(drawn):,} of {len(reference):,} points (a fixed random sample; targets and picked "
               "rows are always drawn).")

chosen: set[int] = set()
for column, space in zip(st.columns(2), maps.SPACES):
    points = layouts[space]
    with column:
        if points is None:
            st.warning(f"No {space} layout (see the error above).")
            continue
        if points.note and points.method != "umap":
            st.info(points.note)
        figure = maps.scatter_figure(points, colouring, maps.SPACE_TITLES[space], drawn)
        state = st.plotly_chart(figure, on_select="rerun", selection_mode=("box", "lasso"), key=f"map-{space}",
                                width="stretch")
        chosen.update(maps.selected_points(state))
        st.caption(f"{points.note} · {points.n_pool:,} pool rows, {len(points) - points.n_pool:,} targets (stars)")

st.subheader("Selected rows")
if not chosen:
    st.caption("Draw a box or a lasso on either map to list the rows here.")
else:
    table = maps.selected_rows_table(store, project, reference, sorted(chosen))
    more = f" (showing the first {len(table):,})" if len(table) < len(chosen) else ""
    st.markdown(f"{len(chosen):,} rows selected{more}.")
    st.dataframe(table, hide_index=True, width="stretch",
                 column_config={"text": st.column_config.TextColumn("text", width="large")})
