"""Student training with the HALD (Soft -> Hard -> Soft) schedule and the rest of the pipeline.

schedule     (soft | hard, epochs) phases and the presets
optim        AdamW without decay on norm / bias, the half-cosine LR
batches      the BatchSource / LabelSource interface (the only place that knows the store and crop op)
trainer      the epoch loop, evaluation, checkpoints, exact resume, DDP
config, cli  `hald train` (YAML + flags)
teacher, select, lvsd   `hald teacher`, `hald select`, `hald lvsd`
"""
