"""Graph page: the stored kNN gradient graph around a chosen row or a stored selection, drawn with pyvis
(communities laid out apart, or the rows' gradient-map positions; physics off; similarity and conflict edges
styled apart), with a networkx summary, under a hubness verdict on the whole graph (in-degrees, hubs, neighbour
purity by source).  A thin view over ``core.views.graph``; the graph is built once per feature set and read back
after."""
from __future__ import annotations

import shlex

import streamlit as st

from app import session
from core.selection.compare import run_label
from core.selection.graph import DEFAULT_K
from core.views import graph as graph_view
from core.views.text import markdown_code, markdown_text

store, project = session.store(), session.project()
st.title("Gradient graph")
index = session.features_or_stop(project, "The graph")


@st.cache_resource(show_spinner="Loading the stored graph...", max_entries=4)
def cached_graph(_store, root: str, key: str) -> graph_view.StoredGraph | None:
    return graph_view.load_stored_graph(_store, key)


@st.cache_resource(show_spinner=False, max_entries=4)
def cached_hubness(_store, root: str, key: str, project: str, rows_version: tuple, _graph, _pool_ids):
    # A stored graph never changes under its key; the sources come from the rows, whose version is in the key too.
    return graph_view.stored_hubness(_store, project, _pool_ids, _graph)


key = graph_view.latest_graph_key(store, index)
if key is None:
    st.info(f"The kNN gradient graph of these {len(index.pool_ids):,} pool rows has not been built yet. Building "
            f"it loads the features once and finds each row's {DEFAULT_K} most similar rows and its most "
            "conflicting ones (negative cosine); it is stored, so this happens once.")
    if st.button("Build the graph", type="primary"):
        with st.spinner("Building the gradient graph..."):
            try:
                graph_view.build_stored_graph(store, project, index)
            except (RuntimeError, ValueError, OSError, MemoryError) as error:
                st.error(f"The graph could not be built: {markdown_text(error)}")
                st.stop()
        st.rerun()
    st.stop()

stored = cached_graph(store, str(store.root), key)
if stored is None:
    st.error("The stored graph could not be read; rebuild it with "
             f"{markdown_code(f'python -m core graph --project {shlex.quote(project)} --rebuild')}.")
    st.stop()
graph = stored.graph
st.caption(f"kNN graph over {graph.n_nodes:,} pool rows: k={graph.k} similar and {graph.k_neg} conflict "
           f"neighbours per row ({stored.info['backend']}). Targets are not in the graph.")

if graph.k > 0:
    # Shown before any walk view: a hub-dominated graph sends every walk through the same few rows.
    hubness = cached_hubness(store, str(store.root), key, project, store.rows_version(project), graph, index.pool_ids)
    (st.warning if hubness.hub_dominated else st.info)(f"**Hubness:** {markdown_text(hubness.verdict())}")
    with st.expander("Hubness: in-degrees, the top hubs and neighbour purity by source",
                     expanded=hubness.hub_dominated):
        st.caption(f"A row's in-degree is how many rows list it among their {graph.k} neighbours; it is {graph.k} "
                   f"for every row when no row is favoured. In-degree skewness {hubness.skewness:.2f}, the largest "
                   f"{hubness.max_in_degree:,}; the 10 most-listed rows fill {hubness.top_ten_share:.1%} of the "
                   f"neighbour slots.")
        st.plotly_chart(graph_view.hubness_figure(hubness), width="stretch", key="graph-hubness")
        st.markdown("Most-listed rows (hubs)")
        st.dataframe(graph_view.stored_hub_table(store, project, index.pool_ids, hubness), hide_index=True,
                     width="stretch")
        st.markdown("Neighbour purity by source: the share of a row's neighbours from its own source, next to "
                    "the source's share of the pool (what a graph blind to sources would give)")
        st.dataframe(graph_view.purity_table(hubness), hide_index=True, width="stretch")

