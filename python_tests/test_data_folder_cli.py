"""The commands on an ImageNet-style folder (train/<class>/*.JPEG of mixed sizes and aspect ratios, and
val/), through the CLI, once with DALI's CPU pipeline and once with the torch loader: teacher, select,
relabel, train --schedule hald with a timm model, evaluation and lvsd. Both loaders decode the same pixels,
so both runs select the same images, write the same labels and reach the same metrics. Bad input is
refused naming what is wrong."""
import argparse
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from hald_ext.cli import main as hald
from hald_ext.data import dali_available, load_image_set

MODEL = "test_resnet"  # timm's tiny ResNet (BatchNorm, strided convs): seconds on a CPU
SIZE = 32
CLASSES = ["cat", "dog", "fox"]
SHAPES = [(40, 56), (64, 48), (37, 37), (50, 90), (45, 45), (72, 54)]  # landscape, portrait, square
LOADERS = ["dali", "torch"] if dali_available() else ["torch"]


def write_jpeg(path, shape, cls, rng):
    """A class-coloured blob on noise, so a tiny model can learn something in a few steps."""
    h, w = shape
    img = rng.normal(110, 40, (h, w, 3))
    yy, xx = np.mgrid[:h, :w]
    mask = ((yy - h / 2) / h) ** 2 + ((xx - w / 2) / w) ** 2 < 0.09
    img[mask] = np.array([[220, 40, 40], [40, 200, 40], [40, 60, 230]][cls]) + rng.normal(0, 30, (mask.sum(), 3))
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)


def make_imagenet_folder(root, per_class=6, val_per_class=2, seed=0):
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for ci, c in enumerate(CLASSES):
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
            for i in range(n):
                write_jpeg(os.path.join(root, split, c, f"{c}_{i:04d}.JPEG"), SHAPES[(i + ci) % len(SHAPES)], ci, rng)
    return os.path.join(root, "train"), os.path.join(root, "val")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_imagenet_folder(str(tmp_path_factory.mktemp("imagenet")))


def relabel_flags() -> list:
    """CutMix labels when this build's relabel has them (the SRe2L / HALD recipe)."""
    from hald_ext.commands import relabel

    p = argparse.ArgumentParser()
    relabel.add_arguments(p)
    opts = {o for a in p._actions for o in a.option_strings}
    return ["--cutmix-alpha", "1"] if "--cutmix-alpha" in opts else []


def pipeline(train, val, out, loader):
    """teacher -> select (NPZ: ids; folder: the images) -> relabel -> train + evaluation."""
    common = ["--loader", loader]
    teacher = os.path.join(out, "teacher.pth")
    assert hald(["teacher", "--data", train, "--eval-data", val, "--model", MODEL, "--img-size", str(SIZE),
                 "--epochs", "2", "--batch-size", "6", "--save-every", "1", "--device", "cpu", "--out", teacher,
                 "--no-progress", *common]) == 0
    sel_npz, sel = os.path.join(out, "sel.npz"), os.path.join(out, "sel")
    for dest in (sel_npz, sel):
        assert hald(["select", "--data", train, "--ipc", "2", "--seed", "3", "--out", dest, *common]) == 0
    labels = os.path.join(out, "labels.safetensors")
    assert hald(["relabel", sel, "--out", labels, "--model", MODEL, "--checkpoint", teacher, "--sli", "2",
                 "--k", "2", "--img-size", str(SIZE), "--seed", "0", "--device", "cpu", "--no-progress",
                 *relabel_flags()]) == 0
    assert hald(["train", "--data", sel, "--labels", labels, "--eval-data", val, "--model", MODEL,
                 "--img-size", str(SIZE), "--schedule", "hald", "--epochs", "3", "--batch-size", "3",
                 "--eval-every", "1", "--device", "cpu", "--out", os.path.join(out, "run"),
                 "--no-progress", *common]) == 0
    # The README's recipe: relabel the source folder with --ipc, train on the NPZ `hald select` wrote
    # (other names, the same images: the store's fingerprint must match).
    ipc_labels = os.path.join(out, "ipc.safetensors")
    assert hald(["relabel", train, "--ipc", "2", "--ipc-seed", "3", "--out", ipc_labels, "--model", MODEL,
                 "--checkpoint", teacher, "--sli", "1", "--k", "2", "--img-size", str(SIZE), "--device", "cpu",
                 "--no-progress", *common]) == 0
    assert hald(["train", "--data", sel_npz, "--labels", ipc_labels, "--eval-data", val, "--model", MODEL,
                 "--img-size", str(SIZE), "--schedule", "soft-only", "--epochs", "1", "--batch-size", "3",
                 "--device", "cpu", "--out", os.path.join(out, "npz"), "--no-progress", *common]) == 0
    run = os.path.join(out, "run")
    assert hald(["lvsd", "--data", sel, "--teacher", teacher, "--student", os.path.join(run, "last.pth"),
                 "--crops", "3", "--pairs", "1", "--out", os.path.join(run, "lvsd.json"), *common]) == 0
    return teacher, sel_npz, labels, run


