#!/usr/bin/env python
"""`make demo`: where does HALD's Soft -> Hard -> Soft schedule beat soft-only, and can `hald lvsd` tell in advance?

    teacher (ConvNet-3, 20k Fashion-MNIST images)  ->  per seed: IPC 10 random real images per class,
    relabelled with SLI 1 stored crop label per image, at T = 1 and at T = 4  ->  Tr(Sigma) of the teacher
    over crops (`hald lvsd`) and the drift rule's predicted sign of `hald - soft-only` per regime, printed
    BEFORE any student trains  ->  `hald`, `soft-only` and `hard-only` students on exactly those images and
    crops  ->  per regime: mean +- sd over seeds, paired differences with 95 % t intervals, what they show,
    and whether the prediction held.

It runs `hald sweep experiments/demo.yaml --predict` (teacher, selections, labels, Tr(Sigma); no student)
and then `hald sweep experiments/demo.yaml` (both printed before they run); the sweep resumes, so a rerun
only does what is not done yet. Flags override the configuration for a quicker look (--epochs, --seeds).
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
    p.add_argument("--threads", type=int, default=0, help="CPU threads per student (default: cores / jobs)")
    p.add_argument("--quiet-predict", action="store_true", help="hide the measuring sweep's own output")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    config = make_config(a)
    cmd = (["sweep", config, "--out", a.out, "--jobs", str(a.jobs)] + (["--device", a.device] if a.device else [])
           + (["--threads", str(a.threads)] if a.threads else []))
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    predictions = os.path.join(a.out, "predictions.json")
    if os.path.exists(predictions):
        os.remove(predictions)  # a stale one must not pass for this run's
    print("$ hald " + " ".join(shlex.quote(shown(c)) for c in cmd + ["--predict"]), flush=True)
    rc = subprocess.run([sys.executable, "-m", "hald_ext.cli", *cmd, "--predict"], cwd=ROOT, env=env,
                        stdout=subprocess.DEVNULL if a.quiet_predict else None).returncode
    if rc != 0 or not os.path.exists(predictions):
        print(f"demo: measuring before training stopped (exit status {rc}); rerun `make demo` to continue")
        return rc or 1
    print_predictions(predictions)
    print("$ hald " + " ".join(shlex.quote(shown(c)) for c in cmd), flush=True)
    rc = subprocess.run([sys.executable, "-m", "hald_ext.cli", *cmd], cwd=ROOT, env=env).returncode
    if rc != 0:
        print(f"demo: the sweep stopped (exit status {rc}); rerun `make demo` to continue where it stopped")
        return rc
    summarise(a.out, config, time.perf_counter() - t0)
    return 0


def _where(cell: dict) -> str:
    names = {"relabel.temperature": "labels at T = {}", "relabel.sli": "SLI {}", "select.ipc": "IPC {}",
             "train.epochs": "{} epochs", "train.model": "student {}"}
    return ", ".join(names.get(k, k + " = {}").format(v) for k, v in cell.items())


def _group(row: dict, others: list) -> str:
    return json.dumps({k: row[k] for k in others}, default=str)


def print_predictions(path: str) -> None:
    """The drift rule's sign per regime, from `hald sweep --predict` (no student has trained yet)."""
    with open(path) as f:
        pred = json.load(f)
    rule = pred["rule"]
    print(f"\nPREDICTIONS, before any student trains (drift rule: HALD beats soft-only when Tr(Sigma) / SLI > "
          f"{rule['threshold']:.4f}; a lead, not a verdict):")
    for c in pred["cells"]:
        if c["sign"] is None:
            print(f"  {_where(c['cell'])}: Tr(Sigma) not measured")
            continue
        word = "HALD BEATS soft-only" if c["sign"] == "+" else "HALD LOSES to soft-only"
        print(f"  {_where(c['cell']) or 'this cell'}: Tr(Sigma) {c['trace_sigma']:.4f} / SLI {c['context']['sli']} = "
              f"{c['drift']:.4f} ({c['ratio']:.2f} x the threshold) -> predicted: {word}")
    from hald_ext.sweep.drift_rule import evidence_text

    print(f"  the rule rests on: {evidence_text(rule)}\n", flush=True)


