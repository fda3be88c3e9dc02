"""Plan a sweep: the stage runs (teacher, select, relabel, transform, lvsd, train) of every (cell, seed),
with every stage that two runs can share planned once.

Sharing rules (the key of a stage is a hash of everything that decides its output):
- teacher: its options (and seed) only; one teacher serves every seed unless a teacher option is an axis;
- select: its options and the seed;
- relabel: the teacher file, the selection and its own options; the seed is the crop sampler's seed;
- transform: the relabel output, the mode and the seed;
- lvsd: the teacher file, the selection, its options and the labels' temperature;
- train: everything above plus its own options and the seed. A schedule without soft phases (hard-only)
  never reads the labels: its run depends on the selection, its own options and the seed only, so one
  run serves every label setting (SLI, k, T, teacher, transform) of a seed.
So for one seed every schedule (any train-only axis) trains on the same image file and the same label
store: the comparisons between train options are paired.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os

from hald_ext.sweep import config as C
from hald_ext.train import options as TC
from hald_ext.train.config import TrainConfig
from hald_ext.train.schedule import build_schedule


@dataclasses.dataclass
class Stage:
    id: str               # "<kind>/<name>", also its folder under the sweep's output
    kind: str             # teacher | select | relabel | transform | lvsd | train
    argv: list            # the `hald` sub-command and its flags
    deps: list            # ids of stages that must finish first
    output: str           # the file (or run folder) the stage produces
    options: dict         # what decided it (for the record and for reports)

    def dir(self, root: str) -> str:
        return os.path.join(root, self.id)


@dataclasses.dataclass
class Run:
    """One student training: a (cell, seed) of the grid."""
    cell: dict
    seed: int
    train: str            # stage id of the train run
    labels: str           # stage id of the label store it trains on (relabel or transform)
    select: str
    relabel: str
    lvsd: str | None
    teacher: str | None


@dataclasses.dataclass
class Plan:
    root: str
    stages: dict          # id -> Stage, in dependency order
    runs: list            # Run per (cell, seed)
    config: dict

    def by_kind(self, kind: str) -> list:
        return [s for s in self.stages.values() if s.kind == kind]


def _key(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _default(stage: str, name: str):
    return C.spec(stage).default(name)


def _ident(stage: str, opts: dict) -> dict:
    """A stage's options as its key hashes them: under the names the options had when stage keys were
    first computed (an option renamed since, e.g. train.slots_per_epoch -> crops_per_epoch, keeps the
    stage's key, so finished and resumable runs stay found), and as the preset wrote the values."""
    return C.spec(stage).stable(opts)


def _axis_name(axis: str) -> str:
    stage, opt = axis.split(".")
    return next(iter(C.spec(stage).stable({opt: None}))) if stage != "transform" else opt


def _reads_labels(tr_opts: dict) -> bool:
    """Whether a student run with these train options has soft phases (and so reads a label store)."""

    default = {f.name: TC.field_default(TrainConfig, f.name) for f in dataclasses.fields(TrainConfig)}
    try:
        sched = build_schedule(*(tr_opts.get(k, default[k]) for k in ("schedule", "epochs", "soft_epochs", "period")))
    except ValueError:  # a bad schedule: planned as reading labels; `hald train` names the error
        return True
    return sched.epochs_of("soft") > 0


# Axes whose values a run without soft phases never sees: they only change the labels.
_LABEL_STAGES = ("teacher.", "relabel.", "transform.", "lvsd.")


def _existing_run(root: str, seed: int, key: str) -> str | None:
    """The folder of the same student run planned under another name (its key decides its output; its
    name comes from the axes of the sweep that first planned it): sweeps sharing an output folder with
    different axes reuse it. A finished one first, then one with a checkpoint to continue."""

    found = sorted(glob.glob(os.path.join(root, "train", f"s{seed}-*-{key}")))
    for marker in ("done.json", "last.pth"):
        for d in found:
            if os.path.exists(os.path.join(d, marker)):
                return f"train/{os.path.basename(d)}"
    return None


def _slug(value) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "-" for c in str(value))[:24]


