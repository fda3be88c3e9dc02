"""`hald train / select / teacher / lvsd` end to end on tiny synthetic data, and their error messages."""
import glob
import json
import os

import numpy as np
import pytest
import torch
import yaml

from hald_ext.cli import main
from hald_ext.data import load_image_set
from hald_ext.models import create_model
from hald_ext.train.synthetic import color_blob_labels, color_blobs


def write_npz(images, path):
    np.savez(path, images=images.stacked(), labels=images.labels, classes=np.asarray(images.classes))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    train, held = color_blobs(6, seed=0), color_blobs(10, seed=1)
    write_npz(train, root / "train.npz")
    write_npz(held, root / "held.npz")
    # The store must be made from the images as the trainer reads them back (same fingerprint).
    color_blob_labels(load_image_set(str(root / "train.npz")), sli=2, k=3, path=str(root / "train.safetensors"))
    color_blob_labels(load_image_set(str(root / "held.npz")), sli=2, k=3, path=str(root / "held.safetensors"))
    (root / "tiny.yaml").write_text(yaml.safe_dump({
        "data": str(root / "train.npz"), "labels": str(root / "train.safetensors"),
        "eval_data": str(root / "held.npz"), "model": "convnet3", "schedule": "hald", "epochs": 5,
        "batch_size": 8, "lr": 0.003, "eval_every": 2, "label_smoothing": 0.1, "progress": False,
        "out": str(root / "runs" / "tiny")}))
    return root


