"""`hald lvsd`: local-view semantic drift diagnostics: Tr(Sigma) of a teacher's soft labels over random
crops of each image, and a student's crop consistency; the library side: hald_ext.train.lvsd.

    hald lvsd --data data/fmnist-ipc10.npz --teacher runs/teacher/convnet3.pth --crops 32 --out lvsd.json
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from hald_ext.commands.options import CROPS, DATA, LABELS, MODEL, OUTPUT, TEACHER, SourceOptions, describe, resolved
from hald_ext.commands.teacher_options import class_map_option, pretrained_file_option, pretrained_flag
from hald_ext.sweep.drift_rule import lvsd_lead
from hald_ext.train import options as C
from hald_ext.train.lvsd import run_lvsd

_ROLE = "instead of --teacher: the teacher is --model with"


@dataclasses.dataclass
class LvsdConfig(SourceOptions):
    data: str = C.option(None, "image set (e.g. the selected IPC images)", group=DATA, required=True)
    teacher: Optional[str] = C.option(None, "teacher checkpoint: per-image Tr(Sigma)", group=TEACHER)
    student: Optional[str] = C.option(None, "student checkpoint: crop consistency", group=MODEL)
    model: Optional[str] = C.option(None, "model name when a checkpoint does not record it; with --pretrained / "
                                          "--pretrained-file the teacher (a timm model, or tv:NAME for "
                                          "torchvision's)", group=TEACHER)
    pretrained: bool = pretrained_flag(_ROLE)
    pretrained_file: Optional[str] = pretrained_file_option(_ROLE)
    class_map: Optional[str] = class_map_option()
    img_size: Optional[int] = C.option(None, "teacher crop size (default: the checkpoint's img_size, or the "
                                             "pretrained weights' input size)", group=CROPS, deprecated=("size",),
                                       key="size")
    crops: int = C.option(32, "crops per image for Tr(Sigma)", group=CROPS)
    pairs: int = C.option(4, "crop pairs per image for consistency", group=CROPS)
    scale: tuple = C.option((0.08, 1.0), "random-resized-crop area scale range", nargs=2, group=CROPS)
    seed: int = C.option(0, "seed of the crops", group=CROPS)
    temperature: float = C.option(1.0, "teacher soft-label temperature", group=LABELS)
    out: Optional[str] = C.option(None, "write per-image values and means as JSON", group=OUTPUT, short=("-o",))


CONFIG = LvsdConfig
SWEEP_MANAGED = ("data", "teacher", "student", "out", "seed")
SWEEP_ONLY: dict = {}


def add_arguments(parser) -> None:
    describe(parser, __doc__, LvsdConfig)


def run(args) -> int:
    cfg = resolved(LvsdConfig, args, "hald lvsd")
    return 2 if cfg is None else run_lvsd(cfg, report=_lead)



def _lead(cfg, result) -> None:
    if cfg.teacher:  # what the drift rule predicts from this Tr(Sigma), with the evidence it rests on
        lvsd_lead(cfg, result)
