"""Views of the stored gradient graph: a row's k-hop neighbourhood or a selection's rows, drawn with pyvis.

Role in the app: the Graph page's logic.  The kNN graph itself (``core.selection.graph``) is built once per feature key by
``core.selection.runs.project_graph`` and stored; this module reads it back by feature key only
(``stored_graph``: no feature matrix), cuts out a subgraph of at most ``MAX_NODES`` nodes, lays its communities
out apart (Louvain communities, each a spring layout in its own disc) or places the nodes at their gradient-map
positions (``core.views.map``; a spring layout when no map is stored yet), and renders it as a
self-contained vis-network page with physics off -- similarity edges solid, conflict (negative-cosine) edges red
and dashed, user text shown as text in titles and labels (never as HTML).  ``graph_summary`` adds networkx
statistics of the same subgraph.  ``stored_hubness`` and its figure and tables diagnose the whole graph
(``core.selection.hubness``: hubs, anti-hubs, neighbour purity by source).  Targets are not nodes: the graph is over
the pool only.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from core.selection.graph import DEFAULT_K, GradientGraph, to_networkx
from core.selection.hubness import HubnessStats, hubness_stats
from core.selection.runs import (
    DEFAULT_GEOMETRY,
    FeatureIndex,
    load_project_features,
    parse_geometry,
    project_graph,
    row_text,
)
from core.store import Store
from core.views.map import PREVIEW_CHARS, MapPoints, source_colors

MAX_NODES = 1_500  # vis-network stays responsive with physics off well beyond this; the browser payload does not
DEFAULT_EDGES_PER_NODE = 8
LABELLED_NODES = 30  # up to this many nodes each shows its row id; past it only the centre does, the rest on hover
LAYOUTS = {"communities": "communities apart", "map": "gradient map positions"}
CANVAS_WIDTH = 1_000  # vis-network coordinates of the drawn box (the view fits it to the frame)
SIMILAR_STYLE = {"color": "#8AA4C8", "dashes": False}
CONFLICT_STYLE = {"color": "#D62728", "dashes": True}
CENTRE_COLOR = "#111111"


@dataclass(frozen=True, eq=False)
class StoredGraph:
    key: str
    info: dict  # the graphs row: k, k_conflict, n_rows, backend, seconds, created
    graph: GradientGraph


def latest_graph_key(store: Store, index: FeatureIndex) -> str | None:
    """Key of the newest stored graph of the project's current feature key in the geometry the default G2IS walks
    (a catalogue lookup), or None."""
    info = store.latest_graph(index.feature_key, DEFAULT_GEOMETRY)
    return info["key"] if info else None


def load_stored_graph(store: Store, key: str) -> StoredGraph | None:
    """A stored graph by key (graph tables only: no feature matrix).  Immutable, so callers may cache it."""
    info = store.graph_info(key)
    arrays = store.load_graph(key) if info else None
    if arrays is None:
        return None
    return StoredGraph(key, info, GradientGraph(k=arrays["neighbors"].shape[1], **arrays))


def stored_graph(store: Store, index: FeatureIndex) -> StoredGraph | None:
    """The newest stored graph of the project's current feature key, or None."""
    key = latest_graph_key(store, index)
    return load_stored_graph(store, key) if key else None


def build_stored_graph(store: Store, project: str, index: FeatureIndex, k: int = DEFAULT_K) -> StoredGraph:
    """Build the kNN graph of the current features in the default walk's geometry and store it (loads the feature
    matrix: a one-off)."""
    features = load_project_features(store, project, index)
    center, rescale = parse_geometry(DEFAULT_GEOMETRY)
    graph, info = project_graph(store, features, k=k, center=center, rescale=rescale)
    return StoredGraph(info["key"], info, graph)


