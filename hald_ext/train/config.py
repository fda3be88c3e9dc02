"""Typed command configs, and `hald train`'s: one dataclass per command, read from a YAML file and
command-line flags (flags win), validated before any data is loaded; a run saves its resolved
configuration as args.yaml in the run folder (timm's convention).

The machinery (`option`, `add_config_arguments`, `resolve_config`, `from_mapping`) is shared by every
`hald` command (hald_ext.commands) and by the sweep, which checks stage options against the same
dataclasses.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from typing import Optional

import yaml

import hald_ext.models  # noqa: F401  (registers convnet3 with timm)
from hald_ext.core.normalize import IMAGENET_MEAN, IMAGENET_STD
from hald_ext.data.stream import BACKENDS, parse_bytes
from hald_ext.labels.format import DECODES
from hald_ext.train.schedule import PRESETS, build_schedule

_KNOWN_SOURCES = ("fashion-mnist", "fashion_mnist")

class ConfigError(ValueError):
    """A configuration the command cannot run; the message says what to change."""


# ---------------------------------------------------------------------------------------------------
# Typed command configs: every `hald` command's options are one dataclass whose fields carry their help,
# group, choices and old spellings (`option`). One machinery reads them: flags (grouped in --help),
# a YAML file (--config), type coercion, choices and deprecated names. Layering: dataclass defaults <
# YAML < flags given on the command line; unknown keys are refused by name.

SOFT_LOSSES = ("kl", "ce")
BATCH_SOURCES = ("fused", "torch")
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def option(default=None, help: str = "", *, group: str = "options", choices=None, nargs=None, item=None,
           short=(), deprecated=(), key: str | None = None, positional: bool = False, required: bool = False,
           action=None, metavar=None, factory=None, hidden: bool = False, flag: str | None = None):
    """A config field. `group`: its --help section; `choices`: the allowed values (an enumeration the
    library defines); `nargs` / `item`: a fixed-length or list option and its element type; `short`:
    extra flags ("-o"); `flag`: the long flag when it is not --field-name; `deprecated`: old names (flag `--old-name` and YAML key `old_name`, each read
    with one deprecation line); `key`: the name the option had when sweep stage hashes were first
    computed (default: the field's name); `action`: a custom argparse action (ordered, repeated flags)."""
    meta = {"help": help, "group": group, "choices": tuple(choices) if choices is not None else None,
            "nargs": nargs, "item": item, "short": tuple(short), "deprecated": tuple(deprecated), "key": key,
            "positional": positional, "required": required, "action": action, "metavar": metavar,
            "hidden": hidden, "flag": flag}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _f(default, help_, **kw):  # short form used by TrainConfig
    return option(default, help_, **kw)


def config_fields(cls) -> dict:
    return {f.name: f for f in dataclasses.fields(cls)}


def field_type(cls, name: str) -> tuple:
    """(base type, optional) of a field, from its real type hint (not its annotation's spelling)."""
    hint = typing.get_type_hints(cls)[name]
    args = typing.get_args(hint)
    if type(None) in args:
        hint = next(a for a in args if a is not type(None))
    optional = type(None) in args
    origin = typing.get_origin(hint)
    return (origin or hint), optional


def field_default(cls, name: str):
    f = config_fields(cls)[name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def stable_key(cls, name: str) -> str:
    """The name an option is hashed under in sweep stage keys (its first spelling)."""
    return config_fields(cls)[name].metadata.get("key") or name


def canonical_name(cls, key: str, where: str = "", prog: str = "hald") -> str | None:
    """A flag / YAML key (dashes or underscores, current or deprecated) -> the field's name; None when
    unknown. A deprecated name prints one line naming the new spelling."""
    name = str(key).replace("-", "_")
    fields = config_fields(cls)
    if name in fields:
        return name
    for f in fields.values():
        if name in f.metadata.get("deprecated", ()):
            _deprecated(prog, f"{where}{key}", f"{where}{f.name}")
            return f.name
    return None


_WARNED: set = set()


def _deprecated(prog: str, old: str, new: str) -> None:
    if (prog, old) not in _WARNED:
        _WARNED.add((prog, old))
        print(f"{prog}: warning: {old} is deprecated and will be removed in the next release; use {new}",
              file=sys.stderr)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _help_text(f) -> str:
    meta, text = f.metadata, f.metadata["help"]
    if "(default" in text or meta["positional"] or meta["required"] or meta["action"] is not None:
        return text
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    if isinstance(default, bool) or default is None:
        return text
    if isinstance(default, tuple):
        default = " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default)
    return f"{text} (default: {default})" if text else f"(default: {default})"


class _DeprecatedFlag(argparse.Action):
    """An old flag spelling: stores like the new one, after one deprecation line."""

    def __init__(self, option_strings, dest, new_flag="", inner=None, **kw):
        self.new_flag, self.inner = new_flag, inner
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        _deprecated(parser.prog, option_string, self.new_flag)
        if self.inner == "bool":
            values = not option_string.startswith("--no-")
        setattr(namespace, self.dest, values)


def add_config_arguments(parser: argparse.ArgumentParser, cls, config_file: bool = True, default_group: str = "options"):
    """One flag per field of `cls`, in argument groups (timm's train.py layout). Flags default to "not
    given" (SUPPRESS) so that `resolve_config` layers dataclass defaults < YAML < flags."""
    groups: dict = {}

    def group(title):
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        return groups[title]

    if config_file and "config" not in config_fields(cls):  # (`hald sweep CONFIG` is its own file)
        group("config").add_argument("-c", "--config", default=None, metavar="FILE",
                                     help="YAML file of options (keys as the flags, dashes or underscores); "
                                          "flags given override it")
    for name, f in config_fields(cls).items():
        meta = f.metadata
        g = group(meta.get("group") or default_group)
        help_ = argparse.SUPPRESS if meta["hidden"] else _help_text(f)
        kw = {"help": help_}
        if meta["metavar"]:
            kw["metavar"] = meta["metavar"]
        if meta["positional"]:
            if meta["nargs"]:
                kw["nargs"] = meta["nargs"]
            g.add_argument(name, **kw)
            continue
        flags = [meta.get("flag") or _flag(name), *meta["short"]]
        base, _ = field_type(cls, name)
        if meta["required"]:  # given as a flag or in the --config file: resolve_config checks it
            kw["help"] = f"{help_} (required)"
            if not (config_file and "config" not in config_fields(cls)):
                kw["required"] = True
        if meta["action"] is not None:
            g.add_argument(*flags, dest=name, action=meta["action"], default=field_default(cls, name),
                           **kw)
            continue
        kw["default"] = argparse.SUPPRESS
        if base is bool:
            g.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction, **kw)
            for old in meta["deprecated"]:
                g.add_argument(_flag(old), "--no-" + old.replace("_", "-"), dest=name, nargs=0,
                               action=_DeprecatedFlag, new_flag=_flag(name), inner="bool", help=argparse.SUPPRESS,
                               default=argparse.SUPPRESS)
            continue
        if meta["nargs"] is not None:
            kw["nargs"] = meta["nargs"]
            kw["type"] = meta["item"] or float
        elif base in (int, float):
            kw["type"] = base
        if meta["choices"] is not None:
            kw["choices"] = meta["choices"]
        g.add_argument(*flags, dest=name, **kw)
        for old in meta["deprecated"]:
            extra = {k: v for k, v in kw.items() if k in ("nargs", "type", "choices", "metavar")}
            g.add_argument(_flag(old), dest=name, action=_DeprecatedFlag, new_flag=_flag(name),
                           help=argparse.SUPPRESS, default=argparse.SUPPRESS, **extra)
    return groups


def read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value")
    return data


def coerce(cls, name: str, value, where: str = "option "):
    """A YAML (or sweep) value as the field's type, checked against its choices. YAML 1.1 reads `1e-3`
    (no dot) as a string, and a typo'd type would otherwise fail deep inside the command."""
    f = config_fields(cls)[name]
    base, optional = field_type(cls, name)
    meta = f.metadata
    if value is None:
        if optional or meta["action"] is not None:
            return None
        raise ConfigError(f"{where}{name} cannot be empty")
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in _TRUE + _FALSE:
                return str(value).lower() in _TRUE
            raise ValueError
        if base in (tuple, list):
            items = value if isinstance(value, (list, tuple)) else [value]
            item = meta["item"] or (float if base is tuple else str)
            items = [_scalar(item, v) for v in items]
            n = meta["nargs"]
            if isinstance(n, int) and len(items) != n:
                raise ValueError
            if n == "+" and not items:
                raise ValueError
            out = tuple(items) if base is tuple else list(items)
        else:
            out = _scalar(base, value)
    except (TypeError, ValueError):
        kind = base.__name__ if base not in (tuple, list) else f"{meta['nargs']} x {(meta['item'] or float).__name__}"
        raise ConfigError(f"{where}{name}: cannot read {value!r} as {kind}") from None
    choices = meta["choices"]
    if choices is not None:
        for v in (out if isinstance(out, (list, tuple)) else [out]):
            if v not in choices:
                raise ConfigError(f"{where}{name}: {v!r} is not one of {', '.join(map(str, choices))}")
    return out


def _scalar(typ, value):
    if typ is int:
        if isinstance(value, bool) or float(value) != int(float(value)):
            raise ValueError
        return int(float(value))
    if typ is float:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    if isinstance(value, (dict, list, tuple)):
        raise ValueError
    return str(value)


def normalise_keys(cls, values: dict, where: str, prog: str) -> dict:
    """Keys of a mapping (YAML file, sweep stage) as field names; unknown keys refused by name."""
    out = {}
    for k, v in values.items():
        name = canonical_name(cls, k, "", prog)
        if name is None:
            known = ", ".join(sorted(config_fields(cls)))
            raise ConfigError(f"{where}: unknown option {k!r} (known: {known})")
        if name in out:
            raise ConfigError(f"{where}: option {name} is given twice ({k!r} is its old name)")
        out[name] = v
    return out


def from_mapping(cls, values: dict, where: str = "config", prog: str = "hald"):
    """A config from a mapping of option: value (old names accepted), every value coerced and checked."""
    values = normalise_keys(cls, values, where, prog)
    return cls(**{k: coerce(cls, k, v, f"{where}: ") for k, v in values.items()})


def resolve_config(cls, args: argparse.Namespace, prog: str = "hald"):
    """Dataclass defaults, then the YAML file named by --config, then the flags that were given."""
    values = {}
    if getattr(args, "config", None) and "config" not in config_fields(cls):
        values.update(normalise_keys(cls, read_yaml(args.config), args.config, prog))
    fields = config_fields(cls)
    given = {k: v for k, v in vars(args).items() if k in fields}
    for k, v in given.items():
        meta = fields[k].metadata
        if meta["action"] is not None and v == field_default(cls, k) and k in values:
            continue  # a repeated-flag option not given on the command line keeps the YAML's value
        values[k] = v
    for k, f in fields.items():
        if f.metadata["required"] and values.get(k) in (None, []):
            raise ConfigError(f"{f.metadata.get('flag') or _flag(k)} is required (as a flag, or `{k}:` in the "
                              "--config file)")
    return cls(**{k: coerce(cls, k, v, "option ") for k, v in values.items()})


def config_dict(cfg) -> dict:
    """Plain YAML / checkpoint-safe values (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def check_choices(cfg) -> None:
    """Every enumerated field of a config built in code (not through the flags) holds one of its choices."""
    for name, f in config_fields(type(cfg)).items():
        choices, value = f.metadata.get("choices"), getattr(cfg, name)
        if choices is not None and value is not None and value not in choices:
            raise ConfigError(f"{_flag(name)} must be one of {', '.join(map(str, choices))}, got {value!r}")


def accept_deprecated_kwargs(cls):
    """`cls(old_name=...)` keeps working for one release (as the flag and the YAML key do)."""
    init = cls.__init__

    def __init__(self, *args, **kw):
        for k in list(kw):
            if k not in config_fields(cls):
                name = canonical_name(cls, k, "", cls.__name__)
                if name is not None:
                    kw[name] = kw.pop(k)
        init(self, *args, **kw)

    __init__.__doc__ = init.__doc__
    cls.__init__ = __init__
    return cls


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
