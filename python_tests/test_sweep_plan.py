"""`hald sweep` configuration checks and planning: shared stages, the run list, paired inputs."""
import glob
import re
import os

import pytest
import yaml

from hald_ext.cli import main
from hald_ext.sweep import SweepConfigError, load, make_plan, validate
from hald_ext.sweep import config as C
from hald_ext.sweep.report import write_config


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
    # one teacher; one selection per seed; one relabel per (seed, SLI); lvsd does not depend on SLI;
    # hald and soft-only train per (seed, SLI), hard-only reads no labels: one run per seed
    assert kinds == {"teacher": 1, "select": 3, "relabel": 9, "transform": 0, "lvsd": 3, "train": 9 + 9 + 3}
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
        labels = _flag(argv, "--labels") if "--labels" in argv else plan.stages[r.labels].output
        by_key.setdefault((r.seed, r.cell["relabel.sli"]), []).append(
            (_flag(argv, "--data"), labels, _flag(argv, "--seed"), r.cell["train.schedule"]))
        # hard-only never reads labels: it is given none, and its run waits for no relabel
        reads = r.cell["train.schedule"] != "hard-only"
        assert ("--labels" in argv) == reads and (r.labels in plan.stages[r.train].deps) == reads
    for (seed, sli), group in by_key.items():
        assert len(group) == 3 and {g[3] for g in group} == {"hald", "soft-only", "hard-only"}
        assert len({g[:3] for g in group}) == 1, f"seed {seed} SLI {sli}: schedules see different inputs"
    # ... while each seed draws its own images and crops
    assert len({v[0][0] for v in by_key.values()}) == 3
    assert len({v[0][1] for v in by_key.values()}) == 9


def test_a_run_without_soft_phases_is_shared_by_every_label_setting_of_its_seed(tmp_path):
    cfg = validate(base(axes={"teacher.epochs": [1, 3], "relabel.sli": [1, 2],
                              "train.schedule": ["hald", "hard-only", "hard:1,hard:1"],
                              "train.label_smoothing": [0.1, 0.8]}, transform={"mode": "swap"}, compare=None))
    plan = make_plan(cfg, str(tmp_path))
    hard, select = {}, {}
    for r in plan.runs:
        hard.setdefault((r.seed, r.cell["train.schedule"], r.cell["train.label_smoothing"]), set()).add(r.train)
        select[r.seed] = r.select
    for (seed, sched, ls), ids in hard.items():
        if sched == "hald":
            assert len(ids) == 4  # one per (teacher, SLI)
        else:  # one run for the 4 label settings, named by what it depends on
            (tid,) = ids
            assert tid.startswith(f"train/s{seed}-{sched.replace(':', '-').replace(',', '-')}-{ls}-")
            assert plan.stages[tid].deps == [select[seed]] and "--labels" not in plan.stages[tid].argv
    # 3 seeds x 2 smoothings x (4 hald + 1 hard-only + 1 explicit all-hard)
    assert len(plan.by_kind("train")) == 3 * 2 * 6
    # a soft epoch anywhere in the schedule makes a run read labels again
    cfg = validate(base(axes={"relabel.sli": [1, 2], "train.schedule": ["hard:1,soft:1"]}, compare=None))
    plan = make_plan(cfg, str(tmp_path))
    assert len(plan.by_kind("train")) == 6 and all("--labels" in s.argv for s in plan.by_kind("train"))