def neighbourhood_nodes(graph: GradientGraph, centre: int, hops: int = 1, per_node: int = DEFAULT_EDGES_PER_NODE,
                        max_nodes: int = MAX_NODES) -> tuple[list[int], bool]:
    """Breadth-first ``hops`` steps from ``centre`` along each node's ``per_node`` most similar neighbours, plus
    the centre's conflict neighbours (strictly negative cosine).  Returns (nodes, capped): nodes in visiting
    order, capped when ``max_nodes`` stopped the walk early."""
    if not 0 <= centre < graph.n_nodes:
        raise ValueError(f"node {centre} is not in the graph (0..{graph.n_nodes - 1})")
    seen = {centre: None}
    frontier = [centre]
    capped = False
    for _ in range(hops):
        following = []
        for node in frontier:
            for neighbour in graph.neighbours_of(node)[:per_node]:
                neighbour = int(neighbour)
                if neighbour in seen:
                    continue
                if len(seen) >= max_nodes:
                    capped = True
                    break
                seen[neighbour] = None
                following.append(neighbour)
            if capped:
                break
        frontier = following
        if capped or not frontier:
            break
    for neighbour, similarity in zip(graph.conflicts[centre], graph.conflict_similarities[centre]):
        if similarity < 0 and int(neighbour) not in seen:
            if len(seen) >= max_nodes:
                capped = True
                break
            seen[int(neighbour)] = None
    return list(seen), capped


def selection_nodes(store: Store, run_id: str, pool_ids: list[str],
                    max_nodes: int = MAX_NODES) -> tuple[list[int], bool, int]:
    """A stored selection's rows as graph nodes (pool indices of the current features, selection order).

    Returns (nodes, capped, missing): rows are matched by id, so a run of older features still shows the rows
    that are still in the pool; ``missing`` counts the others."""
    position = {row_id: n for n, row_id in enumerate(pool_ids)}
    picked = [position.get(row_id) for _, row_id, _, _ in store.selection_rows(run_id)]
    present = [n for n in picked if n is not None]
    return present[:max_nodes], len(present) > max_nodes, len(picked) - len(present)


@dataclass
class GraphView:
    """A subgraph ready to draw: nodes are pool indices, ``graph`` is networkx with edge ``weight`` and ``kind``."""

    nodes: list[int]
    graph: object  # networkx.Graph
    row_ids: dict[int, str]
    sources: dict[int, str]
    previews: dict[int, str]
    positions: dict[int, tuple[float, float]]
    centre: int | None = None
    capped: bool = False
    notes: list[str] = field(default_factory=list)
    colors: dict[str, str] = field(default_factory=dict)  # source -> colour (the map's, when there is a map)
    communities: list[list[int]] = field(default_factory=list)  # the communities layout's groups, largest first

    @property
    def conflict_edges(self) -> int:
        return sum(1 for _, _, kind in self.graph.edges(data="kind") if kind == "conflict")

    @property
    def similar_edges(self) -> int:
        return sum(1 for _, _, kind in self.graph.edges(data="kind") if kind == "similar")


def _scaled_positions(nodes: list[int], x: np.ndarray, y: np.ndarray) -> dict[int, tuple[float, float]]:
    """Fit the nodes' bounding box into CANVAS_WIDTH (aspect kept); y flipped, since the canvas grows downwards."""
    xs, ys = np.asarray(x, np.float64), np.asarray(y, np.float64)
    span = max(xs.max() - xs.min(), ys.max() - ys.min(), 1e-9)
    scale = CANVAS_WIDTH / span
    return {node: (float((a - xs.min()) * scale), float((ys.max() - b) * scale)) for node, a, b in zip(nodes, xs, ys)}


COMMUNITY_GAP = 2.0  # layout units (about one node spacing) left between two communities' discs


