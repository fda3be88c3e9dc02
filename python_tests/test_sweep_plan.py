"""`hald sweep` configuration checks and planning: shared stages, the run list, paired inputs."""
import glob
import os

import pytest
import yaml

from hald_ext.cli import main
from hald_ext.sweep import SweepConfigError, load, make_plan, validate
from hald_ext.sweep import config as C


def base(**over):
    cfg = {"name": "t", "seeds": [0, 1, 2], "device": "cpu",
           "teacher": {"data": "train.npz", "epochs": 1}, "select": {"data": "train.npz", "ipc": 2},
           "relabel": {"k": 3, "temperature": 4}, "lvsd": {"crops": 4},
           "train": {"eval_data": "held.npz", "epochs": 2, "batch_size": 8},
           "axes": {"train.schedule": ["hald", "soft-only", "hard-only"], "relabel.sli": [1, 2, 5]},
           "compare": {"axis": "train.schedule", "pairs": ["hald - soft-only", ["hald", "hard-only"]]}}
    cfg.update(over)
    return cfg


def test_plan_shares_stages_and_lists_every_run(tmp_path):
    cfg = validate(base())
    plan = make_plan(cfg, str(tmp_path))
    kinds = {k: len(plan.by_kind(k)) for k in ("teacher", "select", "relabel", "transform", "lvsd", "train")}
    # one teacher; one selection per seed; one relabel per (seed, SLI); lvsd does not depend on SLI
    assert kinds == {"teacher": 1, "select": 3, "relabel": 9, "transform": 0, "lvsd": 3, "train": 27}
    assert len(plan.runs) == 27
    assert {(r.seed, r.cell["train.schedule"], r.cell["relabel.sli"]) for r in plan.runs} == {
        (s, sch, sli) for s in (0, 1, 2) for sch in ("hald", "soft-only", "hard-only") for sli in (1, 2, 5)}
    ids = list(plan.stages)
    for st in plan.stages.values():  # dependency order
        assert all(ids.index(d) < ids.index(st.id) for d in st.deps)
    rel = plan.by_kind("relabel")[0].argv
    assert rel[:2] == ["relabel", plan.stages[plan.runs[0].select].output]
    assert "--sli" in rel and "--checkpoint" in rel and rel[rel.index("--model") + 1] == "convnet3"
    assert cfg["compare"]["pairs"] == [("hald", "soft-only"), ("hald", "hard-only")]


def _flag(argv, name):
    return argv[argv.index(name) + 1]


def test_every_schedule_of_a_seed_trains_on_the_same_images_and_crops(tmp_path):
    plan = make_plan(validate(base()), str(tmp_path))
    by_key: dict = {}
    for r in plan.runs:
        argv = plan.stages[r.train].argv
        by_key.setdefault((r.seed, r.cell["relabel.sli"]), []).append(
            (_flag(argv, "--data"), _flag(argv, "--labels"), _flag(argv, "--seed"), r.cell["train.schedule"]))
    for (seed, sli), group in by_key.items():
        assert len(group) == 3 and {g[3] for g in group} == {"hald", "soft-only", "hard-only"}
        assert len({g[:3] for g in group}) == 1, f"seed {seed} SLI {sli}: schedules see different inputs"
    # ... while each seed draws its own images and crops
    assert len({v[0][0] for v in by_key.values()}) == 3
    assert len({v[0][1] for v in by_key.values()}) == 9


def test_teacher_axis_and_transform_and_given_checkpoint(tmp_path):
    cfg = validate(base(axes={"teacher.epochs": [1, 3], "train.schedule": ["hald", "soft-only"]},
                        transform={"mode": "swap"}, seeds=2, compare=None))
    plan = make_plan(cfg, str(tmp_path))
    assert len(plan.by_kind("teacher")) == 2 and len(plan.by_kind("relabel")) == 4
    assert len(plan.by_kind("transform")) == 4
    for r in plan.runs:
        assert r.labels.startswith("transform/")
        assert _flag(plan.stages[r.train].argv, "--labels") == plan.stages[r.labels].output
    cfg = validate(base(teacher={"checkpoint": "/some/teacher.pth"}))
    plan = make_plan(cfg, str(tmp_path))
    assert not plan.by_kind("teacher")
    assert _flag(plan.by_kind("relabel")[0].argv, "--checkpoint") == "/some/teacher.pth"


@pytest.mark.parametrize("over,message", [
    ({"train": {"epochz": 3}}, "unknown option train.epochz"),
    ({"train": {"seed": 3}}, "train.seed is set by the sweep"),
    ({"relabel": {"out": "x"}}, "relabel.out is set by the sweep"),
    ({"axes": {"train.epochs": ["many"]}}, "axes.train.epochs"),
    ({"axes": {"train.bogus": [1]}}, "unknown option train.bogus"),
    ({"axes": {"trainer.epochs": [1]}}, "axes.trainer.epochs: unknown stage"),
    ({"axes": {"relabel.sli": 3}}, "axes.relabel.sli must be a non-empty list"),
    ({"relabel": {"bits": 12}}, "relabel.bits"),
    ({"compare": {"axis": "train.schedule", "pairs": ["hald - fkd"]}}, "'fkd' is not a value of train.schedule"),
    ({"compare": {"axis": "relabel.k", "pairs": []}}, "compare.axis 'relabel.k' is not one of the axes"),
    ({"seeds": [1, 1]}, "seeds has duplicates"),
    ({"report": {"x": "select.ipc"}}, "report.x 'select.ipc' is not one of the axes"),
    ({"transform": {"mode": "shuffle"}}, "transform.mode must be one of"),
    ({"extra": 1}, "unknown key 'extra'"),
])
def test_bad_config_names_the_key(over, message):
    with pytest.raises(SweepConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(base(**over))


def test_cli_reports_a_bad_key_and_plans(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(base(train={"epochs": 2, "lr_max": 1})))
    assert main(["sweep", str(bad), "--plan"]) == 2
    assert "unknown option train.lr_max" in capsys.readouterr().err
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(base()))
    assert main(["sweep", str(good), "--plan", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "27 student runs (9 cell(s) x 3 seed(s))" in out and out.count("hald train ") == 27


PRESETS = sorted(glob.glob(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                        "experiments", "**", "*.yaml"), recursive=True))


@pytest.mark.parametrize("path", PRESETS, ids=[os.path.relpath(p, os.path.dirname(p) + "/..") for p in PRESETS])
def test_presets_plan(path, tmp_path):
    if "save_every" in open(path).read() and not C.spec("teacher").has("save_every"):
        with pytest.raises(SweepConfigError, match="unknown option teacher.save_every"):
            load(path)  # snapshots need `hald teacher --save-every`
        return
    cfg = load(path)
    plan = make_plan(cfg, str(tmp_path))
    assert plan.runs and len(plan.by_kind("train")) == len(plan.runs)
    if cfg["compare"]:
        assert all(v in cfg["axes"][cfg["compare"]["axis"]] for pair in cfg["compare"]["pairs"] for v in pair)
