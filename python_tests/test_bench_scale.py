"""The scale benchmark's folder generator (benchmarks/imagenet_like.py) and its measuring helpers
(benchmarks/bench_scale.py): class folders, file kinds that are what they claim, hard links, resumed
generation giving the same bytes, and the memory measurement of a child process. No timing checks."""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys

import numpy as np
import pytest

PIL = pytest.importorskip("PIL")
from PIL import Image, ImageOps  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import bench_scale  # noqa: E402
import imagenet_like as il  # noqa: E402

CLASSES = 12
N_IMAGES = 18


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet_like")
    pool = os.path.join(root, "pool")
    manifest = il.build_pool(pool, num_classes=CLASSES, per_class=1, verbose=False)
    folder = il.folder_path(str(root), N_IMAGES)
    info = il.build_folder(pool, folder, N_IMAGES, verbose=False)
    return pool, folder, manifest, info


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_folder_has_imagenet_style_classes_and_counts(generated):
    pool, folder, manifest, info = generated
    classes = sorted(os.listdir(folder))
    assert len(classes) == CLASSES == info["num_classes"]
    assert all(re.fullmatch(r"n\d{8}", c) for c in classes)
    assert classes == il.wnids(CLASSES)
    counts = [len(os.listdir(os.path.join(folder, c))) for c in classes]
    # 18 images over 12 classes: the first 6 classes get 2, the others 1
    assert counts == [2] * 6 + [1] * 6
    assert sum(counts) == info["n_images"] == N_IMAGES
    assert all(f.endswith(".JPEG") for c in classes for f in os.listdir(os.path.join(folder, c)))
    assert il.folder_ready(folder, N_IMAGES) and not il.folder_ready(folder, N_IMAGES + 1)


def test_folder_files_are_hard_links_into_the_pool(generated):
    pool, folder, manifest, info = generated
    pool_inodes = {os.stat(os.path.join(pool, e["file"])).st_ino for e in manifest}
    for c in os.listdir(folder):
        for f in os.listdir(os.path.join(folder, c)):
            assert os.stat(os.path.join(folder, c, f)).st_ino in pool_inodes
    assert info["distinct_files"] == CLASSES and info["copied"] == 0


def test_odd_files_are_what_they_claim(generated):
    pool, folder, manifest, info = generated
    wnids = il.wnids(CLASSES)
    kinds = {e["kind"]: e for e in manifest}
    assert set(il.ODD_KINDS) <= set(kinds)
    assert sum(info["kinds"].values()) == N_IMAGES and all(k in info["kinds"] for k in il.ODD_KINDS)
    for kind, e in kinds.items():
        # the folder's file of that class and slot is the pool file itself
        path = os.path.join(folder, wnids[e["class"]], f"{wnids[e['class']]}_{e['index']}.JPEG")
        with open(path, "rb") as f:
            head = f.read(8)
        with Image.open(path) as im:
            im.load()
            orientation = im.getexif().get(il.EXIF_ORIENTATION)
            shown = ImageOps.exif_transpose(im)
            if kind == "png":
                assert head.startswith(b"\x89PNG\r\n\x1a\n") and im.format == "PNG" and path.endswith(".JPEG")
            else:
                assert head.startswith(b"\xff\xd8") and im.format == "JPEG"
            if kind == "gray":
                assert im.mode == "L"
            elif kind == "cmyk":
                assert im.mode == "CMYK"
            elif kind in ("exif6", "exif8"):
                assert orientation == int(kind[-1])
                assert im.size == (e["height"], e["width"])  # stored rotated
            else:
                assert im.mode == "RGB" and orientation in (None, 1)
            if kind == "progressive":
                assert im.info.get("progressive") or im.info.get("progression")
            elif kind != "png":
                assert not (im.info.get("progressive") or im.info.get("progression"))
            assert shown.size == (e["width"], e["height"])  # as displayed: the manifest's size


