"""`hald sweep` execution with a fake `hald` (instant stages that write what the real commands write):
parallel runs, the results table and report, resume after a killed worker and after a killed sweep."""
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FAKE = r'''
import json, os, sys, time
argv = sys.argv[1:]
stage = argv[0]
def flag(name):
    return argv[argv.index(name) + 1]
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(argv) + "\n")
if "--seed" in argv and os.environ.get("FAKE_FAIL") == f"{stage}:{flag('--seed')}":
    sys.exit(3)
TOP1 = {"hald": [80.0, 82.0, 79.0], "soft-only": [78.0, 81.5, 77.0], "hard-only": [79.0, 81.0, 78.5]}
if stage == "train":
    run = flag("--out")
    os.makedirs(run, exist_ok=True)
    sched, seed = flag("--schedule"), int(flag("--seed"))
    open(os.path.join(run, "last.pth"), "w").write("checkpoint")
    if os.environ.get("FAKE_HANG") == f"{sched}:{seed}":
        open(os.path.join(os.environ["FAKE_PIDS"], str(os.getpid())), "w").write(run)
        time.sleep(300)
    rows = [{"epoch": 1, "phase": "soft", "eval_top1": None, "epoch_time": 0.1},
            {"epoch": 2, "phase": "soft", "eval_top1": TOP1[sched][seed], "eval_top5": 99.0, "epoch_time": 0.1}]
    json.dump(rows, open(os.path.join(run, "metrics.json"), "w"))
elif stage == "lvsd":
    json.dump({"trace_sigma_mean": 0.1 + 0.01 * int(flag("--seed"))}, open(flag("--out"), "w"))
elif argv[:2] == ["labels", "transform"]:
    open(argv[3], "w").write("labels")
else:
    open(flag("--out"), "w").write(stage)
    if stage == "teacher":
        json.dump({"eval_top1": 84.0}, open(os.path.splitext(flag("--out"))[0] + ".json", "w"))
'''


