"""The drift rule: does Soft -> Hard -> Soft (HALD) beat soft-only on these images and labels?

The Fashion-MNIST maps (experiments/fmnist/summary/) found the paired gain `hald - soft-only` ordered by
the drift Tr(Sigma) / SLI that `hald lvsd` measures before any student trains: HALD gained where the
drift was above a threshold and lost below it. The rule and the evidence it rests on are data
(`drift_rule.json` beside this file), so a prediction always says how far it reaches: how many cells,
which data set, architecture, image budget and training length, and how often it has been right on
cells it had not seen. It is a lead for choosing a schedule, not a verdict.

    rule = load()
    predict(0.2444, sli=1, rule=rule)    # {'drift': 0.2444, 'sign': '+', ...}
    lead_lines(0.0235, temperature=4)    # the text `hald lvsd` prints after measuring

`predict_plan(plan)` gives the rule's sign for every cell of a sweep with a `hald - soft-only`
comparison, from the sweep's own lvsd stages (`hald sweep CONFIG --predict` writes them before any
student trains); `score(predictions, results)` counts hits and misses once the students have run.
This module uses the standard library only.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

from hald_ext.sweep.runner import read_done

RULE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "drift_rule.json")
_REQUIRED = ("pair", "threshold", "evidence", "tests")
# The conditions of the evidence a cell is compared with (rule key -> how a cell states it).
DOMAIN = ("data", "student", "teacher", "ipc", "epochs", "split", "slots_per_epoch", "k")


class DriftRuleError(ValueError):
    """A missing or malformed rule file; the message names the file and the key."""


def load(path: str | None = None) -> dict:
    path = path or RULE_FILE
    try:
        with open(path) as f:
            rule = json.load(f)
    except FileNotFoundError:
        raise DriftRuleError(f"drift rule file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise DriftRuleError(f"drift rule file {path} is not JSON: {e}") from None
    missing = [k for k in _REQUIRED if k not in rule]
    if missing:
        raise DriftRuleError(f"drift rule file {path} lacks {', '.join(missing)}")
    thr = rule["threshold"]
    if not isinstance(thr, (int, float)) or not math.isfinite(thr) or thr <= 0:
        raise DriftRuleError(f"drift rule file {path}: threshold must be a positive number, got {thr!r}")
    return rule


def predict(trace_sigma: float, sli: float, rule: dict | None = None) -> dict:
    """The rule's sign for one cell: '+' (HALD predicted to beat soft-only) when Tr(Sigma) / SLI is above
    the threshold, '-' otherwise; `ratio` is drift / threshold (near 1: close to the boundary)."""
    rule = rule or load()
    if not (isinstance(sli, (int, float)) and sli > 0):
        raise ValueError(f"sli must be a positive number, got {sli!r}")
    if trace_sigma is None or not math.isfinite(trace_sigma) or trace_sigma < 0:
        raise ValueError(f"trace_sigma must be a finite number >= 0, got {trace_sigma!r}")
    drift = trace_sigma / sli
    thr = float(rule["threshold"])
    return {"trace_sigma": trace_sigma, "sli": sli, "drift": drift, "threshold": thr,
            "sign": "+" if drift > thr else "-", "ratio": drift / thr}


def largest_gain_sli(trace_sigma: float, rule: dict | None = None) -> int:
    """The largest whole SLI at which the rule predicts a gain (0: none, not even SLI 1)."""
    thr = float((rule or load())["threshold"])
    s = math.ceil(trace_sigma / thr) - 1  # trace / s > thr  <=>  s < trace / thr
    return max(0, s)


def track_record(rule: dict) -> tuple:
    """(hits, cells) over the rule's tests on cells it had not been fitted on."""
    return (sum(int(t.get("hits", 0)) for t in rule["tests"]), sum(int(t.get("cells", 0)) for t in rule["tests"]))


