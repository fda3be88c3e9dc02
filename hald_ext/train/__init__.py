"""Student training with the HALD (Soft -> Hard -> Soft) schedule and the rest of the pipeline (the
library side; the `hald` commands that drive it are in hald_ext.commands).

schedule     the phase order: (kind, epochs) phases, the registered presets, the written-out form
phases       the registered phase kinds (soft, hard): what an epoch samples and how its loss is computed
lr_schedule  the registered LR schedules (half-cosine, constant)
optim        AdamW without decay on norm / bias
registry     the name -> piece table behind phases, schedule presets and LR schedules
batches      the BatchSource / LabelSource interface (the only place that knows the store and crop op)
trainer      the epoch loop, evaluation, checkpoints, exact resume, DDP
config       TrainConfig (defaults < YAML < flags, on the shared machinery of options.py)
cli          train(cfg): a run from a TrainConfig
teacher, select, lvsd   what `hald teacher`, `hald select` and `hald lvsd` run
"""
