"""Features: normalised rows -> per-example LoRA gradients -> seeded random projections in the store.

modeling (model, tokenizer, chat rendering, loss mask) · lora (adapter, AdamW warmup checkpoints) · gradients
(per-example gradient computers, Adam-aware transform) · projection (CountSketch, Rademacher, Kronecker) ·
featurize (the job's engine: ``plan_features``, ``run_features``) · distributed (the same on Ray) · estimate (cost)
"""