def evidence_text(rule: dict) -> str:
    e = rule["evidence"]
    hits, n = track_record(rule)
    ins, loo = e.get("in_sample"), e.get("leave_one_out")
    parts = [f"{e.get('cells', '?')} cells ({e.get('seed_pairs', '?')} seed pairs)", f"{e.get('data', '?')}",
             f"{e.get('student', '?')} students", f"IPC {e.get('ipc', '?')}", f"{e.get('epochs', '?')} epochs"]
    text = ", ".join(parts)
    if ins:
        text += f"; fitted in-sample {ins[0]}/{ins[1]} cells"
    if loo:
        text += f", {loo[0]}/{loo[1]} leaving each cell out"
    text += f"; on cells it had not seen: {hits}/{n} right" if n else "; not yet tested on cells it had not seen"
    src = rule.get("source") or {}
    if src.get("file"):
        text += f" (threshold from {src['file']}" + (f" at commit {src['commit']})" if src.get("commit") else ")")
    return text


def outside(context: dict, rule: dict) -> list:
    """The conditions of a cell that differ from the rule's evidence, as 'key X (evidence: Y)'."""
    e = rule["evidence"]
    out = []
    for k in DOMAIN:
        if k in context and context[k] is not None and k in e and str(context[k]).lower() != str(e[k]).lower():
            out.append(f"{k} {context[k]} (evidence: {e[k]})")
    return out


def lead_lines(trace_sigma: float, temperature: float | None = None, sli: float | None = None,
               context: dict | None = None, rule: dict | None = None) -> list:
    """What `hald lvsd` prints after measuring Tr(Sigma): the rule's sign (at `sli`, or the SLI range
    where it predicts a gain) and the evidence it rests on."""
    rule = rule or load()
    thr = float(rule["threshold"])
    at_t = f" (at T = {temperature:g})" if temperature is not None else ""
    lines = [f"Drift rule (a lead, not a verdict): HALD is predicted to beat soft-only when Tr(Sigma) / SLI > {thr:.4f}."]
    if sli is not None:
        p = predict(trace_sigma, sli, rule)
        word = "GAIN over" if p["sign"] == "+" else "LOSS to"
        lines.append(f"  Tr(Sigma) {trace_sigma:.4f}{at_t} / SLI {sli:g} = {p['drift']:.4f} -> predicted {word} "
                     f"soft-only ({p['ratio']:.2f} x the threshold)")
    else:
        s = largest_gain_sli(trace_sigma, rule)
        if s >= 1:
            lines.append(f"  Tr(Sigma) {trace_sigma:.4f}{at_t}: predicted GAIN over soft-only at SLI <= {s} "
                         f"(Tr(Sigma) / SLI > {thr:.4f}), LOSS at higher SLI")
        else:
            lines.append(f"  Tr(Sigma) {trace_sigma:.4f}{at_t}: predicted LOSS to soft-only at every SLI >= 1 "
                         f"(even at SLI 1 the drift is {trace_sigma / thr:.2f} x the threshold)")
    lines.append(f"  evidence: {evidence_text(rule)}")
    off = outside(context or {}, rule)
    if off:
        lines.append(f"  outside the evidence here: {'; '.join(off)}")
    if temperature is None:
        lines.append("  (measure at the labels' temperature: --temperature T of `hald relabel`)")
    return lines


def lvsd_lead(args, result: dict, out=None) -> None:
    """Called at the end of `hald lvsd`: print the lead for a teacher measurement; never fails the command."""

    out = out or sys.stdout
    if result.get("trace_sigma_mean") is None:
        return
    try:
        lines = lead_lines(result["trace_sigma_mean"], result.get("temperature"), getattr(args, "sli", None))
    except (DriftRuleError, ValueError) as e:
        lines = [f"(drift rule not available: {e})"]
    print("\n".join(lines), file=out)


