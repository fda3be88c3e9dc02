"""`hald train` configuration: one dataclass (read by the machinery every command shares,
hald_ext.train.options: defaults < YAML < flags), validated before any data is loaded, and saved as
args.yaml in the run folder (timm's convention).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Optional

import yaml

import hald_ext.models  # noqa: F401  (registers convnet3 with timm)
from hald_ext.core.normalize import IMAGENET_MEAN, IMAGENET_STD
from hald_ext.data.stream import BACKENDS, parse_bytes
from hald_ext.labels.format import DECODES
from hald_ext.train.options import (
    ConfigError,
    accept_deprecated_kwargs,
    add_config_arguments,
    check_choices,
    config_dict,
    option,
    resolve_config,
)
from hald_ext.train.schedule import PRESETS, build_schedule

SOFT_LOSSES = ("kl", "ce")
BATCH_SOURCES = ("fused", "torch")


def _f(default, help_, **kw):  # short form used by TrainConfig
    return option(default, help_, **kw)


_KNOWN_SOURCES = ("fashion-mnist", "fashion_mnist")
DATA, MODEL, LABELS, CROPS, SCHED, OPTIM, OUTPUT, DEVICES = (
    "data", "model", "labels and loss", "crops and augmentation", "schedule (phases and epochs)", "optimisation",
    "output and logging", "devices and processes")


@accept_deprecated_kwargs
@dataclasses.dataclass
class TrainConfig:
    # data
    data: Optional[str] = _f(None, "training image set: `fashion-mnist`, an image folder, or NPZ / NPY arrays",
                             group=DATA)
    eval_data: Optional[str] = _f(None, "held-out image set (same forms as --data); none: no evaluation", group=DATA)
    eval_split: str = _f("test", "split of a named held-out set (fashion-mnist: test)", group=DATA)
    loader: str = _f("auto", "image decoder (auto: DALI when installed)", group=DATA, choices=BACKENDS)
    resident_budget: Optional[str] = _f(None, "bytes the decoded images may take on the device (e.g. 512M, 8G); a set "
                                              "that does not fit streams from disk; 0 always streams (default: half "
                                              "the free device memory)", group=DATA)
    workers: Optional[int] = _f(None, "decoding threads (DALI) or DataLoader workers (torch) when streaming "
                                      "(default: the cores, at most 8)", group=DATA)
    eval_crop_ratio: Optional[float] = _f(None, "evaluation: resize to S / ratio, center crop S (default: 0.875 "
                                                "for an image folder, 1 for arrays; S x S images untouched)",
                                          group=DATA)
    mean: tuple = _f(IMAGENET_MEAN, "normalisation mean", nargs=3, group=DATA)
    std: tuple = _f(IMAGENET_STD, "normalisation std", nargs=3, group=DATA)
    # model
    model: str = _f("convnet3", "student: any timm model name, or convnet3", group=MODEL)
    img_size: Optional[int] = _f(None, "crop / input size (default: the image size of --data when all "
                                       "its images have one size)", group=MODEL)
    # labels and loss
    labels: Optional[str] = _f(None, "label store file (needed when the schedule has soft phases)", group=LABELS)
    crops_per_epoch: int = _f(1, "stored crops replayed per image per soft epoch: 1 is HALD's soft epoch (each "
                                 "image once, cycling through its SLI crops); 0: all SLI every soft epoch",
                              group=LABELS, deprecated=("slots_per_epoch",), key="slots_per_epoch")
    reuse_labels: bool = _f(True, "replay stored crops again in later soft epochs (off: each is used once)",
                            group=LABELS)
    temperature: Optional[float] = _f(None, "soft-label temperature T (default: the label store's)", group=LABELS)
    decode: Optional[str] = _f(None, "top-k decode (default: the store's)", group=LABELS, choices=DECODES)
    soft_loss: str = _f("kl", "soft term (kl and ce have the same gradient)", group=LABELS, choices=SOFT_LOSSES)
    hinton: bool = _f(False, "multiply the soft term by T^2 (the HALD code does not)", group=LABELS)
    label_smoothing: float = _f(0.8, "hard-phase label smoothing (HALD: 0.8 at 1000 classes; sweep it for few "
                                     "classes)", group=LABELS)
    # crops and augmentation
    batch_source: str = _f("fused", "crops from the fused crop_and_lookup op (fused) or per-sample torchvision "
                                    "(torch, the plain reference path)", group=CROPS, choices=BATCH_SOURCES)
    cutmix_alpha: float = _f(1.0, "hard-phase CutMix Beta(alpha, alpha); 0 turns CutMix off", group=CROPS)
    scale: tuple = _f((0.08, 1.0), "hard-phase random-resized-crop area scale range", nargs=2, group=CROPS,
                      deprecated=("rrc_scale",), key="rrc_scale")
    ratio: tuple = _f((3 / 4, 4 / 3), "hard-phase random-resized-crop aspect ratio range", nargs=2, group=CROPS)
    # schedule
    schedule: str = _f("hald", f"phase order: {' | '.join(PRESETS)}, or an explicit list 'soft:N,hard:M,...'",
                       group=SCHED)
    epochs: int = _f(300, "total epochs E", group=SCHED)
    soft_epochs: Optional[int] = _f(None, "soft epochs E_soft of a preset (default E // 2)", group=SCHED)
    period: int = _f(1, "phase length of the `periodic` schedule", group=SCHED)
    # optimisation
    batch_size: int = _f(16, "global batch size (split across torchrun ranks)", group=OPTIM)
    lr: float = _f(1e-3, "AdamW learning rate lr0", group=OPTIM)
    weight_decay: float = _f(0.01, "AdamW weight decay on weight tensors (none on norm / bias / 1-D)", group=OPTIM)
    eta: float = _f(2.0, "half-cosine stretch: lr0 * 0.5 * (1 + cos(pi * e / (E * eta)))", group=OPTIM)
    warmup_epochs: float = _f(0.0, "linear warm-up epochs", group=OPTIM)
    warmup_lr: float = _f(1e-5, "learning rate at the start of the warm-up", group=OPTIM)
    sched_on_updates: bool = _f(False, "update the LR every step (fractional epochs) instead of every epoch",
                                group=OPTIM)
    amp: bool = _f(False, "bfloat16 autocast (CUDA)", group=OPTIM)
    seed: int = _f(0, "seed of the sample order, crops and model initialisation", group=OPTIM)
    # output and logging
    out: Optional[str] = _f(None, "run folder (default: runs/<time>-<schedule>-<model>)", group=OUTPUT)
    output: Optional[str] = _f(None, "deprecated: parent folder of run folders (use --out PARENT/NAME)",
                               group=OUTPUT, hidden=True)
    experiment: Optional[str] = _f(None, "deprecated: run folder name (use --out PARENT/NAME)", group=OUTPUT,
                                   hidden=True)
    resume: Optional[str] = _f(None, "checkpoint (or run folder) to continue exactly", group=OUTPUT)
    eval_every: int = _f(10, "evaluate every N epochs (and always at the end)", group=OUTPUT)
    eval_batch_size: int = _f(256, "evaluation batch size", group=OUTPUT)
    log_every: int = _f(1, "print a line every N epochs (evaluations and phase changes always print)", group=OUTPUT)
    checkpoint_every: int = _f(1, "write last.pth every N epochs (and at the end)", group=OUTPUT)
    progress: bool = _f(True, "progress bar", group=OUTPUT)
    # devices
    device: str = _f("auto", "cpu | cuda | cuda:N | auto", group=DEVICES)
    threads: int = _f(0, "torch CPU threads (0: torch's default)", group=DEVICES)

    def to_dict(self) -> dict:
        """Plain YAML / checkpoint-safe values (tuples become lists)."""
        return config_dict(self)

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            yaml.safe_dump(self.to_dict(), f, sort_keys=False)

    @property
    def slots_per_epoch(self) -> int:  # the old name, for one release
        return self.crops_per_epoch

    @property
    def rrc_scale(self) -> tuple:  # the old name, for one release
        return self.scale


# ---------------------------------------------------------------------------------------------------
# `hald train`

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, TrainConfig)


def resolve(args: argparse.Namespace) -> TrainConfig:
    return resolve_config(TrainConfig, args, "hald train")


def parse_config(argv: list) -> TrainConfig:
    parser = argparse.ArgumentParser(prog="hald train")
    add_arguments(parser)
    return resolve(parser.parse_args(argv))


def _source_exists(source: str | None) -> bool:
    return source is None or source in _KNOWN_SOURCES or os.path.exists(source)


def validate(cfg: TrainConfig) -> None:
    """Checks that need no data loaded: names, numbers, and that every named file exists."""
    import timm

    check_choices(cfg)
    if cfg.resident_budget is not None:
        try:
            parse_bytes(cfg.resident_budget)
        except ValueError as e:
            raise ConfigError(f"--resident-budget: {e}") from None
    if cfg.workers is not None and cfg.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {cfg.workers}")
    if cfg.eval_crop_ratio is not None and not 0 < cfg.eval_crop_ratio <= 1:
        raise ConfigError(f"--eval-crop-ratio must be in (0, 1], got {cfg.eval_crop_ratio}")
    if not timm.is_model(cfg.model):
        raise ConfigError(f"unknown model {cfg.model!r}: not in timm's registry (e.g. resnet18, convnet3)")
    try:
        schedule = build_schedule(cfg.schedule, cfg.epochs, cfg.soft_epochs, cfg.period)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if cfg.data is None:
        raise ConfigError("no training images: set --data (or `data:` in the YAML)")
    for what, path in (("--data", cfg.data), ("--eval-data", cfg.eval_data)):
        if not _source_exists(path):
            raise ConfigError(f"{what} {path!r} does not exist")
    if schedule.epochs_of("soft"):
        if cfg.labels is None:
            raise ConfigError(f"schedule {schedule} has soft phases but no label store: set --labels")
        if not os.path.isfile(cfg.labels):
            raise ConfigError(f"--labels {cfg.labels!r} does not exist")
    if cfg.resume and not os.path.exists(cfg.resume):
        raise ConfigError(f"--resume {cfg.resume!r} does not exist")
    for name in ("batch_size", "eval_every", "eval_batch_size", "checkpoint_every", "log_every"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise ConfigError(f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if cfg.temperature is not None and cfg.temperature <= 0:
        raise ConfigError(f"--temperature must be positive, got {cfg.temperature}")
    if cfg.crops_per_epoch < 0:
        raise ConfigError(f"--crops-per-epoch must be >= 0, got {cfg.crops_per_epoch}")


def check_label_budget(cfg: TrainConfig, soft_epochs: int, sli: int) -> int:
    """Stored crops replayed per image per soft epoch; errors when the schedule needs more labels
    than the store holds."""
    per_epoch = cfg.crops_per_epoch or sli
    if per_epoch > sli:
        raise ConfigError(f"--crops-per-epoch {per_epoch} exceeds the label store's {sli} crops per image (SLI)")
    if not cfg.reuse_labels and soft_epochs * per_epoch > sli:
        raise ConfigError(
            f"the schedule has {soft_epochs} soft epochs x {per_epoch} crop(s) per image = "
            f"{soft_epochs * per_epoch} stored crops per image, but the label store holds SLI={sli} "
            f"with --no-reuse-labels: relabel with SLI >= {soft_epochs * per_epoch}, shorten the soft "
            f"phases, or allow --reuse-labels")
    return per_epoch