def summarise(out: str, config: str, seconds: float) -> None:
    from hald_ext.sweep import load, make_plan

    cfg = load(config)
    plan = make_plan(cfg, out)
    with open(os.path.join(out, "results.json")) as f:
        res = json.load(f)
    pred = {}
    if os.path.exists(os.path.join(out, "predictions.json")):
        with open(os.path.join(out, "predictions.json")) as f:
            pred = {json.dumps(c["cell"], default=str): c for c in json.load(f)["cells"]
                    if c.get("pair", "hald - soft-only") == "hald - soft-only"}
    teacher = plan.by_kind("teacher")[0].output
    with open(os.path.splitext(teacher)[0] + ".json") as f:
        teacher_top1 = json.load(f).get("eval_top1")
    r, t = cfg["relabel"], cfg["train"]
    others = [k for k in cfg["axes"] if k != "train.schedule"]
    temps = cfg["axes"].get("relabel.temperature", [r.get("temperature", 1.0)])
    print(f"\nFashion-MNIST, {t.get('model', 'convnet3')}, IPC {cfg['select'].get('ipc', 10)} random real images, "
          f"SLI {r.get('sli', 1)}, top-{r.get('k', 5)} labels at T = {' and '.join(map(str, temps))}, "
          f"{t.get('epochs')} epochs, seeds {cfg['seeds']}"
          + (f" (teacher: {teacher_top1:.2f} % test top-1)" if teacher_top1 is not None else ""))
    scored = []
    for g in dict.fromkeys(_group(c, others) for c in res["cells"]):
        cell = json.loads(g)
        if cell:
            print(f"\n== {_where(cell)}")
        print(f"{'schedule':<12}{'test top-1, mean +- sd (n)':>30}   per seed")
        for c in res["cells"]:
            if _group(c, others) != g:
                continue
            name = c["train.schedule"]
            per_seed = sorted((row["seed"], row["top1"]) for row in res["rows"]
                              if row["train.schedule"] == name and _group(row, others) == g)
            print(f"{name:<12}{c['mean']:>17.2f} +- {c['sd']:.2f} ({c['n']})      "
                  + "  ".join(f"{v:.2f}" for _, v in per_seed))
        print("paired differences (a seed's students share its images and stored crops):")
        for q in res["paired"]:
            if _group(q, others) != g or not q["n"]:
                continue
            ci = "no interval (one seed)" if q["n"] < 2 else f"95 % CI [{q['lo']:+.2f}, {q['hi']:+.2f}]"
            print(f"  {q['pair']:<18}{q['mean']:+.2f} points, {ci}, {q['positive']}/{q['n']} seeds positive")
            p = pred.get(g)
            if q["pair"] == "hald - soft-only" and p and p.get("sign") and q["n"]:
                said = "gain" if p["sign"] == "+" else "loss"
                came = "gain" if q["mean"] > 0 else "loss"
                if q["n"] < 2:
                    how = "one seed, no interval"
                else:
                    how = "resolved" if q["lo"] > 0 or q["hi"] < 0 else "not resolved: the interval spans zero"
                scored.append(said == came)
                print(f"  predicted before training: {said}; observed: {came} ({how}) -> "
                      f"{'HIT' if said == came else 'MISS'}")
        prefix = f"[{', '.join(f'{k}={v}' for k, v in sorted(cell.items()))}] " if cell else ""
        lines = [line[len(prefix):] for line in res["explanation"] if line.startswith(prefix)]
        print("what this shows:")
        for line in lines:
            if not line.lstrip().startswith(("hald ", "no difference", "one seed")):
                print("  " + line)
    if scored:
        print(f"\nthe drift rule's predictions: {sum(scored)} of {len(scored)} right here (signs of the mean paired "
              f"difference; a lead, not a verdict: see experiments/fmnist/predictions/)")
    ns = [q["n"] for q in res["paired"] if q["n"]]
    if ns and min(ns) < 5:
        print(f"  ({min(ns)} seeds: only large differences can be resolved; more seeds "
              f"narrow the intervals: `--seeds 0 1 2 3 4 5`.)")
    print(f"\nreport: {shown(os.path.join(out, 'report.md'))} (plots beside it); total {seconds:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
