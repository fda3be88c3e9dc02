"""`hald select`: IPC random real images per class, the baseline of "A Label is Worth a Thousand
Images" (random real images + expert soft labels); the library side: hald_ext.train.select.

    hald select --data fashion-mnist --ipc 10 --seed 0 --out data/fmnist-ipc10.npz
    hald select --data fashion-mnist --ipc 10 --out data/fmnist-ipc10/      (an image folder)
    hald select --data imagenet/train --ipc 50 --out data/in1k-ipc50/ --file-mode hardlink
"""
from __future__ import annotations

import dataclasses

from hald_ext.commands.options import DATA, OUTPUT, describe, resolved
from hald_ext.data.stream import BACKENDS
from hald_ext.train import options as C
from hald_ext.train.select import FILE_MODES, FORMATS, run_select


@dataclasses.dataclass
class SelectConfig:
    data: str = C.option("fashion-mnist", "full labelled set", group=DATA)
    split: str = C.option("train", "split of a named set", group=DATA)
    loader: str = C.option("auto", "image decoder for --format npz from a folder (auto: DALI when installed)",
                           group=DATA, choices=BACKENDS)
    ipc: int = C.option(10, "images per class", group=DATA)
    seed: int = C.option(0, "selection seed", group=DATA)
    out: str = C.option(None, "output: a .npz file, or a folder for an image folder", group=OUTPUT, required=True,
                        short=("-o",))
    format: str = C.option("auto", "auto: npz when --out ends with .npz, else an image folder (the chosen files of "
                                   "a folder as they are; PNGs of arrays)", group=OUTPUT, choices=FORMATS)
    file_mode: str = C.option("copy", "from an image folder: copy the chosen files, or make hard / symbolic links",
                              group=OUTPUT, choices=FILE_MODES)


CONFIG = SelectConfig
SWEEP_MANAGED = ("out", "seed", "format")
SWEEP_ONLY: dict = {}


def add_arguments(parser) -> None:
    describe(parser, __doc__, SelectConfig)


def run(args) -> int:
    cfg = resolved(SelectConfig, args, "hald select")
    return 2 if cfg is None else run_select(cfg)