@pytest.fixture()
def sweep(tmp_path):
    fake = tmp_path / "fake_hald.py"
    fake.write_text(FAKE)
    cfg = {"name": "fake", "seeds": [0, 1, 2], "device": "cpu", "teacher": {"epochs": 1},
           "select": {"ipc": 2}, "relabel": {"sli": 1, "k": 3}, "lvsd": {"crops": 4},
           "train": {"epochs": 2}, "axes": {"train.schedule": ["hald", "soft-only", "hard-only"]},
           "compare": {"axis": "train.schedule", "pairs": ["hald - soft-only", "hald - hard-only"]}}
    (tmp_path / "fake.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "pids").mkdir()
    env = {**os.environ, "PYTHONPATH": ROOT, "FAKE_LOG": str(tmp_path / "log.jsonl"),
           "FAKE_PIDS": str(tmp_path / "pids")}
    argv = [sys.executable, "-m", "hald_ext.cli", "sweep", str(tmp_path / "fake.yaml"), "--out", str(tmp_path / "out"),
            "--jobs", "2", "--no-plots", "--cli", f"{sys.executable} {fake}"]

    def start(hang=None, fail=None, extra=()):
        e = dict(env)
        if hang:
            e["FAKE_HANG"] = hang
        if fail:
            e["FAKE_FAIL"] = fail
        return subprocess.Popen(argv + list(extra), env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)

    def calls():
        with open(tmp_path / "log.jsonl") as f:
            return [json.loads(line) for line in f]

    def wait_pid():
        for _ in range(1200):
            pids = os.listdir(tmp_path / "pids")
            if pids:
                return int(pids[0])
            time.sleep(0.1)
        raise AssertionError("the hanging stage never started")

    yield tmp_path, start, calls, wait_pid
    for name in os.listdir(tmp_path / "pids"):  # never leave a hanging fake behind, whatever failed
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if str(fake).encode() in f.read():  # still our fake, not a reused pid
                    os.kill(int(name), signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError):
            pass


def test_full_sweep_writes_tables_and_paired_statistics(sweep):
    tmp, start, calls, _ = sweep
    p = start()
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    assert "runs 9/9 done, 0 left" in out
    kinds = [c[0] for c in calls()]
    assert {k: kinds.count(k) for k in set(kinds)} == {"teacher": 1, "select": 3, "relabel": 3, "lvsd": 3, "train": 9}
    with open(tmp / "out" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9 and {r["train.schedule"] for r in rows} == {"hald", "soft-only", "hard-only"}
    res = json.load(open(tmp / "out" / "results.json"))
    cell = {c["train.schedule"]: c for c in res["cells"]}
    assert cell["hald"]["mean"] == pytest.approx((80 + 82 + 79) / 3) and cell["hald"]["n"] == 3
    pair = {p["pair"]: p for p in res["paired"]}
    # hald - soft-only: 2.0, 0.5, 2.0 -> mean 1.5, sd sqrt(0.75), half width 4.302653 * sd / sqrt(3)
    s = pair["hald - soft-only"]
    assert s["mean"] == pytest.approx(1.5) and s["sd"] == pytest.approx(0.75 ** 0.5)
    assert s["lo"] == pytest.approx(1.5 - 2.151326, abs=1e-5) and s["positive"] == 3
    h = pair["hald - hard-only"]  # 1.0, 1.0, 0.5 -> interval [0.116, 1.550]: resolved
    assert h["lo"] == pytest.approx(0.833333 - 0.717109, abs=1e-5) and h["lo"] > 0
    assert "beats hard-only but is not resolved from soft-only" in res["explanation"][0]
    assert "HALD beats hard-only" in out
    assert pair["hald - soft-only"]["lvsd_trace_sigma"] == pytest.approx(0.11)
    report = (tmp / "out" / "report.md").read_text()
    assert "| hald - hard-only | 3 | +0.83 |" in report and "`config.yaml`" in report
    from hald_ext.sweep import config as C

    assert C.load(str(tmp / "out" / "config.yaml")) == C.load(str(tmp / "fake.yaml"))
    assert res["config"]["compare"]["pairs"] == ["hald - soft-only", "hald - hard-only"]


def test_a_sweep_without_lvsd_reports_no_drift_section(sweep):
    tmp, start, calls, _ = sweep
    p = start(extra=["--set", "lvsd=null"])
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    assert "lvsd" not in [c[0] for c in calls()]
    report = (tmp / "out" / "report.md").read_text()
    assert "| hald - hard-only | 3 | +0.83 |" in report  # the paired table is still there
    assert "Tr(Sigma)" not in report and "predict" not in report
    assert json.load(open(tmp / "out" / "results.json"))["lvsd_prediction"] == []


def test_demo_summary_says_what_the_numbers_show(sweep, capsys):
    import importlib.util

    tmp, start, _, _ = sweep
    p = start()
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    spec = importlib.util.spec_from_file_location("demo", os.path.join(ROOT, "scripts", "demo.py"))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    demo.summarise(str(tmp / "out"), str(tmp / "fake.yaml"), 12.0)
    text = capsys.readouterr().out
    assert "(teacher: 84.00 % test top-1)" in text
    assert re.search(r"\nhald +80\.33 \+- 1\.53 \(3\) +80\.00  82\.00  79\.00\n", text)
    assert "hald - hard-only  +0.83 points, 95 % CI [+0.12, +1.55], 3/3 seeds positive" in text
    assert "HALD beats hard-only but is not resolved from soft-only" in text


def test_demo_prints_predictions_before_training_and_scores_them_per_regime(sweep, capsys):
    import importlib.util

    tmp, start, calls, _ = sweep
    cfg = yaml.safe_load((tmp / "fake.yaml").read_text())
    cfg["axes"] = {"relabel.temperature": [1, 4], **cfg["axes"]}
    (tmp / "fake.yaml").write_text(yaml.safe_dump(cfg))
    p = start(extra=["--predict"])
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    assert not [c for c in calls() if c[0] == "train"]  # measured, nothing trained
    spec = importlib.util.spec_from_file_location("demo", os.path.join(ROOT, "scripts", "demo.py"))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    demo.print_predictions(str(tmp / "out" / "predictions.json"))
    text = capsys.readouterr().out
    assert "labels at T = 1: Tr(Sigma) 0.1100 / SLI 1 = 0.1100" in text and "predicted: HALD BEATS soft-only" in text
    p = start()
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    demo.summarise(str(tmp / "out"), str(tmp / "fake.yaml"), 12.0)
    text = capsys.readouterr().out
    assert "top-3 labels at T = 1 and 4" in text and "== labels at T = 1\n" in text and "== labels at T = 4\n" in text
    assert text.count("predicted before training: gain; observed: gain (not resolved: the interval spans zero) -> HIT") == 2
    assert "the drift rule's predictions: 2 of 2 right here" in text


def test_killed_worker_then_rerun_redoes_only_that_run(sweep):
    tmp, start, calls, wait_pid = sweep
    p = start(hang="hard-only:1")
    os.kill(wait_pid(), signal.SIGKILL)  # a worker's `hald train` dies mid-run
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 1, out
    assert "FAILED train/s1-hard-only" in out and "runs 8/9 done, 0 left, 1 failed" in out
    first = calls()
    assert len(first) == 19
    p = start()
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    again = calls()[len(first):]
    assert len(again) == 1, again  # finished stages are not redone
    assert again[0][0] == "train" and "--resume" in again[0] and again[0][again[0].index("--seed") + 1] == "1"
    assert json.load(open(tmp / "out" / "results.json"))["runs_done"] == 9


def test_sigterm_stops_the_sweep_and_its_commands_then_resumes(sweep):
    tmp, start, calls, wait_pid = sweep
    p = start(hang="soft-only:2")
    pid = wait_pid()
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 130, out
    assert "interrupted" in out
    with pytest.raises(ProcessLookupError):  # the running command was stopped with the sweep
        os.kill(pid, 0)
    done_before = sum(os.path.exists(os.path.join(tmp, "out", "train", d, "done.json"))
                      for d in os.listdir(tmp / "out" / "train"))
    assert done_before < 9
    first = calls()
    p = start()
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    trains = [c for c in calls()[len(first):] if c[0] == "train"]
    assert len(trains) == 9 - done_before
    assert all(c[0] == "train" for c in calls()[len(first):])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" not in f.read()
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_sigkill_of_the_sweep_takes_its_commands_along(sweep):
    tmp, start, calls, wait_pid = sweep
    p = start(hang="hald:0")
    pid = wait_pid()
    assert _alive(pid)
    p.kill()
    p.communicate(timeout=60)
    for _ in range(100):
        if not _alive(pid):
            break
        time.sleep(0.1)
    assert not _alive(pid), "an orphaned command outlived the killed sweep"
    p = start()
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out


def test_a_failed_stage_skips_everything_downstream_only(sweep):
    tmp, start, calls, _ = sweep
    cfg = yaml.safe_load((tmp / "fake.yaml").read_text())
    cfg["transform"] = {"mode": "swap"}  # relabel -> transform -> train: a chain to skip
    (tmp / "fake.yaml").write_text(yaml.safe_dump(cfg))
    p = start(fail="relabel:1")
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 1, out
    # seed 1's transform and its two soft students; its hard-only student reads no labels and still runs
    assert out.count("a stage it needs failed") == 3
    assert "runs 7/9 done" in out
    res = json.load(open(tmp / "out" / "results.json"))
    assert res["runs_done"] == 7 and len(res["runs_missing"]) == 2
    assert {m.split("/")[1].rsplit("-", 1)[0] for m in res["runs_missing"]} == {"s1-hald", "s1-soft-only"}
    assert all(p["n"] == 2 for p in res["paired"])  # the pairs use the seeds that have both runs
