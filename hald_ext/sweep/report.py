"""Results of a sweep: one row per finished student run (results.csv / results.json), per-cell
mean / sd / n, paired differences between the compared values with 95 % t intervals and sign counts,
how well the labels' Tr(Sigma) (`hald lvsd`) predicts the paired gain, plots and report.md."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import sys

from hald_ext.core import extras
from hald_ext.sweep import plots as P
from hald_ext.sweep import stats
from hald_ext.sweep.config import as_written
from hald_ext.sweep.plan import Plan
from hald_ext.sweep.runner import read_done, write_json_atomic

METRIC_NAMES = {"top1": "final test top-1 (%)", "best_top1": "best test top-1 (%)", "top5": "final test top-5 (%)"}


def _label(v) -> str:
    return str(v)


def collect(plan: Plan) -> tuple:
    """(rows of finished runs, ids of unfinished runs)."""
    rows, missing = [], []
    for r in plan.runs:
        rec = read_done(plan, r.train)
        if rec is None:
            missing.append(r.train)
            continue
        row = {"seed": r.seed, **r.cell, **rec.get("metrics", {}), "seconds": rec.get("seconds")}
        st = plan.stages[r.labels]
        row["label_bytes"] = os.path.getsize(st.output) if os.path.exists(st.output) else None
        sel = plan.stages[r.select]
        row["ipc"] = sel.options.get("ipc")
        row["sli"] = plan.stages[r.relabel].options.get("sli", 1)
        row["lvsd_trace_sigma"] = row["lvsd_drift"] = None
        if r.lvsd is not None and read_done(plan, r.lvsd) is not None:
            with open(plan.stages[r.lvsd].output) as f:
                row["lvsd_trace_sigma"] = json.load(f).get("trace_sigma_mean")
            if row["lvsd_trace_sigma"] is not None:  # the drift part of the label error: Tr(Sigma) / SLI
                row["lvsd_drift"] = row["lvsd_trace_sigma"] / row["sli"]
        row["run"] = os.path.relpath(plan.stages[r.train].output, plan.root)
        rows.append(row)
    return rows, missing


def _key(row: dict, axes: list) -> tuple:
    return tuple(json.dumps(row[a], default=str) for a in axes)


def cells(rows: list, axes: list, metric: str) -> list:
    groups: dict = {}
    for row in rows:
        groups.setdefault(_key(row, axes), []).append(row)
    out = []
    for _, rs in groups.items():
        vals = [r[metric] for r in rs if r.get(metric) is not None]
        out.append({**{a: rs[0][a] for a in axes}, **stats.summary(vals), "seeds": sorted(r["seed"] for r in rs)})
    return out


def paired(rows: list, axes: list, compare: dict, metric: str) -> list:
    """Per group of the other axes, per named pair (a, b): the paired differences over shared seeds."""
    axis = compare["axis"]
    others = [a for a in axes if a != axis]
    groups: dict = {}
    for row in rows:
        groups.setdefault(_key(row, others), []).append(row)
    out = []
    for _, rs in groups.items():
        for a, b in compare["pairs"]:
            va = {r["seed"]: r for r in rs if r[axis] == a and r.get(metric) is not None}
            vb = {r["seed"]: r for r in rs if r[axis] == b and r.get(metric) is not None}
            seeds = sorted(set(va) & set(vb))
            p = stats.paired([va[s][metric] for s in seeds], [vb[s][metric] for s in seeds])
            lv = [va[s]["lvsd_trace_sigma"] for s in seeds if va[s].get("lvsd_trace_sigma") is not None]
            dr = [va[s]["lvsd_drift"] for s in seeds if va[s].get("lvsd_drift") is not None]
            out.append({**{o: rs[0][o] for o in others}, "a": a, "b": b, "pair": f"{a} - {b}", "seeds": seeds,
                        **{k: v for k, v in p.items()}, "verdict": verdict(p, a, b),
                        "lvsd_trace_sigma": stats.mean(lv) if lv else None,
                        "lvsd_drift": stats.mean(dr) if dr else None})
    return out


def verdict(p: dict, a, b) -> str:
    n = p["n"]
    if n == 0:
        return f"no paired runs of {a} and {b}"
    if n < 2:
        return f"one seed only: {a} - {b} = {p['mean']:+.2f} points, no interval"
    agree = f"{p['positive']}/{n} seeds positive, {p['negative']}/{n} negative"
    ci = f"{p['mean']:+.2f} points, 95 % CI [{p['lo']:+.2f}, {p['hi']:+.2f}]"
    if p["lo"] > 0:
        return f"{a} beats {b}: {ci}; {agree}"
    if p["hi"] < 0:
        return f"{a} loses to {b}: {ci}; {agree}"
    return f"no difference resolved between {a} and {b}: {ci} spans zero; {agree}"


def explain(pairs: list) -> list:
    """Plain sentences for the HALD question when the pairs include `hald - soft-only` and
    `hald - hard-only` in the same group; otherwise each pair's verdict."""
    lines = []
    groups: dict = {}
    for p in pairs:
        g = json.dumps({k: v for k, v in p.items() if k not in _PAIR_KEYS}, default=str, sort_keys=True)
        groups.setdefault(g, {})[(str(p["a"]), str(p["b"]))] = p
    for g, ps in groups.items():
        where = ", ".join(f"{k}={v}" for k, v in json.loads(g).items())
        prefix = f"[{where}] " if where else ""
        soft, hard = ps.get(("hald", "soft-only")), ps.get(("hald", "hard-only"))
        if soft is None or hard is None or soft["n"] < 2 or hard["n"] < 2:
            lines += [prefix + p["verdict"] for p in ps.values()]
            continue
        msg = _HALD_CASES[(_sign(soft), _sign(hard))]
        lines.append(prefix + msg)
        lines += [prefix + "  " + p["verdict"] for p in (soft, hard)]
    return lines