def community_layout(graph, nodes: Sequence[int], seed: int = 0) -> tuple[dict[int, tuple[float, float]],
                                                                          list[list[int]]]:
    """Positions that keep communities apart: Louvain communities of the similarity edges (networkx), each laid
    out by a spring layout in its own disc of radius ~ sqrt(size) (so nodes keep about the same spacing in every
    community), the discs packed row by row, largest first.  Returns (positions, communities), deterministic for
    a seed.  The gradient map puts a neighbourhood into one or two tight UMAP clusters, where nodes and labels
    land on top of each other."""
    import networkx as nx

    similar = nx.Graph()
    similar.add_nodes_from(int(n) for n in nodes)
    similar.add_edges_from((int(a), int(b), {"weight": max(float(data["weight"]), 1e-6)})
                           for a, b, data in graph.edges(data=True) if data.get("kind") == "similar")
    groups = nx.community.louvain_communities(similar, weight="weight", seed=seed) if similar.number_of_nodes() else []
    communities = sorted((sorted(group) for group in groups), key=lambda group: (-len(group), group[0]))
    discs = []
    for members in communities:
        if len(members) == 1:
            discs.append((members, np.zeros((1, 2)), 0.5))
            continue
        layout = nx.spring_layout(similar.subgraph(members), seed=seed, iterations=60 if len(members) > 300 else 100)
        coords = np.array([layout[node] for node in members], dtype=np.float64)
        coords -= coords.mean(axis=0)
        extent = float(np.sqrt((coords ** 2).sum(axis=1)).max()) or 1.0
        radius = 1.25 * math.sqrt(len(members))
        discs.append((members, coords * (radius / extent), radius))
    widest = max((2 * radius + COMMUNITY_GAP for _, _, radius in discs), default=1.0)
    row_width = max(widest, 1.3 * math.sqrt(sum((2 * radius + COMMUNITY_GAP) ** 2 for _, _, radius in discs)))
    positions: dict[int, tuple[float, float]] = {}
    x = y = row_height = 0.0
    for members, coords, radius in discs:
        size = 2 * radius + COMMUNITY_GAP
        if x > 0 and x + size > row_width:
            x, y, row_height = 0.0, y + row_height, 0.0
        for node, (a, b) in zip(members, coords):
            positions[node] = (x + size / 2 + float(a), y + size / 2 + float(b))
        x += size
        row_height = max(row_height, size)
    return positions, communities


def subgraph_view(store: Store, project: str, index: FeatureIndex, graph: GradientGraph, nodes: list[int], *,
                  centre: int | None = None, capped: bool = False, points: MapPoints | None = None,
                  per_node: int = DEFAULT_EDGES_PER_NODE, notes: list[str] | None = None,
                  layout: str = "communities") -> GraphView:
    """Edges among ``nodes`` (each node's ``per_node`` most similar neighbours, and its negative conflict
    neighbours), the rows' ids, sources and text previews, and positions: communities laid out apart
    (``community_layout``), or with ``layout="map"`` the nodes' positions on the gradient map ``points``."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown graph layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    import networkx as nx

    notes = list(notes or [])
    top = GradientGraph(graph.neighbors[:, :per_node], graph.similarities[:, :per_node], graph.conflicts,
                        graph.conflict_similarities, k=min(per_node, graph.k))
    subgraph = to_networkx(top, nodes) if nodes else nx.Graph()
    ids = {node: index.pool_ids[node] for node in nodes}
    rows = {row.row_id: row for row in store.rows_by_id(project, "pool", list(ids.values()))}
    sources = {node: (rows[row_id].source or "") if row_id in rows else "" for node, row_id in ids.items()}
    previews = {node: row_text(rows[row_id].messages)[:PREVIEW_CHARS] if row_id in rows else ""
                for node, row_id in ids.items()}
    communities: list[list[int]] = []
    if layout == "communities" and nodes:
        placed, communities = community_layout(subgraph, nodes)
        coords = np.array([placed[int(node)] for node in nodes])
        positions = _scaled_positions(nodes, coords[:, 0], -coords[:, 1])  # (_scaled_positions flips y back)
    elif points is not None and points.feature_key == index.feature_key and nodes:
        positions = _scaled_positions(nodes, points.x[nodes], points.y[nodes])
    elif nodes:
        layout = nx.spring_layout(subgraph, seed=0, weight=None)
        coords = np.array([layout[node] for node in nodes])
        positions = _scaled_positions(nodes, coords[:, 0], coords[:, 1])
        notes.append("No gradient map is stored yet, so nodes are placed by a spring layout; compute the map on "
                     "the Map page to place them at their map positions.")
    else:
        positions = {}
    if capped:
        notes.append(f"Capped at {len(nodes):,} nodes to keep the view responsive.")
    # The map's colours when there is a map (so a source has one colour on both pages), else this view's own.
    colors = source_colors(points.sources[:points.n_pool] if points is not None else sources.values())
    return GraphView(nodes, subgraph, ids, sources, previews, positions, centre, capped, notes, colors, communities)


class PlainText(str):
    """A node title that vis-network shows as text: a string title goes into its tooltip through ``innerText``
    (and labels are drawn on the canvas), so user text is passed as it is (escaping it would show ``&lt;`` on
    screen).  The one HTML path is pyvis's own popup (``popup.innerHTML = title``), which it switches
    on for *every* node when any title contains "href"; this type answers no to that one question, so the popup
    never exists.  In the page the text is JSON in an inline script, which Jinja's ``tojson`` writes with ``<``,
    ``>``, ``&`` and ``'`` as ``\\u`` escapes: a ``</script>`` in the data cannot end the script."""

    def __contains__(self, part: object) -> bool:
        return part != "href" and str.__contains__(self, part)


