"""The library side of `hald sweep-summary` (its options: hald_ext.commands.sweep_summary): pool the paired runs of several sweeps (for example
the SLI, teacher-strength and smoothing maps) and ask whether a cheap diagnostic measured before any
student trains, Tr(Sigma) of the labels' teacher over crops (`hald lvsd`), predicts the sign and size
of a schedule's paired gain across every cell of the map.

A run shared by two sweeps (same output folder, same key) counts once. For each named pair it
reports, over cells (mean gain per cell) and over single (cell, seed) pairs:
- Spearman's rho between the predictor and the gain, with a p-value (exact permutation test for up to
  8 cells, else the t approximation), for the drift Tr(Sigma) / SLI (docs/method.md, "Local-view drift") and for
  Tr(Sigma) alone;
- the sign rule "gain > 0 when drift > threshold": in-sample (an optimistic figure) and leave one cell
  out (the threshold fitted on the other cells predicts the held-out cell), against the majority sign.

    hald sweep-summary experiments/fmnist/map-sli experiments/fmnist/map-teacher \\
        experiments/fmnist/map-smoothing --out experiments/fmnist/summary
"""
from __future__ import annotations

import itertools
import json
import math
import os
import sys

from hald_ext.core import extras
from hald_ext.sweep import stats
from hald_ext.sweep.plots import _plt
from hald_ext.sweep.report import sign_rule
from hald_ext.sweep.runner import write_json_atomic

PREDICTORS = {"lvsd_drift": "Tr(Sigma) / SLI", "lvsd_trace_sigma": "Tr(Sigma)"}


class SummaryError(ValueError):
    pass


def _pair(text: str) -> tuple:
    parts = [s.strip() for s in str(text).split(" - ")]
    if len(parts) != 2 or not all(parts):
        raise SummaryError(f"--pairs: {text!r} must be 'A - B'")
    return parts[0], parts[1]


def load_results(path: str) -> dict:
    f = os.path.join(path, "results.json") if os.path.isdir(path) else path
    if not os.path.isfile(f):
        raise SummaryError(f"{path}: no results.json (run `hald sweep ... --report-dir {path}` first)")
    try:
        with open(f) as fh:
            res = json.load(fh)
    except (OSError, json.JSONDecodeError) as e:
        raise SummaryError(f"{f}: not a sweep results file ({e})") from e
    for key in ("name", "axes", "rows", "metric"):
        if key not in res:
            raise SummaryError(f"{f}: not a sweep results file (no {key!r})")
    res["_file"] = f
    return res


def _compare_axis(res: dict, a: str, b: str) -> str | None:
    given = (res.get("compare") or {}).get("axis")
    if given is not None:
        return given
    for axis, values in res["axes"].items():  # older results files: the axis holding both values
        if a in map(str, values) and b in map(str, values):
            return axis
    return None


def points(results: list, pairs: list) -> list:
    """One point per (cell, seed, pair) with both runs finished, each shared pair of runs counted once
    (the first sweep that lists it names its cell)."""
    out, seen = [], set()
    for res in results:
        metric = res["metric"]
        for a, b in pairs:
            axis = _compare_axis(res, a, b)
            if axis is None:
                continue
            others = [x for x in res["axes"] if x != axis]
            by: dict = {}
            for row in res["rows"]:
                if row.get(metric) is None:
                    continue
                key = (tuple(json.dumps(row.get(o), default=str) for o in others), row["seed"])
                by.setdefault(key, {})[str(row[axis])] = row
            for (cell_key, seed), rs in by.items():
                ra, rb = rs.get(a), rs.get(b)
                if ra is None or rb is None:
                    continue
                ident = (a, b, ra.get("run"), rb.get("run"))
                if ra.get("run") and ident in seen:
                    continue
                seen.add(ident)
                cell = ", ".join(f"{o.split('.', 1)[-1]}={json.loads(v)}" for o, v in zip(others, cell_key))
                out.append({"pair": f"{a} - {b}", "sweep": res["name"], "cell": cell or "all", "seed": seed,
                            "gain": float(ra[metric]) - float(rb[metric]), "sli": ra.get("sli"),
                            "lvsd_trace_sigma": ra.get("lvsd_trace_sigma"), "lvsd_drift": ra.get("lvsd_drift"),
                            "run_a": ra.get("run"), "run_b": rb.get("run")})
    return out


