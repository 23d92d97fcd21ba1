"""Headless command line: ``python -m core <command>``.

    ingest         read pool/target files (JSONL, JSON, Parquet, CSV/TSV, save_to_disk folders) into a project
    demo           create the built-in demo project
    features       estimate, then compute (in a background worker, or on a Ray cluster) and cache gradient features
    status         rows, features and jobs of a project (``--json`` for machines)
    dump-features  write pool.npy / targets.npy (raw projected float32) and their ids for other tools
    graph          build (or show the cached) kNN gradient graph of the pool
    select         run a selection method (g2is, less, tsds, random, embedding) and store the run
    walk           run G2IS and print its event stream, one event a line
    export         write a stored selection as JSONL or Parquet (messages, alpaca, sharegpt) with a manifest
    evaluate       fine-tune on selections beside random and zero-shot; held-out loss and exact match per seed
    jobs | cancel | resume | run-job   manage background jobs (run-job is what a worker process executes)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from core.config import PROJECTION_KINDS, FeatureSettings, FineTuneArguments
from core.data.ingest import ingest_roles
from core.data.projects import EDITABLE_SETTINGS, create_demo_project, edit_settings, project_settings, project_status
from core.data.records import BadRowsError, FormatError
from core.evaluation.plan import estimate_evaluation, plan_evaluation
from core.evaluation.report import evaluation_report
from core.evaluation.run import launch_evaluation
from core.features.distributed import RayUnavailable, require_ray
from core.features.featurize import learning_rate_weights, plan_features
from core.features.modeling import ModelError
from core.jobs import (
    ACTIVE,
    cancel,
    clear_retriable_errors,
    job_view,
    launch_features,
    measure_speed,
    request_features,
    resume,
    run_job,
    start_features_job,
    view,
)
from core.selection.export import EXPORT_FILE_TYPES, EXPORT_FORMATS, export_selection
from core.selection.g2is import G2IS_METHODS, G2ISParams
from core.selection.graph import DEFAULT_K, DEFAULT_K_NEG
from core.selection.methods import DEFAULT_RATIO, METHODS
from core.selection.runs import (
    DEFAULT_GEOMETRY,
    METHOD_ALIASES,
    FeaturesMissing,
    feature_index,
    load_project_features,
    parse_geometry,
    project_graph,
    run_selection,
    stored_graph_choice,
    walk_geometry,
)
from core.store import Store, StoreBusyError, StoreError

ALLOW_PARTIAL_HELP = ("use the rows whose features are done while others are missing (a job still running, or "
                      "features --limit); the run records its coverage.  Without it an incomplete project is refused")


def _store() -> Store:
    return Store()


def _settings_from_args(store: Store, args) -> FeatureSettings:
    flags = {"lora_targets": "lora_targets", "projection_kind": "proj_kind", "projection_dim": "proj_dim",
             "projection_seed": "proj_seed", "projection_sparsity": "proj_sparsity",
             "projection_factor_dim": "proj_factor_dim"}
    changes = {name: getattr(args, flags.get(name, name), None) for name in EDITABLE_SETTINGS}
    return edit_settings(project_settings(store, args.project), **changes)


def cmd_ingest(args) -> int:
    store = _store()
    if not args.pool and not args.targets and not args.eval:
        print("error: give --pool FILE..., --targets FILE... and/or --eval FILE...", file=sys.stderr)
        return 2
    roles = {role: paths for role, paths in (("pool", args.pool), ("targets", args.targets), ("eval", args.eval))
             if paths}
    existed = args.project in store.projects()
    try:  # every file of every role, or none: a rejected file leaves the project as it was
        results = ingest_roles(store, args.project, roles, on_error=args.on_error, group_field=args.group_field)
    except (BadRowsError, FormatError) as error:
        kept = f"project {args.project!r} is unchanged" if existed else f"project {args.project!r} was not created"
        print(f"error: {error}\nnothing was ingested: {kept}", file=sys.stderr)
        return 1
    for role, result in results.items():
        for report in result.reports:
            print(f"{role}: {report.file}: {report.rows} rows ({report.format}), {len(report.errors)} skipped")
        for error in result.errors[:20]:
            print(f"  skipped {error}")
        if len(result.errors) > 20:
            print(f"  ... and {len(result.errors) - 20} more (see `status --project {args.project}`)")
    counts = store.row_counts(args.project)
    print(f"project {args.project}: {counts['pool']} pool rows, {counts['targets']} target rows")
    return 0


def cmd_demo(args) -> int:
    store = _store()
    project = create_demo_project(store, args.project)
    counts = store.row_counts(project)
    print(f"demo project {project!r}: {counts['pool']} pool rows, {counts['targets']} target rows ({store.root / 'demo'})")
    return 0


def _bar(job_view, width: int = 30) -> str:
    job = job_view.job
    fraction = job.done / job.total if job.total else 0.0
    filled = int(round(width * fraction))
    rate = f"{job.rate:.2f} rows/s" if job.rate else "-- rows/s"
    eta = f"ETA {job.eta_seconds:.0f} s" if job.eta_seconds is not None else "ETA --"
    return f"[{'#' * filled}{'.' * (width - filled)}] {job.done}/{job.total} {rate} {eta} {job.phase or ''}"


def watch(store: Store, job_id: str, stream=sys.stderr, out=None) -> int:
    """Draw a progress bar until the job ends; Ctrl-C cancels it (finished chunks stay cached)."""

    interactive = stream.isatty()
    last_line = ""
    try:
        while True:
            current = job_view(store, job_id)
            line = _bar(current)
            if line != last_line:
                stream.write(("\r" + line.ljust(110)) if interactive else line + "\n")
                stream.flush()
                last_line = line
            if current.status not in ACTIVE:
                break
            time.sleep(1.0)  # each poll opens the database (~35 ms): once a second is plenty for a bar
    except KeyboardInterrupt:
        cancel(store, job_id)
        stream.write("\ncancelling; finished chunks are kept, run the same command again to resume\n")
        return 130
    if interactive:
        stream.write("\n")
    job = current.job
    if current.status == "done":
        print(f"job {job_id} done: {job.message}", file=out or sys.stdout)
        return 0
    print(f"job {job_id} {current.status}: {job.message or ''} (log: {store.root / 'jobs' / (job_id + '.log')})", file=sys.stderr)
    return 1


def cmd_features(args) -> int:
    store = _store()
    if args.ray:  # (core.features.distributed loads torch: imported only for a Ray run)

        if args.detach:
            raise ValueError("--ray runs the job in this process (the driver of the Ray cluster): drop --detach")
        try:
            require_ray()  # before planning: say at once that Ray is missing
        except RayUnavailable as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    settings = _settings_from_args(store, args)
    request = request_features(store, args.project, settings, args.limit)
    if args.retry_errors:
        cleared, request = clear_retriable_errors(store, request)
        print(f"retrying {cleared} row(s) that failed with retriable errors")
    if request.cached:
        plan = request.plan
        print(f"features cached: {len(plan.rows['pool'])} pool rows and {len(plan.rows['targets'])} target rows "
              f"x {len(plan.checkpoints)} checkpoint(s), nothing to compute")
        return 0
    if not args.ray and not args.no_probe:  # before promising a time: this machine's speed on a few real rows
        request = measure_speed(store, request, log=lambda text: print(text, flush=True))
    print("estimate: " + request.estimate.text() + (" (for one machine)" if args.ray else ""))
    if args.inline or args.ray:  # a job row all the same, so that `jobs`, `status` and the app see the run
        job_id = start_features_job(store, args.project, settings, args.limit, spawn=False, ray_address=args.ray)
        return run_job(store, job_id)
    job_id, how = launch_features(store, request)
    print(f"{how} job {job_id} (log: {store.root / 'jobs' / (job_id + '.log')})")
    if args.detach:
        return 0
    return watch(store, job_id)


def cmd_status(args) -> int:
    status = project_status(_store(), args.project)
    if args.json:
        print(json.dumps(status, indent=1, default=str))
        return 0
    print(f"project {status['project']}  (cache {status['cache']})")
    print(f"  rows: {status['rows']['pool']} pool, {status['rows']['targets']} targets; {status['ingest_errors']} bad rows skipped at ingest")
    for f in status["files"]:
        print(f"    {f['role']:<7} {f['file']}  {f['format']}  {f['rows']} rows, {f['errors']} skipped")
    for f in status["features"]:
        print(f"  features {f['config']} {f['role']:<7} {f['gradient_type']:<4} epoch {f['epoch']}: "
              f"{f['features']}/{f['rows']} rows, {f['errors']} errors, {f['truncated']} truncated")
    for j in status["jobs"][:10]:
        print(f"  job {j['id']} {j['status']:<11} {j['done']}/{j['total']} {j['phase'] or ''} {j['message'] or ''}")
    return 0


def cmd_dump(args) -> int:
    store = _store()
    stored = store.project_settings(args.project)
    if not stored:
        print(f"error: project {args.project!r} has no feature settings yet: run `features` first", file=sys.stderr)
        return 1
    plan = plan_features(store, args.project, FeatureSettings.from_dict(stored))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = learning_rate_weights(store, plan)
    manifest = {"project": args.project, "settings": stored, "checkpoints": []}
    last, several = plan.checkpoints[-1], len(plan.checkpoints) > 1
    expected = store.row_counts(args.project)
    for checkpoint in plan.checkpoints:
        # The last (or only) checkpoint gets the plain documented names; with several, each also gets .ckptN.
        suffixes = ([f".ckpt{checkpoint.epoch}"] if several else []) + ([""] if checkpoint == last else [])
        entry = {"epoch": checkpoint.epoch, "lr_weight": weights[checkpoint.key]}
        for role, ids_stem in (("pool", "pool_ids"), ("targets", "target_ids")):
            config = next(c for c in plan.configs if c.role == role and c.checkpoint == checkpoint)
            ids, matrix, _ = store.feature_matrix(args.project, role, config.key)
            if len(ids) < expected[role]:
                print(f"warning: {expected[role] - len(ids)} of {expected[role]} {role} rows have no features "
                      f"(failed or not computed; see status)", file=sys.stderr)
            for suffix in suffixes:
                np.save(out / f"{role}{suffix}.npy", matrix.astype(np.float32, copy=False))
                (out / f"{ids_stem}{suffix}.json").write_text(json.dumps(ids))
            entry[role] = {"config": config.key, "rows": len(ids)}
        manifest["checkpoints"].append(entry)
    graph = _latest_graph(store, args.project, args.geometry)
    if graph is not None:
        np.save(out / "graph.npy", graph["arrays"]["neighbors"].astype(np.int64))
        manifest["graph"] = {k: v for k, v in graph["info"].items() if k != "created"}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
    print(f"wrote {out}/pool.npy, targets.npy, pool_ids.json, target_ids.json"
          + (", graph.npy" if graph is not None else "") + " and manifest.json")
    return 0


def _latest_graph(store: Store, project: str, geometry: str) -> dict | None:
    try:
        index = feature_index(store, project)
    except FeaturesMissing:
        return None
    info = store.latest_graph(index.feature_key, geometry)
    return {"info": info, "arrays": store.load_graph(info["key"])} if info else None


def cmd_graph(args) -> int:
    store = _store()
    features = load_project_features(store, args.project, allow_partial=args.allow_partial)
    started = time.perf_counter()
    center, rescale = parse_geometry(args.geometry)
    graph, info = project_graph(store, features, k=args.k, k_neg=args.k_conflict, rebuild=args.rebuild,
                                center=center, rescale=rescale)
    took = time.perf_counter() - started
    negative = int((graph.conflict_similarities < 0).sum())
    print(f"graph {info['key']} ({info['geometry']}): {graph.n_nodes} nodes, k={graph.k} neighbours each (built with {info['backend']} "
          f"in {info['seconds']:.2f} s; this call {took:.2f} s), {negative} conflict edges (negative cosine)",
          file=sys.stderr if args.json else sys.stdout)
    if not (args.stats or args.json):
        return 0
    from core.selection.hubness import hubness_stats
    from core.views.graph import hub_table, purity_table

    stats = hubness_stats(graph.neighbors, features.pool_sources)
    hubs = hub_table(stats, features.pool_ids, features.pool_texts, features.pool_sources, preview_chars=60)
    purity = purity_table(stats)
    if args.json:
        print(json.dumps({"graph": info["key"], "n": stats.n, "k": stats.k, "level": stats.level,
                          "verdict": stats.verdict(), "skewness": stats.skewness, "max_in_degree": stats.max_in_degree,
                          "top_percent_rows": stats.top_percent_rows, "top_percent_share": stats.top_percent_share,
                          "top_ten_share": stats.top_ten_share, "anti_hub_share": stats.anti_hub_share,
                          "hubs": hubs, "purity_by_source": purity}))
        return 0
    print(f"hubness: {stats.verdict()}")
    print(f"in-degree skewness {stats.skewness:.3f}; max in-degree {stats.max_in_degree} (k={stats.k}); "
          f"neighbour slots held by the top 1% of rows ({stats.top_percent_rows}): {stats.top_percent_share:.1%}, "
          f"by the top 10: {stats.top_ten_share:.1%}; nobody's neighbour: {stats.anti_hub_share:.1%} of rows")
    print(f"top {len(hubs)} hubs:")
    print(f"  {'id':<28} {'source':<20} {'in-degree':>9}  text")
    for hub in hubs:
        print(f"  {hub['id']:<28} {hub['source']:<20} {hub['in-degree']:>9}  {hub['text']}")
    if purity:
        print("neighbour purity by source (own-source share of a row's neighbours, vs the source's pool share):")
        print(f"  {'source':<20} {'rows':>6} {'pool share':>10} {'own-source':>10} {'mean in-degree':>14}")
        for row in purity:
            own = "-" if row["own-source neighbours (%)"] is None else f"{row['own-source neighbours (%)']:.1f}%"
            print(f"  {row['source'] or '(no source)':<20} {row['rows']:>6} {row['pool share (%)']:>9.1f}% "
                  f"{own:>10} {row['mean in-degree']:>14.1f}")
    return 0


def _method_params(args) -> dict:
    params: dict = {}
    for name in ("delta", "val_k", "n_components", "seed", "anchor_candidates"):
        value = getattr(args, name, None)
        if value is not None:
            params[name] = value
    if args.no_conflict_check:
        params["conflict_check"] = False
    if args.local_only:
        params["local_steps_only"] = True
    if args.no_graph:
        params["use_graph"] = False
    for item in args.param or []:
        name, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--param takes NAME=VALUE, got {item!r}")
        try:
            params[name] = json.loads(raw)
        except json.JSONDecodeError:
            params[name] = raw
    return params


def cmd_select(args, walk: bool = False) -> int:
    store = _store()
    method = "g2is" if walk else args.method
    params = _method_params(args)
    graph = None
    if method in G2IS_METHODS and params.get("use_graph", True):
        if args.k is not None:
            params["k"] = args.k
        else:  # the graph the user built with `graph --k ...`, when it is the only one
            index = feature_index(store, args.project, allow_partial=args.allow_partial)
            graph, note = stored_graph_choice(store, index.feature_key, walk_geometry(method, params))
            print(f"note: {note}", file=sys.stderr)
    printer = (lambda event: print(f"{event.kind:<15} {event.describe()}")) if walk and args.steps else None
    run = run_selection(store, args.project, method, ratio=args.ratio, budget=args.budget, params=params,
                        graph=graph, allow_partial=args.allow_partial, on_event=printer)
    result = run.result
    if args.out:
        manifest = export_selection(store, run.run_id, args.format, args.out)
        print(f"wrote {manifest['selected']} rows to {manifest['path']} ({args.format}) and {manifest['manifest_path']}",
              file=sys.stderr)
    if args.json:
        print(json.dumps({"run": run.run_id, "method": result.method, "budget": result.budget, "notes": result.notes,
                          "rows": [run.features.pool_ids[r] for r in result.rows]}))
        return 0
    if walk and args.steps:
        print(f"run {run.run_id}: {len(result.rows)} of {result.budget} rows selected, {run.events} events stored")
        return 0
    print(f"run {run.run_id}: {result.method}, {len(result.rows)} of {result.budget} rows")
    for note in result.notes:
        print(f"  note: {note}")
    for rank, (row, score, reason) in enumerate(zip(result.rows, result.scores, result.reasons)):
        if rank >= args.show:
            print(f"  ... {len(result.rows) - rank} more (--json or --out for all)")
            break
        print(f"  {rank + 1:>4}. {run.features.pool_ids[row]:<28} {run.features.pool_sources[row]:<20} {score:+.4f}  {reason}")
    return 0


def cmd_evaluate(args) -> int:
    store = _store()
    if not args.runs and not args.methods:
        raise ValueError("give --runs RUN,RUN (stored selections) and/or --methods g2is,less,... (run now)")
    if args.eval_file:
        ingest_roles(store, args.project, {"eval": args.eval_file})
    defaults = FineTuneArguments()
    lora = defaults.lora
    if args.lora_r is not None or args.lora_alpha is not None:
        lora = replace(lora, r=args.lora_r or lora.r, alpha=args.lora_alpha or lora.alpha)
    changes = {"learning_rate": args.lr, "epochs": args.epochs, "batch_size": args.batch_size, "seeds": args.seeds,
               "max_tokens": args.max_tokens, "generate_tokens": args.generate_tokens}
    training = replace(defaults, lora=lora, **{k: v for k, v in changes.items() if v is not None})
    plan = plan_evaluation(store, args.project, runs=_names(args.runs), methods=_names(args.methods),
                           budget=args.budget, ratio=args.ratio, split=args.eval_split, split_seed=args.split_seed,
                           all_pool=args.all_pool, args=training, allow_partial=args.allow_partial)
    info = sys.stderr if args.json else sys.stdout
    print(f"evaluation {plan.id}: {', '.join(arm.label for arm in plan.arms)}", file=info)
    for note in plan.notes:
        print(f"  note: {note}", file=info)
    print("estimate: " + estimate_evaluation(store, plan).text(), file=info)
    if plan.pending(store):
        if args.inline:  # (its log lines go where the other information goes: stdout is the JSON's with --json)
            with contextlib.redirect_stdout(info):
                code = run_job(store, launch_evaluation(store, plan, spawn=False)[0])
        else:
            job_id, how = launch_evaluation(store, plan)
            print(f"{how} job {job_id} (log: {store.root / 'jobs' / (job_id + '.log')})", file=info)
            if args.detach:
                return 0
            code = watch(store, job_id, out=info)
        if code:
            return code
    report = evaluation_report(store, plan.id)
    if args.json:
        print(json.dumps(report.to_dict(), default=str))
        return 0
    print(report.table())
    return 0


def _names(text: str | None) -> list[str]:
    return [name.strip() for name in (text or "").split(",") if name.strip()]


def cmd_export(args) -> int:
    store = _store()
    run_id = args.run
    if run_id is None:
        runs = store.selection_runs(args.project, args.method)
        if not runs:
            raise ValueError(f"project {args.project!r} has no selection runs{' for ' + args.method if args.method else ''}: "
                             "run `python -m core select` first")
        run_id = runs[0]["id"]
    manifest = export_selection(store, run_id, args.format, args.out, file_type=args.file_type,
                                llamafactory=args.llamafactory)
    print(f"wrote {manifest['selected']} rows of run {run_id} to {manifest['path']} and {manifest['manifest_path']}")
    factory = manifest["llamafactory"]
    if factory:
        print(f"LLaMA-Factory: dataset {factory['dataset']!r} in {factory['dataset_info']} "
              f"(dataset_dir: {factory['dataset_dir']}, dataset: {factory['dataset']})")
        if factory["skipped_rows"]:
            print(f"warning: LLaMA-Factory would skip {len(factory['skipped_rows'])} rows whose turns do not alternate "
                  f"user/assistant, e.g. {factory['skipped_rows'][:3]}", file=sys.stderr)
    return 0


def cmd_jobs(args) -> int:
    store = _store()
    for job in store.jobs(args.project):
        current = view(store, job)
        print(f"{job.id} {job.project} {current.status:<11} {job.done}/{job.total} {job.phase or ''} {job.message or ''}")
    return 0


def cmd_cancel(args) -> int:
    cancel(_store(), args.job)
    print(f"cancel requested for {args.job}")
    return 0


def cmd_resume(args) -> int:
    store = _store()
    current = resume(store, args.job)
    print(f"job {args.job}: {current.status}")
    return 0 if args.detach else watch(store, args.job)


def cmd_run_job(args) -> int:
    return run_job(_store(), args.job)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="G2IS Explorer: gradient-based instruction data selection")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="read pool and target files (.jsonl, .json, .parquet, .csv, .tsv or a datasets "
                       "save_to_disk folder) into a project")
    p.add_argument("--project", required=True)
    p.add_argument("--pool", nargs="+", default=[], help="pool files: .jsonl, .json, .parquet, .csv, .tsv, or a folder "
                   "written by datasets' save_to_disk (format detected per file, from the columns for tables)")
    p.add_argument("--targets", nargs="+", default=[], help="target files, of the same kinds as --pool")
    p.add_argument("--eval", nargs="+", default=[], help="evaluation rows for `evaluate` (never used to select)")
    p.add_argument("--on-error", choices=("fail", "skip"), default="fail", help="bad rows abort the ingest (fail) or are skipped and reported")
    p.add_argument("--group-field", help="dotted field holding the target group/subtask (default: group, subtask, task, subject, category, meta.*)")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("demo", help="create the built-in demo project")
    p.add_argument("--project", default=None)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("features", help="compute and cache gradient features")
    p.add_argument("--project", required=True)
    p.add_argument("--model", help="'smollm2' (default), a .gguf file, a model folder or a hub id")
    p.add_argument("--limit", type=int, help="only the first N pool rows")
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--truncation", choices=("right", "left"),
                   help="which end a row longer than --max-tokens loses: right (default: a prompt that fills it leaves "
                        "no answer, an error row) or left (the prompt's start, keeping the first answer whole)")
    p.add_argument("--lora-r", type=int)
    p.add_argument("--lora-alpha", type=int)
    p.add_argument("--lora-targets", help="comma-separated module names, e.g. q_proj,k_proj,v_proj,o_proj")
    p.add_argument("--proj-kind", choices=PROJECTION_KINDS,
                   help="countsketch (default, sparse JL), rademacher (dense, LESS's) or kronecker (LoGra-style: "
                        "each LoRA module projected from its activations, for large ranks)")
    p.add_argument("--proj-dim", type=int)
    p.add_argument("--proj-seed", type=int)
    p.add_argument("--proj-sparsity", type=int)
    p.add_argument("--proj-factor-dim", type=int, help="kronecker: each side of a module's gradient is projected "
                   "to at most this many coordinates (default 64)")
    p.add_argument("--warmup-fraction", type=float)
    p.add_argument("--warmup-epochs", type=int)
    p.add_argument("--warmup-checkpoints", choices=("last", "all"))
    p.add_argument("--device", help="auto (default), cpu, cuda")
    p.add_argument("--batch-size", type=int, help="most examples per batched backward on CUDA (default 32; fewer "
                   "once a batch runs out of GPU memory: the cap on padded tokens is learned)")
    p.add_argument("--chunk-rows", type=int)
    p.add_argument("--chunk-seconds", type=float)
    p.add_argument("--storage-dtype", choices=("float32", "float16"))
    p.add_argument("--precision", choices=("float32", "bf16"),
                   help="bf16: the batched CUDA path under bf16 autocast (the CPU loop always runs in float32)")
    p.add_argument("--retry-errors", action="store_true",
                   help="compute again the rows that failed with retriable errors (out of memory, ...) under the "
                        "current settings; rows too long for --max-tokens keep their error")
    p.add_argument("--no-probe", action="store_true",
                   help="estimate without first timing a few rows on this machine (done when the speed of these "
                        "settings was never measured here; a model load and a few seconds)")
    p.add_argument("--detach", action="store_true", help="start the background job and return")
    p.add_argument("--inline", action="store_true", help="compute in this process instead of a background worker")
    p.add_argument("--ray", metavar="ADDRESS", help="compute on a Ray cluster (HOST:PORT, auto, ray://HOST:10001, or "
                   "local for this machine alone), driven from this process; needs the ray extra: pip install -e '.[ray]'")
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("status", help="rows, features and jobs of a project")
    p.add_argument("--project", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("dump-features", help="write the features as .npy files for other tools")
    p.add_argument("--project", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--geometry", default=DEFAULT_GEOMETRY, help="which stored graph goes to graph.npy (see graph)")
    p.set_defaults(func=cmd_dump)

    p = sub.add_parser("graph", help="build (or show the cached) kNN gradient graph of the pool")
    p.add_argument("--project", required=True)
    p.add_argument("--k", type=int, default=DEFAULT_K, help=f"neighbours per row (default {DEFAULT_K})")
    p.add_argument("--k-conflict", type=int, default=DEFAULT_K_NEG,
                   help=f"most negative neighbours kept per row (default {DEFAULT_K_NEG})")
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--geometry", default=DEFAULT_GEOMETRY,
                   help=f"how neighbours are ranked: {DEFAULT_GEOMETRY} (default: the graph the default G2IS walks), "
                        "cosine (the paper's, what g2is-paper walks), csls, local, mutual (mutual kNN), centred+csls, "
                        "centred+local, centred+mutual")
    p.add_argument("--allow-partial", action="store_true", help=ALLOW_PARTIAL_HELP)
    p.add_argument("--stats", action="store_true",
                   help="diagnose hubness: in-degree skewness, the top hubs with their text, neighbour purity by source")
    p.add_argument("--json", action="store_true", help="the --stats numbers as one JSON object (implies --stats)")
    p.set_defaults(func=cmd_graph)


    for name in ("select", "walk"):
        p = sub.add_parser(name, help="run a selection method and store the run" if name == "select"
                           else "run G2IS and print its event stream (with --steps)")
        p.add_argument("--project", required=True)
        if name == "select":
            p.add_argument("--method", required=True, choices=(*METHODS, *METHOD_ALIASES))
        else:
            p.add_argument("--steps", action="store_true", help="print every event, one a line")
        size = p.add_mutually_exclusive_group(required=True)
        size.add_argument("--ratio", type=float, help="fraction of the pool, e.g. 0.01")
        size.add_argument("--budget", type=int, help="number of rows")
        p.add_argument("--k", type=int, help="G2IS graph neighbours (default: the project's stored graph when it has "
                       f"exactly one for these features, else {DEFAULT_K})")
        p.add_argument("--delta", type=float, help=f"G2IS consistency threshold (default {G2ISParams.delta})")
        p.add_argument("--val-k", type=float, help=f"G2IS PCA cumulative explained variance (default {G2ISParams.val_k})")
        p.add_argument("--n-components", type=int, help="G2IS: a fixed number of PCA components instead of --val-k")
        p.add_argument("--anchor-candidates", type=int, help=f"G2IS anchor list length (default {G2ISParams.anchor_candidates})")
        p.add_argument("--no-conflict-check", action="store_true", help="G2IS ablation: skip the no-conflict rule")
        p.add_argument("--local-only", action="store_true", help="G2IS ablation: no fallback to the global ranking")
        p.add_argument("--no-graph", action="store_true", help="G2IS ablation: anchors and global ranking only")
        p.add_argument("--seed", type=int, help="random / TSDS seed")
        p.add_argument("--allow-partial", action="store_true", help=ALLOW_PARTIAL_HELP)
        p.add_argument("--param", action="append", metavar="NAME=VALUE", help="any other method parameter (JSON value)")
        p.add_argument("--json", action="store_true", help="print the selected pool ids in order, as JSON")
        p.add_argument("--out", help="also write the selected rows to this JSONL file (with a manifest beside it)")
        p.add_argument("--format", choices=EXPORT_FORMATS, default="messages", help="format for --out")
        p.add_argument("--show", type=int, default=20, help="rows to list (default 20)")
        p.set_defaults(func=(lambda a: cmd_select(a, walk=True)) if name == "walk" else cmd_select)

    p = sub.add_parser("evaluate", help="fine-tune on selections (and random, zero-shot) and measure held-out loss")
    p.add_argument("--project", required=True)
    p.add_argument("--runs", help="stored selection run ids, comma-separated")
    p.add_argument("--methods", help="methods to run now at one budget, comma-separated (g2is,less,tsds,embedding); "
                   "random at the same budget and zero-shot are always measured")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--budget", type=int, help="rows per selection of --methods")
    size.add_argument("--ratio", type=float, help=f"fraction of the pool (default {DEFAULT_RATIO})")
    p.add_argument("--eval-file", nargs="+", help="evaluation rows (ingested as the project's eval role)")
    p.add_argument("--eval-split", type=float, help="hold out this fraction of the targets to evaluate (the rest "
                   "guides --methods); without it the project's evaluation file is used")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--all-pool", action="store_true", help="also fine-tune on every pool row (small pools only)")
    p.add_argument("--seeds", type=int, help=f"fine-tunes per selection (default {FineTuneArguments.seeds})")
    p.add_argument("--epochs", type=int, help=f"default {FineTuneArguments.epochs}")
    p.add_argument("--lr", type=float, help=f"learning rate (default {FineTuneArguments.learning_rate})")
    p.add_argument("--batch-size", type=int, help=f"examples per step (default {FineTuneArguments.batch_size})")
    p.add_argument("--lora-r", type=int)
    p.add_argument("--lora-alpha", type=int)
    p.add_argument("--max-tokens", type=int, help="default: the project's feature max tokens")
    p.add_argument("--generate-tokens", type=int, help="greedy tokens decoded per checkable row for exact match "
                   f"(default {FineTuneArguments.generate_tokens}; 0: loss only)")
    p.add_argument("--allow-partial", action="store_true", help=ALLOW_PARTIAL_HELP)
    p.add_argument("--inline", action="store_true", help="run in this process instead of a background worker")
    p.add_argument("--detach", action="store_true", help="start the background job and return")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="write a stored selection as JSONL or Parquet with a manifest")
    p.add_argument("--project", required=True)
    p.add_argument("--run", help="selection run id (default: the project's latest, or latest of --method)")
    p.add_argument("--method")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="messages", help="the records (default messages)")
    p.add_argument("--file-type", choices=EXPORT_FILE_TYPES,
                   help="the container, same records either way (default: --out's suffix .parquet, else jsonl)")
    p.add_argument("--out", help="output path (default: cache/exports/<run>.<format>.<jsonl|parquet>)")
    p.add_argument("--llamafactory", action="store_true",
                   help="also write this export's entry into dataset_info.json beside the file (merged with the "
                        "entries there), so LLaMA-Factory trains on it with dataset_dir: that folder, dataset: NAME")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("jobs", help="list jobs")
    p.add_argument("--project")
    p.set_defaults(func=cmd_jobs)
    for name, func in (("cancel", cmd_cancel), ("resume", cmd_resume), ("run-job", cmd_run_job)):
        p = sub.add_parser(name, help=f"{name} a job")
        p.add_argument("job")
        if name == "resume":
            p.add_argument("--detach", action="store_true")
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (BadRowsError, FormatError, ModelError, StoreError, StoreBusyError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