# ------------------------------------------------------------------------------------ sweeps
def _cell_context(plan, run) -> dict:
    st = plan.stages
    tr = st[run.train].options
    t_opts = st[run.teacher].options if run.teacher else {}
    epochs = tr.get("epochs", 300)
    soft = tr.get("soft_epochs")
    soft = epochs // 2 if soft is None else soft
    a = soft // 2
    teacher = t_opts.get("model", "convnet3")
    if t_opts:
        teacher += f" ({t_opts.get('epochs', '?')} ep" + (f", {t_opts['train_images']} imgs)" if t_opts.get("train_images")
                                                          else ", all imgs)")
    sched = str(tr.get("schedule", "hald"))
    if ":" in sched:  # an explicit list 'soft:N,hard:M,...'
        parts = [p.split(":") for p in sched.split(",")]
        hald_split = "/".join(n for _, n in parts)
        split = f"explicit {sched}"
    else:
        hald_split = f"{a}/{epochs - soft}/{soft - a}"
        split = "hald = soft E/4, hard E/2, soft E/4 (E_soft = E / 2)" if 2 * soft == epochs else f"E_soft = {soft}"
    return {"data": st[run.select].options.get("data"), "student": tr.get("model", "convnet3"),
            "teacher": teacher.split(" ")[0], "teacher_desc": teacher, "ipc": st[run.select].options.get("ipc"),
            "epochs": epochs, "hald_split": hald_split, "split": split,
            "slots_per_epoch": tr.get("slots_per_epoch", 1), "k": st[run.relabel].options.get("k"),
            "temperature": st[run.relabel].options.get("temperature"), "sli": st[run.relabel].options.get("sli", 1)}


def _rule_pairs(plan, rule: dict) -> list:
    """The sweep's compared pairs the rule speaks to: a schedule with soft and hard phases (`hald`, or an
    explicit Soft -> Hard -> Soft list) against the rule's baseline (soft-only)."""
    base = rule["pair"].split(" - ")[1].strip()
    cmp_ = plan.config.get("compare") or {}
    return [tuple(p) for p in cmp_.get("pairs", []) if p[1] == base and (p[0] == "hald" or _soft_hard_soft(p[0]))]


def _soft_hard_soft(schedule: str) -> bool:
    """An explicit list 'soft:N,hard:M,soft:K' (phases in that order)."""
    phases = [part.split(":")[0].strip() for part in str(schedule).split(",")]
    return ":" in str(schedule) and phases == ["soft", "hard", "soft"]


def predict_plan(plan, rule: dict | None = None) -> list:
    """Per cell of a sweep comparing a Soft -> Hard -> Soft schedule with soft-only (the other axes
    fixed): the mean Tr(Sigma) and drift over the seeds whose lvsd stage is done, the rule's sign and
    the cell's conditions (student, IPC, epochs, split, T, SLI) against the rule's evidence."""

    rule = rule or load()
    pairs = _rule_pairs(plan, rule)
    if not pairs:
        raise DriftRuleError(f"sweep {plan.config.get('name')!r} compares no Soft -> Hard -> Soft schedule with "
                             f"{rule['pair'].split(' - ')[1].strip()!r}")
    axis = plan.config["compare"]["axis"]
    out = []
    for a, b in pairs:
        groups: dict = {}
        for r in plan.runs:
            if r.cell.get(axis) == a:
                key = json.dumps({k: v for k, v in r.cell.items() if k != axis}, sort_keys=True, default=str)
                groups.setdefault(key, []).append(r)
        for key, runs in groups.items():
            traces, drifts, seeds = [], [], []
            ctx = _cell_context(plan, runs[0])
            for r in runs:
                if r.lvsd is None or read_done(plan, r.lvsd) is None:
                    continue
                with open(plan.stages[r.lvsd].output) as f:
                    t = json.load(f).get("trace_sigma_mean")
                if t is None:
                    continue
                traces.append(t)
                drifts.append(t / plan.stages[r.relabel].options.get("sli", 1))
                seeds.append(r.seed)
            row = {"sweep": plan.config.get("name"), "pair": f"{a} - {b}", "cell": json.loads(key), "seeds": seeds,
                   "context": ctx, "outside_evidence": outside(ctx, rule)}
            if drifts:
                drift = sum(drifts) / len(drifts)
                thr = float(rule["threshold"])
                row.update(trace_sigma=sum(traces) / len(traces), drift=drift, per_seed_drift=drifts,
                           sign="+" if drift > thr else "-", ratio=drift / thr)
            else:
                row.update(trace_sigma=None, drift=None, sign=None, ratio=None)
            out.append(row)
    return out