def spearman_test(x: list, y: list) -> dict:
    """rho and a two-sided p-value for rho = 0: exact over all permutations for n <= 8, else the t
    approximation t = rho sqrt((n - 2) / (1 - rho^2)) with n - 2 degrees of freedom."""
    n = len(x)
    rho = stats.spearman(x, y) if n >= 3 else float("nan")
    if math.isnan(rho):
        return {"n": n, "rho": rho, "p": float("nan"), "p_method": None}
    if n <= 8:
        rx = stats.ranks(x)
        ry = stats.ranks(y)
        hits = total = 0
        for perm in itertools.permutations(ry):
            r = stats.pearson(rx, perm)
            total += 1
            hits += (not math.isnan(r)) and abs(r) >= abs(rho) - 1e-12
        return {"n": n, "rho": rho, "p": hits / total, "p_method": "exact permutation"}
    if abs(rho) >= 1.0 - 1e-12:  # only the orderings reaching |rho| = 1: 2 of n! (exact without ties)
        return {"n": n, "rho": rho, "p": 2.0 / math.factorial(n), "p_method": "exact: 2 of n! orderings"}
    t = rho * math.sqrt((n - 2) / (1.0 - rho * rho))
    p = 2.0 * stats.t_sf(abs(t), n - 2)
    return {"n": n, "rho": rho, "p": p, "p_method": "t approximation"}


def leave_one_out(drift: list, gain: list) -> dict:
    """The sign rule fitted on all cells but one, tried on the one left out, for every cell."""
    n = len(drift)
    if n < 3:
        return {"loo_correct": None, "loo_n": n}
    correct = 0
    for i in range(n):
        d = drift[:i] + drift[i + 1:]
        g = gain[:i] + gain[i + 1:]
        thr = sign_rule(d, g)["threshold"]
        if thr is None:  # the best rule on the others: always positive
            pred = True
        elif not any(v > thr for v in d):  # ... always negative (no threshold splits them)
            pred = False
        else:
            pred = drift[i] > thr
        correct += pred == (gain[i] > 0)
    return {"loo_correct": correct, "loo_n": n}


def _rule(x: list, y: list) -> dict:
    r = {**sign_rule(x, y), **leave_one_out(x, y), "n": len(x)}
    r["above"] = sum(v > r["threshold"] for v in x) if r["threshold"] is not None else len(x)  # cells called positive
    return r


def analyse(pts: list, pairs: list) -> list:
    out = []
    for a, b in pairs:
        name = f"{a} - {b}"
        ps = [p for p in pts if p["pair"] == name]
        cells: dict = {}
        for p in ps:
            cells.setdefault((p["sweep"], p["cell"]), []).append(p)
        cell_rows = []
        for (sweep, cell), cps in cells.items():
            s = stats.paired([p["gain"] for p in cps], [0.0] * len(cps))
            row = {"sweep": sweep, "cell": cell, "n": s["n"], "mean": s["mean"], "lo": s["lo"], "hi": s["hi"],
                   "positive": s["positive"], "negative": s["negative"]}
            for key in PREDICTORS:
                vals = [p[key] for p in cps if p[key] is not None]
                row[key] = stats.mean(vals) if vals else None
            cell_rows.append(row)
        entry = {"pair": name, "points": len(ps), "cells": cell_rows, "predictors": {}}
        for key, label in PREDICTORS.items():
            cs = [c for c in cell_rows if c[key] is not None]
            x, y = [c[key] for c in cs], [c["mean"] for c in cs]
            sp = [p for p in ps if p[key] is not None]
            entry["predictors"][key] = {
                "label": label,
                "cells": spearman_test(x, y),
                "seeds": spearman_test([p[key] for p in sp], [p["gain"] for p in sp]),
                "sign_rule": _rule(x, y),
            }
        out.append(entry)
    return out