def _sign(p: dict) -> int:
    return 1 if p["lo"] > 0 else (-1 if p["hi"] < 0 else 0)


# (sign of hald - soft-only, sign of hald - hard-only) -> what it means; 0: the 95 % interval spans zero.
_HALD_CASES = {
    (1, 1): "Soft -> Hard -> Soft beats both baselines: the gain needs the soft phases around the hard phase.",
    (1, 0): ("HALD beats soft-only but not hard-only: the gain over soft-only is the hard phase's; the "
             "Soft -> Hard -> Soft order adds nothing resolved over hard labels alone."),
    (1, -1): "HALD beats soft-only but loses to hard-only: hard labels alone do better still; the soft phases cost.",
    (0, 1): ("HALD beats hard-only but is not resolved from soft-only: the stored soft labels carry the result; "
             "the hard phase adds nothing resolved."),
    (-1, 1): "HALD beats hard-only but loses to soft-only: the soft labels carry the result and the hard phase costs.",
    (0, 0): ("No difference is resolved: with these seeds both intervals include zero, so this run cannot tell "
             "the schedules apart."),
    (0, -1): "HALD loses to hard-only; against soft-only no difference is resolved.",
    (-1, 0): "HALD loses to soft-only; against hard-only no difference is resolved.",
    (-1, -1): "HALD loses to both baselines here.",
}

_PAIR_KEYS = {"a", "b", "pair", "seeds", "n", "mean", "sd", "diffs", "positive", "negative", "level", "t",
              "half_width", "lo", "hi", "verdict", "lvsd_trace_sigma", "lvsd_drift"}


def lvsd_prediction(pairs: list) -> list:
    """Per named pair: Spearman's rank correlation, across groups, between the predicted drift
    Tr(Sigma) / SLI (docs/method.md, "Local-view drift": the drift part of the averaged label's error) and the mean
    paired gain, and how often the sign of the gain matches the sign of (drift - median drift)."""
    out = []
    for name in dict.fromkeys(p["pair"] for p in pairs):
        ps = [p for p in pairs if p["pair"] == name and p["lvsd_drift"] is not None and p["n"] > 0]
        x = [p["lvsd_drift"] for p in ps]
        y = [p["mean"] for p in ps]
        rho = stats.spearman(x, y) if len(ps) >= 3 else float("nan")
        out.append({"pair": name, "groups": len(ps), "spearman": rho, "drift": x, "gain": y, **sign_rule(x, y)})
    return out