def _cell_text(cell: dict) -> str:
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in cell.items()) or "(one cell)"


def predictions_markdown(rows: list, rule: dict) -> list:
    thr = float(rule["threshold"])
    lines = [f"Rule: `{rule['pair']}` (and any Soft -> Hard -> Soft schedule against soft-only) > 0 when Tr(Sigma) / SLI > {thr:.5f} "
             f"(source: {rule['source']['file']} at commit {rule['source'].get('commit', '?')}).",
             f"Evidence: {evidence_text(rule)}.", "",
             "| sweep | cell | student | IPC | epochs | split (soft/hard/soft) | T | SLI | seeds | Tr(Sigma) | "
             "Tr(Sigma)/SLI | x threshold | predicted | outside the evidence |",
             "|---|---|---|---:|---:|---|---:|---:|---|---:|---:|---:|---|---|"]
    for r in rows:
        c = r["context"]
        pred = {"+": "**gain**", "-": "**loss**"}.get(r["sign"], "not measured")
        num = (lambda v, f: f.format(v) if v is not None else "-")  # noqa: E731
        cell = _cell_text(r["cell"]) + ("" if r.get("pair", "hald - soft-only") == "hald - soft-only" else f" ({r['pair']})")
        lines.append(f"| {r['sweep']} | {cell} | {c['student']} | {c['ipc']} | {c['epochs']} | "
                     f"{c['hald_split']} | {c['temperature']} | {c['sli']} | {','.join(map(str, r['seeds']))} | "
                     f"{num(r['trace_sigma'], '{:.4f}')} | {num(r['drift'], '{:.4f}')} | {num(r['ratio'], '{:.2f}')} | "
                     f"{pred} | {'; '.join(r['outside_evidence']) or '-'} |")
    return lines


def write_predictions(rows: list, rule: dict, out_dir: str) -> tuple:
    """predictions.json and predictions.md in out_dir; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    pj, pm = os.path.join(out_dir, "predictions.json"), os.path.join(out_dir, "predictions.md")
    with open(pj, "w") as f:
        json.dump({"rule": {k: rule[k] for k in ("pair", "predictor", "threshold", "source", "evidence", "tests")
                            if k in rule}, "cells": rows}, f, indent=1, default=str)
    with open(pm, "w") as f:
        f.write("# Drift-rule predictions, written before any student of these cells trained\n\n")
        f.write("\n".join(predictions_markdown(rows, rule)) + "\n")
    return pj, pm


def score(predictions: list, paired_rows: list) -> list:
    """Hits and misses: each predicted cell against the paired result of the same cell (a results.json's
    `paired` rows). A cell's outcome is its mean's sign; `resolved` says whether the 95 % interval
    excludes zero."""
    out = []
    for p in predictions:
        match = None
        for q in paired_rows:
            if q.get("pair") != p.get("pair", "hald - soft-only"):
                continue
            if all(json.dumps(q.get(k), default=str) == json.dumps(v, default=str) for k, v in p["cell"].items()):
                match = q
                break
        row = {"sweep": p.get("sweep"), "pair": p.get("pair"), "cell": p["cell"], "predicted": p.get("sign"),
               "drift": p.get("drift")}
        if match is None or not match.get("n"):
            row.update(n=0, outcome=None, hit=None)
        else:
            mean = match["mean"]
            lo, hi = match.get("lo"), match.get("hi")
            resolved = lo is not None and hi is not None and (lo > 0 or hi < 0)
            outcome = "+" if mean > 0 else "-"
            row.update(n=match["n"], mean=mean, lo=lo, hi=hi, positive=match.get("positive"),
                       negative=match.get("negative"), outcome=outcome, resolved=resolved,
                       hit=(outcome == p.get("sign")) if p.get("sign") else None)
        out.append(row)
    return out


# ------------------------------------------------------------------------------------ files
def _read(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise DriftRuleError(f"not found: {path}") from None
    except json.JSONDecodeError as e:
        raise DriftRuleError(f"{path} is not JSON: {e}") from None


def index(pred_dirs: list, out_dir: str, rule: dict | None = None) -> tuple:
    """Pool several sweeps' predictions.json (one folder each) into out_dir/predictions.{json,md}."""
    rule = rule or load()
    rows = []
    for d in pred_dirs:
        rows += _read(os.path.join(d, "predictions.json"))["cells"]
    return write_predictions(rows, rule, out_dir)


