"""The Evaluate page's choices, figures and texts, and the evaluation captions of Compare and Export.

``core.evaluation`` plans, runs and reports an evaluation; this module only lists what can be picked (stored
runs, past evaluations), draws a report (held-out loss per arm beside zero-shot and random, training curves per
unit), tabulates it, zips a unit's adapter for download and words a run's evaluation in one line.  Arm labels
name stored runs and methods, which users may write: they go into plotly labels through ``html.escape``.
"""
from __future__ import annotations

import html
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

from core import jobs
from core.evaluation.plan import METHOD_LABELS
from core.evaluation.report import ArmResult, EvaluationReport, run_evaluations
from core.evaluation.run import JOB_KIND
from core.features.estimate import format_duration
from core.selection.runs import METHOD_ALIASES
from core.store import Job, Store

# What the page offers to run now (random and zero-shot are part of every evaluation).
EVALUATE_METHODS = ("g2is", "less", "tsds", "embedding")
DEFAULT_SPLIT = 0.5  # the fraction of the targets the page proposes to hold out when the project has no eval file
# One colour per arm, the same in both figures (plotly's default qualitative palette).
ARM_COLOURS = ("#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A", "#19D3F3", "#FF6692", "#B6E880", "#FF97FF",
               "#FECB52")


def method_label(method: str) -> str:
    """A method's name as the evaluation labels its arm ("tsds" is TSDS's KNN-KDE variant)."""
    resolved = METHOD_ALIASES.get(method, method)
    return METHOD_LABELS.get(resolved, resolved)


# ------------------------------------------------------------------------------------------------ choices

def run_choices(store: Store, project: str) -> dict[str, str]:
    """The project's stored selection runs that can be evaluated, newest first: run id -> label.

    Random runs are left out: every evaluation trains random at the same budget itself, one draw per seed.
    A run made on a split of the targets says so: only an evaluation on that same split may judge it."""
    choices = {}
    for run in store.selection_runs(project):
        if run["method"] == "random":
            continue
        guided = (run["params"].get("targets") or {}).get("rows")
        split = f" · guided by {guided} target rows of a split" if guided else ""
        choices[run["id"]] = (f"{method_label(run['method'])} · {run['selected']}/{run['budget']} rows · "
                              f"{run['created']:%Y-%m-%d %H:%M} · {run['id']}{split}")
    return choices


def evaluation_choices(store: Store, project: str) -> dict[str, str]:
    """The project's stored evaluations, newest first: evaluation id -> label (its selections, rows, time)."""
    choices = {}
    for record in store.evaluations(project):
        judged = [arm["label"] for arm in record["arms"] if arm["method"] not in ("random", "zero-shot")]
        rows = record["eval_rows"]
        source = f"split {rows['split']['fraction']}" if rows["source"] == "split" else "evaluation file"
        choices[record["id"]] = (f"{record['created']:%Y-%m-%d %H:%M} · {', '.join(judged) or 'random only'} · "
                                 f"{len(rows['ids'])} rows ({source}) · {record['id']}")
    return choices


# ------------------------------------------------------------------------------------------------ jobs

def active_evaluation_job(store: Store, project: str) -> jobs.JobView | None:
    """The project's evaluation job that is queued or running (its worker alive), if any."""
    for job in store.jobs(project):
        if job.kind == JOB_KIND:
            current = jobs.view(store, job)
            if current.status in jobs.ACTIVE:
                return current
    return None


def evaluation_job(store: Store, project: str, evaluation_id: str) -> jobs.JobView | None:
    """The latest job that ran (or runs) the evaluation's units, if any."""
    for job in store.jobs(project):
        if job.kind == JOB_KIND and job.params.get("evaluation") == evaluation_id:
            return jobs.view(store, job)
    return None


def job_progress_text(job: Job) -> str:
    """The progress bar's line: the unit being trained and the steps (training examples x epochs, then the
    evaluation rows) done of all, with an ETA once the rate is known."""
    eta = f", ETA {format_duration(job.eta_seconds)}" if job.eta_seconds is not None else ""
    return f"{job.phase or 'starting'}: {job.done}/{job.total} steps{eta}"


