"""The Compare page's figures: the Jaccard overlap heatmap and the source composition of each selection.

``core.selection.compare`` computes the ``Comparison``; this module only draws it (every label HTML-escaped,
because plotly renders labels as HTML).
"""
from __future__ import annotations

import html

import plotly.graph_objects as go

from core.selection.compare import Comparison


def jaccard_figure(comparison: Comparison) -> go.Figure:
    """Heatmap of the Jaccard matrix, each cell also showing |A ∩ B|."""
    labels = [html.escape(label) for label in comparison.labels]
    figure = go.Figure(go.Heatmap(
        z=comparison.jaccard.tolist(), x=labels, y=labels, zmin=0.0, zmax=1.0, colorscale="Blues",
        customdata=comparison.intersections.tolist(),
        text=[[f"{j:.2f} ({n})" for j, n in zip(jr, nr)]
              for jr, nr in zip(comparison.jaccard.tolist(), comparison.intersections.tolist())],
        texttemplate="%{text}",
        hovertemplate="%{y} vs %{x}<br>Jaccard %{z:.3f}<br>%{customdata} rows in common<extra></extra>",
    ))
    figure.update_layout(height=120 + 45 * len(labels), margin=dict(l=10, r=10, t=10, b=10),
                         yaxis=dict(autorange="reversed"))
    return figure


def composition_figure(comparison: Comparison) -> go.Figure:
    """Stacked bars: each run's share of rows per source, next to the pool's (source names escaped)."""
    labels = [html.escape(label) for label in comparison.labels]
    pool_total = int(comparison.pool_composition.sum())
    figure = go.Figure()
    totals = comparison.composition.sum(axis=1)
    for column, source in enumerate(comparison.sources):
        counts = [int(comparison.pool_composition[column])] + comparison.composition[:, column].tolist()
        shares = [100.0 * c / t if t else 0.0 for c, t in zip(counts, [pool_total, *totals.tolist()])]
        name = html.escape(source)
        figure.add_trace(go.Bar(
            name=name, x=["pool", *labels], y=shares, customdata=counts,
            hovertemplate=f"{name}<br>%{{x}}: %{{customdata}} rows (%{{y:.1f}}%)<extra></extra>",
        ))
    figure.update_layout(barmode="stack", yaxis_title="% of the rows", height=380, margin=dict(l=10, r=10, t=10, b=10))
    return figure