def node_title(row_id: str, source: str, preview: str, degree: int) -> str:
    """Hover text of a node, as plain text (see ``PlainText``)."""
    body = " ".join(preview.split())
    return PlainText(f"{row_id} · {source or 'no source'} · degree {degree}\n{body}")


def network_html(view: GraphView, height: int = 650) -> str:
    """A self-contained vis-network page (scripts inlined: the app works offline), physics off."""
    from pyvis.network import Network

    # directed=True only to skip pyvis's O(edges) duplicate scan per add_edge (networkx already deduplicated);
    # arrows are switched off below, so the drawing is undirected.
    network = Network(height=f"{height}px", width="100%", directed=True, cdn_resources="in_line", bgcolor="#ffffff")
    network.toggle_physics(False)
    colors = view.colors or source_colors(view.sources.values())
    degrees = dict(view.graph.degree())
    for node in view.nodes:
        x, y = view.positions.get(node, (0.0, 0.0))
        is_centre = node == view.centre
        network.add_node(
            int(node), label=view.row_ids[node] if (is_centre or len(view.nodes) <= LABELLED_NODES) else " ",
            title=node_title(view.row_ids[node], view.sources[node], view.previews[node], degrees.get(node, 0)),
            color=CENTRE_COLOR if is_centre else colors.get(view.sources[node], "#97c2fc"),
            x=x, y=y, size=16 if is_centre else 8, physics=False, shape="dot",
        )
    for a, b, data in view.graph.edges(data=True):
        style = CONFLICT_STYLE if data["kind"] == "conflict" else SIMILAR_STYLE
        network.add_edge(int(a), int(b), title=f"{data['kind']}: cosine {data['weight']:.3f}",
                         width=1.0 + 2.0 * abs(float(data["weight"])), arrows={"to": {"enabled": False}},
                         color=style["color"], dashes=style["dashes"], smooth=False, physics=False)
    for node in network.nodes:  # every title plain text, so pyvis never turns on its innerHTML popup
        node["title"] = PlainText(node.get("title") or "")
    return network.generate_html()


@dataclass
class GraphSummary:
    nodes: int
    similar_edges: int
    conflict_edges: int
    components: int
    largest_component: int
    mean_degree: float
    isolated: int
    top_degree: list[dict]  # the best-connected rows: id, source, degree
    sources: dict[str, int]


def graph_summary(view: GraphView, top: int = 10) -> GraphSummary:
    """networkx statistics of the drawn subgraph (similarity edges only for connectivity)."""
    import networkx as nx

    similar = nx.Graph()
    similar.add_nodes_from(view.graph.nodes)
    similar.add_edges_from((a, b) for a, b, kind in view.graph.edges(data="kind") if kind == "similar")
    components = list(nx.connected_components(similar)) if similar.number_of_nodes() else []
    degrees = sorted(view.graph.degree(), key=lambda item: (-item[1], item[0]))
    n = view.graph.number_of_nodes()
    return GraphSummary(
        nodes=n, similar_edges=view.similar_edges, conflict_edges=view.conflict_edges,
        components=len(components), largest_component=max((len(c) for c in components), default=0),
        mean_degree=(2 * view.graph.number_of_edges() / n) if n else 0.0,
        isolated=sum(1 for _, degree in view.graph.degree() if degree == 0),
        top_degree=[{"id": view.row_ids[node], "source": view.sources[node], "degree": degree}
                    for node, degree in degrees[:top]],
        sources=dict(Counter(view.sources.values()).most_common()),
    )


# ------------------------------------------------------------------------------------------------------ hubness
# Whether the whole graph is fit to walk (``core.selection.hubness``): the in-degree histogram, the top hubs with
# their text, and neighbour purity by source.

HUB_TABLE_ROWS = 10
MAX_HISTOGRAM_BARS = 120  # wider in-degree ranges per bar beyond this: a 100,000-row pool's hubs reach thousands
# Log y when the tallest bar is this many times the shortest: hubs are single rows far out in the tail, which a
# linear axis draws as bars one pixel high next to the bulk.
LOG_Y_RATIO = 50