mode_column, layout_column = st.columns(2)
mode = mode_column.radio("Show", ["Neighbourhood of a row", "Rows of a selection run"], horizontal=True)
layout = layout_column.radio(
    "Layout", list(graph_view.LAYOUTS), format_func=graph_view.LAYOUTS.get, horizontal=True, key="graph-layout",
    help="Communities apart: Louvain communities of the similarity edges, each drawn in its own disc. Gradient map "
         "positions: where the rows lie on the Map page (its UMAP clusters can be tight).")
controls = st.columns(3)
if graph.k == 0:
    st.info("The pool has a single row with features, so the graph has no edges to show.")
    st.stop()
per_node = (controls[0].slider("Similar edges per node", 1, graph.k, min(graph_view.DEFAULT_EDGES_PER_NODE, graph.k))
            if graph.k > 1 else 1)  # a slider needs two distinct ends
max_nodes = controls[1].number_input("At most this many nodes", 10, graph_view.MAX_NODES, graph_view.MAX_NODES,
                                     step=100)
notes: list[str] = []
centre = None
if mode == "Neighbourhood of a row":
    hops = controls[2].slider("Hops", 1, 3, 2)
    row_id = st.text_input("Pool row id", value=index.pool_ids[0]).strip()
    position = {row: n for n, row in enumerate(index.pool_ids)}.get(row_id)
    if position is None:
        # Ids are user text: shown in a code block (plain text), not in the markdown of the message.
        st.warning("There is no pool row with this id among the rows with features. Some ids of the pool:")
        st.code("\n".join(index.pool_ids[:5]), language=None)
        st.stop()
    nodes, capped = graph_view.neighbourhood_nodes(graph, position, hops=hops, per_node=per_node, max_nodes=max_nodes)
    centre = position
else:
    runs = store.selection_runs(project)
    if not runs:
        st.info("No selection runs yet: run one on the Walk or Compare page to see its rows here.")
        st.stop()
    runs_by_id = {run["id"]: run for run in runs}
    run_id = st.selectbox("Selection run", list(runs_by_id), format_func=lambda i: run_label(runs_by_id[i]))
    nodes, capped, missing = graph_view.selection_nodes(store, run_id, index.pool_ids, max_nodes=max_nodes)
    if missing:
        notes.append(f"{missing:,} picked rows are not in the current features and are left out.")

points = session.map_layout(project, "gradient", index)
view = graph_view.subgraph_view(store, project, index, graph, nodes, centre=centre, capped=capped, points=points,
                                per_node=per_node, notes=notes, layout=layout)
for note in view.notes:
    st.info(note)
st.markdown(f"**{len(view.nodes):,} nodes**, {view.similar_edges:,} similarity edges (solid), "
            f"{view.conflict_edges:,} conflict edges (red, dashed). Node colour is the row's source"
            + ("; the chosen row is black." if centre is not None else ".")
            + (f" {len(view.communities):,} communities, drawn apart." if view.communities else "")
            + (f" Past {graph_view.LABELLED_NODES} nodes a row's id shows when the pointer is on it."
               if len(view.nodes) > graph_view.LABELLED_NODES else ""))
st.iframe(graph_view.network_html(view, height=650), height=670)

summary = graph_view.graph_summary(view)
st.subheader("Summary")
metrics = st.columns(5)
metrics[0].metric("Nodes", f"{summary.nodes:,}")
metrics[1].metric("Mean degree", f"{summary.mean_degree:.1f}")
metrics[2].metric("Components", f"{summary.components:,}", help="Connected by similarity edges")
metrics[3].metric("Largest component", f"{summary.largest_component:,}")
metrics[4].metric("Conflict edges", f"{summary.conflict_edges:,}")
left, right = st.columns(2)
left.markdown("Best-connected rows")
left.dataframe(summary.top_degree, hide_index=True, width="stretch")
right.markdown("Sources")
right.dataframe([{"source": source, "nodes": count, "colour": view.colors.get(source, "")}
                 for source, count in summary.sources.items()],
                hide_index=True, width="stretch")
