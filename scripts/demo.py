#!/usr/bin/env python
"""`make demo`: does HALD's Soft -> Hard -> Soft schedule beat soft-only and hard-only at the same budget?

    teacher (ConvNet-3, 20k Fashion-MNIST images)  ->  per seed: IPC 10 random real images per class,
    relabelled with SLI 1 stored crop label per image  ->  `hald`, `soft-only` and `hard-only` students on
    exactly those images and crops  ->  mean +- sd over seeds, paired differences with 95 % t intervals,
    and what they show.

It runs `hald sweep experiments/demo.yaml` (printed before it runs); the sweep resumes, so a rerun only
does what is not done yet. Flags override the configuration for a quicker look (--epochs, --seeds).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's hald_ext, also when another copy is installed
CONFIG = os.path.join(ROOT, "experiments", "demo.yaml")


def shown(path: str) -> str:
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def make_config(a) -> str:
    """The demo configuration with the command line's overrides, written beside the outputs."""
    import yaml

    with open(a.config) as f:
        cfg = yaml.safe_load(f)
    if a.seeds is not None:
        cfg["seeds"] = a.seeds
    if a.epochs is not None:
        cfg["train"]["epochs"] = cfg["train"]["eval_every"] = a.epochs
    if a.teacher_images is not None:
        cfg["teacher"]["train_images"] = a.teacher_images
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "demo.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=CONFIG)
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "demo"))
    p.add_argument("--jobs", type=int, default=2, help="student runs in parallel (default 2: one per core here)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="override the configuration's seeds")
    p.add_argument("--epochs", type=int, default=None, help="override the student epochs (a quick look)")
    p.add_argument("--teacher-images", type=int, default=None, help="override the teacher's training subset")
    p.add_argument("--device", default=None, help="cpu | cuda | auto (default: the configuration's)")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    config = make_config(a)
    cmd = ["sweep", config, "--out", a.out, "--jobs", str(a.jobs)] + (["--device", a.device] if a.device else [])
    print("$ hald " + " ".join(shlex.quote(shown(c)) for c in cmd), flush=True)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    rc = subprocess.run([sys.executable, "-m", "hald_ext.cli", *cmd], cwd=ROOT, env=env).returncode
    if rc != 0:
        print(f"demo: the sweep stopped (exit status {rc}); rerun `make demo` to continue where it stopped")
        return rc
    summarise(a.out, config, time.perf_counter() - t0)
    return 0


def summarise(out: str, config: str, seconds: float) -> None:
    from hald_ext.sweep import load, make_plan

    cfg = load(config)
    plan = make_plan(cfg, out)
    with open(os.path.join(out, "results.json")) as f:
        res = json.load(f)
    teacher = plan.by_kind("teacher")[0].output
    with open(os.path.splitext(teacher)[0] + ".json") as f:
        teacher_top1 = json.load(f).get("eval_top1")
    r, t = cfg["relabel"], cfg["train"]
    print(f"\nFashion-MNIST, {t.get('model', 'convnet3')}, IPC {cfg['select'].get('ipc', 10)} random real images, "
          f"SLI {r.get('sli', 1)}, top-{r.get('k', 5)} labels at T = {r.get('temperature', 1.0)}, "
          f"{t.get('epochs')} epochs, seeds {cfg['seeds']}"
          + (f" (teacher: {teacher_top1:.2f} % test top-1)" if teacher_top1 is not None else ""))
    print(f"{'schedule':<12}{'test top-1, mean +- sd (n)':>30}   per seed")
    for c in res["cells"]:
        name = c["train.schedule"]
        per_seed = sorted((row["seed"], row["top1"]) for row in res["rows"] if row["train.schedule"] == name)
        print(f"{name:<12}{c['mean']:>17.2f} +- {c['sd']:.2f} ({c['n']})      "
              + "  ".join(f"{v:.2f}" for _, v in per_seed))
    print("\npaired differences (a seed's three students share its images and stored crops):")
    for q in res["paired"]:
        ci = "no interval (one seed)" if q["n"] < 2 else f"95 % CI [{q['lo']:+.2f}, {q['hi']:+.2f}]"
        print(f"  {q['pair']:<18}{q['mean']:+.2f} points, {ci}, {q['positive']}/{q['n']} seeds positive")
    print("\nwhat this shows:")
    for line in res["explanation"]:
        if not line.lstrip().startswith(("hald ", "no difference", "one seed")):
            print("  " + line)
    if any(q["n"] < 5 for q in res["paired"]):
        print(f"  ({min(q['n'] for q in res['paired'])} seeds: only large differences can be resolved; more seeds "
              f"narrow the intervals: `--seeds 0 1 2 3 4 5`.)")
    print(f"\nreport: {shown(os.path.join(out, 'report.md'))} (plots beside it); total {seconds:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
