"""Walk page: run G2IS with δ, val_k, budget and graph k, then step through the stored walk -- the PCA
explained-variance chart with per-component budgets, each decision in plain words with the rows it names, the
running similarity curve and the walk's path on the gradient map.

A thin view over ``core.views.walk``: a reopened run is replayed from its stored events, one event per step, and
never recomputed.  The run and step live in the session and in the URL (``?run=...&step=...``), so a refresh or a
shared link shows the same step.
"""
from __future__ import annotations

import time

import streamlit as st

from app import session
from core.selection.methods import DEFAULT_RATIO
from core.selection.runs import FeaturesIncomplete, FeaturesMissing
from core.views import walk as walk_view
from core.views.map import layout_info, load_layout
from core.views.text import markdown_text
from core.views.walk import WALK_PROFILES, WalkSettings

PLAY_SECONDS = 0.8  # one step per tick while playing
FRACTION, ROWS = "fraction of the pool", "rows"

store, project = session.store(), session.project()
state = st.session_state
st.title("Gradient walk")


# ------------------------------------------------------------------------------------------- cached readers
# Runs and map layouts are immutable once stored, so they are cached for good; a FeatureIndex (tokenizer + all
# row ids) is kept a minute so that stepping and reruns never pay for it, while new features show up soon.
@st.cache_resource(max_entries=16, show_spinner=False)
def cached_replay(_store, root: str, run_id: str) -> walk_view.WalkReplay:
    return walk_view.load_replay(_store, run_id)


@st.cache_data(max_entries=16, show_spinner=False)
def cached_variance_curve(_store, root: str, project: str, feature_key: str, _index):
    return walk_view.target_variance_curve(_store, project, feature_key, _index)  # the index is keyed by feature_key


@st.cache_resource(max_entries=4, show_spinner=False)
def cached_backdrop(_store, root: str, layout_key: str, _layout: dict) -> walk_view.MapBackdrop:
    """A stored layout never changes under its key: read and sample it once."""
    points = load_layout(_store, _layout)
    return walk_view.map_backdrop(points.row_ids, points.roles, points.sources, points.x, points.y,
                                  method=points.method)


root = str(store.root)
index = None
try:
    index = session.current_feature_index(project)
except FeaturesIncomplete as error:
    st.warning(f"The walk needs the gradient features of every row. {markdown_text(error)}")
    index = session.partial_features(project, error, "walk-allow-partial")
    if index is None and not session.feature_job_progress(project):
        session.page_link("features.py", "Open the Features page")
except FeaturesMissing as error:
    if session.feature_job_progress(project):
        st.info("The walk needs gradient features: they are being computed now. Stored walks are below.")
    else:
        st.warning(f"The walk needs gradient features. {markdown_text(error)}")
        session.page_link("features.py", "Open the Features page")
except (ValueError, RuntimeError, OSError) as error:
    st.error(f"The project's features cannot be read: {markdown_text(error)}")


# ----------------------------------------------------------------------------------------------- run state
def open_run(run_id: str, step: int = 0) -> None:
    state["walk_run"] = run_id
    set_step(step)
    state["walk_playing"] = False


def set_step(step: int) -> None:
    state["walk_step"] = max(int(step), 0)
    state["walk_step_input"] = state["walk_step"]


def on_run_choice() -> None:
    open_run(state["walk_run_choice"], 0)


