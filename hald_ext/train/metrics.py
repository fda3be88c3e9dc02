"""Per-epoch metrics of a run: summary.csv (timm's name), metrics.json, and curves.png with the
phase boundaries marked. Files are rewritten from the whole history each epoch, so a resumed run
produces the same files as an uninterrupted one."""
from __future__ import annotations

import csv
import io
import json
import os
import sys

from hald_ext.core import extras

COLUMNS = ["epoch", "phase", "lr", "train_loss", "train_samples", "eval_top1", "eval_top5", "eval_loss",
           "epoch_time"]


def _write_text(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_csv(history: list, path: str) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS})
    _write_text(path, buf.getvalue())


def write_json(obj, path: str) -> None:
    _write_text(path, json.dumps(obj, indent=1) + "\n")


def plot_curves(history: list, boundaries: list, path: str, title: str = "") -> None:
    """Training loss and held-out loss / accuracy against epochs; dashed lines where a phase starts,
    soft phases shaded blue and hard phases orange."""
    if not history:
        return
    if not extras.available("matplotlib"):  # the curves are a convenience: training has finished
        print(f"{path} not drawn: {extras.install_hint('matplotlib')}", file=sys.stderr)
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    ep = [r["epoch"] for r in history]
    for kind, color in (("soft", "tab:blue"), ("hard", "tab:orange")):
        pts = [(r["epoch"], r["train_loss"]) for r in history if r["phase"] == kind]
        if pts:
            ax_loss.plot(*zip(*pts), ".", color=color, label=f"train loss ({kind})")
    ev = [r for r in history if r.get("eval_top1") is not None]
    if ev:
        ax_loss.plot([r["epoch"] for r in ev], [r["eval_loss"] for r in ev], "k-o", ms=3, label="held-out CE")
        ax_acc.plot([r["epoch"] for r in ev], [r["eval_top1"] for r in ev], "-o", ms=3, label="top-1")
        ax_acc.plot([r["epoch"] for r in ev], [r["eval_top5"] for r in ev], "-o", ms=3, label="top-5")
    # Shade each epoch by its phase (epoch n covers (n-1, n]).
    for r in history:
        color = "tab:blue" if r["phase"] == "soft" else "tab:orange"
        for ax in (ax_loss, ax_acc):
            ax.axvspan(r["epoch"] - 1, r["epoch"], color=color, alpha=0.06, lw=0)
    for b in boundaries:
        for ax in (ax_loss, ax_acc):
            ax.axvline(b, color="gray", ls="--", lw=1)
    ax_loss.set(xlabel="epoch", ylabel="loss", xlim=(0, max(ep)))
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", xlim=(0, max(ep)))
    ax_loss.legend(fontsize=8)
    if ev:
        ax_acc.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
