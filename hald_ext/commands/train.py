"""`hald train`: a student from an image set + label store with the HALD (or a baseline) schedule.

    hald train --data sel.npz --labels sel.labels --eval-data fashion-mnist --model convnet3 \\
        --schedule hald --epochs 300 --out runs/hald-ipc10
    torchrun --nproc_per_node=2 -m hald_ext.cli train -c examples/configs/fmnist_hald.yaml

The run folder holds args.yaml (the resolved configuration), summary.csv, metrics.json, curves.png
and last.pth (resumable; also loadable by hald_ext.models.create_model(..., checkpoint=...)).
"""
from __future__ import annotations

import sys

from hald_ext.commands.options import describe
from hald_ext.train import options as C
from hald_ext.train.cli import train
from hald_ext.train.config import TrainConfig

CONFIG = TrainConfig
# What a sweep sets itself (paths, seeds, devices, output control) and never takes from a preset.
SWEEP_MANAGED = ("data", "labels", "out", "output", "experiment", "seed", "resume", "device", "threads", "progress")
SWEEP_ONLY: dict = {}


def add_arguments(parser) -> None:
    describe(parser, __doc__, TrainConfig)


def run(args) -> int:
    try:
        cfg = C.resolve_config(TrainConfig, args, "hald train")
    except (C.ConfigError, TypeError) as e:
        print(f"hald train: error: {e}", file=sys.stderr)
        return 2
    for old in ("output", "experiment"):
        if getattr(cfg, old) is not None:
            C.warn_deprecated("hald train", f"--{old}", "--out RUN_FOLDER (the run folder itself: PARENT/NAME)")
    return train(cfg)
