"""The drift rule (hald_ext/sweep/drift_rule.py): the committed rule matches the evidence it quotes, its
signs and SLI range, the lead `hald lvsd` prints, per-cell predictions of a sweep from its lvsd stages,
and the hit / miss count against paired results; bad rule files are named."""
import json
import os

import numpy as np
import pytest
import torch

from hald_ext.sweep import drift_rule as D

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUMMARY = os.path.join(ROOT, "experiments", "fmnist", "summary", "summary.json")


def _summary_pair():
    with open(SUMMARY) as f:
        return next(p for p in json.load(f)["pairs"] if p["pair"] == "hald - soft-only")


def test_committed_rule_is_the_summary_threshold_and_calls_its_cells():
    rule = D.load()
    pair = _summary_pair()
    fit = pair["predictors"]["lvsd_drift"]["sign_rule"]
    assert rule["threshold"] == pytest.approx(fit["threshold"], rel=1e-12)
    assert rule["evidence"]["cells"] == fit["n"] == len(pair["cells"])
    assert rule["evidence"]["in_sample"] == [fit["sign_correct"], fit["n"]]
    assert rule["evidence"]["leave_one_out"] == [fit["loo_correct"], fit["loo_n"]]
    calls = [D.predict(c["lvsd_trace_sigma"], c["lvsd_trace_sigma"] / c["lvsd_drift"], rule)["sign"] == ("+" if c["mean"] > 0 else "-")
             for c in pair["cells"]]
    assert sum(calls) == fit["sign_correct"]


def test_predict_sign_boundary_and_sli_range():
    rule = {"pair": "hald - soft-only", "threshold": 0.05, "evidence": {}, "tests": []}
    assert D.predict(0.2, 1, rule)["sign"] == "+"
    assert D.predict(0.2, 4, rule)["sign"] == "-"  # 0.05 is not above the threshold
    p = D.predict(0.2, 2, rule)
    assert p["drift"] == pytest.approx(0.1) and p["ratio"] == pytest.approx(2.0)
    assert D.largest_gain_sli(0.2, rule) == 3  # 0.2 / 3 > 0.05, 0.2 / 4 = 0.05 is not
    assert D.largest_gain_sli(0.21, rule) == 4
    assert D.largest_gain_sli(0.04, rule) == 0
    for bad in (0, -1):
        with pytest.raises(ValueError, match="sli"):
            D.predict(0.2, bad, rule)
    with pytest.raises(ValueError, match="trace_sigma"):
        D.predict(float("nan"), 1, rule)


def test_lead_says_sign_evidence_and_what_lies_outside_it():
    rule = D.load()
    text = "\n".join(D.lead_lines(0.2444, temperature=1, rule=rule))
    assert "a lead, not a verdict" in text and "GAIN" in text and "SLI <= 7" in text
    hits, n = D.track_record(rule)
    assert f"{hits}/{n} right" in text and "Fashion-MNIST" in text and "convnet3" in text and "IPC 10" in text
    text = "\n".join(D.lead_lines(0.0235, temperature=4, rule=rule))
    assert "LOSS to soft-only at every SLI" in text
    text = "\n".join(D.lead_lines(0.0235, sli=1, context={"student": "resnet10t", "ipc": 50}, rule=rule))
    assert "predicted LOSS" in text and "student resnet10t (evidence: convnet3)" in text and "ipc 50" in text
    split = D.outside({"split": "explicit soft:225,hard:150,soft:225", "epochs": 150}, rule)
    assert len(split) == 1 and split[0].startswith("split explicit soft:225")