# ------------------------------------------------------------------------------------------------ texts

def units_done(report: EvaluationReport) -> tuple[int, int]:
    """(finished units, all units) of the report (a unit shared by two arms counts once)."""
    finished = {key: loss is not None for arm in report.arms for key, loss in zip(arm.unit_keys, arm.losses)}
    return sum(finished.values()), len(finished)


def setup_caption(report: EvaluationReport) -> str:
    """What the evaluation measured on and how it trained, in one line."""
    args = report.args
    lora = args.get("lora") or {}
    max_tokens = f"at most {args['max_tokens']} tokens" if args.get("max_tokens") else "the features' max tokens"
    return (f"Evaluated on {report.rows_description}. Each fine-tune: a fresh LoRA (r={lora.get('r')}, "
            f"alpha={lora.get('alpha')}), {args.get('epochs')} epoch(s), learning rate {args.get('learning_rate')}, "
            f"{args.get('batch_size')} rows per step, {max_tokens}; {args.get('seeds')} seed(s).")


def status_caption(report: EvaluationReport) -> str:
    done, total = units_done(report)
    if report.complete:
        return f"All {total} units finished."
    return f"{done} of {total} units finished; the others are pending (shown as such below)."


def run_evaluation_caption(store: Store, run_id: str) -> str | None:
    """The newest evaluation result of a selection run in one line (Compare and Export), or None when it has none:
    e.g. "Evaluated (eval-3f2a...): held-out loss -4.1 % vs random (3 seed(s), spread ±0.8 %)"."""
    found = run_evaluations(store, run_id)
    if not found:
        return None
    evaluation_id, arm = found[0]
    more = f" (and {len(found) - 1} more on the Evaluate page)" if len(found) > 1 else ""
    return f"Evaluated ({evaluation_id}): {_arm_result_text(arm)}{more}"


def _arm_result_text(arm: ArmResult) -> str:
    """The arm's verdict in the report's own words, without its label (the caption sits beside the run)."""
    if arm.mean is None:
        return f"pending ({len(arm.losses)} seed(s) to train)"
    pending = sum(1 for loss in arm.losses if loss is None)
    text = arm.verdict.removeprefix(f"{arm.label}: ") + (f"; {pending} seed(s) pending" if pending else "")
    if arm.method == "random":  # the run is one seed's draw; the numbers are the arm's, over every draw
        return f"as one of the {len(arm.losses)} draws of the random baseline: {text}"
    return text


# ------------------------------------------------------------------------------------------------ table, adapters

def results_table(report: EvaluationReport) -> list[dict]:
    """One line per arm, as the CLI tabulates it (``EvaluationReport.lines``); a pending value is empty, and the
    "per seed" column says which seeds are pending (a number column must hold numbers only to be drawn)."""
    return report.lines()


@dataclass(frozen=True)
class AdapterDownload:
    """A finished fine-tune's adapter folder, as a download: the button's label and the zip's file name."""

    label: str
    file_name: str
    folder: str


def adapter_downloads(report: EvaluationReport) -> list[AdapterDownload]:
    """Every finished fine-tune whose adapter folder is still there, once (two arms can share a unit)."""
    seen: dict[str, AdapterDownload] = {}
    for arm in report.arms:
        for key, seed, folder in zip(arm.unit_keys, arm.seeds, arm.adapters):
            if folder is None or key in seen or not Path(folder).is_dir():
                continue
            seen[key] = AdapterDownload(f"{arm.label}, seed {seed}", f"adapter-{report.id}-{key[:12]}.zip", folder)
    return list(seen.values())


