"""Option groups several commands share, as dataclass mixins of their typed configs (one name, one
help text, one set of choices per concept; the enumerations come from the library)."""
from __future__ import annotations

import dataclasses
import re
import sys
from typing import Optional

from hald_ext.data.stream import BACKENDS
from hald_ext.train.options import ConfigError, add_config_arguments, option, resolve_config

DATA, MODEL, TEACHER, LABELS, CROPS, SCHED, OPTIM, OUTPUT, DEVICES = (
    "data", "model", "teacher", "labels", "crops and augmentation", "schedule (phases and epochs)", "optimisation",
    "output and logging", "devices and processes")


@dataclasses.dataclass
class SourceOptions:
    """How images are decoded and held: the same in every command that reads images."""
    loader: str = option("auto", "image decoder (auto: DALI when installed)", group=DATA, choices=BACKENDS)
    resident_budget: Optional[str] = option(
        None, "bytes the decoded images may take on the device (e.g. 512M, 8G); a set that does not fit streams "
              "from disk; 0 always streams (default: half the free device memory)", group=DATA)
    workers: Optional[int] = option(None, "decoding threads (DALI) or DataLoader workers (torch) when streaming "
                                          "(default: the cores, at most 8)", group=DATA)


def describe(parser, doc: str, cls) -> None:
    """A command's --help: the first paragraph of its module docstring (without the pointer to its library
    side), then its config's options in groups."""
    first = doc.split("\n\n")[0]
    text = " ".join(re.sub(r";? ?\(?the library side: [\w.]+\)?", "", first).split())
    parser.description = text if text.endswith(".") else text + "."
    add_config_arguments(parser, cls)


def resolved(cls, args, prog: str):
    """The command's config from defaults < --config YAML < flags, or None after printing the error."""
    try:
        return resolve_config(cls, args, prog)
    except ConfigError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return None
