"""The `hald` command: relabel images with a teacher, import and inspect label stores, and train and
study students with HALD soft-label distillation.

Each sub-command lives in its own module of hald_ext.commands exposing `add_arguments(parser)` and
`run(args)` (and its typed config); modules are imported only when their command runs. Output piped
into a reader that stops early (`hald labels info FILE | head`) ends the command quietly."""
from __future__ import annotations

import argparse
import importlib
import os
import re
import sys

from hald_ext.core import extras

# command -> (module, one-line help); every module is in hald_ext.commands
COMMANDS = {
    "relabel": ("hald_ext.commands.relabel", "label SLI random-resized crops per image with a teacher -> label store"),
    "labels": ("hald_ext.commands.labels", "inspect, import or transform label stores (`hald labels info FILE`)"),
    "teacher": ("hald_ext.commands.teacher", "train a teacher on a full labelled set"),
    "select": ("hald_ext.commands.select", "pick IPC random real images per class"),
    "train": ("hald_ext.commands.train", "train a student with the HALD (or a baseline) schedule"),
    "lvsd": ("hald_ext.commands.lvsd", "local-view semantic drift diagnostics"),
    "sweep": ("hald_ext.commands.sweep", "a grid of settings over seeds: shared stages, paired statistics, report"),
    "sweep-summary": ("hald_ext.commands.sweep_summary", "pool several sweeps: does Tr(Sigma) predict the paired gain?"),
    "info": ("hald_ext.commands.info", "which kernels this build carries"),
}
# Old command spellings, accepted for one release: old -> (new words, what the old name stood for)
DEPRECATED_COMMANDS = {"label-transform": ("labels", "transform")}


# an option's help that states its own default, e.g. "(default: the store's)" or "(default 0, ...)"
_STATED_DEFAULT = re.compile(r"\(default[ :]")


def _one_default_per_option(parser: argparse.ArgumentParser) -> None:
    """Help texts that state their default in words and also end in an appended "(default: X)" (a
    generated suffix) keep the first: `--img-size` printed "(default: the image size ...) (default: None)"."""
    for action in parser._actions:
        text = action.help
        if isinstance(text, str):
            m = re.search(r"\s*\(default: [^()]*\)\s*$", text)
            if m and _STATED_DEFAULT.search(text[:m.start()]):
                action.help = text[:m.start()]
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _one_default_per_option(sub)


def _quiet_broken_pipe() -> int:
    """The reader of our stdout went away (`| head`): point stdout at /dev/null so the interpreter's
    final flush does not raise again, and exit as a process killed by SIGPIPE would (128 + 13)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (captured)
        pass
    return 141


def main(argv=None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        return _quiet_broken_pipe()


def _main(argv=None) -> int:
    description = " ".join(__doc__.split("\n\n")[0].split())
    parser = argparse.ArgumentParser(prog="hald", description=description)
    sub = parser.add_subparsers(dest="command", required=True)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DEPRECATED_COMMANDS:
        new = DEPRECATED_COMMANDS[argv[0]]
        print(f"hald: warning: `hald {argv[0]}` is deprecated and will be removed in the next release; use "
              f"`hald {' '.join(new)}`", file=sys.stderr)
        argv = [*new, *argv[1:]]
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_)
        # Only the selected command's module is imported (and so needs to exist).
        if argv and argv[0] == name:
            try:
                mod = importlib.import_module(module)
            except ModuleNotFoundError as e:
                parser.error(extras.install_hint(e.name) or f"`hald {name}` cannot start: {e}")
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    _one_default_per_option(parser)
    args = parser.parse_args(argv)
    try:
        rc = int(args._run(args) or 0)
    except ModuleNotFoundError as e:  # an optional dependency first needed while running
        hint = extras.install_hint(e.name)
        if hint is None:
            raise
        print(f"hald {args.command}: error: {hint}", file=sys.stderr)
        return 2
    sys.stdout.flush()  # a closed pipe shows here, inside main's handler, not at interpreter exit
    return rc


if __name__ == "__main__":
    sys.exit(main())