def sign_rule(drift: list, gain: list) -> dict:
    """The best rule "the gain is positive when drift > threshold" on these cells: its threshold and how
    many cells' gain signs it gets right (in-sample, so an optimistic figure), against always guessing
    the majority sign."""
    if not drift:
        return {"threshold": None, "sign_correct": 0, "sign_majority": 0}
    pos = [g > 0 for g in gain]
    cuts = sorted(set(drift))
    best = (-1, None)
    for i, c in enumerate([cuts[0] - 1.0] + cuts):
        correct = sum((d > c) == p for d, p in zip(drift, pos))
        if correct > best[0]:
            best = (correct, c if i else None)
    return {"threshold": best[1], "sign_correct": best[0], "sign_majority": max(sum(pos), len(pos) - sum(pos))}


# ------------------------------------------------------------------------------------------ files
def _csv(rows: list, path: str) -> None:
    cols = []
    for r in rows:
        for k in r:
            if k not in cols and k != "diffs":
                cols.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else (json.dumps(r[k]) if isinstance(r[k], (list, dict)) else r[k]))
                    for k in cols})
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(buf.getvalue())
    os.replace(tmp, path)


def _num(v, fmt="{:.2f}") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def build(plan: Plan, out_dir: str | None = None, plots: bool = True) -> dict:
    """Collect, compute and write results.{csv,json}, cells.csv, paired.csv, report.md and plots."""
    cfg = plan.config
    out_dir = out_dir or plan.root
    os.makedirs(out_dir, exist_ok=True)
    axes = list(cfg["axes"])
    metric = cfg["report"]["metric"]
    rows, missing = collect(plan)
    cell_rows = cells(rows, axes, metric)
    pair_rows = paired(rows, axes, cfg["compare"], metric) if cfg["compare"] else []
    with_lvsd = any(p["lvsd_drift"] is not None for p in pair_rows)
    pred = lvsd_prediction(pair_rows) if with_lvsd else []  # no section about a diagnostic never run
    result = {"name": cfg["name"], "metric": metric, "axes": cfg["axes"], "seeds": cfg["seeds"],
              "compare": ({"axis": cfg["compare"]["axis"], "pairs": [list(p) for p in cfg["compare"]["pairs"]]}
                          if cfg["compare"] else None),
              "runs_done": len(rows), "runs_missing": missing, "rows": rows, "cells": cell_rows,
              "paired": pair_rows, "lvsd_prediction": pred, "explanation": explain(pair_rows) if pair_rows else [],
              "config": as_written(cfg)}
    _csv(rows, os.path.join(out_dir, "results.csv"))
    _csv(cell_rows, os.path.join(out_dir, "cells.csv"))
    if pair_rows:
        _csv(pair_rows, os.path.join(out_dir, "paired.csv"))
    write_json_atomic(result, os.path.join(out_dir, "results.json"))
    write_config(cfg, os.path.join(out_dir, "config.yaml"))
    figures = []
    if plots and rows and not extras.available("matplotlib"):
        print(f"[sweep] figures skipped: {extras.install_hint('matplotlib')}", file=sys.stderr)
    elif plots and rows:
        figures = P.make_all(result, cfg, out_dir)
    result["figures"] = figures
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(markdown(result, cfg, plan))
    return result