def make_plan(cfg: dict, root: str, device: str | None = None) -> Plan:
    device = device or cfg.get("device", "auto")
    root = os.path.abspath(root)
    stages: dict = {}
    runs = []

    def add(stage: Stage) -> Stage:
        if stage.id not in stages:
            stages[stage.id] = stage
        return stages[stage.id]

    def path(stage_id: str, name: str) -> str:
        return os.path.join(root, stage_id, name)

    for cell in C.grid(cfg):
        opts = C.cell_options(cfg, cell)
        for seed in cfg["seeds"]:
            # ---- teacher (shared by all seeds)
            t_opts = dict(opts["teacher"])
            use_epoch = t_opts.pop("use_epoch", None)
            snapshot_name = t_opts.pop("snapshot_name", "{stem}-epoch{epoch:03d}.pth")
            given = t_opts.pop("checkpoint", None)
            t_model = t_opts.get("model", _default("teacher", "model"))
            if given is not None:
                teacher = None
                t_file = os.path.abspath(str(given))
                t_ident = {"file": t_file}
            else:
                tid = f"teacher/{_key(_ident('teacher', t_opts))}"
                t_out = path(tid, "teacher.pth")
                argv = ["teacher", *C.spec("teacher").argv(t_opts), "--out", t_out, "--no-progress"]
                if device != "auto":
                    argv += ["--device", device]
                teacher = add(Stage(tid, "teacher", argv, [], t_out, _ident("teacher", t_opts))).id
                t_file = t_out
                t_ident = {"teacher": tid}
                if use_epoch is not None:
                    t_file = os.path.join(os.path.dirname(t_out), snapshot_name.format(stem="teacher", epoch=use_epoch))
                    t_ident = {"teacher": tid, "epoch": use_epoch}
            # ---- select (per seed)
            s_opts = dict(opts["select"])
            sid = f"select/s{seed}-{_key([_ident('select', s_opts), seed])}"
            s_out = path(sid, "images.npz")
            sel = add(Stage(sid, "select", ["select", *C.spec("select").argv(s_opts), "--seed", str(seed),
                                            "--out", s_out], [], s_out, {**_ident("select", s_opts), "seed": seed})).id
            # ---- relabel
            r_opts = dict(opts["relabel"])
            r_opts.setdefault("model", t_model)
            rid = f"relabel/s{seed}-{_key([t_ident, sid, _ident('relabel', r_opts), seed])}"
            r_out = path(rid, "labels.safetensors")
            argv = ["relabel", *C.spec("relabel").argv({"images": s_out} | r_opts), "--checkpoint", t_file,
                    "--seed", str(seed), "--out", r_out, "--no-progress"]
            if device != "auto":
                argv += ["--device", device]
            rel = add(Stage(rid, "relabel", argv, [d for d in (teacher, sel) if d], r_out,
                            {**_ident("relabel", r_opts), "seed": seed, **t_ident})).id
            labels_id, labels_file = rel, r_out
            # ---- transform (optional)
            mode = (opts["transform"] or {}).get("mode", "none")
            if mode != "none":
                xid = f"transform/s{seed}-{_key([rid, mode, seed])}"
                x_out = path(xid, "labels.safetensors")
                add(Stage(xid, "transform", ["labels", "transform", r_out, x_out, "--mode", mode, "--seed", str(seed)],
                          [rel], x_out, {"mode": mode, "seed": seed}))
                labels_id, labels_file = xid, x_out
            # ---- lvsd (optional): Tr(Sigma) of the labels' teacher over crops of the selected images
            lv = None
            if opts["lvsd"] is not None:
                l_opts = dict(opts["lvsd"])
                l_opts.setdefault("temperature", r_opts.get("temperature", _default("relabel", "temperature")))
                lid = f"lvsd/s{seed}-{_key([t_ident, sid, _ident('lvsd', l_opts), seed])}"
                l_out = path(lid, "lvsd.json")
                lv = add(Stage(lid, "lvsd", ["lvsd", "--data", s_out, "--teacher", t_file,
                                             *C.spec("lvsd").argv(l_opts), "--seed", str(seed), "--out", l_out],
                               [d for d in (teacher, sel) if d], l_out,
                               {**_ident("lvsd", l_opts), "seed": seed, **t_ident})).id
            # ---- train
            tr_opts = dict(opts["train"])
            reads_labels = _reads_labels(tr_opts)
            named = {k: v for k, v in cell.items() if reads_labels or not k.startswith(_LABEL_STAGES)}
            name = "-".join(_slug(v if k.startswith("train.") else f"{_axis_name(k)}{v}")
                            for k, v in named.items()) or "run"
            tr_ident = _ident("train", tr_opts)
            key = [labels_id, sid, tr_ident, seed] if reads_labels else [sid, tr_ident, seed]
            trid = _existing_run(root, seed, _key(key)) or f"train/s{seed}-{name}-{_key(key)}"
            run_dir = os.path.join(root, trid)
            argv = ["train", "--data", s_out, *(["--labels", labels_file] if reads_labels else []),
                    *C.spec("train").argv(tr_opts), "--seed", str(seed), "--out", run_dir, "--no-progress"]
            if device != "auto":
                argv += ["--device", device]
            deps = [labels_id, sel] if reads_labels else [sel]
            tr = add(Stage(trid, "train", argv, deps, run_dir, {**tr_ident, "seed": seed})).id
            runs.append(Run(cell=cell, seed=seed, train=tr, labels=labels_id, select=sel, relabel=rel, lvsd=lv,
                            teacher=teacher))
    order = {"teacher": 0, "select": 1, "relabel": 2, "transform": 3, "lvsd": 4, "train": 5}
    ordered = dict(sorted(stages.items(), key=lambda kv: order[kv[1].kind]))
    return Plan(root=root, stages=ordered, runs=runs, config=cfg)


def describe(plan: Plan) -> str:
    counts = {}
    for s in plan.stages.values():
        counts[s.kind] = counts.get(s.kind, 0) + 1
    cells = len({json.dumps(r.cell, sort_keys=True, default=str) for r in plan.runs})
    parts = ", ".join(f"{n} {k}" for k, n in counts.items())
    return (f"{len(plan.runs)} student runs ({cells} cell(s) x {len(plan.config['seeds'])} seed(s)); "
            f"stages: {parts}")
