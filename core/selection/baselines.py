"""Baselines that use no gradients: a seeded random subset, and sentence-embedding similarity.

Role in the pipeline: the reference points every gradient method is judged against.  ``random`` is what LESS
compares to; ``embedding`` is the G2IS paper's "BERT" baseline (Sentence-BERT similarity), here with MiniLM
(``core.selection.embeddings``) and LESS's aggregation: mean cosine over each target group, max over groups (with no groups,
the mean over all targets).  The embedding baseline reads texts from the context, not features.
"""
from __future__ import annotations

import numpy as np

from core.selection.embeddings import embed_texts
from core.selection.less import less_scores
from core.selection.methods import SelectionResult, check_features, clip_budget, ranked_top, resolve_params

RANDOM_DEFAULTS = {"seed": 0}
EMBEDDING_DEFAULTS = {"batch_size": 64}


def select_random(pool_features, target_features, budget, params=None, *, n_pool: int | None = None,
                  pool_is_unit: bool = False) -> SelectionResult:  # (the features' scale does not matter here)
    """``select("random", ...)``: the first ``budget`` entries of ``default_rng(seed).permutation(N)``.

    Targets are ignored.  N comes from the pool features or, without them, from ``n_pool``."""
    resolved = resolve_params(RANDOM_DEFAULTS, params, "random")
    if pool_features is not None:
        n = check_features("pool features", pool_features).shape[0]
    elif n_pool is not None:
        n = int(n_pool)
    else:
        raise ValueError("random selection needs the pool size: pass pool features or n_pool")
    budget, notes = clip_budget(n, budget)
    rows = np.random.default_rng(resolved["seed"]).permutation(n)[:budget]
    reasons = [f"random draw {i + 1} (seed {resolved['seed']})" for i in range(budget)]
    return SelectionResult("random", resolved, [int(r) for r in rows], [0.0] * budget, reasons, notes, budget)


def select_embedding(pool_features, target_features, budget, params=None, *, pool_texts=None, target_texts=None,
                     target_groups=None, pool_is_unit: bool = False) -> SelectionResult:  # (features unused)
    """``select("embedding", ...)``: top ``budget`` rows by MiniLM cosine to the target texts (features unused)."""

    resolved = resolve_params(EMBEDDING_DEFAULTS, params, "embedding")
    if not pool_texts:
        raise ValueError("the embedding baseline needs pool_texts (one text per pool row)")
    if not target_texts:
        raise ValueError("no target texts: the embedding baseline needs target_texts (one text per target row)")
    if pool_features is not None and np.asarray(pool_features).ndim == 2 and len(pool_texts) != np.asarray(pool_features).shape[0]:
        raise ValueError(f"{len(pool_texts)} pool texts but {np.asarray(pool_features).shape[0]} pool feature rows")
    pool = embed_texts(pool_texts, batch_size=resolved["batch_size"])
    targets = embed_texts(target_texts, batch_size=resolved["batch_size"])
    scored = less_scores(pool, targets, target_groups=target_groups)
    budget, notes = clip_budget(pool.shape[0], budget)
    rows = ranked_top(scored.scores, budget)
    if len(scored.group_names) > 1:
        reasons = [f"best group '{scored.group_names[scored.best_group[r]]}', mean cosine {scored.scores[r]:.2f}" for r in rows]
    else:
        reasons = [f"mean embedding cosine {scored.scores[r]:.2f}" for r in rows]
    return SelectionResult("embedding", resolved, [int(r) for r in rows], [float(scored.scores[r]) for r in rows],
                           reasons, notes, budget)
