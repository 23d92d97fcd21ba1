"""What an evaluation trains and measures: its arms, their units, and the keys that make each unit computed once.

An *arm* is one selection to judge -- a stored selection run, a method run now at a budget, random at the same
budget (always there, one draw per seed), every pool row (optional) -- and the zero-shot model (always there).
Each arm has one *unit* per seed: a fresh adapter trained on the arm's rows with that seed.  A unit's key covers
everything that changes its numbers (the model, chat template, max tokens, training arguments, seed, the
training rows' and evaluation rows' contents), so a unit shared by two evaluations, or finished before a job was
killed, is never trained again.

``plan_evaluation`` runs the selections it needs (stored as ordinary selection runs), checks that no row that
guided a selection evaluates it, and stores the plan; ``estimate_evaluation`` says what the pending units cost.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from core.config import FeatureSettings, FineTuneArguments, stable_hash
from core.data.projects import project_settings
from core.evaluation.answers import reference_answer
from core.evaluation.rows import EvaluationRows, check_guided_by, check_trains_apart, evaluation_rows
from core.features.estimate import format_duration, training_rate
from core.features.modeling import (
    encode_messages,
    load_tokenizer,
    model_key,
    parameter_count,
    pick_device,
    resolve_model,
    template_key,
)
from core.selection.compare import default_params, matches_defaults
from core.selection.methods import DEFAULT_RATIO, METHODS, budget_from
from core.selection.runs import METHOD_ALIASES, load_project_features, run_selection, with_targets
from core.store import Store, StoredRow

# Bump when a code change alters what a unit measures with unchanged inputs: every unit key changes.
EVAL_CODE_VERSION = 1
METHOD_LABELS = {"g2is": "G2IS", "g2is-paper": "G2IS (paper)", "less": "LESS", "less-rr": "LESS round-robin", "tsds-kde": "TSDS",
                 "tsds-uniform": "TSDS (uniform)", "embedding": "embedding", "random": "random"}
# One decoded token costs about this many tokens of a forward+backward (the estimate's rough rule, see there).
DECODE_TOKEN_COST = 4
# An "all pool rows" arm trains on every pool row per seed: offered only up to this many rows.
ALL_POOL_MAX_ROWS = 2000


@dataclass(frozen=True)
class Unit:
    """One fine-tune (``kind="finetune"``, rows and a seed) or the untrained model (``"zero-shot"``)."""

    key: str
    kind: str
    seed: int | None
    train_ids: tuple[str, ...]  # pool row ids, in the order trained (content-hash order: the same set, same numbers)

    def record(self) -> dict:
        return {"key": self.key, "kind": self.kind, "seed": self.seed, "train_ids": list(self.train_ids)}


@dataclass(frozen=True)
class Arm:
    label: str
    method: str  # a selection method, "all" (every pool row) or "zero-shot"
    budget: int
    run_ids: tuple[str | None, ...]  # the selection run of each unit (random: one draw per seed)
    params: dict
    units: tuple[Unit, ...]

    def record(self) -> dict:
        return {"label": self.label, "method": self.method, "budget": self.budget, "run_ids": list(self.run_ids),
                "params": self.params, "units": [unit.record() for unit in self.units]}

    @classmethod
    def from_record(cls, record: dict) -> Arm:
        units = tuple(Unit(u["key"], u["kind"], u["seed"], tuple(u["train_ids"])) for u in record["units"])
        return cls(record["label"], record["method"], record["budget"], tuple(record["run_ids"]), record["params"], units)


@dataclass
class EvaluationPlan:
    id: str
    project: str
    settings: FeatureSettings  # the project's (model, max tokens, device)
    args: FineTuneArguments
    rows: dict  # EvaluationRows.record()
    arms: list[Arm]
    notes: list[str] = field(default_factory=list)

    @property
    def max_tokens(self) -> int:
        return self.args.max_tokens or self.settings.max_tokens

    @property
    def units(self) -> list[Unit]:
        """Every unit once (two arms may share one, e.g. a method and random picking the same rows)."""
        seen: dict[str, Unit] = {}
        for arm in self.arms:
            for unit in arm.units:
                seen.setdefault(unit.key, unit)
        return list(seen.values())

    def pending(self, store: Store) -> list[Unit]:
        finished = store.eval_units([unit.key for unit in self.units])
        return [unit for unit in self.units if unit.key not in finished]


def load_plan(store: Store, evaluation_id: str) -> EvaluationPlan:
    record = store.evaluation(evaluation_id)
    if record is None:
        raise ValueError(f"no evaluation {evaluation_id!r}")
    params = record["params"]
    return EvaluationPlan(record["id"], record["project"], FeatureSettings.from_dict(params["settings"]),
                          FineTuneArguments.from_dict(params["args"]), record["eval_rows"],
                          [Arm.from_record(arm) for arm in record["arms"]], params.get("notes", []))


def _unit_key(kind: str, seed: int | None, train: Sequence[StoredRow], context: list, args: FineTuneArguments) -> str:
    # (decoding length changes the accuracy a unit measures, not its adapter: in the key, not in training_numbers)
    numbers = {**(args.training_numbers(seed) if kind == "finetune" else {}), "generate_tokens": args.generate_tokens}
    return stable_hash([kind, EVAL_CODE_VERSION, context, numbers, sorted(row.content_hash for row in train)])


def _finetune_units(train: Sequence[StoredRow], seeds: Sequence[int], context: list, args: FineTuneArguments) -> tuple[Unit, ...]:
    ordered = sorted(train, key=lambda row: row.content_hash)
    ids = tuple(row.row_id for row in ordered)
    return tuple(Unit(_unit_key("finetune", seed, ordered, context, args), "finetune", seed, ids) for seed in seeds)


def plan_evaluation(
    store: Store,
    project: str,
    *,
    runs: Sequence[str] = (),
    methods: Sequence[str] = (),
    variants: Sequence[tuple[str, str, dict]] = (),
    budget: int | None = None,
    ratio: float | None = None,
    split: float | None = None,
    split_seed: int = 0,
    all_pool: bool = False,
    args: FineTuneArguments | None = None,
    allow_partial: bool = False,
) -> EvaluationPlan:
    """Plan (and store) the evaluation of stored runs and/or methods run now at one budget, beside random at the
    same budget and zero-shot.  ``variants``: more arms run now, each (label, method, params), e.g. a G2IS profile
    with one remedy ("g2is+center", "g2is", {"center_pool": True}).  Raises ``EvaluationOverlap`` when rows that
    guided a selection would evaluate it."""
    args = args or FineTuneArguments()
    settings = project_settings(store, project)
    resolved = resolve_model(settings.model)
    tokenizer = load_tokenizer(resolved)
    max_tokens = args.max_tokens or settings.max_tokens
    # A row whose answer does not fit (the features' max tokens, or the fine-tune's) can neither guide nor measure.
    fits = min(max_tokens, settings.max_tokens)
    evaluation = evaluation_rows(store, project, split, split_seed,
                                 usable=lambda row: encode_messages(tokenizer, row.messages, fits,
                                                                    settings.truncation).error is None)
    context = [model_key(resolved), template_key(tokenizer), max_tokens,
               sorted(row.content_hash for row in evaluation.rows)]
    if settings.truncation != "right":  # (units keyed before the setting existed keep their keys)
        context.append(["truncation", settings.truncation])
    pool = {row.row_id: row for row in store.rows(project, "pool")}
    seeds = list(range(args.seeds))
    arms: list[Arm] = []
    notes: list[str] = []
    if evaluation.left_out:
        notes.append(f"{len(evaluation.left_out)} {'target' if split is not None else 'evaluation'} row(s) left out: "
                     f"their answer does not fit {fits} tokens (e.g. {evaluation.left_out[0]})")

    def selection_arm(label: str, method: str, run_id: str) -> Arm:
        run = store.selection_run(run_id)
        train = [pool[row_id] for _, row_id, _, _ in store.selection_rows(run_id) if row_id in pool]
        check_trains_apart(evaluation, train, label)
        return Arm(label, method, len(train), (run_id,) * len(seeds), run["params"],
                   _finetune_units(train, seeds, context, args))

    for run_id in runs:
        run = store.selection_run(run_id)
        if run is None or run["project"] != project:
            raise ValueError(f"no selection run {run_id!r} in project {project!r} (`python -m core runs --project "
                             f"{project}` lists them)")
        check_guided_by(evaluation, run)
        arms.append(selection_arm(f"{METHOD_LABELS.get(run['method'], run['method'])} ({run_id})", run["method"], run_id))
    budgets = sorted({arm.budget for arm in arms})
    features = None
    wanted = [(METHOD_LABELS.get(m, m), m, {}) for m in (METHOD_ALIASES.get(m, m) for m in methods) if m != "random"]
    wanted += [(label, METHOD_ALIASES.get(method, method), dict(params)) for label, method, params in variants]
    for _, method, _ in wanted:
        if method not in METHODS:
            raise ValueError(f"unknown selection method {method!r}; choose from {', '.join(METHODS)}")
    if wanted or not budgets:
        features = _guided_features(store, project, evaluation, allow_partial)
        count, budget_notes = budget_from(len(features.pool_ids), ratio=ratio if ratio is not None or budget is not None
                                          else DEFAULT_RATIO, budget=budget)
        notes += budget_notes
        budgets = sorted(set(budgets) | {count})
        for label, method, params in wanted:
            run_id = _selection_run(store, project, method, count, params, features)
            arms.append(selection_arm(label, method, run_id))
    for count in budgets:  # random at every budget judged, one draw per seed (each its own selection run)
        features = features or _guided_features(store, project, evaluation, allow_partial)
        label = "random" if len(budgets) == 1 else f"random (k={count})"
        run_ids, units = [], []
        for seed in seeds:
            run_id = _selection_run(store, project, "random", count, {"seed": seed}, features)
            train = [pool[row_id] for _, row_id, _, _ in store.selection_rows(run_id)]
            check_trains_apart(evaluation, train, label)
            run_ids.append(run_id)
            units.append(_finetune_units(train, [seed], context, args)[0])
        arms.append(Arm(label, "random", count, tuple(run_ids), {"seeds": seeds}, tuple(units)))
    if all_pool:
        if len(pool) > ALL_POOL_MAX_ROWS:
            raise ValueError(f"'all pool rows' trains on every one of {len(pool):,} rows per seed; it is offered up to "
                             f"{ALL_POOL_MAX_ROWS:,} rows")
        train = list(pool.values())
        check_trains_apart(evaluation, train, "all pool rows")
        arms.append(Arm("all pool rows", "all", len(train), (None,) * len(seeds), {},
                        _finetune_units(train, seeds, context, args)))
    zero = Unit(_unit_key("zero-shot", None, [], context, args), "zero-shot", None, ())
    arms.append(Arm("zero-shot", "zero-shot", 0, (None,), {}, (zero,)))
    record = evaluation.record()
    # The id names what is measured, not which stored runs picked the rows: planning the same again is the same plan.
    plan_id = "eval-" + stable_hash([project, [(a.label, a.method, a.budget, [u.key for u in a.units]) for a in arms],
                                     record], 12)
    plan = EvaluationPlan(plan_id, project, settings, args, record, arms, notes)
    store.save_evaluation(plan.id, project, {"settings": settings.to_dict(), "args": args.to_dict(), "notes": notes},
                          [arm.record() for arm in arms], record)
    return plan


def _selection_run(store: Store, project: str, method: str, budget: int, params: dict, features) -> str:
    """The id of a stored run of ``method`` at ``budget`` with its defaults (updated by ``params``) on these
    features and guiding rows, made now unless one exists: planning an evaluation again stores no second copy."""
    # (default_params reads only the index's checkpoint weights, which the loaded features carry: no catalogue read)
    wanted = {**default_params(method, features), **params}
    for run in store.selection_runs(project, method):
        if (run["feature_key"] == features.feature_key and run["budget"] == budget
                and (run["params"].get("targets") or {}).get("guide_key") == features.guide_key
                and matches_defaults(run["params"], wanted) and "coverage" not in run["params"]):
            return run["id"]
    return run_selection(store, project, method, budget=budget, params=params, features=features,
                         record_events=False).run_id


def _guided_features(store: Store, project: str, evaluation: EvaluationRows, allow_partial: bool):
    features = load_project_features(store, project, allow_partial=allow_partial)
    if evaluation.source == "split":  # only the selection half guides; the run records which rows that was
        features = with_targets(features, evaluation.guide_ids, evaluation.guide_key)
    return features


@dataclass(frozen=True)
class EvaluationEstimate:
    units: int  # pending
    finished: int
    train_examples: int  # examples x epochs over the pending units
    tokens: int
    checkable: int  # evaluation rows whose answer is checked by decoding
    seconds: float
    device: str
    measured: bool

    def text(self) -> str:
        if not self.units:
            return f"all {self.finished} units are finished and cached"
        cached = f" ({self.finished} cached)" if self.finished else ""
        return (f"{self.units} units to train and measure{cached}: {self.train_examples:,} training examples, "
                f"{self.tokens:,} tokens, {self.checkable} checkable rows decoded per unit, on {self.device}: about "
                f"{format_duration(self.seconds)} ({'measured rate' if self.measured else 'assumed rate'})")


def estimate_evaluation(store: Store, plan: EvaluationPlan) -> EvaluationEstimate:
    """Rough cost of the pending units: training tokens x epochs at the device's forward+backward rate, the
    evaluation rows' forwards at a third of it, and decoding (the prompt once, then ``DECODE_TOKEN_COST`` per token)."""
    resolved = resolve_model(plan.settings.model)
    tokenizer = load_tokenizer(resolved)
    device = pick_device(plan.settings.device).type
    rate, measured = training_rate(store, device, model_key(resolved), parameter_count(resolved))
    pool = {row.row_id: row for row in store.rows(plan.project, "pool")}
    evaluation = {row.row_id: row for row in store.rows(plan.project, "eval" if plan.rows["source"] == "eval" else "targets")}
    eval_rows = [evaluation[i] for i in plan.rows["ids"] if i in evaluation]
    lengths: dict[str, int] = {}

    def tokens_of(row: StoredRow) -> int:
        if row.content_hash not in lengths:
            lengths[row.content_hash] = encode_messages(tokenizer, row.messages, plan.max_tokens, plan.settings.truncation).n_tokens
        return lengths[row.content_hash]

    eval_tokens = sum(tokens_of(row) for row in eval_rows)
    checkable = sum(1 for row in eval_rows if reference_answer(row.messages) is not None) if plan.args.generate_tokens else 0
    pending = plan.pending(store)
    train_examples = tokens = 0
    seconds = 0.0
    for unit in pending:
        rows = [pool[i] for i in unit.train_ids if i in pool]
        train_examples += len(rows) * plan.args.epochs
        train_tokens = sum(tokens_of(row) for row in rows) * plan.args.epochs
        tokens += train_tokens + eval_tokens
        mean_eval = eval_tokens / max(1, len(eval_rows))
        # A forward is ~1/3 of a forward+backward; decoding runs the prompt once, then one token at a time from the
        # KV cache, where per-call overhead (not FLOPs) dominates on a CPU: ~DECODE_TOKEN_COST tokens' worth each.
        decoding = checkable * (mean_eval / 3 + plan.args.generate_tokens * DECODE_TOKEN_COST)
        seconds += (train_tokens + eval_tokens / 3 + decoding) / rate
    return EvaluationEstimate(len(pending), len(plan.units) - len(pending), train_examples, tokens, checkable, seconds,
                              device, measured)
