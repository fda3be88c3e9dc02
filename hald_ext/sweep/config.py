"""Sweep configuration: a base set of options per stage, axes of values, seeds and the comparisons.

    name: demo
    seeds: [0, 1, 2]                 # or a count: 3 -> [0, 1, 2]
    teacher: {epochs: 1, train_images: 20000}
    select: {data: fashion-mnist, ipc: 10}
    relabel: {sli: 1, k: 5, temperature: 4}
    lvsd: {crops: 32}                # optional: Tr(Sigma) of the labels' teacher per cell
    transform: {mode: swap}          # optional: rewrite the stored labels (hald_ext.labels.transform)
    train: {eval_data: fashion-mnist, epochs: 200, label_smoothing: 0.1}
    axes:                            # STAGE.OPTION: [values]; the grid is their product
      train.schedule: [hald, soft-only, hard-only]
      relabel.sli: [1, 2, 5, 10]
    compare:                         # paired differences between values of one axis
      axis: train.schedule
      pairs: ["hald - soft-only", "hald - hard-only"]
    report: {x: relabel.sli}         # x axis of the plots (default: the first numeric axis)

Stage options are the options of `hald teacher|select|relabel|lvsd|train` (dashes or underscores; old
spellings accepted with a deprecation line), checked against each command's typed config (name, type,
choices: hald_ext.commands.*), so the sweep follows the commands. Options the sweep sets itself (paths,
seeds, devices: each command's SWEEP_MANAGED) are refused with their key named; sweep-only options (each
command's SWEEP_ONLY, and transform.mode) are listed in docs/cli.md. Stage keys hash the options under
their first names, so a renamed option keeps every stage id.
"""
from __future__ import annotations

import copy
import importlib
import itertools
import os

from hald_ext.labels.transform import MODES
from hald_ext.train import options as TC

STAGES = ("teacher", "select", "relabel", "transform", "lvsd", "train")
# The `hald` command of each stage: its typed config (CONFIG), the fields the sweep sets itself
# (SWEEP_MANAGED: paths, seeds, devices, output control) and the sweep-only options (SWEEP_ONLY, with their
# help). Read by name when first needed: the commands sit above the sweep, which never imports them.
MODULES = {"teacher": "hald_ext.commands.teacher", "select": "hald_ext.commands.select",
           "relabel": "hald_ext.commands.relabel", "lvsd": "hald_ext.commands.lvsd", "train": "hald_ext.commands.train"}
# `transform` has no command of its own in a sweep: its one option picks hald_ext.labels.transform's mode.
TRANSFORM_MODES = ("none", *MODES)
TRANSFORM_ONLY = {"mode": f"{', '.join(TRANSFORM_MODES)}: what happens to the non-top-1 entries of every "
                          "stored label"}
DEVICES = ("auto", "cpu", "cuda")
TOP_KEYS = {"name", "seeds", "axes", "compare", "report", "device", *STAGES}


class SweepConfigError(ValueError):
    """A bad sweep configuration; the message names the key."""


class CommandSpec:
    """The options of one stage's `hald` command, read from its typed config."""

    def __init__(self, stage: str):
        self.stage = stage
        if stage == "transform":
            self.config, self.managed, self.sweep_only = None, frozenset(), dict(TRANSFORM_ONLY)
            return
        mod = importlib.import_module(MODULES[stage])
        self.config = mod.CONFIG
        self.managed = frozenset(mod.SWEEP_MANAGED)
        self.sweep_only = dict(mod.SWEEP_ONLY)

    @property
    def fields(self) -> dict:
        return {} if self.config is None else TC.config_fields(self.config)

    def name(self, key, where: str) -> str:
        """A preset's key (dashes or underscores, current or deprecated) as the field's name; errors name it."""
        key = _norm(key)
        if key in self.sweep_only:
            return key
        name = None if self.config is None else TC.canonical_name(self.config, key, f"{self.stage}.", "hald sweep")
        if name is None:
            known = sorted(set(self.fields) - self.managed | set(self.sweep_only))
            raise SweepConfigError(f"{where}: unknown option {self.stage}.{key} (known: {', '.join(known)})")
        if name in self.managed:
            raise SweepConfigError(f"{where}: {self.stage}.{key} is set by the sweep itself; remove it")
        return name

    def has(self, name: str) -> bool:
        return name in self.fields

    def default(self, name: str):
        return TC.field_default(self.config, name)

    def stable(self, options: dict) -> dict:
        """Options keyed by the names stage hashes were first computed with (--img-size was --size,
        crops_per_epoch was slots_per_epoch, ...): a renamed option keeps every stage's identity."""
        return {(TC.stable_key(self.config, k) if k in self.fields else k): v for k, v in options.items()}

    def flags(self, name: str, value) -> list:
        """argv for one option; [] for a value that means "leave the default"."""
        meta = self.fields[name].metadata
        if meta["positional"]:
            return [str(value)]
        opt = "--" + name.replace("_", "-")
        base, _ = TC.field_type(self.config, name)
        if base is bool:
            if not isinstance(value, bool):
                raise SweepConfigError(f"{self.stage}.{name} must be true or false, got {value!r}")
            if meta["action"] is not None:  # a store-true flag (relabel's ordered --pretrained)
                return [opt] if value else []
            return [opt] if value else ["--no-" + opt[2:]]
        if value is None:
            return []
        if isinstance(value, (list, tuple)):
            if meta["action"] is not None:  # a repeated flag
                return [a for v in value for a in (opt, _text(v))]
            return [opt] + [_text(v) for v in value]
        return [opt, _text(value)]

    def argv(self, options: dict) -> list:
        out = []
        for name, v in options.items():
            if self.fields[name].metadata["positional"]:
                out += self.flags(name, v)
        for name, v in options.items():
            if not self.fields[name].metadata["positional"]:
                out += self.flags(name, v)
        return out

    def check(self, options: dict, where: str) -> None:
        """Every value is read as its field's type and checked against its choices; an error names the key."""
        for name, v in options.items():
            if name in self.sweep_only or v is None:
                continue
            try:
                TC.coerce(self.config, name, v, "")
            except TC.ConfigError as e:
                raise SweepConfigError(f"{where}.{e}") from None


