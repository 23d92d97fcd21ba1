"""Compare page: several selection methods at one budget -- their overlap (Jaccard) matrix, the source
composition of each selection, the rows only one method picked, and each run's notes.  A thin view over
``core.selection.compare``: stored runs made with each method's default parameters are reused (or the stored run
picked for a method), and only the methods without one run, with their defaults, on the Run button."""
from __future__ import annotations

import streamlit as st

from app import session
from core.selection.compare import (
    COMPARE_METHODS,
    DEFAULTS_LABEL,
    METHOD_TITLES,
    UNIQUE_ROWS_LISTED,
    Comparison,
    compare_runs,
    params_caption,
    plan_comparison,
    run_missing,
)
from core.selection.methods import DEFAULT_RATIO
from core.views.compare import composition_figure, jaccard_figure
from core.views.evaluate import run_evaluation_caption
from core.views.text import markdown_text

store, project = session.store(), session.project()
st.title("Compare methods")


@st.cache_data(show_spinner=False, max_entries=32)
def comparison_of(root: str, run_ids: tuple[str, ...]) -> Comparison:
    # Stored runs never change, so their comparison is cached by the runs' ids (and the cache it came from).
    return compare_runs(session.store(), list(run_ids))


index = session.features_or_stop(project, "Comparing methods", allow_partial_key="compare-allow-partial")

n_pool = len(index.pool_ids)
# On a row of its own: a narrow multiselect keeps its chosen methods on one line and cuts off the
# ones past its edge; at the page's width they wrap, so every chosen method is in sight.
methods = st.multiselect("Methods", COMPARE_METHODS, default=list(COMPARE_METHODS), key="compare-methods",
                         format_func=lambda m: METHOD_TITLES.get(m, m))
left, middle, _ = st.columns([2, 2, 5])
budget_kind = left.radio("Budget as", ["fraction of the pool", "number of rows"], key="compare-budget-kind")
if budget_kind == "fraction of the pool":
    ratio = middle.number_input("Fraction", min_value=0.001, max_value=1.0, value=DEFAULT_RATIO, step=0.01, format="%.3f",
                                key="compare-ratio")
    sizing = {"ratio": float(ratio)}
else:
    rows = middle.number_input("Rows", min_value=1, max_value=n_pool, value=min(100, n_pool), step=1,
                               key="compare-rows")
    sizing = {"budget": int(rows)}
if not methods:
    st.info("Pick at least one method to compare.")
    st.stop()

try:
    plan = plan_comparison(store, project, methods, index=index, **sizing)
except ValueError as error:
    st.error(markdown_text(error))
    st.stop()

st.markdown(f"**{plan.budget}** of {n_pool} pool rows per method, on feature set `{plan.feature_key}`.")
for note in plan.budget_notes:
    st.caption(note)

# Per method: the parameters its column uses, and a choice among its stored runs here (default: the defaults).
rows, pins = {}, {}
for method in plan.methods:
    rows[method] = st.columns([3, 2], vertical_alignment="center")
    choices = {run["id"]: plan.run_label(run) for run in plan.candidates[method]}
    if choices:
        pins[method] = rows[method][1].selectbox(
            f"{METHOD_TITLES.get(method, method)}: run used", [None, *choices], key=f"compare-pin-{method}",
            format_func=lambda run_id, labels=choices: DEFAULTS_LABEL if run_id is None else labels[run_id],
            label_visibility="collapsed", help="Use this stored run instead of the one with the default parameters.")
if any(pins.values()):
    plan = plan_comparison(store, project, methods, index=index, pinned=pins, **sizing)
for method in plan.methods:
    rows[method][0].markdown(markdown_text(plan.caption(method)))
    evaluated = run_evaluation_caption(store, plan.stored[method]["id"]) if method in plan.stored else None
    if evaluated:  # the stored run was judged on the Evaluate page
        rows[method][0].caption(markdown_text(evaluated))

for method, message in st.session_state.pop("compare-failures", {}).items():
    st.error(f"{METHOD_TITLES.get(method, method)} failed: {markdown_text(message)}")
if plan.missing:
    if plan.stored:
        st.info(f"Stored at this budget: {', '.join(plan.stored)}. Not run yet: {', '.join(plan.missing)}. "
                "**Run** computes only the missing methods (loading the features once) and stores them.")
    else:
        st.info("No method has a stored selection at this budget yet: press **Run** to run "
                f"{', '.join(plan.missing)} (the features are loaded once) and store them.")
    if st.button(f"Run {len(plan.missing)} method{'s' if len(plan.missing) != 1 else ''}", type="primary",
                 key="compare-run"):
        progress = st.progress(0.0, text="Loading the features...")

        def show(method: str, done: int, total: int) -> None:
            text = f"Running {METHOD_TITLES.get(method, method)} ({done + 1} of {total})..." if method else "Done."
            progress.progress(done / total if total else 1.0, text=text)

        try:
            with st.spinner("Selecting..."):
                plan = run_missing(store, plan, on_progress=show, index=index)
        except ValueError as error:  # FeaturesMissing included
            st.error(markdown_text(error))
            st.stop()
        st.session_state["compare-failures"] = plan.failures
        st.rerun()  # redraw from the store: the hints above still describe the runs before this one

if not plan.stored:
    st.stop()  # the hint above says to press Run

comparison = comparison_of(str(store.root), tuple(plan.run_ids))

st.subheader("Runs")
st.dataframe(
    [{"method": r.label, "run": r.run_id, "parameters": params_caption(r.method, r.params, plan.defaults[r.method]),
      "chosen": "picked" if r.method in plan.pinned else "defaults", "selected": r.selected, "budget": r.budget,
      "seconds": r.seconds, "created": r.created,
      "all parameters": ", ".join(f"{k}={v}" for k, v in sorted(r.params.items()))}
     for r in comparison.runs],
    hide_index=True,
)
notes = [f"{r.label}: {note}" for r in comparison.runs for note in r.notes]
if notes:
    st.caption("Notes of the runs (under-filled budgets, clipping, what each method decided):")
    st.text("\n".join(notes))

if len(comparison.runs) < 2:
    st.info("Pick or run at least two methods to see their overlap and the rows only one of them picked.")
else:
    st.subheader("Overlap (Jaccard)")
    st.caption("|A ∩ B| / |A ∪ B| of the selected row sets; the number in brackets is |A ∩ B|.")
    st.plotly_chart(jaccard_figure(comparison), key="compare-jaccard")

st.subheader("Source composition")
st.plotly_chart(composition_figure(comparison), key="compare-composition")

if comparison.unique_counts:
    st.subheader("Rows only one method picked")
    st.caption(" · ".join(f"{label}: {n}" for label, n in comparison.unique_counts.items())
               + f" (at most the first {UNIQUE_ROWS_LISTED} of each are listed, in selection order)")
    if comparison.unique_rows:
        st.dataframe(
            [{"method": u.label, "rank": u.rank + 1, "id": u.row_id, "source": u.source, "score": u.score,
              "text": u.text} for u in comparison.unique_rows],
            hide_index=True,
        )
    else:
        st.info("Every selected row was picked by at least two methods.")
