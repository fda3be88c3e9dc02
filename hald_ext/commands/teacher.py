"""`hald teacher`: train a teacher on a full labelled set and save a checkpoint that
hald_ext.models.create_model(name, num_classes, img_size=..., checkpoint=PATH) loads (and so
`hald relabel`); the library side: hald_ext.train.teacher.

    hald teacher --data fashion-mnist --model convnet3 --epochs 1 --out runs/teacher/convnet3.pth
    hald teacher --data imagenet/train --eval-data imagenet/val --model resnet18 --img-size 224 \\
        --scale 0.08 1 --epochs 30 --save-every 5 --out runs/teacher/r18.pth   (+ r18-epoch005.pth, ...)
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from hald_ext.commands.options import (
    CROPS,
    DATA,
    DEVICES,
    MODEL,
    OPTIM,
    OUTPUT,
    SCHED,
    SourceOptions,
    describe,
    resolved,
)
from hald_ext.commands.teacher_options import pretrained_file_option, pretrained_flag
from hald_ext.train import options as C
from hald_ext.train.teacher import run_teacher

_ROLE = "fine-tune the model (a new classifier when the class count differs) from"


@dataclasses.dataclass
class TeacherConfig(SourceOptions):
    data: str = C.option("fashion-mnist", "full labelled training set", group=DATA)
    eval_data: Optional[str] = C.option(None, "held-out set (default: the test split of a named set)", group=DATA)
    train_images: Optional[int] = C.option(None, "train on a seeded random subset of this many images "
                                                 "(default: all)", group=DATA)
    stream: bool = C.option(False, "always stream the images from disk, decoded batch by batch every epoch (the "
                                   "same as --resident-budget 0)", group=DATA)
    eval_crop_ratio: Optional[float] = C.option(None, "evaluation resize S / ratio + center crop S (default: 0.875 "
                                                      "folders, 1 arrays)", group=DATA)
    mean: Optional[tuple] = C.option(None, "input normalisation mean, recorded in the checkpoint (default: the "
                                           "pretrained weights', else ImageNet's)", nargs=3, group=DATA)
    std: Optional[tuple] = C.option(None, "input normalisation std, recorded in the checkpoint (default: the "
                                          "pretrained weights', else ImageNet's)", nargs=3, group=DATA)
    model: str = C.option("convnet3", "timm model name, or tv:NAME for a torchvision one", group=MODEL)
    pretrained: bool = pretrained_flag(_ROLE, MODEL)
    pretrained_file: Optional[str] = pretrained_file_option(_ROLE, MODEL)
    img_size: Optional[int] = C.option(None, "input size (default: the images' size when they all have one "
                                             "square size)", group=MODEL)
    scale: Optional[tuple] = C.option(None, "random-resized crops with this area range (default: the whole "
                                            "image, resized)", nargs=2, group=CROPS, deprecated=("rrc_scale",),
                                      key="rrc_scale")
    epochs: int = C.option(1, "epochs", group=SCHED)
    batch_size: int = C.option(128, "batch size", group=OPTIM)
    lr: float = C.option(2e-3, "AdamW learning rate, cosine to 0", group=OPTIM)
    weight_decay: float = C.option(0.01, "AdamW weight decay", group=OPTIM)
    seed: int = C.option(0, "seed", group=OPTIM)
    out: str = C.option("runs/teacher/teacher.pth", "checkpoint path", group=OUTPUT, short=("-o",))
    save_every: int = C.option(0, "also keep the expert of every N-th epoch as <out>-epochNNN.pth (earlier-epoch "
                                  "experts label better at small IPC); 0: only the last", group=OUTPUT)
    restart: bool = C.option(False, "ignore <out>.partial (the state after the last finished epoch) and start "
                                    "again", group=OUTPUT)
    progress: bool = C.option(True, "progress bar", group=OUTPUT)
    device: str = C.option("auto", "cpu | cuda | cuda:N | auto", group=DEVICES)


CONFIG = TeacherConfig
SWEEP_MANAGED = ("out", "device", "progress", "restart")
SWEEP_ONLY = {"checkpoint": "use this teacher file instead of training one",
              "use_epoch": "label with the teacher's snapshot after this epoch (needs teacher.save_every)",
              "snapshot_name": "snapshot file name pattern (default \"{stem}-epoch{epoch:03d}.pth\", beside the "
                               "teacher)"}


def add_arguments(parser) -> None:
    describe(parser, __doc__, TeacherConfig)


def run(args) -> int:
    cfg = resolved(TeacherConfig, args, "hald teacher")
    return 2 if cfg is None else run_teacher(cfg)
