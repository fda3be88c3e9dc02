"""`hald info`: which kernels this build carries (CPU, CUDA) and the versions it was built with."""
from __future__ import annotations

import dataclasses

import hald_ext
from hald_ext.commands.options import describe


@dataclasses.dataclass
class InfoConfig:
    pass


def add_arguments(parser) -> None:
    describe(parser, __doc__, InfoConfig)


def run(args) -> int:
    for k, v in hald_ext.build_info().items():
        print(f"{k}: {v}")
    return 0