def _text(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _norm(key) -> str:
    if not isinstance(key, str):
        raise SweepConfigError(f"option names must be strings, got {key!r}")
    return key.replace("-", "_")


_SPECS: dict = {}


def spec(stage: str) -> CommandSpec:
    if stage not in _SPECS:
        _SPECS[stage] = CommandSpec(stage)
    return _SPECS[stage]


def load(path: str, overrides: list | None = None) -> dict:
    """Read and validate a configuration; `overrides` are "KEY=VALUE" strings applied first (see
    apply_overrides)."""
    import yaml

    if not os.path.exists(path):
        raise SweepConfigError(f"{path}: no such sweep configuration")
    with open(path) as f:
        try:
            cfg = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise SweepConfigError(f"{path}: not valid YAML ({e})") from None
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    return validate(cfg, where=path)


def apply_overrides(cfg, overrides: list) -> dict:
    """`--set` values: "seeds=[0]", "name=quick", "train.epochs=2" (a stage option, or an axis's value
    list "axes.relabel.sli=[1, 2]"); VALUE is read as YAML. A stage option that is also an axis is
    refused (set the axis instead), so an override never silently loses to the grid."""

    import yaml

    if not isinstance(cfg, dict):
        return cfg  # validate names the problem
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        key, sep, text = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise SweepConfigError(f"--set {item!r}: expected KEY=VALUE (e.g. train.epochs=2)")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise SweepConfigError(f"--set {item!r}: the value is not valid YAML ({e})") from None
        if key.startswith("axes."):
            cfg.setdefault("axes", {})
            if not isinstance(cfg["axes"], dict):
                raise SweepConfigError(f"--set {item!r}: the configuration's axes are not a mapping")
            cfg["axes"][key[len("axes."):]] = value
        elif "." in key:
            stage, _, opt = key.partition(".")
            if stage not in STAGES:
                raise SweepConfigError(f"--set {item!r}: unknown stage {stage!r} (one of {', '.join(STAGES)})")
            if any(_norm(a.partition(".")[2]) == _norm(opt) and a.partition(".")[0] == stage
                   for a in (cfg.get("axes") or {})):
                raise SweepConfigError(f"--set {item!r}: {key} is an axis of this sweep; set axes.{key}=[...]")
            if not isinstance(cfg.get(stage) or {}, dict):
                raise SweepConfigError(f"--set {item!r}: {stage} is not a mapping in the configuration")
            cfg[stage] = {**(cfg.get(stage) or {}), opt: value}
        else:
            cfg[key] = value
    return cfg


def _stage_options(stage: str, opts, where: str) -> dict:
    if opts is None:
        return {}
    if not isinstance(opts, dict):
        raise SweepConfigError(f"{where}: {stage} must be a mapping of options, got {type(opts).__name__}")
    out = {}
    for k, v in opts.items():
        name = spec(stage).name(k, where)
        if name in out:
            raise SweepConfigError(f"{where}: {stage}.{k} is given twice (under its old and its new name)")
        out[name] = v
    return out


def validate(cfg, where: str = "sweep config") -> dict:
    """Check and normalise a loaded configuration; every error names the bad key."""
    if not isinstance(cfg, dict):
        raise SweepConfigError(f"{where}: the configuration must be a mapping")
    for k in cfg:
        if k not in TOP_KEYS:
            raise SweepConfigError(f"{where}: unknown key {k!r} (known: {', '.join(sorted(TOP_KEYS))})")
    out = {"name": str(cfg.get("name") or os.path.splitext(os.path.basename(where))[0]),
           "device": cfg.get("device", "auto")}
    if out["device"] not in DEVICES:
        raise SweepConfigError(f"{where}: device must be auto, cpu or cuda, got {out['device']!r}")
    seeds = cfg.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise SweepConfigError(f"{where}: seeds must be >= 1 or a list, got {seeds}")
        seeds = list(range(seeds))
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           for s in seeds):
        raise SweepConfigError(f"{where}: seeds must be a count or a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise SweepConfigError(f"{where}: seeds has duplicates: {seeds}")
    out["seeds"] = seeds
    for stage in STAGES:
        raw = cfg.get(stage)
        if stage in ("lvsd", "transform") and raw in (None, False):
            out[stage] = None
            continue
        out[stage] = _stage_options(stage, {} if raw is True else raw, where)
    axes = cfg.get("axes") or {}
    if not isinstance(axes, dict):
        raise SweepConfigError(f"{where}: axes must be a mapping STAGE.OPTION -> list of values")
    out["axes"] = {}
    for name, values in axes.items():
        if not isinstance(name, str) or name.count(".") != 1:
            raise SweepConfigError(f"{where}: axes.{name}: an axis is named STAGE.OPTION (e.g. relabel.sli)")
        stage, opt = name.split(".")
        if stage not in STAGES:
            raise SweepConfigError(f"{where}: axes.{name}: unknown stage {stage!r} (known: {', '.join(STAGES)})")
        if stage in ("lvsd", "transform") and out[stage] is None:
            out[stage] = {}
        opt = spec(stage).name(opt, f"{where}: axes")
        if not isinstance(values, list) or not values:
            raise SweepConfigError(f"{where}: axes.{name} must be a non-empty list of values")
        if len({repr(v) for v in values}) != len(values):
            raise SweepConfigError(f"{where}: axes.{name} has duplicate values: {values}")
        key = f"{stage}.{opt}"
        if key in out["axes"]:
            raise SweepConfigError(f"{where}: axes.{name} is given twice")
        out["axes"][key] = values
    # Every value the grid can produce must read as its option's type and be one of its choices.
    for stage in STAGES:
        if out[stage] is None or stage == "transform":
            continue
        spec(stage).check(out[stage], f"{where}: {stage}")
        for key, values in out["axes"].items():
            st, opt = key.split(".")
            if st == stage:
                for v in values:
                    spec(stage).check({opt: v}, f"{where}: axes.{stage}")
    if out["transform"] is not None:
        modes = [out["transform"].get("mode", "none")] + list(out["axes"].get("transform.mode", []))
        for m in modes:
            if m not in TRANSFORM_MODES:
                raise SweepConfigError(f"{where}: transform.mode must be one of {', '.join(TRANSFORM_MODES)}, "
                                       f"got {m!r}")
    if "use_epoch" in out["teacher"] or "teacher.use_epoch" in out["axes"]:
        if "checkpoint" in out["teacher"]:
            raise SweepConfigError(f"{where}: teacher.use_epoch needs a trained teacher, not teacher.checkpoint")
        _check_use_epoch(out, where)
    out["compare"] = _compare(cfg.get("compare"), out["axes"], where)
    out["report"] = _report(cfg.get("report"), out["axes"], where)
    return out


def _values(out: dict, stage: str, opt: str, default) -> list:
    """Every value an option takes in the grid: its axis values, else its base value, else `default`."""
    key = f"{stage}.{opt}"
    if key in out["axes"]:
        return list(out["axes"][key])
    return [out[stage].get(opt, default)]


def _check_use_epoch(out: dict, where: str) -> None:
    """A snapshot exists for epoch e when `hald teacher --save-every N` wrote it: e a multiple of N and at
    most the teacher's epochs (checked before hours of teacher training, not when relabel misses it)."""
    teacher = spec("teacher")
    epochs = _values(out, "teacher", "epochs", teacher.default("epochs"))
    every = _values(out, "teacher", "save_every", teacher.default("save_every"))
    for e in _values(out, "teacher", "use_epoch", None):
        if e is None:
            continue
        if not isinstance(e, int) or isinstance(e, bool) or e < 1:
            raise SweepConfigError(f"{where}: teacher.use_epoch must be a whole number of epochs >= 1, got {e!r}")
        for n in every:
            if not n:
                raise SweepConfigError(f"{where}: teacher.use_epoch {e} needs snapshots: set teacher.save_every "
                                       f"(hald teacher --save-every N)")
            if e % n:
                raise SweepConfigError(f"{where}: teacher.use_epoch {e} is not a multiple of teacher.save_every "
                                       f"{n}: no snapshot is written after epoch {e}")
        for total in epochs:
            if e > total:
                raise SweepConfigError(f"{where}: teacher.use_epoch {e} is past the teacher's last epoch "
                                       f"(teacher.epochs {total})")


def as_written(cfg: dict) -> dict:
    """A validated configuration in the format `load` reads, giving the same plan: what a report keeps
    as the configuration that ran (the preset with every `--set` applied)."""
    out = {k: copy.deepcopy(v) for k, v in cfg.items() if v is not None}
    if cfg.get("compare"):
        out["compare"] = {"axis": cfg["compare"]["axis"],
                          "pairs": [f"{a} - {b}" for a, b in cfg["compare"]["pairs"]]}
    out["report"] = {k: v for k, v in (cfg.get("report") or {}).items() if v is not None}
    return out


def _compare(raw, axes: dict, where: str):
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"axis", "pairs"}:
        raise SweepConfigError(f"{where}: compare must be a mapping with keys axis and pairs")
    axis = raw.get("axis")
    if not isinstance(axis, str):
        raise SweepConfigError(f"{where}: compare.axis must name an axis")
    stage, _, opt = axis.partition(".")
    axis = f"{stage}.{_norm(opt)}"
    if axis not in axes:
        raise SweepConfigError(f"{where}: compare.axis {raw.get('axis')!r} is not one of the axes "
                               f"({', '.join(axes) or 'none'})")
    pairs = []
    values = axes[axis]
    for p in raw.get("pairs") or []:
        if isinstance(p, str):
            parts = [s.strip() for s in p.split(" - ")]
        elif isinstance(p, list):
            parts = list(p)
        else:
            parts = []
        if len(parts) != 2:
            raise SweepConfigError(f"{where}: compare.pairs: {p!r} must be 'A - B' or [A, B]")
        resolved = []
        for part in parts:
            match = [v for v in values if v == part or str(v) == str(part)]
            if not match:
                raise SweepConfigError(f"{where}: compare.pairs: {part!r} is not a value of {axis} "
                                       f"({', '.join(map(str, values))})")
            resolved.append(match[0])
        pairs.append(tuple(resolved))
    if not pairs:
        raise SweepConfigError(f"{where}: compare.pairs is empty")
    return {"axis": axis, "pairs": pairs}