def write_config(cfg: dict, path: str) -> None:
    """The configuration as run (every `--set` applied), readable by `hald sweep`: the preset file alone
    does not say what a report came from once overrides were given."""
    import yaml

    text = ("# The configuration this report came from (the preset with every --set applied).\n"
            "# Rerun or continue it: hald sweep THIS_FILE --out <the same --out>\n"
            + yaml.safe_dump(as_written(cfg), sort_keys=False, default_flow_style=None, width=110))
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def markdown(res: dict, cfg: dict, plan: Plan) -> str:
    axes = list(cfg["axes"])
    L = [f"# Sweep `{res['name']}`", ""]
    L.append(f"{res['runs_done']} of {res['runs_done'] + len(res['runs_missing'])} student runs done; "
             f"seeds {cfg['seeds']}; metric: {METRIC_NAMES[res['metric']]}.")
    shared = {s: n for s, n in ((k, len(plan.by_kind(k))) for k in ("teacher", "select", "relabel", "transform",
                                                                    "lvsd", "train")) if n}
    L.append("Stages: " + ", ".join(f"{n} {k}" for k, n in shared.items())
             + ". Every train-only axis value of a seed trains on the same selected images and the same "
               "stored crops (paired). The configuration as run: `config.yaml`.")
    label_free = sum(1 for s in plan.by_kind("train") if "--labels" not in s.argv)
    if label_free:
        L.append(f"{label_free} of the student runs have no soft phase and read no labels: each serves every label "
                 "setting (SLI, k, T, teacher, transform) of its seed, so its figure repeats across those cells.")
    L += ["", "## Per cell", "", "| " + " | ".join(axes + ["n", "mean", "sd", "min", "max"]) + " |",
          "|" + "---|" * (len(axes) + 5)]
    for c in res["cells"]:
        L.append("| " + " | ".join([_label(c[a]) for a in axes] + [str(c["n"]), _num(c["mean"]), _num(c["sd"]),
                                                                   _num(c["min"]), _num(c["max"])]) + " |")
    if res["paired"]:
        others = [a for a in axes if a != cfg["compare"]["axis"]]
        lvsd = bool(res["lvsd_prediction"])  # non-empty exactly when the pairs carry Tr(Sigma)
        L += ["", "## Paired differences (same seed: same images, same stored crops)", "",
              "| " + " | ".join(others + ["pair", "n", "mean", "sd", "95 % CI", "+/-"]
                                + (["Tr(Sigma)", "Tr(Sigma)/SLI"] if lvsd else [])) + " |",
              "|" + "---|" * (len(others) + 6 + 2 * lvsd)]
        for p in res["paired"]:
            ci = "-" if p["n"] < 2 else f"[{p['lo']:+.2f}, {p['hi']:+.2f}]"
            L.append("| " + " | ".join([_label(p[o]) for o in others]
                                       + [p["pair"], str(p["n"]), _num(p["mean"], "{:+.2f}"), _num(p["sd"]), ci,
                                          f"{p['positive']}/{p['negative']}"]
                                       + ([_num(p["lvsd_trace_sigma"], "{:.4f}"), _num(p["lvsd_drift"], "{:.4f}")]
                                          if lvsd else [])) + " |")
        L += ["", "### What the numbers show", ""] + [f"- {s}" for s in res["explanation"]]
    if res["lvsd_prediction"]:
        L += ["", "## Does Tr(Sigma) predict the gain?", ""]
        for q in res["lvsd_prediction"]:
            if q["groups"] < 3:
                L.append(f"- `{q['pair']}`: {q['groups']} cell(s) with Tr(Sigma): too few for a rank correlation.")
            else:
                L.append(f"- `{q['pair']}`: Spearman rho = {_num(q['spearman'], '{:+.2f}')} over {q['groups']} cells "
                         f"(drift = Tr(Sigma) / SLI, Tr(Sigma) of the labels' teacher over crops from `hald lvsd`, "
                         f"against the mean paired gain); the best rule 'gain > 0 when drift > "
                         f"{_num(q['threshold'], '{:.4g}')}' gets {q['sign_correct']}/{q['groups']} signs right "
                         f"in-sample (majority sign alone: {q['sign_majority']}/{q['groups']}).")
    if res.get("figures"):
        L += ["", "## Plots", ""] + [f"![{os.path.basename(f)}]({os.path.basename(f)})" for f in res["figures"]]
    if res["runs_missing"]:
        L += ["", f"Not done yet: {len(res['runs_missing'])} run(s); rerun the same `hald sweep` command to "
                  "continue."]
    return "\n".join(L) + "\n"