# ---------------------------------------------------------------------------------------------- new walk
pool_rows = len(index.pool_ids) if index is not None else 0
with st.container(border=True):
    st.markdown("**New walk**")
    # Outside the form: widgets in a form do not rerun the page when they change, and the budget input shown
    # below must follow this choice.
    budget_kind = st.radio("Budget as", [FRACTION, ROWS], horizontal=True, key="walk-budget-kind")
    with st.form("walk-settings", border=False):
        left, middle, right, budget_column = st.columns(4)
        delta = left.number_input("δ (consistency)", min_value=0.0, max_value=1.0, value=WalkSettings.delta,
                                  step=0.05, help="A candidate is accepted only if the running similarity to the "
                                                  "component stays at least δ times its previous value.")
        val_k = middle.number_input("val_k (explained variance)", min_value=0.0, max_value=1.0,
                                    value=WalkSettings.val_k, step=0.05,
                                    help="PCA of the target gradients keeps the fewest components that explain "
                                         "this share of their variance; each component gets its share of the "
                                         "budget.")
        graph_k = right.number_input("graph k", min_value=1, max_value=1024, value=WalkSettings.k, step=1,
                                     help="Neighbours per row in the kNN gradient graph the walk moves along.")
        if budget_kind == FRACTION:
            ratio = budget_column.number_input("Fraction of the pool", min_value=0.0, max_value=1.0,
                                               value=DEFAULT_RATIO, step=0.01, format="%.3f", key="walk-ratio")
            rows = None
        else:
            rows = budget_column.number_input("Rows", min_value=0, value=max(1, int(pool_rows * DEFAULT_RATIO)),
                                              step=1, key="walk-rows")
            ratio = None
        profile = st.radio("Profile", list(WALK_PROFILES), format_func=WALK_PROFILES.get, horizontal=True,
                           help="The default G2IS, or exactly the authors' Algorithm 1 (no hubness remedy).")
        submitted = st.form_submit_button("Run walk", type="primary", disabled=index is None)

if submitted:
    settings = WalkSettings(delta=float(delta), val_k=float(val_k), k=int(graph_k), profile=profile,
                            ratio=float(ratio) if ratio is not None else None,
                            budget=int(rows) if rows is not None else None)
    try:
        with st.spinner("Running the walk (loads the features; builds the graph if this k is new)..."):
            run_id = walk_view.start_walk(store, project, settings, index)
    except FeaturesMissing as error:
        st.warning(markdown_text(error))
        session.page_link("features.py", "Open the Features page")
    except (ValueError, RuntimeError, OSError) as error:
        st.error(f"The walk did not run: {markdown_text(error)}")
    else:
        open_run(run_id, 0)
        st.toast(f"Walk {run_id} stored.")

# ------------------------------------------------------------------------------------------- choose a run
runs = walk_view.walk_runs(store, project)
if not runs:
    st.info("No walk has been run on this project yet: set the parameters above and press **Run walk**.")
    st.stop()
labels = {run.run_id: run.label for run in runs}
url_run, url_step = st.query_params.get("run"), st.query_params.get("step")
if state.get("walk_run") not in labels:
    # A fresh session (refresh, shared link) reopens the URL's run and step; else the newest run.
    if url_run in labels:
        open_run(url_run, walk_view.parse_step(url_step))
    else:
        open_run(runs[0].run_id, 0)
state["walk_run_choice"] = state["walk_run"]
st.selectbox("Walk", list(labels), format_func=labels.get, key="walk_run_choice", on_change=on_run_choice,
             help="Every stored G2IS run of this project; reopening one replays its stored events.")

try:
    replay = cached_replay(store, root, state["walk_run"])
except ValueError as error:
    st.error(markdown_text(error))
    st.stop()
run = replay.run
st.query_params["run"] = run.run_id
for note in run.notes:
    st.caption(note)
if replay.event_count == 0:
    st.info("This run was stored without its walk events, so it cannot be stepped through: run a new walk.")
    st.stop()

current = index is not None and index.feature_key == run.feature_key
curve = cached_variance_curve(store, root, project, run.feature_key, index) if current else None
st.subheader("Core knowledge: PCA of the target gradients")
val_k = None if run.params.get("n_components") else run.params.get("val_k")  # a fixed count has no val_k cut
st.plotly_chart(walk_view.variance_figure(replay.components, val_k, curve), key="walk_variance")
if not current:
    st.caption("The project's features have changed since this run: rows it rejected are named by pool index only.")
pool_ids = index.pool_ids if current else None  # names the rows a step rejected (picked rows have stored ids)

# The map layout is the Map page's artifact (computed there once); without it the walk is shown without its path.
backdrop, map_note = None, None
if index is None:
    map_note = "The walk's path needs the project's gradient map, which needs its features."
else:
    layout = layout_info(store, project, "gradient", index=index)
    if layout is None:
        map_note = "No map layout has been computed for this project yet: compute it on the Map page to see the path."
    else:
        backdrop = cached_backdrop(store, root, layout["key"], layout)


# ------------------------------------------------------------------------------------------------ stepping
def on_step_input() -> None:
    set_step(state["walk_step_input"])


def on_component_jump() -> None:
    component = state.get("walk_component_jump")
    if component is not None:
        set_step(next(c.start_step for c in replay.components if c.component == component))
    state["walk_component_jump"] = None


