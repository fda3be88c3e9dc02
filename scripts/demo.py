#!/usr/bin/env python
"""`make demo`: the whole pipeline on Fashion-MNIST, HALD against soft-only at the same budget.

    teacher (ConvNet-3, full train set)  ->  IPC random real images per class  ->  relabel with SLI
    stored crop labels per image  ->  two students trained with `hald` and `soft-only` for the same
    epochs  ->  a table of test accuracy and label-store bytes, plus plots.

Every step is the `hald` command a user would type (printed before it runs) and is skipped when its
output already exists, so a rerun only repeats what changed. Under 10 minutes on 2 CPU cores with the
defaults; the same command uses a GPU when there is one (`--device auto`).
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
HALD = [sys.executable, "-m", "hald_ext.cli"]


def sh(args: list, log: str | None = None) -> None:
    print("$ hald " + " ".join(shlex.quote(a) for a in args[len(HALD):]), flush=True)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run(args, check=True, cwd=ROOT, env=env)


def teacher(a) -> str:
    path = os.path.join(a.out, "teacher.pth")
    if not os.path.exists(path):
        sh(HALD + ["teacher", "--data", "fashion-mnist", "--model", "convnet3", "--epochs", str(a.teacher_epochs),
                   "--train-images", str(a.teacher_images),
                   "--device", a.device, "--out", path, "--no-progress"])
    return path


def select(a) -> str:
    path = os.path.join(a.out, f"fmnist-ipc{a.ipc}.npz")
    if not os.path.exists(path):
        sh(HALD + ["select", "--data", "fashion-mnist", "--ipc", str(a.ipc), "--seed", str(a.seed), "--out", path])
    return path


def relabel(a, teacher_path: str, images_path: str) -> str:
    path = os.path.join(a.out, f"fmnist-ipc{a.ipc}-sli{a.sli}.safetensors")
    if not os.path.exists(path):
        sh(HALD + ["relabel", images_path, "--model", "convnet3", "--checkpoint", teacher_path, "--sli", str(a.sli),
                   "--k", str(a.k), "--temperature", str(a.temperature), "--seed", str(a.seed), "--out", path,
                   "--no-progress"] + ([] if a.device == "auto" else ["--device", a.device]))
    return path


def store_bytes(path: str) -> int:
    return os.path.getsize(path)


def train(a, schedule: str, images_path: str, labels_path: str) -> dict:
    name = f"{schedule}-e{a.epochs}"
    run = os.path.join(a.out, "runs", name)
    if not os.path.exists(os.path.join(run, "metrics.json")) or _unfinished(run, a.epochs):
        sh(HALD + ["train", "--data", images_path, "--labels", labels_path, "--eval-data", "fashion-mnist",
                   "--model", "convnet3", "--img-size", "28", "--schedule", schedule, "--epochs", str(a.epochs),
                   "--batch-size", str(a.batch_size), "--label-smoothing", str(a.label_smoothing),
                   "--eval-every", str(a.eval_every), "--log-every", "10", "--seed", str(a.seed), "--device", a.device,
                   "--output", os.path.join(a.out, "runs"), "--experiment", name, "--no-progress"]
           + (["--resume", run] if os.path.exists(os.path.join(run, "last.pth")) else []))
    with open(os.path.join(run, "metrics.json")) as f:
        history = json.load(f)
    return {"schedule": schedule, "run": run, "history": history}


def _unfinished(run: str, epochs: int) -> bool:
    with open(os.path.join(run, "metrics.json")) as f:
        return len(json.load(f)) < epochs


def shown(path: str) -> str:
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def compare_plot(results: list, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hald_ext.train.schedule import build_schedule

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        ev = [h for h in r["history"] if h.get("eval_top1") is not None]
        ax.plot([h["epoch"] for h in ev], [h["eval_top1"] for h in ev], "-o", ms=3, label=r["schedule"])
        if r["schedule"] == "hald":
            for b in build_schedule("hald", len(r["history"])).boundaries():
                ax.axvline(b, color="gray", ls="--", lw=1)
    ax.set(xlabel="epoch", ylabel="Fashion-MNIST test top-1 (%)", title="IPC 10, SLI 1, ConvNet-3")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "demo"))
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--sli", type=int, default=1)
    p.add_argument("--k", type=int, default=5, help="top-k entries kept per stored label")
    p.add_argument("--temperature", type=float, default=4.0, help="relabel / soft-loss temperature")
    p.add_argument("--epochs", type=int, default=200, help="student epochs, the same for both schedules")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--label-smoothing", type=float, default=0.1, help="hard-phase smoothing (10 classes)")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--teacher-epochs", type=int, default=1)
    p.add_argument("--teacher-images", type=int, default=20000,
                   help="the teacher sees a seeded subset of the 60k training images (keeps the demo short)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    t0 = time.perf_counter()

    teacher_path = teacher(a)
    images_path = select(a)
    labels_path = relabel(a, teacher_path, images_path)
    results = [train(a, s, images_path, labels_path) for s in ("hald", "soft-only")]

    with open(os.path.splitext(teacher_path)[0] + ".json") as f:
        teacher_top1 = json.load(f).get("eval_top1")
    nbytes = store_bytes(labels_path)
    print(f"\nFashion-MNIST, ConvNet-3, IPC {a.ipc} random real images, SLI {a.sli}, top-{a.k} labels, "
          f"{a.epochs} epochs (teacher: {teacher_top1:.2f} % top-1)")
    print(f"{'schedule':<12}{'test top-1':>12}{'test top-5':>12}{'label store':>16}  curves")
    for r in results:
        last = r["history"][-1]
        print(f"{r['schedule']:<12}{last['eval_top1']:>11.2f}%{last['eval_top5']:>11.2f}%{nbytes:>12,d} B  "
              f"{shown(os.path.join(r['run'], 'curves.png'))}")
    compare_plot(results, os.path.join(a.out, "compare.png"))
    print(f"comparison plot: {shown(os.path.join(a.out, 'compare.png'))}; "
          f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