def _f(v, fmt="{:.2f}") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def markdown(summary: dict) -> str:
    L = ["# Does Tr(Sigma) predict the schedule's gain across the map?", "",
         "Sweeps pooled: " + ", ".join(f"`{s['name']}` ({s['file']})" for s in summary["sweeps"]) + ".",
         "A pair of runs shared by two sweeps counts once. Gain: paired difference of the final test top-1 "
         "(points), same seed = same images and stored crops. Tr(Sigma): `hald lvsd` of the labels' teacher "
         "over crops of the selected images, measured before any student trains.", ""]
    for e in summary["pairs"]:
        L += [f"## `{e['pair']}`", "", f"{e['points']} (cell, seed) pairs in {len(e['cells'])} cells.", "",
              "| sweep | cell | n | mean gain | 95 % CI | +/- | Tr(Sigma) | Tr(Sigma)/SLI |", "|---|---|---|---|---|---|---|---|"]
        for c in sorted(e["cells"], key=lambda c: (c["lvsd_drift"] is None, c["lvsd_drift"] or 0)):
            ci = "-" if c["n"] < 2 else f"[{c['lo']:+.2f}, {c['hi']:+.2f}]"
            L.append(f"| {c['sweep']} | {c['cell']} | {c['n']} | {_f(c['mean'], '{:+.2f}')} | {ci} | "
                     f"{c['positive']}/{c['negative']} | {_f(c['lvsd_trace_sigma'], '{:.4f}')} | "
                     f"{_f(c['lvsd_drift'], '{:.4f}')} |")
        L.append("")
        for key, q in e["predictors"].items():
            c, s, r = q["cells"], q["seeds"], q["sign_rule"]
            if c["n"] < 3:
                L.append(f"- {q['label']}: {c['n']} cell(s) with a measurement, too few for a rank correlation.")
                continue
            loo = (f"{r['loo_correct']}/{r['loo_n']}" if r.get("loo_correct") is not None else "-")
            if r["threshold"] is None:
                rule = "'gain > 0 always'"
            elif not r.get("above"):
                rule = "'gain < 0 always'"
            else:
                rule = f"'gain > 0 when {q['label']} > {_f(r['threshold'], '{:.4g}')}'"
            L.append(f"- {q['label']}: Spearman rho = {_f(c['rho'], '{:+.2f}')} over {c['n']} cells "
                     f"(p = {_f(c['p'], '{:.2g}')}, {c['p_method']}); over {s['n']} single seeds rho = "
                     f"{_f(s['rho'], '{:+.2f}')} (p = {_f(s['p'], '{:.3g}')}). Best sign rule {rule}: "
                     f"{r['sign_correct']}/{r['n']} cells in-sample, {loo} leaving each cell out; the majority "
                     f"sign alone: {r['sign_majority']}/{r['n']}.")
        L += ["", "Single-seed points are not independent (a seed's images and Tr(Sigma) recur in every cell "
              "of that seed, a hard-only run in every label setting): read their p-values as descriptive.", ""]
    if summary.get("figure"):
        L += [f"![{os.path.basename(summary['figure'])}]({os.path.basename(summary['figure'])})", ""]
    return "\n".join(L)


def plot(summary: dict, pts: list, path: str) -> str | None:
    plt = _plt()
    pairs = summary["pairs"]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.2 * len(pairs), 4.2), squeeze=False)
    drew = False
    for ax, e in zip(axes[0], pairs):
        sweeps = sorted({c["sweep"] for c in e["cells"]})
        for i, sw in enumerate(sweeps):
            color = f"C{i}"
            sp = [p for p in pts if p["pair"] == e["pair"] and p["sweep"] == sw and p["lvsd_drift"] is not None]
            ax.scatter([p["lvsd_drift"] for p in sp], [p["gain"] for p in sp], s=10, alpha=0.35, color=color)
            cs = [c for c in e["cells"] if c["sweep"] == sw and c["lvsd_drift"] is not None]
            err = [0 if c["n"] < 2 else (c["hi"] - c["lo"]) / 2 for c in cs]
            ax.errorbar([c["lvsd_drift"] for c in cs], [c["mean"] for c in cs], yerr=err, fmt="o", capsize=3,
                        color=color, label=sw)
            drew = drew or bool(sp)
        rho = e["predictors"]["lvsd_drift"]["cells"]["rho"]
        ax.axhline(0, color="gray", lw=1)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())  # minor-tick labels overlap on a short log axis
        ax.set_title(f"{e['pair']}  (cells: Spearman {_f(rho, '{:+.2f}')})", fontsize=9)
        ax.set_xlabel("Tr(Sigma) / SLI (hald lvsd, before training)")
        ax.set_ylabel("paired gain (points): dots = seeds, bars = cell 95 % CI")
        ax.legend(fontsize=7)
    if not drew:
        plt.close(fig)
        return None
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def build(reports: list, out_dir: str, pairs: list, plots: bool = True) -> dict:
    results = [load_results(r) for r in reports]
    pairs = [_pair(p) if isinstance(p, str) else tuple(p) for p in pairs]
    pts = points(results, pairs)
    if not pts:
        raise SummaryError("no finished paired runs of " + ", ".join(f"{a} - {b}" for a, b in pairs)
                           + " in " + ", ".join(reports))
    summary = {"sweeps": [{"name": r["name"], "file": os.path.relpath(r["_file"], out_dir)} for r in results],
               "pairs": analyse(pts, pairs), "points": pts}
    os.makedirs(out_dir, exist_ok=True)
    if plots and not extras.available("matplotlib"):
        print(f"[sweep-summary] figure skipped: {extras.install_hint('matplotlib')}", file=sys.stderr)
        plots = False
    summary["figure"] = plot(summary, pts, os.path.join(out_dir, "summary.png")) if plots else None
    write_json_atomic(summary, os.path.join(out_dir, "summary.json"))
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(markdown(summary))
    return summary