def show_row(title: str, row: walk_view.RowView | None) -> None:
    if row is None:
        return
    source = f" · source {row.source}" if row.source else ""
    st.text(f"{title}: {row.label}{source}")  # st.text: user text shown as-is, never as markdown
    if row.text is not None:
        st.code(row.text, language=None, wrap_lines=True)


def step_panel(replay: walk_view.WalkReplay, backdrop, map_note, pool_ids) -> None:
    last = replay.last_step
    step = replay.clamp(state.get("walk_step", 0))
    if state.get("walk_playing"):
        now = time.monotonic()
        if now - state.get("walk_played_at", 0.0) >= 0.9 * PLAY_SECONDS:  # other reruns do not advance
            state["walk_played_at"] = now
            if step >= last:
                state["walk_playing"] = False
                st.rerun()  # the whole page: the timer goes away with playing
            step += 1
    set_step(step)
    st.query_params["step"] = str(step)

    first, back, forward, play, jump, component_jump = st.columns([1, 1, 1, 1, 2, 3], vertical_alignment="bottom")
    first.button("First", icon=":material/first_page:", on_click=set_step, args=(0,), disabled=step == 0,
                 key="walk_first")
    back.button("Back", icon=":material/chevron_left:", on_click=set_step, args=(step - 1,), disabled=step == 0,
                key="walk_back")
    forward.button("Next", icon=":material/chevron_right:", on_click=set_step, args=(step + 1,),
                   disabled=step >= last, key="walk_next")
    playing = bool(state.get("walk_playing"))
    if play.button("Pause" if playing else "Play", icon=":material/pause:" if playing else ":material/play_arrow:",
                   key="walk_play", disabled=step >= last and not playing):
        state["walk_playing"] = not playing
        state["walk_played_at"] = time.monotonic()
        st.rerun()  # the whole page, so the fragment gets (or loses) its timer
    jump.number_input("Step", min_value=0, max_value=last, step=1, key="walk_step_input", on_change=on_step_input)
    components = {c.component: c for c in replay.components}
    component_jump.selectbox(
        "Jump to a component's start", list(components), index=None, key="walk_component_jump",
        on_change=on_component_jump, placeholder="component...",
        format_func=lambda v: f"component {v} · budget {components[v].budget} · step {components[v].start_step}",
    )

    try:
        view, state["walk_window"] = walk_view.read_step(store, replay, step, pool_ids, state.get("walk_window"))
    except ValueError as error:
        st.error(markdown_text(error))
        return
    where = f" · component {view.component}" if view.component is not None else ""
    st.markdown(f"**Step {view.step} of {view.last_step}**{where} · {view.picks} row(s) accepted so far")
    if view.kind == "anchor" or view.verdict == "accepted":
        st.success(view.text, icon=":material/check_circle:")
    elif view.kind == "candidate":
        st.warning(view.text, icon=":material/block:")
    else:
        st.info(view.text, icon=":material/info:")

    text_column, curve_column = st.columns(2)
    with text_column:
        if view.context:
            st.text(view.context)
        show_row("Row in question", view.row)
        show_row("Conflicting row", view.conflict_row)
        if view.kind == "fallback" or view.row is None:
            show_row("The walk is at", view.from_row)
    with curve_column:
        picks = replay.picks_until(step)
        st.plotly_chart(walk_view.similarity_figure(picks, replay.components), key="walk_similarity")
    if backdrop is not None:
        focus = view.row or view.from_row
        st.plotly_chart(walk_view.walk_path_figure(backdrop, picks, focus.row_id if focus else None), key="walk_map")
        if backdrop.sampled:
            st.caption(f"Map: {len(backdrop.x)} of {backdrop.pool_rows} pool rows drawn as background; "
                       "every accepted row is on the path.")
    else:
        st.info(map_note)
        session.page_link("map.py", "Open the Map page")


st.subheader("Step through the walk")
state.pop("walk_window", None)  # a full run may follow new features; the step panel's own reruns reuse the window
# While playing, only the step panel reruns on its timer (the rest of the page stays as it is).
play_timer = PLAY_SECONDS if state.get("walk_playing") else None
st.fragment(run_every=play_timer)(step_panel)(replay, backdrop, map_note, pool_ids)