def test_exif_rotation_undoes_to_the_rendered_picture(generated):
    """Each EXIF-rotated file, turned as its tag says, shows the picture its spec renders (up to JPEG
    loss), and not that picture turned the other way."""
    pool, folder, manifest, info = generated
    for kind in ("exif6", "exif8"):
        e = next(x for x in manifest if x["kind"] == kind)
        rng = np.random.default_rng([0, e["class"], e["index"], 1])  # encode's generator for this file
        ref = np.asarray(il.render(e["class"], e["width"], e["height"], rng), np.float32)
        with Image.open(os.path.join(pool, e["file"])) as im:
            got = np.asarray(ImageOps.exif_transpose(im).convert("RGB"), np.float32)
        assert got.shape == ref.shape
        right, wrong = np.abs(got - ref).mean(), np.abs(got - ref[::-1, ::-1]).mean()
        assert right < 6.0 and right < wrong / 3, (kind, right, wrong)


def test_resumed_generation_writes_the_same_files(generated, tmp_path):
    pool, folder, manifest, info = generated
    pool2 = os.path.join(tmp_path, "pool")
    os.makedirs(pool2)
    first = manifest[0]["file"]
    # an interrupted run: one file done, no manifest
    with open(os.path.join(pool, first), "rb") as f, open(os.path.join(pool2, first), "wb") as g:
        g.write(f.read())
    # fewer classes: file (c, j) depends on neither the class count nor per_class
    few = len(il.ODD_KINDS) + 1
    again = il.build_pool(pool2, num_classes=few, per_class=1, verbose=False)
    assert [e["file"] for e in again] == [e["file"] for e in manifest[:few]]
    for e in manifest[:few]:
        assert _sha(os.path.join(pool2, e["file"])) == _sha(os.path.join(pool, e["file"]))
    with pytest.raises(ValueError, match="pool made with"):
        il.build_pool(pool2, num_classes=few + 1, per_class=1, verbose=False)


def test_size_mix_is_imagenet_like():
    rng = np.random.default_rng(0)
    sizes = [il.sample_size(rng) for _ in range(4000)]
    frac = lambda pred: np.mean([pred(w, h) for w, h in sizes])  # noqa: E731
    assert 0.45 < frac(lambda w, h: (w, h) == (500, 375)) < 0.55
    assert 0.12 < frac(lambda w, h: (w, h) == (375, 500)) < 0.18
    assert 0.05 < frac(lambda w, h: max(w, h) > 500) < 0.11
    assert 0.01 < frac(lambda w, h: max(w, h) <= 200) < 0.04
    assert max(max(s) for s in sizes) <= 2000 and min(min(s) for s in sizes) >= 8


def test_run_child_records_peak_memory_and_kills_over_budget(tmp_path):
    hold = ("import numpy as np, time; a = np.ones({mb} * 2**20 // 8); time.sleep(1.0)")
    r = bench_scale.run_child([sys.executable, "-c", hold.format(mb=300)], log_path=str(tmp_path / "a.log"),
                              timeout_s=60, max_rss_mb=4000)
    assert r["returncode"] == 0 and r["killed"] is None
    assert r["peak_rss_mb"] > 300 and r["peak_tree_pss_mb"] > 250 and r["peak_tree_anon_mb"] > 250
    r = bench_scale.run_child([sys.executable, "-c", hold.format(mb=400) + "; time.sleep(30)"],
                              log_path=str(tmp_path / "b.log"), timeout_s=60, max_rss_mb=200)
    assert r["killed"] and "PSS" in r["killed"] and r["returncode"] != 0 and r["wall_s"] < 30


def test_summary_ratios_between_sizes():
    rows = [{"command": "select", "images": n, "ok": True, "wall_s": t, "peak_rss_mb": m, "peak_tree_pss_mb": m,
             "peak_tree_anon_mb": m / 2} for n, t, m in ((1000, 2.0, 100.0), (5000, 10.0, 110.0))]
    rows.append({"command": "train", "images": 1000, "ok": False})
    s = bench_scale.summarize_commands(rows)
    assert s[1]["vs_previous"] == pytest.approx({"size_ratio": 5.0, "time_ratio": 5.0, "pss_ratio": 1.1,
                                                 "rss_ratio": 1.1, "anon_ratio": 1.1})
    assert s[1]["images_per_s"] == pytest.approx(500.0)
    assert s[2] == {"command": "train", "images": 1000, "ok": False, "error": ""}


