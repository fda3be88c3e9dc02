"""`hald sweep-summary REPORT_DIR ... --out DIR`: pool the paired runs of several sweeps and ask whether
Tr(Sigma) of the labels' teacher over crops (`hald lvsd`), measured before any student trains, predicts
the sign and size of a schedule's paired gain; the library side: hald_ext.sweep.summary.

    hald sweep-summary experiments/fmnist/map-sli experiments/fmnist/map-teacher \\
        experiments/fmnist/map-smoothing --out experiments/fmnist/summary
"""
from __future__ import annotations

import dataclasses
import os
import sys

from hald_ext.commands.options import DATA, OUTPUT, describe, resolved
from hald_ext.sweep import summary as S
from hald_ext.train import options as C


@dataclasses.dataclass
class SweepSummaryConfig:
    reports: list = C.option(None, "report folders (or their results.json) written by `hald sweep`", group=DATA,
                             positional=True, nargs="+", item=str)
    pairs: list = C.option(("hald - soft-only", "hald - hard-only"), "paired differences 'A - B' to pool",
                           group=DATA, nargs="+", item=str)
    out: str = C.option(None, "folder for summary.md, summary.json and summary.png", group=OUTPUT, required=True,
                        short=("-o",))
    plots: bool = C.option(True, "the figure", group=OUTPUT)


def add_arguments(p) -> None:
    describe(p, __doc__, SweepSummaryConfig)


def run(args) -> int:
    args = resolved(SweepSummaryConfig, args, "hald sweep-summary")
    if args is None:
        return 2
    try:
        s = S.build(args.reports, args.out, args.pairs, plots=args.plots)
    except S.SummaryError as e:
        print(f"hald sweep-summary: error: {e}", file=sys.stderr)
        return 2
    for e in s["pairs"]:
        q = e["predictors"]["lvsd_drift"]
        print(f"{e['pair']}: {len(e['cells'])} cells, {e['points']} seed pairs; Tr(Sigma)/SLI vs gain: "
              f"Spearman {S._f(q['cells']['rho'], '{:+.2f}')} (p = {S._f(q['cells']['p'], '{:.2g}')})")
    print(f"[sweep-summary] {os.path.join(args.out, 'summary.md')}")
    return 0
