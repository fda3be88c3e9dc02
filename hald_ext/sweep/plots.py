"""Sweep figures (matplotlib, Agg): accuracy against the x axis per compared value with sd error bars,
the paired differences as a map, Tr(Sigma) against the paired gain, and the data-knowledge frontier."""
from __future__ import annotations

import json
import math
import os

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series_key(c: dict, axes: list) -> str:
    return ", ".join(f"{a.split('.')[1]}={c[a]}" for a in axes) or "all"


def accuracy(res: dict, cfg: dict, path: str) -> str:
    plt = _plt()
    axes = list(cfg["axes"])
    x = cfg["report"]["x"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    if x is None:
        labels = [_series_key(c, axes) for c in res["cells"]]
        ax.bar(range(len(labels)), [c["mean"] for c in res["cells"]],
               yerr=[0 if math.isnan(c["sd"]) else c["sd"] for c in res["cells"]], capsize=4, color="tab:blue")
        for i, c in enumerate(res["cells"]):
            pts = [r[res["metric"]] for r in res["rows"] if _series_key(r, axes) == labels[i]]
            ax.plot([i] * len(pts), pts, "k.", ms=4)
        ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
        lo = min(r[res["metric"]] for r in res["rows"] if r.get(res["metric"]) is not None)
        ax.set_ylim(bottom=max(0, lo - 5))
    else:
        rest = [a for a in axes if a != x]
        series: dict = {}
        for c in res["cells"]:
            series.setdefault(_series_key(c, rest), []).append(c)
        for name, cs in series.items():
            cs = sorted(cs, key=lambda c: c[x])
            ax.errorbar([c[x] for c in cs], [c["mean"] for c in cs],
                        yerr=[0 if math.isnan(c["sd"]) else c["sd"] for c in cs], marker="o", capsize=3, label=name)
        ax.set_xlabel(x)
        ax.set_xticks(sorted({c[x] for c in res["cells"]}))
        xs = [c[x] for c in res["cells"]]
        if all(v > 0 for v in xs) and max(xs) / min(xs) >= 8:
            ax.set_xscale("log")
        ax.legend(fontsize=8)
    ax.set_ylabel(res["metric"] + " (mean +- sd over seeds)")
    ax.set_title(f"{res['name']}: accuracy per cell")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def paired_map(res: dict, cfg: dict, path: str) -> str:
    plt = _plt()
    axis = cfg["compare"]["axis"]
    x = cfg["report"]["x"] if cfg["report"]["x"] != axis else None
    others = [a for a in cfg["axes"] if a not in (axis, x)]
    cols = sorted({json.dumps(p[x]) for p in res["paired"]}, key=lambda s: json.loads(s)) if x else ["null"]
    rows = list(dict.fromkeys(p["pair"] + (" | " + _series_key(p, others) if others else "") for p in res["paired"]))

    grid = np.full((len(rows), len(cols)), np.nan)
    text = [["" for _ in cols] for _ in rows]
    for p in res["paired"]:
        i = rows.index(p["pair"] + (" | " + _series_key(p, others) if others else ""))
        j = cols.index(json.dumps(p[x])) if x else 0
        grid[i, j] = p["mean"]
        ci = "" if p["n"] < 2 else f"\n[{p['lo']:+.1f}, {p['hi']:+.1f}]"
        star = "*" if p["n"] >= 2 and (p["lo"] > 0 or p["hi"] < 0) else ""
        text[i][j] = f"{p['mean']:+.2f}{star}{ci}"
    lim = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(cols), 1.0 + 0.7 * len(rows)))
    im = ax.imshow(grid, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(cols)):
            dark = np.isfinite(grid[i, j]) and abs(grid[i, j]) > 0.6 * lim  # deep red / blue: white text
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xticks(range(len(cols)), [json.loads(c) if x else "" for c in cols])
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    if x:
        ax.set_xlabel(x)
    fig.colorbar(im, ax=ax, label="mean paired difference (points)")
    ax.set_title("paired differences (* : 95 % CI excludes 0)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def lvsd_scatter(res: dict, path: str) -> str | None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    drew = False
    for q in res["lvsd_prediction"]:
        ps = [p for p in res["paired"] if p["pair"] == q["pair"] and p["lvsd_drift"] is not None and p["n"]]
        if not ps:
            continue
        drew = True
        err = [0 if math.isnan(p["half_width"]) else p["half_width"] for p in ps]
        rho = "" if math.isnan(q["spearman"]) else f", Spearman {q['spearman']:+.2f}"
        ax.errorbar([p["lvsd_drift"] for p in ps], [p["mean"] for p in ps], yerr=err, fmt="o", capsize=3,
                    label=f"{q['pair']} ({q['groups']} cells{rho})")
    if not drew:
        plt.close(fig)
        return None
    ax.axhline(0, color="gray", lw=1)
    ax.set_xlabel("predicted drift Tr(Sigma) / SLI (hald lvsd, mean over seeds)")
    ax.set_ylabel("mean paired gain (points, 95 % CI)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def frontier(res: dict, cfg: dict, path: str) -> str:
    """Mean accuracy over a data axis x a knowledge axis (e.g. IPC x top-k); cells that no other cell
    beats with no more data and no more knowledge are starred and joined (the frontier)."""
    plt = _plt()

    dx, kx = cfg["report"]["frontier"]
    rest = [a for a in cfg["axes"] if a not in (dx, kx)]
    groups: dict = {}
    for c in res["cells"]:
        groups.setdefault(_series_key(c, rest), []).append(c)
    fig, axs = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.2), squeeze=False)
    for ax, (name, cs) in zip(axs[0], groups.items()):
        xs = sorted({c[dx] for c in cs})
        ks = sorted({c[kx] for c in cs})
        grid = np.full((len(ks), len(xs)), np.nan)
        for c in cs:
            grid[ks.index(c[kx]), xs.index(c[dx])] = c["mean"]
        im = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis")
        best = [c for c in cs if not any(o is not c and o[dx] <= c[dx] and o[kx] <= c[kx] and o["mean"] >= c["mean"]
                                         and (o[dx], o[kx]) != (c[dx], c[kx]) for o in cs)]
        for c in cs:
            ax.text(xs.index(c[dx]), ks.index(c[kx]), f"{c['mean']:.1f}" + ("*" if c in best else ""),
                    ha="center", va="center", fontsize=8, color="w")
        best.sort(key=lambda c: (c[dx], -c[kx]))
        ax.plot([xs.index(c[dx]) for c in best], [ks.index(c[kx]) for c in best], "w--", lw=1)
        ax.set_xticks(range(len(xs)), xs)
        ax.set_yticks(range(len(ks)), ks)
        ax.set(xlabel=dx + " (data)", ylabel=kx + " (knowledge)", title=name)
        fig.colorbar(im, ax=ax, label=res["metric"])
    fig.suptitle("data-knowledge grid (* : on the frontier)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_all(res: dict, cfg: dict, out_dir: str) -> list:
    figs = [accuracy(res, cfg, os.path.join(out_dir, "accuracy.png"))]
    if res["paired"]:
        figs.append(paired_map(res, cfg, os.path.join(out_dir, "paired.png")))
        f = lvsd_scatter(res, os.path.join(out_dir, "lvsd_gain.png"))
        if f:
            figs.append(f)
    if cfg["report"]["frontier"]:
        figs.append(frontier(res, cfg, os.path.join(out_dir, "frontier.png")))
    return figs