def test_streaming_api_absent_is_reported_not_measured(monkeypatch):
    import hald_ext.data as data

    monkeypatch.delattr(data, "open_images", raising=False)
    api, why = bench_scale.streaming_api()
    assert api is None and "open_images" in why


def test_manifest_records_pool_parameters(generated):
    pool, folder, manifest, info = generated
    with open(os.path.join(pool, "manifest.json")) as f:
        m = json.load(f)
    assert m["params"] == {"num_classes": CLASSES, "per_class": 1, "odd": True, "seed": 0}
    assert all(e["bytes"] == os.path.getsize(os.path.join(pool, e["file"])) for e in m["files"])


def test_ours_crops_drives_the_streaming_api_as_planned(generated, monkeypatch):
    """The "ours" measurement on a stand-in for the streaming API (PIL decoding, the real
    crop_and_lookup): every planned batch is asked for once, in order, after one prefetch of the plan."""
    import torch

    ops = pytest.importorskip("hald_ext.ops")
    from hald_ext import _ext
    from hald_ext.data import ImageBatch, list_image_folder, pad_images

    if not _ext.loaded():
        pytest.skip("compiled extension not built")
    pool, folder, manifest, info = generated
    calls = []

    class Source:
        def __init__(self, paths):
            self.paths = paths

        def prefetch(self, plan):
            calls.append(("prefetch", [p.tolist() for p in plan]))

        def batch(self, ids):
            calls.append(("batch", ids.tolist()))
            ims = [np.asarray(Image.open(self.paths[i]).convert("RGB")) for i in ids.tolist()]
            padded, sizes = pad_images(ims)
            sizes = torch.from_numpy(sizes) if sizes is not None else None
            return ImageBatch(torch.from_numpy(padded), sizes, torch.arange(len(ims)), ids)

    def open_images(root):
        return list_image_folder(root)[0]

    def image_source(paths, *, device, max_bytes, loader):
        assert (device, max_bytes, loader) == ("cpu", 0, "dali")
        return Source(paths)

    ids = np.array([3, 1, 4, 0, 5, 9, 2], dtype=np.int64)
    cps, first = bench_scale.ours_crops((open_images, image_source, ops.crop_and_lookup), folder, ids,
                                        workers=2, batch=3, loader="dali")
    plan = [[3, 1, 4], [0, 5, 9], [2]]
    assert calls == [("prefetch", plan)] + [("batch", b) for b in plan]
    assert cps > 0 and first > 0


def test_folder_record_is_recounted_without_relinking(generated):
    """An older record (no kind counts) is re-counted in place; a finished folder is not rebuilt."""
    pool, folder, manifest, info = generated
    marker = folder + ".complete"
    some = os.path.join(folder, sorted(os.listdir(folder))[0])
    before = {f: os.lstat(os.path.join(some, f)).st_ctime_ns for f in os.listdir(some)}
    old = {k: v for k, v in info.items() if k not in ("kinds", "mean_file_kb")}
    with open(marker, "w") as f:
        json.dump(old, f)
    assert not il.folder_ready(folder, N_IMAGES)
    again = il.build_folder(pool, folder, N_IMAGES, verbose=False)
    assert again["kinds"] == info["kinds"] and il.folder_ready(folder, N_IMAGES)
    assert {f: os.lstat(os.path.join(some, f)).st_ctime_ns for f in os.listdir(some)} == before


def test_summary_skips_and_compares_with_the_smallest_size():
    rows = [{"command": "train", "images": n, "ok": True, "wall_s": t, "peak_rss_mb": 100.0,
             "peak_tree_pss_mb": 100.0, "peak_tree_anon_mb": 50.0} for n, t in ((1000, 1.0), (2000, 2.0), (8000, 8.0))]
    rows.insert(2, {"command": "train", "images": 4000, "ok": False, "skipped": True,
                    "error": "skipped: over --limit train=2000"})
    s = bench_scale.summarize_commands(rows)
    assert [x["images"] for x in s] == [1000, 2000, 4000, 8000]
    assert s[2]["error"].startswith("skipped") and "vs_previous" not in s[3]
    assert s[3]["vs_smallest"]["size_ratio"] == 8.0 and s[3]["vs_smallest"]["time_ratio"] == 8.0
    assert "vs_smallest" not in s[1]  # the smallest is its previous: one ratio is enough
