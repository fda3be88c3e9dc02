"""The `hald` command. Each sub-command lives in its own module exposing `add_arguments(parser)` and
`run(args)`; modules are imported only when their command runs."""
from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, one-line help)
COMMANDS = {
    "relabel": ("hald_ext.labels.relabel", "label SLI random-resized crops per image with a teacher -> label store"),
    "labels": ("hald_ext.labels.cli", "inspect or import label stores (`hald labels info FILE`)"),
    "teacher": ("hald_ext.train.teacher", "train a teacher on a full labelled set"),
    "select": ("hald_ext.train.select", "pick IPC random real images per class"),
    "train": ("hald_ext.train.cli", "train a student with the HALD (or a baseline) schedule"),
    "lvsd": ("hald_ext.train.lvsd", "local-view semantic drift diagnostics"),
    "sweep": ("hald_ext.sweep.cli", "a grid of settings over seeds: shared stages, paired statistics, report"),
    "sweep-summary": ("hald_ext.sweep.summary", "pool several sweeps: does Tr(Sigma) predict the paired gain?"),
    "label-transform": ("hald_ext.labels.transform", "swap or zero the non-top-1 entries of a label store"),
    "info": ("hald_ext.cli", "which kernels this build carries"),
}


def add_arguments(parser):  # `hald info`
    pass


def run(args):
    import hald_ext

    for k, v in hald_ext.build_info().items():
        print(f"{k}: {v}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="hald", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    argv = sys.argv[1:] if argv is None else list(argv)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_)
        # Only the selected command's module is imported (and so needs to exist).
        if argv and argv[0] == name:
            try:
                mod = importlib.import_module(module)
            except ModuleNotFoundError as e:
                parser.error(f"`hald {name}` is not available in this build ({e})")
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    args = parser.parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