def test_bad_rule_files_are_named(tmp_path):
    with pytest.raises(D.DriftRuleError, match="not found"):
        D.load(str(tmp_path / "none.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(D.DriftRuleError, match="bad.json is not JSON"):
        D.load(str(bad))
    bad.write_text(json.dumps({"pair": "hald - soft-only", "threshold": 0.1}))
    with pytest.raises(D.DriftRuleError, match="lacks evidence, tests"):
        D.load(str(bad))
    bad.write_text(json.dumps({"pair": "a - b", "threshold": -1, "evidence": {}, "tests": []}))
    with pytest.raises(D.DriftRuleError, match="threshold must be a positive number"):
        D.load(str(bad))


def _plan(tmp_path, traces):
    from hald_ext.sweep import config as C
    from hald_ext.sweep.plan import make_plan

    cfg = {"name": "t", "seeds": [0, 1], "device": "cpu", "teacher": {"epochs": 1}, "select": {"ipc": 2},
           "relabel": {"k": 3, "temperature": 1}, "lvsd": {"crops": 4}, "train": {"epochs": 8},
           "axes": {"relabel.sli": [1, 4], "train.schedule": ["hald", "soft-only", "soft:2,hard:4,soft:2"]},
           "compare": {"axis": "train.schedule", "pairs": ["hald - soft-only", "soft:2,hard:4,soft:2 - soft-only"]}}
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "c.yaml").write_text(json.dumps(cfg))
    plan = make_plan(C.load(str(tmp_path / "c.yaml")), str(tmp_path / "out"))
    for st in plan.by_kind("lvsd"):  # what a finished lvsd stage leaves behind
        seed = st.options["seed"]
        if seed in traces:
            os.makedirs(os.path.dirname(st.output), exist_ok=True)
            with open(st.output, "w") as f:
                json.dump({"trace_sigma_mean": traces[seed]}, f)
            with open(os.path.join(os.path.dirname(st.output), "done.json"), "w") as f:
                json.dump({"id": st.id}, f)
    return plan


def test_predict_plan_reads_the_sweeps_lvsd_and_writes_predictions(tmp_path):
    rule = {"pair": "hald - soft-only", "threshold": 0.05, "evidence": {"student": "convnet3", "epochs": 150},
            "tests": [], "source": {"file": "x.json", "commit": "abc"}}
    rows = D.predict_plan(_plan(tmp_path, {0: 0.1, 1: 0.3}), rule)
    by = {(r["pair"], r["cell"]["relabel.sli"]): r for r in rows}
    assert len(rows) == 4
    r = by[("hald - soft-only", 1)]
    assert r["seeds"] == [0, 1] and r["trace_sigma"] == pytest.approx(0.2) and r["sign"] == "+"
    r = by[("hald - soft-only", 4)]
    assert r["drift"] == pytest.approx(0.05) and r["sign"] == "-"  # mean of 0.025 and 0.075: not above
    assert r["context"]["hald_split"] == "2/4/2" and "epochs 8 (evidence: 150)" in r["outside_evidence"]
    assert by[("soft:2,hard:4,soft:2 - soft-only", 1)]["context"]["hald_split"] == "2/4/2"
    pj, pm = D.write_predictions(rows, rule, str(tmp_path / "pred"))
    assert "**gain**" in open(pm).read() and json.load(open(pj))["rule"]["threshold"] == 0.05
    missing = D.predict_plan(_plan(tmp_path / "b", {0: 0.1}), rule)
    assert all(r["seeds"] == [0] for r in missing)
    none = D.predict_plan(_plan(tmp_path / "c", {}), rule)
    assert all(r["sign"] is None for r in none)


def test_score_counts_hits_and_misses():
    preds = [{"sweep": "s", "pair": "hald - soft-only", "cell": {"relabel.sli": 1}, "sign": "+", "drift": 0.2},
             {"sweep": "s", "pair": "hald - soft-only", "cell": {"relabel.sli": 4}, "sign": "+", "drift": 0.06},
             {"sweep": "s", "pair": "hald - soft-only", "cell": {"relabel.sli": 9}, "sign": "-", "drift": 0.01}]
    paired = [{"relabel.sli": 1, "pair": "hald - soft-only", "n": 3, "mean": 2.0, "lo": 0.5, "hi": 3.5,
               "positive": 3, "negative": 0},
              {"relabel.sli": 4, "pair": "hald - soft-only", "n": 3, "mean": -1.0, "lo": -3.0, "hi": 1.0,
               "positive": 1, "negative": 2},
              {"relabel.sli": 1, "pair": "hald - hard-only", "n": 3, "mean": -9.0, "lo": -10, "hi": -8}]
    s = D.score(preds, paired)
    assert [r["hit"] for r in s] == [True, False, None]
    assert s[0]["resolved"] and not s[1]["resolved"] and s[2]["n"] == 0


def test_hald_lvsd_prints_the_lead_after_measuring(tmp_path, capsys):
    from hald_ext.cli import main
    from hald_ext.models import create_model
    from hald_ext.train.synthetic import color_blobs

    images = color_blobs(2, seed=0)
    np.savez(tmp_path / "d.npz", images=images.stacked(), labels=images.labels, classes=np.asarray(images.classes))
    torch.manual_seed(0)
    model = create_model("convnet3", len(images.classes), img_size=16)
    torch.save({"model": model.state_dict(), "model_name": "convnet3", "num_classes": len(images.classes),
                "img_size": 16}, tmp_path / "t.pth")
    rc = main(["lvsd", "--data", str(tmp_path / "d.npz"), "--teacher", str(tmp_path / "t.pth"), "--crops", "3",
               "--temperature", "4", "--out", str(tmp_path / "l.json")])
    out = capsys.readouterr().out
    assert rc == 0
    tr = json.loads((tmp_path / "l.json").read_text())["trace_sigma_mean"]
    assert out.index("Tr(Sigma) over 3 crops") < out.index("Drift rule (a lead, not a verdict)")
    assert f"Tr(Sigma) {tr:.4f} (at T = 4)" in out and "evidence: 11 cells" in out


FAKE = r'''
import json, os, sys
argv = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(argv[0] + "\n")
def flag(name):
    return argv[argv.index(name) + 1]
if argv[0] == "lvsd":
    json.dump({"trace_sigma_mean": 0.1 + 0.1 * int(flag("--seed"))}, open(flag("--out"), "w"))
elif argv[0] == "train":
    sys.exit(5)
else:
    open(flag("--out"), "w").write(argv[0])
'''


def test_sweep_predict_runs_no_student_and_writes_the_signs(tmp_path):
    import subprocess
    import sys

    fake = tmp_path / "fake.py"
    fake.write_text(FAKE)
    cfg = {"name": "p", "seeds": [0, 1], "device": "cpu", "teacher": {"epochs": 1}, "select": {"ipc": 2},
           "relabel": {"k": 3, "temperature": 1}, "lvsd": {"crops": 4}, "train": {"epochs": 2},
           "axes": {"relabel.sli": [1, 8], "train.schedule": ["hald", "soft-only"]},
           "compare": {"axis": "train.schedule", "pairs": ["hald - soft-only"]}}
    (tmp_path / "p.yaml").write_text(json.dumps(cfg))
    env = {**os.environ, "PYTHONPATH": ROOT, "FAKE_LOG": str(tmp_path / "log")}
    out = subprocess.run([sys.executable, "-m", "hald_ext.cli", "sweep", str(tmp_path / "p.yaml"), "--out",
                          str(tmp_path / "out"), "--predict", "--report-dir", str(tmp_path / "rep"), "--cli",
                          f"{sys.executable} {fake}"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    kinds = (tmp_path / "log").read_text().split()
    assert "train" not in kinds and kinds.count("lvsd") == 2 and kinds.count("relabel") == 4
    pred = json.loads((tmp_path / "rep" / "predictions.json").read_text())
    signs = {c["cell"]["relabel.sli"]: (c["sign"], round(c["trace_sigma"], 6)) for c in pred["cells"]}
    assert signs == {1: ("+", 0.15), 8: ("-", 0.15)}  # 0.15 / 8 is below the committed 0.0347
    assert "no student has trained" in out.stdout