def stored_hubness(store: Store, project: str, pool_ids: list[str], graph: GradientGraph) -> HubnessStats:
    """Hubness of ``graph`` with the pool rows' sources (one query of ids and sources: no message is read)."""
    sources = store.row_sources(project, "pool", pool_ids)
    return hubness_stats(graph.neighbors, [sources.get(row_id) or "" for row_id in pool_ids])


def stored_hub_table(store: Store, project: str, pool_ids: list[str], stats: HubnessStats,
                     count: int = HUB_TABLE_ROWS) -> list[dict]:
    """``hub_table`` reading only the hub rows from the store (not the whole pool's texts)."""
    hubs = [row for row, _ in stats.top_hubs(count)]
    rows = {row.row_id: row for row in store.rows_by_id(project, "pool", [pool_ids[n] for n in hubs])}
    found = {n: rows[pool_ids[n]] for n in hubs if pool_ids[n] in rows}
    return hub_table(stats, pool_ids, {n: row_text(row.messages) for n, row in found.items()},
                     {n: row.source or "" for n, row in found.items()}, count=count)


def hubness_figure(stats: HubnessStats):
    """Rows per in-degree (whole-number bins, widened past ``MAX_HISTOGRAM_BARS``), with a dashed line at k: the
    in-degree of every row in an unbiased graph.  No user text is drawn."""
    import plotly.graph_objects as go

    degrees = stats.in_degree
    top = int(degrees.max()) if degrees.size else 0
    width = max(1, math.ceil((top + 1) / MAX_HISTOGRAM_BARS))
    counts = np.bincount(degrees // width) if degrees.size else np.zeros(0, np.int64)
    starts = np.arange(len(counts)) * width
    shown = counts > 0
    labels = [str(a) if width == 1 else f"{a}-{a + width - 1}" for a in starts[shown]]
    figure = go.Figure()
    figure.add_bar(x=starts[shown] + (width - 1) / 2, y=counts[shown], width=width * 0.9, customdata=labels,
                   marker_color="#4C78A8", hovertemplate="in-degree %{customdata}<br>%{y} rows<extra></extra>")
    figure.add_vline(x=stats.k, line_dash="dash", line_color="#D62728",
                     annotation_text=f"k = {stats.k} (unbiased)", annotation_position="top right")
    log_y = bool(shown.any()) and counts[shown].max() >= LOG_Y_RATIO * counts[shown].min()
    figure.update_layout(xaxis_title="in-degree: how many rows list this row among their k neighbours",
                         yaxis_title="rows" + (" (log scale)" if log_y else ""), yaxis_type="log" if log_y else None,
                         height=320, margin=dict(l=10, r=10, t=30, b=10), showlegend=False)
    return figure


def _one_line(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def hub_table(stats: HubnessStats, pool_ids: Sequence[str], pool_texts: Sequence[str] | Mapping[int, str],
              pool_sources: Sequence[str] | Mapping[int, str], count: int = HUB_TABLE_ROWS,
              preview_chars: int = PREVIEW_CHARS) -> list[dict]:
    """The ``count`` rows of highest in-degree as table records (for st.dataframe, which shows text as text).
    ``pool_texts`` and ``pool_sources`` are indexed by pool position: whole lists, or mappings of the hubs only."""
    others = max(stats.n - 1, 1)
    return [{"id": pool_ids[row], "source": pool_sources[row] or "", "in-degree": degree,
             "listed by (% of rows)": round(100 * degree / others, 1),
             "text": _one_line(pool_texts[row], preview_chars)}
            for row, degree in stats.top_hubs(count)]


def purity_table(stats: HubnessStats) -> list[dict]:
    """Per source, largest first: its rows, its share of the pool (the chance level), the share of its rows'
    neighbours that share their source, and its rows' mean in-degree (k everywhere in an unbiased graph)."""
    return [{"source": source, "rows": purity.rows, "pool share (%)": round(100 * purity.pool_share, 1),
             "own-source neighbours (%)": round(100 * purity.purity, 1) if np.isfinite(purity.purity) else None,
             "mean in-degree": round(purity.mean_in_degree, 1)}
            for source, purity in stats.purity_by_source.items()]
