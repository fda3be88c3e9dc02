"""`hald sweep CONFIG.yaml`: a grid of settings over seeds, run with shared stages and paired runs,
resumable, with a results table, statistics, plots and a markdown report.

    hald sweep experiments/demo.yaml --out runs/demo --jobs 2
    hald sweep experiments/fmnist/map.yaml --plan        # list the stages, run nothing
    hald sweep experiments/fmnist/map.yaml --report-only # tables and plots from what is done
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import sys
from typing import Optional

from hald_ext.commands.options import DEVICES, OUTPUT, describe, resolved
from hald_ext.sweep import config as C
from hald_ext.sweep import drift_rule as D
from hald_ext.sweep import plan as P
from hald_ext.sweep import report as R
from hald_ext.sweep.runner import Runner
from hald_ext.train import options as TC


@dataclasses.dataclass
class SweepCommandConfig:
    config: str = TC.option(None, "sweep configuration (YAML; docs/sweeps.md, hald_ext/sweep/config.py)",
                            group="sweep", positional=True)
    overrides: list = TC.option(None, "override the configuration (YAML value): seeds=[0], train.epochs=2, "
                                      "axes.relabel.sli=[1], name=quick; repeatable. Give a quick look its own --out",
                                group="sweep", action="append", factory=list, metavar="KEY=VALUE", item=str,
                                flag="--set")
    plan: bool = TC.option(False, "print the planned stages and exit", group="sweep")
    predict: bool = TC.option(False, "run every stage but the student trainings (teacher, selections, relabels, "
                                     "lvsd), then write the drift rule's sign of `hald - soft-only` per cell "
                                     "(predictions.{json,md} in --report-dir): commit them before the students "
                                     "train", group="sweep")
    out: Optional[str] = TC.option(None, "output folder (default: runs/sweep-<name>)", group=OUTPUT, short=("-o",))
    report_only: bool = TC.option(False, "write the tables, plots and report from finished runs", group=OUTPUT)
    report_dir: Optional[str] = TC.option(None, "where results.{csv,json}, report.md and the plots go (default: "
                                                "--out); several configurations may share one --out (and so their "
                                                "common stages) with their own reports", group=OUTPUT)
    plots: bool = TC.option(True, "the matplotlib figures", group=OUTPUT)
    jobs: int = TC.option(1, "stages run in parallel", group=DEVICES, short=("-j",))
    threads: int = TC.option(0, "CPU threads per job (default: CPU cores / jobs)", group=DEVICES)
    device: Optional[str] = TC.option(None, "device of every stage (default: the config's, else auto: one GPU per "
                                            "job when there are GPUs)", group=DEVICES, choices=C.DEVICES)
    cli: Optional[str] = TC.option(None, "tests: a stand-in for `python -m hald_ext.cli`", group=DEVICES,
                                   hidden=True)


def add_arguments(p) -> None:
    describe(p, __doc__, SweepCommandConfig)


def run(args) -> int:
    args = resolved(SweepCommandConfig, args, "hald sweep")
    if args is None:
        return 2
    try:
        cfg = C.load(args.config, args.overrides)
    except C.SweepConfigError as e:
        print(f"hald sweep: error: {e}", file=sys.stderr)
        return 2
    if args.device:
        cfg["device"] = args.device
    out = args.out or os.path.join("runs", f"sweep-{cfg['name']}")
    plan = P.make_plan(cfg, out)
    print(f"[sweep] {cfg['name']}: {P.describe(plan)} -> {plan.root}", flush=True)
    if args.plan:
        for s in plan.stages.values():
            print(f"{s.id}: hald {' '.join(shlex.quote(a) for a in s.argv)}")
        return 0
    rc = 0
    if args.predict and args.report_only:
        print("hald sweep: error: --predict and --report-only exclude each other", file=sys.stderr)
        return 2
    if not args.report_only:
        kinds = ("teacher", "select", "relabel", "transform", "lvsd") if args.predict else None
        try:
            runner = Runner(plan, jobs=args.jobs, threads=args.threads,
                            cli=shlex.split(args.cli) if args.cli else None, kinds=kinds)
        except ValueError as e:
            print(f"hald sweep: error: {e}", file=sys.stderr)
            return 2
        rc = runner.run()
        if rc == 130:
            return rc
    report_dir = args.report_dir or plan.root
    if args.predict:
        return _predict(plan, report_dir) or rc
    res = R.build(plan, out_dir=report_dir, plots=args.plots)
    for line in res["explanation"]:
        print(line)
    print(f"[sweep] report: {os.path.join(report_dir, 'report.md')} ({res['runs_done']} run(s) done, "
          f"{len(res['runs_missing'])} not)", flush=True)
    return rc


def _predict(plan, report_dir: str) -> int:
    try:
        rule = D.load()
        rows = D.predict_plan(plan, rule)
    except D.DriftRuleError as e:
        print(f"hald sweep: error: {e}", file=sys.stderr)
        return 2
    for line in D.predictions_markdown(rows, rule):
        print(line)
    paths = D.write_predictions(rows, rule, report_dir)
    print(f"[sweep] predictions: {', '.join(paths)} (no student has trained)", flush=True)
    return 1 if any(r["sign"] is None for r in rows) else 0