def score_markdown(scored: list) -> list:
    lines = ["| sweep | cell | predicted | drift | n | mean | 95 % CI | +/- | resolved | hit |",
             "|---|---|---|---:|---:|---:|---|---|---|---|"]
    for r in scored:
        cell = _cell_text(r["cell"]) + ("" if r.get("pair", "hald - soft-only") == "hald - soft-only"
                                        else f" ({r['pair']})")
        drift = f"{r['drift']:.4f}" if r.get("drift") is not None else "-"
        if not r.get("n"):
            lines.append(f"| {r['sweep']} | {cell} | {r['predicted'] or '-'} | {drift} | 0 | - | - | - | - | not run |")
            continue
        ci = f"[{r['lo']:+.2f}, {r['hi']:+.2f}]" if r["n"] >= 2 else "-"
        lines.append(f"| {r['sweep']} | {cell} | {r['predicted'] or '-'} | {drift} | {r['n']} | {r['mean']:+.2f} | {ci} | "
                     f"{r['positive']}/{r['negative']} | {'yes' if r['resolved'] else 'no'} | "
                     f"{'HIT' if r['hit'] else ('MISS' if r['hit'] is False else '-')} |")
    done = [r for r in scored if r.get("hit") is not None]
    res = [r for r in done if r["resolved"]]
    lines += ["", f"Cells run: {len(done)} of {len(scored)}; sign of the mean right in {sum(r['hit'] for r in done)} "
              f"of {len(done)}; among the cells whose interval excludes zero: {sum(r['hit'] for r in res)} of {len(res)}."]
    return lines


def main(argv=None) -> int:
    """python -m hald_ext.sweep.drift_rule index PRED_DIR ... --out DIR
       python -m hald_ext.sweep.drift_rule score PREDICTIONS.json RESULTS.json ... [--out FILE.md]"""

    p = argparse.ArgumentParser(prog="python -m hald_ext.sweep.drift_rule", description="drift-rule predictions")
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("index", help="pool sweeps' predictions.json")
    i.add_argument("dirs", nargs="+")
    i.add_argument("--out", required=True)
    s = sub.add_parser("score", help="hits and misses of predictions against sweeps' results.json")
    s.add_argument("predictions")
    s.add_argument("results", nargs="+")
    s.add_argument("--out", default=None, help="also write the table (markdown) and FILE.json")
    a = p.parse_args(argv)
    try:
        if a.cmd == "index":
            print("\n".join(index(a.dirs, a.out)))
            return 0
        preds = _read(a.predictions)["cells"]
        paired_rows = []
        names = set()
        for path in a.results:
            res = _read(path)
            names.add(res.get("name"))
            paired_rows += [dict(q, sweep=res.get("name")) for q in res.get("paired", [])]
        scored = []
        for p_ in preds:  # a prediction is scored against its own sweep's results
            rows = [q for q in paired_rows if q["sweep"] == p_.get("sweep")]
            scored += score([p_], rows)
    except DriftRuleError as e:
        print(f"drift_rule: error: {e}", file=sys.stderr)
        return 2
    lines = score_markdown(scored)
    print("\n".join(lines))
    if a.out:
        with open(a.out, "w") as f:
            f.write("\n".join(lines) + "\n")
        with open(os.path.splitext(a.out)[0] + ".json", "w") as f:
            json.dump(scored, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
