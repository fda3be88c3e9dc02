"""`hald train` configuration: one dataclass, read from a YAML file and command-line flags (flags win),
validated before any data is loaded, and saved as args.yaml in the run folder (timm's convention).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from typing import Optional

import yaml

import hald_ext.models  # noqa: F401  (registers convnet3 with timm)
from hald_ext.core.normalize import IMAGENET_MEAN, IMAGENET_STD
from hald_ext.data.stream import parse_bytes
from hald_ext.train.schedule import PRESETS, build_schedule

_KNOWN_SOURCES = ("fashion-mnist", "fashion_mnist")


def _f(default, help_, **kw):
    return dataclasses.field(default=default, metadata={"help": help_, **kw})


@dataclasses.dataclass
class TrainConfig:
    # data
    data: Optional[str] = _f(None, "training image set: `fashion-mnist`, an image folder, or NPZ / NPY arrays")
    labels: Optional[str] = _f(None, "label store file (needed when the schedule has soft phases)")
    eval_data: Optional[str] = _f(None, "held-out image set (same forms as --data); none: no evaluation")
    eval_split: str = _f("test", "split of a named held-out set (fashion-mnist: test)")
    img_size: Optional[int] = _f(None, "crop / input size (default: the image size of --data when all "
                                       "its images have one size)")
    loader: str = _f("auto", "image decoder: auto (DALI when installed) | dali | torch")
    resident_budget: Optional[str] = _f(None, "bytes the decoded images may take on the device (e.g. 512M, 8G); a set "
                                              "that does not fit streams from disk; 0 always streams (default: half "
                                              "the free device memory)")
    workers: Optional[int] = _f(None, "decoding threads (DALI) or DataLoader workers (torch) when streaming "
                                      "(default: the cores, at most 8)")
    eval_crop_ratio: Optional[float] = _f(None, "evaluation: resize to S / ratio, center crop S (default: 0.875 "
                                                "for an image folder, 1 for arrays; S x S images untouched)")
    mean: tuple = _f(IMAGENET_MEAN, "normalisation mean", nargs=3, type=float)
    std: tuple = _f(IMAGENET_STD, "normalisation std", nargs=3, type=float)
    # model
    model: str = _f("convnet3", "student: any timm model name, or convnet3")
    # schedule
    schedule: str = _f("hald", f"{' | '.join(PRESETS)}, or an explicit list 'soft:N,hard:M,...'")
    epochs: int = _f(300, "total epochs E")
    soft_epochs: Optional[int] = _f(None, "soft epochs E_soft of a preset (default E // 2)")
    period: int = _f(1, "phase length of the `periodic` schedule")
    slots_per_epoch: int = _f(1, "stored crops replayed per image per soft epoch: 1 is HALD's soft epoch (each "
                                 "image once, cycling through its SLI crops); 0: all SLI every soft epoch")
    reuse_labels: bool = _f(True, "replay stored crops again in later soft epochs (off: each is used once)")
    # loss
    temperature: Optional[float] = _f(None, "soft-label temperature T (default: the label store's)")
    decode: Optional[str] = _f(None, "top-k decode: marginal | renorm | truncate (default: the store's)")
    soft_loss: str = _f("kl", "soft term: kl | ce (same gradient)")
    hinton: bool = _f(False, "multiply the soft term by T^2 (the HALD code does not)")
    label_smoothing: float = _f(0.8, "hard-phase label smoothing (HALD: 0.8 at 1000 classes; sweep it for few classes)")
    cutmix_alpha: float = _f(1.0, "hard-phase CutMix Beta(alpha, alpha); 0 turns CutMix off")
    batch_source: str = _f("fused", "crops from the fused crop_and_lookup op ('fused') or per-sample torchvision "
                                    "('torch', the plain reference path)")
    rrc_scale: tuple = _f((0.08, 1.0), "hard-phase random-resized-crop scale range", nargs=2, type=float)
    # optimisation
    batch_size: int = _f(16, "global batch size (split across torchrun ranks)")
    lr: float = _f(1e-3, "AdamW learning rate lr0")
    weight_decay: float = _f(0.01, "AdamW weight decay on weight tensors (none on norm / bias / 1-D)")
    eta: float = _f(2.0, "half-cosine stretch: lr0 * 0.5 * (1 + cos(pi * e / (E * eta)))")
    warmup_epochs: float = _f(0.0, "linear warm-up epochs")
    warmup_lr: float = _f(1e-5, "learning rate at the start of the warm-up")
    sched_on_updates: bool = _f(False, "update the LR every step (fractional epochs) instead of every epoch")
    amp: bool = _f(False, "bfloat16 autocast (CUDA)")
    # evaluation and run
    eval_every: int = _f(10, "evaluate every N epochs (and always at the end)")
    eval_batch_size: int = _f(256, "evaluation batch size")
    seed: int = _f(0, "seed of the sample order, crops and model initialisation")
    device: str = _f("auto", "cpu | cuda | auto")
    threads: int = _f(0, "torch CPU threads (0: torch's default)")
    output: str = _f("runs", "parent folder of run folders")
    experiment: Optional[str] = _f(None, "run folder name (default: <schedule>-<model>-<time>)")
    resume: Optional[str] = _f(None, "checkpoint (or run folder) to continue exactly")
    log_every: int = _f(1, "print a line every N epochs (evaluations and phase changes always print)")
    checkpoint_every: int = _f(1, "write last.pth every N epochs (and at the end)")
    progress: bool = _f(True, "progress bar")

    def to_dict(self) -> dict:
        """Plain YAML / checkpoint-safe values (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            yaml.safe_dump(self.to_dict(), f, sort_keys=False)


class ConfigError(ValueError):
    """A configuration the trainer cannot run; the message says what to change."""


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _field_type(name: str) -> tuple[type, bool]:
    """(base type, optional) of a field, from its real type hint (not its annotation's spelling)."""
    hint = _HINTS[name]
    args = typing.get_args(hint)
    if type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return hint, False


_HINTS = typing.get_type_hints(TrainConfig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field. Flags default to "not given" (SUPPRESS) so that `resolve` can
    layer dataclass defaults < YAML < flags given on the command line."""
    parser.add_argument("-c", "--config", default=None, help="YAML file of options (flags override it)")
    for name, f in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        meta = f.metadata
        help_ = meta["help"] if "(default" in meta["help"] else f"{meta['help']} (default: {f.default})"
        base, _ = _field_type(name)
        if base is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_)
        elif "nargs" in meta:
            parser.add_argument(flag, dest=name, nargs=meta["nargs"], type=meta["type"], default=argparse.SUPPRESS,
                                help=help_)
        else:
            typ = base if base in (int, float) else str
            parser.add_argument(flag, dest=name, type=typ, default=argparse.SUPPRESS, help=help_)


def read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value")
    data = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{path}: unknown option(s) {', '.join(unknown)}")
    return data


def _coerce(name: str, value):
    """A YAML value as the field's type. YAML 1.1 reads `1e-3` (no dot) as a string, and a typo'd
    type would otherwise fail deep inside training."""
    f = FIELDS[name]
    base, optional = _field_type(name)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"option {name} cannot be empty")
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
                return str(value).lower() in ("true", "yes", "on", "1")
            raise ValueError
        if base is tuple:
            items = tuple(float(v) for v in value)
            if len(items) != f.metadata["nargs"]:
                raise ValueError
            return items
        if base is int:
            if float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        if base is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"option {name}: cannot read {value!r} as {base.__name__}") from None


def resolve(args: argparse.Namespace) -> TrainConfig:
    """Dataclass defaults, then the YAML file named by --config, then the flags that were given."""
    values = {}
    if getattr(args, "config", None):
        values.update(read_yaml(args.config))
    values.update({k: v for k, v in vars(args).items() if k in FIELDS})
    return TrainConfig(**{k: _coerce(k, v) for k, v in values.items()})


def parse_config(argv: list) -> TrainConfig:
    parser = argparse.ArgumentParser(prog="hald train")
    add_arguments(parser)
    return resolve(parser.parse_args(argv))


def _source_exists(source: str | None) -> bool:
    return source is None or source in _KNOWN_SOURCES or os.path.exists(source)


def validate(cfg: TrainConfig) -> None:
    """Checks that need no data loaded: names, numbers, and that every named file exists."""
    import timm


    if cfg.resident_budget is not None:
        try:
            parse_bytes(cfg.resident_budget)
        except ValueError as e:
            raise ConfigError(f"--resident-budget: {e}") from None
    if cfg.workers is not None and cfg.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {cfg.workers}")
    if cfg.loader not in ("auto", "dali", "torch"):
        raise ConfigError(f"--loader must be auto, dali or torch, got {cfg.loader!r}")
    if cfg.eval_crop_ratio is not None and not 0 < cfg.eval_crop_ratio <= 1:
        raise ConfigError(f"--eval-crop-ratio must be in (0, 1], got {cfg.eval_crop_ratio}")
    if cfg.batch_source not in ("fused", "torch"):
        raise ConfigError(f"--batch-source must be 'fused' or 'torch', got {cfg.batch_source!r}")
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
    if cfg.decode not in (None, "marginal", "renorm", "truncate"):
        raise ConfigError(f"--decode must be marginal, renorm or truncate, got {cfg.decode!r}")
    if cfg.soft_loss not in ("kl", "ce"):
        raise ConfigError(f"--soft-loss must be kl or ce, got {cfg.soft_loss!r}")
    for name in ("batch_size", "eval_every", "eval_batch_size", "checkpoint_every", "log_every"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise ConfigError(f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if cfg.temperature is not None and cfg.temperature <= 0:
        raise ConfigError(f"--temperature must be positive, got {cfg.temperature}")
    if cfg.slots_per_epoch < 0:
        raise ConfigError(f"--slots-per-epoch must be >= 0, got {cfg.slots_per_epoch}")


def check_label_budget(cfg: TrainConfig, soft_epochs: int, sli: int) -> int:
    """Stored crops replayed per image per soft epoch; errors when the schedule needs more labels
    than the store holds."""
    per_epoch = cfg.slots_per_epoch or sli
    if per_epoch > sli:
        raise ConfigError(f"--slots-per-epoch {per_epoch} exceeds the label store's {sli} crops per image (SLI)")
    if not cfg.reuse_labels and soft_epochs * per_epoch > sli:
        raise ConfigError(
            f"the schedule has {soft_epochs} soft epochs x {per_epoch} crop(s) per image = "
            f"{soft_epochs * per_epoch} stored crops per image, but the label store holds SLI={sli} "
            f"with --no-reuse-labels: relabel with SLI >= {soft_epochs * per_epoch}, shorten the soft "
            f"phases, or allow --reuse-labels")
    return per_epoch