def adapter_zip(folder: str | Path) -> bytes:
    """The PEFT adapter folder (adapter_config.json, adapter_model.safetensors) as a zip, files at its root."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"the adapter folder {folder} is gone: run the evaluation again to train it")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------ figures

def _colours(report: EvaluationReport) -> dict[str, str]:
    trained = [arm.label for arm in report.arms if arm.method != "zero-shot"]
    return {label: ARM_COLOURS[i % len(ARM_COLOURS)] for i, label in enumerate(trained)}


def heldout_figure(report: EvaluationReport):
    """Held-out loss per trained arm: the mean over seeds with the spread as error bar, each seed's loss as a
    dot beside it; zero-shot and random (at each budget) as labelled horizontal lines.  Lower is better."""
    import plotly.graph_objects as go

    colours = _colours(report)
    arms = [arm for arm in report.arms if arm.method != "zero-shot" and arm.mean is not None]
    figure = go.Figure()
    for position, arm in enumerate(arms):
        label = html.escape(arm.label)
        figure.add_trace(go.Scatter(
            x=[position - 0.08], y=[arm.mean], mode="markers", name=label, legendgroup=label,
            marker=dict(symbol="diamond", size=13, color=colours[arm.label]),
            error_y=dict(type="data", array=[arm.spread or 0.0], visible=True),
            hovertemplate=f"{label}<br>mean %{{y:.4f}} ± {arm.spread or 0.0:.4f}<extra></extra>"))
        seeds = [(seed, loss) for seed, loss in zip(arm.seeds, arm.losses) if loss is not None]
        figure.add_trace(go.Scatter(
            x=[position + 0.12] * len(seeds), y=[loss for _, loss in seeds], mode="markers", legendgroup=label,
            showlegend=False, marker=dict(size=7, color=colours[arm.label], opacity=0.7),
            customdata=[seed for seed, _ in seeds],
            hovertemplate=f"{label}<br>seed %{{customdata}}: %{{y:.4f}}<extra></extra>"))
    references = [(arm, "dash") for arm in report.arms if arm.method == "random" and arm.mean is not None]
    references += [(arm, "dot") for arm in report.arms if arm.method == "zero-shot" and arm.mean is not None]
    for arm, dash in references:
        name = "zero-shot" if arm.method == "zero-shot" else f"random at {arm.budget} rows"
        figure.add_hline(y=arm.mean, line_dash=dash, line_color=colours.get(arm.label, "#666"),
                         annotation_text=html.escape(f"{name}: {arm.mean:.4f}"), annotation_position="top left")
    if not arms and not references:
        figure.add_annotation(text="no unit finished yet", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    figure.update_layout(
        height=420, margin=dict(l=10, r=10, t=30, b=10), yaxis_title="held-out loss (mean cross-entropy, lower is better)",
        xaxis=dict(tickvals=list(range(len(arms))), ticktext=[html.escape(arm.label) for arm in arms],
                   range=[-0.6, max(len(arms), 1) - 0.4]),
        legend=dict(orientation="h", y=-0.15))
    return figure


def curves_figure(report: EvaluationReport):
    """Training loss per optimizer step of every finished fine-tune (arm x seed), one colour per arm."""
    import plotly.graph_objects as go

    colours = _colours(report)
    figure = go.Figure()
    for arm in report.arms:
        label = html.escape(arm.label)
        first = True
        for seed, curve in zip(arm.seeds, arm.curves):
            if not curve:
                continue
            figure.add_trace(go.Scatter(
                x=list(range(1, len(curve) + 1)), y=curve, mode="lines+markers" if len(curve) < 3 else "lines",
                name=label, legendgroup=label, showlegend=first, line=dict(color=colours.get(arm.label, "#666")),
                hovertemplate=f"{label}, seed {seed}<br>step %{{x}}: %{{y:.4f}}<extra></extra>"))
            first = False
    if not figure.data:
        figure.add_annotation(text="no training curve yet", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    figure.update_layout(height=380, margin=dict(l=10, r=10, t=10, b=10), xaxis_title="optimizer step",
                         yaxis_title="training loss", legend=dict(orientation="h", y=-0.2))
    return figure
