"""Typed command configs: every `hald` command's options are one dataclass whose fields carry their
help, --help group, choices and old spellings (`option`). One machinery reads them for every command
(hald_ext.commands) and for the sweep, which checks stage options against the same dataclasses:

- flags, one per field, in argument groups (`add_config_arguments`), defaulting to "not given";
- `resolve_config`: dataclass defaults < the YAML file of --config < the flags given; unknown keys are
  refused by name, values coerced to the field's type and checked against its choices;
- old spellings (flags and keys) are read with one deprecation line naming the new one, and a field's
  `key` keeps the name sweep stage hashes were first computed under.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


class ConfigError(ValueError):
    """A configuration the command cannot run; the message says what to change."""


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
            warn_deprecated(prog, f"{where}{key}", f"{where}{f.name}")
            return f.name
    return None


_WARNED: set = set()


def warn_deprecated(prog: str, old: str, new: str) -> None:
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
        warn_deprecated(parser.prog, option_string, self.new_flag)
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
    import yaml  # the [train] extra

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