def _report(raw, axes: dict, where: str) -> dict:
    raw = copy.deepcopy(raw or {})
    if not isinstance(raw, dict):
        raise SweepConfigError(f"{where}: report must be a mapping")
    allowed = {"x", "frontier", "metric"}
    for k in raw:
        if k not in allowed:
            raise SweepConfigError(f"{where}: unknown key report.{k} (known: {', '.join(sorted(allowed))})")
    x = raw.get("x")
    if x is not None:
        stage, _, opt = str(x).partition(".")
        x = f"{stage}.{_norm(opt)}"
        if x not in axes:
            raise SweepConfigError(f"{where}: report.x {raw['x']!r} is not one of the axes")
    else:
        x = next((a for a, vs in axes.items() if all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                    for v in vs)), None)
    metric = raw.get("metric", "top1")
    if metric not in ("top1", "best_top1", "top5"):
        raise SweepConfigError(f"{where}: report.metric must be top1, best_top1 or top5, got {metric!r}")
    frontier = raw.get("frontier")
    if frontier is not None:
        if not isinstance(frontier, list) or len(frontier) != 2:
            raise SweepConfigError(f"{where}: report.frontier must be [DATA_AXIS, KNOWLEDGE_AXIS], "
                                   f"e.g. [select.ipc, relabel.k]")
        fr = []
        for a in frontier:
            stage, _, opt = str(a).partition(".")
            a = f"{stage}.{_norm(opt)}"
            if a not in axes:
                raise SweepConfigError(f"{where}: report.frontier: {a!r} is not one of the axes")
            fr.append(a)
        frontier = fr
    return {"x": x, "metric": metric, "frontier": frontier}


def grid(cfg: dict) -> list:
    """Every cell of the axes' product as {axis: value} (insertion order of the axes)."""
    names = list(cfg["axes"])
    return [dict(zip(names, combo)) for combo in itertools.product(*(cfg["axes"][n] for n in names))]


def cell_options(cfg: dict, cell: dict) -> dict:
    """The per-stage options of one cell: base options overridden by the cell's axis values."""
    out = {s: (None if cfg[s] is None else dict(cfg[s])) for s in STAGES}
    for key, v in cell.items():
        stage, opt = key.split(".")
        out[stage][opt] = v
    return out