def test_train_smoke_yaml_plus_flags(files, capsys):
    rc = main(["train", "-c", str(files / "tiny.yaml"), "--epochs", "4", "--out", str(files / "runs" / "smoke"), "--threads", "1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    run = files / "runs" / "smoke"
    assert {"args.yaml", "summary.csv", "metrics.json", "curves.png", "last.pth"} <= set(os.listdir(run))
    args = yaml.safe_load((run / "args.yaml").read_text())
    assert args["epochs"] == 4 and args["lr"] == 0.003 and args["schedule"] == "hald"  # flag beat the YAML
    rows = json.loads((run / "metrics.json").read_text())
    assert [r["phase"] for r in rows] == ["soft", "hard", "hard", "soft"]
    assert [r["eval_top1"] is not None for r in rows] == [False, True, False, True]
    assert "final: top-1" in out and "schedule: soft:1,hard:2,soft:1" in out
    # The run's checkpoint is a model file as well.
    create_model("convnet3", 4, img_size=16, checkpoint=str(run / "last.pth"))
    # Re-running into the same folder without --resume is refused; --resume of a finished run is a no-op.
    assert main(["train", "-c", str(files / "tiny.yaml"), "--epochs", "4", "--out", str(files / "runs" / "smoke")]) == 2
    assert "already holds a checkpoint" in capsys.readouterr().err
    assert main(["train", "-c", str(files / "tiny.yaml"), "--epochs", "4", "--resume", str(run)]) == 0


@pytest.mark.parametrize("flags,message", [
    (["--model", "resnet-nonexistent"], "unknown model 'resnet-nonexistent'"),
    (["--schedule", "soft-only", "--no-reuse-labels"], "label store holds SLI=2"),
    (["--crops-per-epoch", "3"], "exceeds the label store's 2 crops per image"),
    (["--data", "/nonexistent/set.npz"], "--data '/nonexistent/set.npz' does not exist"),
    (["--labels", "/nonexistent/x.safetensors"], "--labels '/nonexistent/x.safetensors' does not exist"),
    (["--resume", "/nonexistent/last.pth"], "--resume '/nonexistent/last.pth' does not exist"),
    (["--schedule", "soft:2,hard:2"], "has 4 epochs but epochs=5"),
    (["--schedule", "sandwich"], "unknown schedule 'sandwich'"),
    (["--label-smoothing", "1.5"], "--label-smoothing must be in [0, 1)"),
    (["-c", "/nonexistent.yaml"], "config file '/nonexistent.yaml' does not exist"),
])
def test_bad_configuration_is_a_clear_error(files, capsys, flags, message):
    rc = main(["train", "-c", str(files / "tiny.yaml"), "--out", str(files / "runs" / "bad")] + flags)
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert not (files / "runs" / "bad").exists()


def test_store_of_other_images_and_unknown_yaml_keys(files, capsys):
    rc = main(["train", "-c", str(files / "tiny.yaml"), "--data", str(files / "held.npz"),
               "--labels", str(files / "train.safetensors"), "--out", str(files / "runs" / "bad")])
    assert rc == 2 and "labels 24 images but --data has 40" in capsys.readouterr().err
    rc = main(["train", "-c", str(files / "tiny.yaml"), "--labels", str(files / "held.safetensors"),
               "--out", str(files / "runs" / "bad")])
    assert rc == 2 and "labels 40 images but --data has 24" in capsys.readouterr().err
    # YAML 1.1 reads 1e-3 as a string: it must still be a number, and a non-number a clear error.
    from hald_ext.train.config import parse_config

    numbers = files / "numbers.yaml"
    numbers.write_text("lr: 1e-3\nepochs: 12\nmean: [0.5, 0.5, 0.5]\nhinton: true\n")
    cfg = parse_config(["-c", str(numbers)])
    assert cfg.lr == 0.001 and cfg.epochs == 12 and cfg.mean == (0.5, 0.5, 0.5) and cfg.hinton is True
    numbers.write_text("epochs: ten\n")
    assert main(["train", "-c", str(numbers)]) == 2
    assert "option epochs: cannot read 'ten'" in capsys.readouterr().err
    bad_yaml = files / "typo.yaml"
    bad_yaml.write_text("data: x\nlearning_rate: 0.1\n")
    assert main(["train", "-c", str(bad_yaml)]) == 2
    assert "typo.yaml: unknown option 'learning_rate' (known: " in capsys.readouterr().err


def test_fingerprint_mismatch(files, capsys, tmp_path):
    # Same count, other pixels: only the fingerprint can tell.
    other = color_blobs(6, seed=7)
    write_npz(other, tmp_path / "other.npz")
    rc = main(["train", "-c", str(files / "tiny.yaml"), "--data", str(tmp_path / "other.npz"),
               "--out", str(tmp_path / "run")])
    assert rc == 2 and "image set mismatch" in capsys.readouterr().err


def test_select_npz_and_folder(files, tmp_path, capsys):
    full = files / "held.npz"  # 10 per class
    assert main(["select", "--data", str(full), "--ipc", "3", "--seed", "1", "--out", str(tmp_path / "a.npz")]) == 0
    assert main(["select", "--data", str(full), "--ipc", "3", "--seed", "1", "--out", str(tmp_path / "b.npz")]) == 0
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert np.array_equal(a["source_indices"], b["source_indices"])  # seeded
    assert np.bincount(a["labels"]).tolist() == [3, 3, 3, 3]
    src = load_image_set(str(full))
    assert np.array_equal(a["images"], np.stack([src.images[i] for i in a["source_indices"]]))
    assert np.array_equal(a["labels"], src.labels[a["source_indices"]])
    assert main(["select", "--data", str(full), "--ipc", "3", "--seed", "2", "--out", str(tmp_path / "c.npz")]) == 0
    assert not np.array_equal(np.load(tmp_path / "c.npz")["source_indices"], a["source_indices"])
    # Folder form: class ids survive the sorted folder order.
    assert main(["select", "--data", str(full), "--ipc", "2", "--out", str(tmp_path / "folder")]) == 0
    folder = load_image_set(str(tmp_path / "folder"))
    assert len(folder) == 8 and np.bincount(folder.labels).tolist() == [2, 2, 2, 2]
    assert main(["select", "--data", str(full), "--ipc", "11", "--out", str(tmp_path / "d.npz")]) == 2
    assert "fewer than --ipc 11" in capsys.readouterr().err


def test_teacher_then_lvsd(files, tmp_path, capsys):
    out = tmp_path / "teacher.pth"
    rc = main(["teacher", "--data", str(files / "train.npz"), "--eval-data", str(files / "held.npz"), "--epochs", "2",
               "--batch-size", "8", "--train-images", "20", "--out", str(out), "--no-progress"])
    assert rc == 0
    meta = json.loads((tmp_path / "teacher.json").read_text())
    assert meta["model_name"] == "convnet3" and 0 <= meta["eval_top1"] <= 100 and meta["train_images"] == 20
    model = create_model("convnet3", 4, img_size=16, checkpoint=str(out))
    assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 4)
    capsys.readouterr()
    student = files / "runs" / "smoke" / "last.pth"
    if not student.exists():  # the smoke test made it; rerun standalone otherwise
        student = out
    rc = main(["lvsd", "--data", str(files / "train.npz"), "--teacher", str(out), "--student", str(student),
               "--crops", "4", "--pairs", "2", "--out", str(tmp_path / "lvsd.json")])
    assert rc == 0, capsys.readouterr().err
    res = json.loads((tmp_path / "lvsd.json").read_text())
    assert len(res["trace_sigma"]) == len(res["cosine"]) == 24
    assert all(t >= 0 for t in res["trace_sigma"]) and all(-1e-6 <= c <= 1 + 1e-6 for c in res["cosine"])
    assert 0 <= res["js_mean"] <= np.log(2)


@pytest.mark.parametrize("path", sorted(glob.glob(
    os.path.join(os.path.dirname(__file__), "..", "examples", "configs", "*.yaml"))))
def test_example_configs_are_valid(path):
    from hald_ext.train.config import parse_config
    from hald_ext.train.schedule import build_schedule

    cfg = parse_config(["-c", path])
    build_schedule(cfg.schedule, cfg.epochs, cfg.soft_epochs, cfg.period)


def test_teacher_records_its_normalisation_and_relabel_and_lvsd_use_it(files, tmp_path, capsys):
    """A teacher trained on inputs normalised with mean = std = 0.5 (a ViT's convention) must be shown
    crops normalised the same way when it labels, not ImageNet's."""
    half = ["0.5", "0.5", "0.5"]
    t = tmp_path / "t.pth"
    assert main(["teacher", "--data", str(files / "train.npz"), "--epochs", "1", "--batch-size", "8",
                 "--mean", *half, "--std", *half, "--out", str(t), "--no-progress"]) == 0
    state = torch.load(t, weights_only=True)
    assert state["mean"] == [0.5] * 3 and state["std"] == [0.5] * 3
    assert json.loads((tmp_path / "t.json").read_text())["mean"] == [0.5] * 3
    assert create_model("convnet3", 4, img_size=16, checkpoint=str(t)).hald_normalization == ((0.5,) * 3, (0.5,) * 3)

    from hald_ext.labels import LabelStore

    def relabel(out, *extra, ckpts=(str(t),)):
        argv = ["relabel", str(files / "train.npz"), "--sli", "2", "--k", "3", "--out", str(tmp_path / out),
                "--no-progress", "--seed", "1", *extra]
        for c in ckpts:
            argv += ["--model", "convnet3", "--checkpoint", c]
        return main(argv)

    assert relabel("rec.safetensors") == 0
    assert relabel("given.safetensors", "--mean", *half, "--std", *half) == 0
    assert relabel("imagenet.safetensors", "--mean", "0.485", "0.456", "0.406", "--std", "0.229", "0.224", "0.225") == 0
    rec, given, imnet = (LabelStore.open(str(tmp_path / f"{n}.safetensors"), validate=False)
                         for n in ("rec", "given", "imagenet"))
    assert rec.header.crops["mean"] == [0.5] * 3 and rec.header.crops["std"] == [0.5] * 3
    assert torch.equal(rec.codes, given.codes) and torch.equal(rec.topk_ids, given.topk_ids)
    assert not (torch.equal(rec.codes, imnet.codes) and torch.equal(rec.topk_ids, imnet.topk_ids))
    # an ensemble whose members were trained with different normalisations cannot share crops
    plain = dict(state)
    del plain["mean"], plain["std"]
    torch.save({**plain, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}, tmp_path / "imnet.pth")
    capsys.readouterr()
    assert relabel("mixed.safetensors", ckpts=(str(t), str(tmp_path / "imnet.pth"))) == 2
    err = capsys.readouterr().err
    assert "different input normalisations" in err and "teacher 1 (convnet3)" in err and "teacher 2 (convnet3)" in err
    assert not (tmp_path / "mixed.safetensors").exists()
    # lvsd crops for the recorded normalisation: a copy of the weights without the record differs
    torch.save(plain, tmp_path / "bare.pth")
    for c in ("t", "bare"):
        assert main(["lvsd", "--data", str(files / "train.npz"), "--teacher", str(tmp_path / f"{c}.pth"),
                     "--crops", "4", "--out", str(tmp_path / f"{c}.json")]) == 0
    a, b = (json.loads((tmp_path / f"{c}.json").read_text())["trace_sigma"] for c in ("t", "bare"))
    assert a != b


def test_recorded_normalisation_wins_over_a_pretrained_cfg():
    from hald_ext.core.normalize import IMAGENET_MEAN, IMAGENET_STD, normalization_of

    m = torch.nn.Linear(1, 1)
    m.pretrained_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    assert normalization_of([m]) == ((0.5,) * 3, (0.5,) * 3)
    m.hald_normalization = ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert normalization_of([m]) == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert normalization_of([m], mean=(1, 1, 1), std=(2, 2, 2)) == ((1.0,) * 3, (2.0,) * 3)
    assert normalization_of([torch.nn.Linear(1, 1)]) == (IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(ValueError, match="std > 0"):
        normalization_of([m], mean=(0, 0, 0), std=(0, 1, 1))


def test_teacher_resumes_a_killed_run_exactly(files, tmp_path, capsys, monkeypatch):
    """A teacher killed after epoch 1 of 3 continues from <out>.partial and ends with the weights an
    uninterrupted run has; a resume file written with other options is refused by name."""
    import hald_ext.train.teacher as T

    flags = ["--data", str(files / "train.npz"), "--epochs", "3", "--batch-size", "8", "--scale", "0.3", "1",
             "--no-progress"]
    assert main(["teacher", *flags, "--out", str(tmp_path / "straight.pth")]) == 0
    assert not (tmp_path / "straight.pth.partial").exists()

    real = T.train_teacher

    def killed_after_first_epoch(*a, on_epoch=None, **kw):
        def hook(epoch, model, state):
            on_epoch(epoch, model, state)
            raise KeyboardInterrupt  # the process dies here, after the epoch's state was written
        return real(*a, on_epoch=hook, **kw)

    monkeypatch.setattr(T, "train_teacher", killed_after_first_epoch)
    out = str(tmp_path / "resumed.pth")
    with pytest.raises(KeyboardInterrupt):
        main(["teacher", *flags, "--out", out])
    assert torch.load(out + ".partial", weights_only=True)["epoch"] == 1 and not os.path.exists(out)
    monkeypatch.setattr(T, "train_teacher", real)
    capsys.readouterr()
    assert main(["teacher", *(f if f != "0.3" else "0.5" for f in flags), "--out", out]) == 2
    assert "resumed.pth.partial was written with other options (scale)" in capsys.readouterr().err
    assert main(["teacher", *flags, "--out", out]) == 0
    assert "resuming from" in capsys.readouterr().out and not os.path.exists(out + ".partial")
    a, b = torch.load(tmp_path / "straight.pth", weights_only=True), torch.load(out, weights_only=True)
    assert b["resumed_after_epoch"] == 1
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
