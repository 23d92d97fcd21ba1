"""G2IS Explorer core library: choose instruction-tuning data with gradients.

The package reads top-down as the pipeline:

    formats      instruction files (Alpaca, ShareGPT, messages, prompt/completion) -> normalised rows
    modeling     causal LM + tokenizer, chat-template rendering and the assistant-only loss mask
    lora         seeded peft LoRA and the LESS-style AdamW warmup that saves checkpoints with Adam moments
    gradients    per-example LoRA gradients (CPU loop, batched hooks on CUDA) and the Adam-aware transform
    projection   seeded random projections (CountSketch / sparse JL, dense blockwise Rademacher)
    store        the DuckDB catalogue and feature chunk files: the only module that speaks SQL
    featurize    the feature job: rows -> encoded -> warmup -> gradients -> projected chunks
    jobs         background job processes with progress, cancel and resume
    estimate     cost estimate shown before a job starts
    demo         the built-in demo pool and targets
    cli          ``python -m core``

Nothing here imports Streamlit; the app in ``app/`` and ``pages/`` is a thin view over this package.
"""