def test_sweeps_sharing_an_output_folder_reuse_a_run_planned_under_another_name(tmp_path):
    # an SLI map finished its SLI 1 runs; a smoothing study at SLI 1 plans the same runs with other axes
    train = {"eval_data": "held.npz", "epochs": 2, "batch_size": 8, "label_smoothing": 0.1}
    sli_map = make_plan(validate(base(train=train)), str(tmp_path))
    done = {}
    for r in sli_map.runs:
        if r.cell["relabel.sli"] == 1 or r.cell["train.schedule"] == "hard-only":
            os.makedirs(sli_map.stages[r.train].output, exist_ok=True)
            open(os.path.join(sli_map.stages[r.train].output, "done.json"), "w").write("{}")
            done[(r.seed, r.cell["train.schedule"])] = r.train
    smoothing = validate(base(relabel={"k": 3, "temperature": 4, "sli": 1}, compare=None,
                              axes={"train.label_smoothing": [0.1, 0.8], "train.schedule": ["hald", "hard-only"]},
                              train=train))
    plan = make_plan(smoothing, str(tmp_path))
    for r in plan.runs:
        if r.cell["train.label_smoothing"] == 0.1:  # the same options as the map's runs: the map's folders
            assert r.train == done[(r.seed, r.cell["train.schedule"])]
        else:
            assert r.train not in done.values() and "-0.8-" in r.train
    # without the finished folders the runs get their own names
    fresh = make_plan(smoothing, str(tmp_path / "elsewhere"))
    assert all("-0.1-" in r.train or "-0.8-" in r.train for r in fresh.runs)


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
    ({"teacher": {"data": "t.npz", "epochs": 4, "use_epoch": 2}}, "teacher.use_epoch 2 needs snapshots"),
    ({"teacher": {"data": "t.npz", "epochs": 4, "save_every": 2, "use_epoch": 3}},
     "teacher.use_epoch 3 is not a multiple of teacher.save_every 2"),
    ({"teacher": {"data": "t.npz", "epochs": 4, "save_every": 2}, "axes": {"teacher.use_epoch": [2, 6]}},
     "teacher.use_epoch 6 is past the teacher's last epoch (teacher.epochs 4)"),
    ({"teacher": {"data": "t.npz", "save_every": 1, "use_epoch": 2}},
     "teacher.use_epoch 2 is past the teacher's last epoch (teacher.epochs 1)"),
    ({"teacher": {"data": "t.npz", "epochs": 4, "save_every": 1, "use_epoch": "last"}},
     "teacher.use_epoch must be a whole number"),
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
    assert "27 student runs (9 cell(s) x 3 seed(s))" in out and out.count("hald train ") == 21


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
    assert plan.runs and {s.id for s in plan.by_kind("train")} == {r.train for r in plan.runs}
    written = str(tmp_path / "config.yaml")  # what a report keeps: reads back to the same plan
    write_config(cfg, written)
    assert load(written) == cfg and set(make_plan(load(written), str(tmp_path)).stages) == set(plan.stages)
    if cfg["compare"]:
        assert all(v in cfg["axes"][cfg["compare"]["axis"]] for pair in cfg["compare"]["pairs"] for v in pair)


def test_set_overrides_make_a_quick_version_of_a_preset(tmp_path, capsys):
    preset = os.path.join(os.path.dirname(__file__), "..", "experiments", "fmnist", "map-sli.yaml")
    cfg = C.load(preset, ["seeds=[0]", "train.epochs=2", "axes.relabel.sli=[1, 2]", "teacher.train_images=500",
                          "name=quick"])
    assert cfg["seeds"] == [0] and cfg["train"]["epochs"] == 2 and cfg["axes"]["relabel.sli"] == [1, 2]
    assert cfg["teacher"]["train_images"] == 500 and cfg["name"] == "quick"
    plan = make_plan(cfg, str(tmp_path))
    assert len(plan.runs) == 6 and len(plan.by_kind("train")) == 5  # hard-only once
    assert all(_flag(s.argv, "--epochs") == "2" for s in plan.by_kind("train"))
    assert load(preset)["train"]["epochs"] == 150  # the file is untouched
    for bad, message in [(["train.epochs"], "expected KEY=VALUE"), (["trainer.epochs=2"], "unknown stage 'trainer'"),
                         (["relabel.sli=3"], "relabel.sli is an axis of this sweep; set axes.relabel.sli"),
                         (["train.epochz=2"], "unknown option train.epochz"), (["seeds=[1, 1]"], "seeds has duplicates"),
                         (["train.epochs=[2"], "not valid YAML")]:
        with pytest.raises(SweepConfigError, match=re.escape(message)):
            C.load(preset, bad)
    assert main(["sweep", preset, "--set", "seeds=[0]", "--set", "train.epochs=3", "--plan",
                 "--out", str(tmp_path / "q")]) == 0
    out = capsys.readouterr().out
    assert "12 student runs (12 cell(s) x 1 seed(s))" in out and "--epochs 3" in out and "--epochs 150" not in out
    assert main(["sweep", preset, "--set", "relabel.sli=3", "--plan"]) == 2
    written = str(tmp_path / "config.yaml")  # a report's config.yaml keeps the overrides
    write_config(cfg, written)
    assert load(written) == cfg and load(written)["train"]["epochs"] == 2
    assert "is an axis of this sweep" in capsys.readouterr().err
