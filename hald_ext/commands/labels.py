"""`hald labels`: inspect label stores, import public soft-label formats, and rewrite stored labels; the
library side: hald_ext.labels (store, importers, transform; the sub-commands' bodies: hald_ext.labels.cli).

  hald labels info FILE [--json]
  hald labels import-fkd DIR --out FILE --num-classes C
  hald labels import-sre2l DIR --out FILE --num-classes C -T T --crop-size S [--flavor sre2l|lpld|lpqld|hald]
  hald labels transform SRC DST --mode swap|zero [--seed S]

Imports are exact or refused: the temperature is required where the files hold logits (or
--recipe-temperature, printed), the crop size is checked against the CutMix boxes and the images,
values are stored as float16 by default, CutMix files without their sampler order and pruned epochs
are refused unless --file-order / --fill-missing repeat say otherwise (docs/importers.md).
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Optional

from hald_ext.commands.options import DATA, LABELS, OUTPUT, TEACHER
from hald_ext.labels import cli as L
from hald_ext.labels.format import LabelStoreError
from hald_ext.labels.importers import FLAVORS, LPQLD_DECODES, LabelImportError
from hald_ext.labels.quantizer import KINDS as QUANTIZERS
from hald_ext.labels.transform import MODES, transform_store
from hald_ext.train import options as C

IPC_HELP = "with --images: the IPC images per class that `hald select --ipc` draws"


@dataclasses.dataclass
class InfoConfig:
    file: str = C.option(None, "label store", group=DATA, positional=True)
    images: Optional[str] = C.option(None, "also check the store against this image set (fingerprint)", group=DATA)
    ipc: Optional[int] = C.option(None, IPC_HELP, group=DATA)
    ipc_seed: int = C.option(0, "seed of the --ipc selection (as hald select)", group=DATA)
    json: bool = C.option(False, "machine-readable output", group=OUTPUT)


@dataclasses.dataclass
class ImportConfig:
    input: str = C.option(None, "directory of files (or one file)", group=DATA, positional=True)
    images: Optional[str] = C.option(None, "the image set the labels belong to (recorded as its fingerprint)",
                                     group=DATA)
    split: str = C.option("train", "split of a named image set", group=DATA)
    ipc: Optional[int] = C.option(None, IPC_HELP, group=DATA)
    ipc_seed: int = C.option(0, "seed of the --ipc selection (as hald select)", group=DATA)
    num_classes: int = C.option(None, "classes C of the labels", group=LABELS, required=True, short=("-C",))
    bits: Optional[int] = C.option(None, "code bits of power / uniform / log (8 unless given)", group=LABELS,
                                   choices=(8, 16))
    quantizer: str = C.option("fp16", "how probabilities are stored (fp16: float16 values; power / uniform / log: "
                                      "8- or 16-bit codes)", group=LABELS, choices=QUANTIZERS)
    teacher: Optional[str] = C.option(None, "teacher name to record", group=TEACHER)
    out: str = C.option(None, "label store to write", group=OUTPUT, required=True, short=("-o",))


@dataclasses.dataclass
class ImportFkdConfig(ImportConfig):
    temperature: Optional[float] = C.option(None, "temperature the labels were made at (FKD's generator: 1, used "
                                                  "when not given)", group=LABELS, short=("-T",))
    crop_size: Optional[int] = C.option(None, "the generator's --input-size, recorded for hald train's check",
                                        group=DATA)


@dataclasses.dataclass
class ImportSre2lConfig(ImportConfig):
    flavor: str = C.option("sre2l", "sre2l / lpld files store logits, lpqld top-k logits with int16 class ids; "
                                    "hald files store softmax(logits / 20)", group=LABELS, choices=FLAVORS)
    temperature: Optional[float] = C.option(None, "the stored labels are softmax(logits / T): required for logits "
                                                  "(sre2l, lpld, lpqld); hald files are softmax(logits / 20)",
                                            group=LABELS, short=("-T",))
    recipe_temperature: bool = C.option(False, "take T from the flavor's published recipe (20 for all four), and "
                                               "print it", group=LABELS)
    k: Optional[int] = C.option(None, "classes kept per label (all C unless given: full width, lossless with fp16)",
                                group=LABELS)
    lpqld_decode: Optional[str] = C.option(None, "lpqld: the --label_quantization rule the labels are trained with "
                                                 "(MR-k, MS-k, MRS-k)", group=LABELS, choices=tuple(LPQLD_DECODES))
    crop_size: Optional[int] = C.option(None, "the writer's --input-size, which the CutMix boxes are pixels of "
                                              "(SRe2L / LPLD / LPQLD on ImageNet: 224); required for files with "
                                              "CutMix records", group=DATA)
    order: Optional[str] = C.option(None, "NPY file: image id of every row, [N] or [epochs, N]", group=DATA)
    sampler: Optional[str] = C.option(None, "sampler file (found in the input folder when not given: "
                                            "sampler_indices_dict.pt / sampler_indices_epoch.json)", group=DATA)
    sampler_seed: Optional[int] = C.option(None, "rebuild SRe2L's image order from its --fkd-seed (42)", group=DATA)
    file_order: bool = C.option(False, "with no sampler order, take row r of each epoch to label image r even for "
                                       "CutMix files (refused otherwise: partners would point at the wrong images)",
                                group=DATA)
    fill_missing: Optional[str] = C.option(None, "epochs that label only some images (--prune_ratio > 0): give "
                                                 "each missing (image, epoch) a copy of the image's label from the "
                                                 "nearest epoch (refused unless given)", group=DATA,
                                           choices=("repeat",))


@dataclasses.dataclass
class TransformConfig:
    src: str = C.option(None, "label store to read", group=DATA, positional=True)
    dst: str = C.option(None, "label store to write (.safetensors)", group=OUTPUT, positional=True)
    mode: str = C.option(None, "swap: move the non-top-1 probabilities to random other classes; zero: set them to "
                               "0 (the new store decodes with truncate)", group=LABELS, choices=MODES,
                         required=True)
    seed: int = C.option(0, "seed of the swap permutations", group=LABELS)


# sub-command -> (config, one-line help, body)
SUBCOMMANDS = {
    "info": (InfoConfig, "header, counts, bytes per label, size, top-1 class histogram", L.run_info),
    "import-fkd": (ImportFkdConfig, "FKD per-image soft label files -> store", L.run_import_fkd),
    "import-sre2l": (ImportSre2lConfig, "SRe2L / LPLD / HALD per-batch soft label files -> store", L.run_import_sre2l),
    "transform": (TransformConfig, "swap or zero the non-top-1 entries of every stored label -> a new store",
                  lambda cfg: _transform(cfg)),
}


def _transform(cfg) -> int:
    store = transform_store(cfg.src, cfg.dst, cfg.mode, seed=cfg.seed)
    print(f"{cfg.mode}: {store!r}")
    return 0


def add_arguments(p) -> None:
    p.description = " ".join(__doc__.split("\n\n")[0].split()).split("; the library side")[0] + "."
    sub = p.add_subparsers(dest="labels_command", required=True)
    for name, (cls, help_, _) in SUBCOMMANDS.items():
        q = sub.add_parser(name, help=help_, description=help_[0].upper() + help_[1:] + ".")
        describe_sub(q, cls)


def describe_sub(q, cls) -> None:
    C.add_config_arguments(q, cls)


def run(args, prog: str | None = None) -> int:
    name = args.labels_command
    prog = prog or f"hald labels {name}"
    cls, _, body = SUBCOMMANDS[name]
    try:
        return body(C.resolve_config(cls, args, prog))
    except (C.ConfigError, LabelStoreError, LabelImportError, FileNotFoundError, ValueError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