@pytest.fixture(scope="module")
def runs(folder, tmp_path_factory):
    train, val = folder
    return {ld: pipeline(train, val, str(tmp_path_factory.mktemp(ld)), ld) for ld in LOADERS}


def test_the_loaders_decode_the_same_mixed_size_folder(folder):
    sets = [load_image_set(folder[0], loader=ld) for ld in LOADERS]
    assert len({im.shape for im in sets[0].images}) >= 3  # three sizes and aspect ratios at least
    for s in sets[1:]:
        assert s.names == sets[0].names and s.fingerprint() == sets[0].fingerprint()


@pytest.mark.parametrize("loader", LOADERS)
def test_pipeline_runs_and_keeps_its_files(runs, loader):
    teacher, sel_npz, labels, run = runs[loader]
    info = json.load(open(os.path.splitext(teacher)[0] + ".json"))
    assert info["img_size"] == SIZE and info["epochs"] == 2 and 0 <= info["eval_top1"] <= 100
    assert os.path.exists(teacher.replace(".pth", "-epoch001.pth"))  # --save-every 1: the earlier expert
    early = torch.load(teacher.replace(".pth", "-epoch001.pth"), weights_only=True)
    assert early["epochs"] == 1 and early["model_name"] == MODEL
    rows = json.load(open(os.path.join(run, "metrics.json")))
    assert [r["phase"] for r in rows] == ["hard", "hard", "soft"]  # HALD with E = 3, E_soft = 1
    assert all(r["eval_top1"] is not None and 0 <= r["eval_top5"] <= 100 for r in rows)
    assert all(r["train_samples"] == 6 for r in rows)  # 3 classes x IPC 2; a soft epoch shows each image once
    sel = load_image_set(sel_npz)
    assert len({im.shape for im in sel.images}) > 1  # the NPZ keeps the mixed sizes


@pytest.mark.skipif(len(LOADERS) < 2, reason="nvidia.dali is not installed: nothing to compare")
def test_dali_and_torch_give_the_same_ids_labels_and_metrics(runs):
    from hald_ext.labels import LabelStore

    (_, npz_a, lab_a, run_a), (_, npz_b, lab_b, run_b) = runs["dali"], runs["torch"]
    a, b = np.load(npz_a), np.load(npz_b)
    assert np.array_equal(a["source_indices"], b["source_indices"])
    assert np.array_equal(a["images"], b["images"]) and np.array_equal(a["image_sizes"], b["image_sizes"])
    sa, sb = LabelStore.open(lab_a), LabelStore.open(lab_b)
    for name in ("boxes", "flips", "topk_ids", "codes"):
        assert torch.equal(getattr(sa, name), getattr(sb, name)), name
    ma = json.load(open(os.path.join(run_a, "metrics.json")))
    mb = json.load(open(os.path.join(run_b, "metrics.json")))
    keys = ("train_loss", "eval_top1", "eval_top5", "eval_loss")
    assert [[r[k] for k in keys] for r in ma] == [[r[k] for k in keys] for r in mb]
    la, lb = (json.load(open(os.path.join(r, "lvsd.json"))) for r in (run_a, run_b))
    assert la["trace_sigma"] == lb["trace_sigma"] and la["cosine"] == lb["cosine"] and len(la["cosine"]) == 6


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("loader", LOADERS)
def test_a_corrupt_image_is_named(folder, tmp_path, loader, capsys):
    bad = str(tmp_path / "train")
    shutil.copytree(folder[0], bad)
    victim = os.path.join(bad, "dog", "dog_0002.JPEG")
    with open(victim, "r+b") as f:  # a JPEG cut short after its header
        f.truncate(200)
    # select from a folder decodes nothing; an NPZ of every image decodes them all
    code = hald(["select", "--data", bad, "--ipc", "6", "--out", str(tmp_path / "s.npz"), "--loader", loader])
    assert code == 2 and "dog_0002.JPEG" in capsys.readouterr().err


def test_an_empty_class_folder_is_refused(folder, tmp_path, capsys):
    bad = str(tmp_path / "train")
    shutil.copytree(folder[0], bad)
    os.makedirs(os.path.join(bad, "emu"))
    code = hald(["teacher", "--data", bad, "--img-size", str(SIZE), "--out", str(tmp_path / "t.pth"), "--device",
                 "cpu", "--loader", "torch"])
    err = capsys.readouterr().err
    assert code == 2 and "'emu'" in err and "no images" in err


def test_a_val_folder_with_other_classes_is_refused(folder, tmp_path, capsys):
    val = str(tmp_path / "val")
    shutil.copytree(folder[1], val)
    os.rename(os.path.join(val, "fox"), os.path.join(val, "wolf"))
    code = hald(["train", "--data", folder[0], "--eval-data", val, "--schedule", "hard-only", "--epochs", "1",
                 "--model", MODEL, "--img-size", str(SIZE), "--device", "cpu", "--out", str(tmp_path / "run"),
                 "--loader", "torch", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "wolf" in err and "fox" in err and "classes" in err


def test_a_store_made_on_other_images_is_refused(runs, folder, tmp_path, capsys):
    loader = LOADERS[-1]
    _, _, labels, _ = runs[loader]
    other = str(tmp_path / "other")
    assert hald(["select", "--data", folder[0], "--ipc", "2", "--seed", "4", "--out", other, "--loader", loader]) == 0
    code = hald(["train", "--data", other, "--labels", labels, "--schedule", "soft-only", "--epochs", "1",
                 "--model", MODEL, "--img-size", str(SIZE), "--device", "cpu", "--out", str(tmp_path / "run"),
                 "--loader", loader, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "image set mismatch" in err and "relabel" in err


@pytest.mark.parametrize("loader", LOADERS)
def test_teacher_streams_a_folder_that_is_not_kept_decoded(folder, tmp_path, loader, capsys):
    out = str(tmp_path / "t.pth")
    args = ["teacher", "--data", folder[0], "--eval-data", folder[1], "--model", MODEL, "--epochs", "1",
            "--batch-size", "6", "--device", "cpu", "--out", out, "--no-progress", "--loader", loader, "--stream"]
    assert hald(args) == 2 and "--img-size" in capsys.readouterr().err
    assert hald(args + ["--img-size", str(SIZE)]) == 0
    info = json.load(open(str(tmp_path / "t.json")))
    assert info["train_images"] == 18 and info["classes"] == CLASSES and 0 <= info["eval_top1"] <= 100


def test_class_check_accepts_the_order_prefix_select_writes():
    from hald_ext.data import check_same_classes

    check_same_classes(["0_shirt", "1_boot", "2_bag"], ["shirt", "boot", "bag"], "--data", "--eval-data")
    with pytest.raises(ValueError, match="another order"):
        check_same_classes(["bag", "boot"], ["boot", "bag"], "--data", "--eval-data")
    with pytest.raises(ValueError, match="only in --eval-data: \\['emu'\\]"):
        check_same_classes(["bag", "boot"], ["bag", "emu"], "--data", "--eval-data")
