"""An image folder is a list of files: commands open it without decoding it, stream it from disk when it
does not fit the resident budget, and get the resident path's sample order, crops and labels.

The folder here is ImageNet-shaped in its structure (1,000 class folders, JPEGs of mixed sizes and aspect
ratios), with small images so the suite stays fast."""
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import interrupt_on_call, requires_cuda
from hald_ext.cli import main as hald
from hald_ext.data import (FileImages, ImageBatch, ImageFiles, dali_available, fingerprint, image_source,
                           load_image_set, open_images)
from hald_ext.labels import FingerprintMismatch, LabelStore
from hald_ext.labels.relabel import relabel
from hald_ext.models import create_model

MODEL = "test_resnet"
SIZE = 24
SHAPES = [(30, 40), (40, 30), (27, 27), (24, 50), (36, 36)]
LOADERS = ["torch", "dali"] if dali_available() else ["torch"]


def write_folder(root, classes: int, per_class: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = os.path.join(root, f"n{c:08d}")
        os.makedirs(d)
        base = rng.integers(0, 255, 3)
        for i in range(per_class):
            h, w = SHAPES[(c + i) % len(SHAPES)]
            img = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(os.path.join(d, f"n{c:08d}_{i}.JPEG"), quality=90)
    return root


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """1,000 classes x 2 images."""
    root = tmp_path_factory.mktemp("in1k")
    return write_folder(str(root / "train"), 1000, 2), None


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("teacher") / "t.pth")
    torch.save(create_model(MODEL, 1000).state_dict(), path)
    return path


def store_tensors(path):
    s = LabelStore.open(path)
    return {n: getattr(s, n) for n in ("boxes", "flips", "topk_ids", "codes")}


# ------------------------------------------------------------------------------------- opening a folder
def test_opening_and_selecting_a_folder_decodes_nothing(imagenet, tmp_path, monkeypatch, capsys):
    import hald_ext.data.decode as decode_mod

    def no_decode(fp, path, fmt):
        raise AssertionError(f"decoded {path}")

    monkeypatch.setattr(decode_mod, "_decode", no_decode)  # every decode of a file goes through it
    files = open_images(imagenet[0])
    assert isinstance(files, ImageFiles) and len(files) == 2000 and files.num_classes == 1000
    out = str(tmp_path / "sel")
    assert hald(["select", "--data", imagenet[0], "--ipc", "1", "--seed", "5", "--out", out]) == 0
    sel = open_images(out)
    assert len(sel) == 1000 and sel.classes == files.classes  # classes and their order kept
    names = sel.relative_names()
    assert names == sorted(names)
    for n in names[:50]:  # the chosen files themselves, byte for byte
        with open(os.path.join(out, n), "rb") as a, open(os.path.join(imagenet[0], n), "rb") as b:
            assert a.read() == b.read()
    # The selection is the source's files: the same identity as the source's subset.
    from hald_ext.data.select import select_per_class

    assert sel.fingerprint() == files.subset(select_per_class(files, 1, 5)).fingerprint()
    assert not os.path.exists(out + ".partial")


@pytest.mark.parametrize("mode", ["hardlink", "symlink"])
def test_select_links_on_request(imagenet, tmp_path, mode):
    out = str(tmp_path / mode)
    assert hald(["select", "--data", imagenet[0], "--ipc", "1", "--out", out, "--file-mode", mode]) == 0
    first = os.path.join(out, open_images(out).relative_names()[0])
    if mode == "hardlink":
        assert os.stat(first).st_nlink == 2
    else:
        assert os.path.islink(first)


def test_the_files_fingerprint_reads_bytes_and_sees_changes(tmp_path):
    root = write_folder(str(tmp_path / "f"), 3, 2)
    a = open_images(root).fingerprint()
    assert a["kind"] == "files" and a["count"] == 6
    renamed = str(tmp_path / "renamed")
    shutil.copytree(root, renamed)
    assert open_images(renamed).fingerprint() == a  # a copy under another name is the same set
    victim = os.path.join(renamed, "n00000001", "n00000001_1.JPEG")
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(victim, quality=90)
    assert open_images(renamed).fingerprint() != a


def test_old_pixel_stores_still_check_a_folder(tmp_path):
    """A store made before folders were read as files records a pixel fingerprint; a folder is then
    decoded once to check it."""
    root = write_folder(str(tmp_path / "f"), 3, 2)
    files, decoded = open_images(root), load_image_set(root)
    assert fingerprint(files, "pixels") == fingerprint(decoded)
    torch.manual_seed(0)
    out = str(tmp_path / "s.safetensors")
    store = relabel(decoded, create_model(MODEL, 3), out, k=2, size=SIZE, device="cpu", progress=False)
    assert store.header.images["kind"] == "pixels"
    store.check_images(files)
    store2 = relabel(files, create_model(MODEL, 3), str(tmp_path / "f.safetensors"), k=2, size=SIZE, device="cpu",
                     progress=False)
    assert store2.header.images["kind"] == "files"
    store2.check_images(decoded)  # load_image_set of a folder keeps the files' identity
    from hald_ext.data import ImageSet

    with pytest.raises(FingerprintMismatch, match="files of an image folder"):
        store2.check_images(ImageSet(decoded.images, decoded.labels, decoded.classes, decoded.names))


# ------------------------------------------------------------------------------ streaming = resident
@pytest.fixture(scope="module")
def mixed_store(tmp_path_factory):
    """A 40-image folder relabelled with CutMix (2 slots): soft batches read their stored partners."""
    root = tmp_path_factory.mktemp("mixed")
    folder = write_folder(str(root / "train"), 8, 5)
    torch.manual_seed(0)
    out = str(root / "mix.safetensors")
    relabel(open_images(folder), create_model(MODEL, 8), out, sli=2, k=3, size=SIZE, cutmix_alpha=1.0,
            batch_size=16, device="cpu", progress=False)
    return folder, out


@pytest.mark.parametrize("loader", LOADERS)
def test_streamed_batches_equal_the_resident_cache(mixed_store, loader):
    from hald_ext.train.batches import FusedBatchSource, open_label_store

    folder, labels = mixed_store
    files = open_images(folder)
    store = open_label_store(labels)
    resident = image_source(files, "cpu")
    streamed = image_source(files, "cpu", max_bytes=0, loader=loader, workers=2)
    assert resident.resident and isinstance(streamed, FileImages)
    pixels = int((files.sizes().astype(np.int64).prod(1)).sum()) * 3  # mixed sizes: packed, no padding
    assert resident.memory()["layout"] == "packed" and resident.images.numel() == pixels
    # the packed layouts carry their bound on the host (crop_and_lookup's max_image_size: no device read)
    sizes = files.sizes()
    assert resident.max_image_size == tuple(int(v) for v in sizes.max(0))
    assert resident.batch(torch.tensor([0, 3])).crop_kwargs()["max_image_size"] == resident.max_image_size
    some = torch.tensor([3, 7, 7, 12])
    assert streamed.batch(some).max_image_size == tuple(int(v) for v in sizes[[3, 7, 12]].max(0))
    a = FusedBatchSource(resident, None, store, SIZE)
    b = FusedBatchSource(streamed, None, store, SIZE)
    gen = torch.Generator().manual_seed(1)
    soft = [(torch.randperm(40, generator=gen)[:12], torch.randint(0, 2, (12,), generator=gen)) for _ in range(3)]
    hard = [(torch.randperm(40, generator=gen)[:12], None) for _ in range(3)]
    b.prefetch(soft)
    for ids, slots in soft:
        x, y = a.soft_batch(ids, slots), b.soft_batch(ids, slots)
        assert torch.equal(x.x, y.x) and torch.equal(x.topk_ids, y.topk_ids) and torch.equal(x.topk_codes, y.topk_codes)
    b.prefetch(hard)
    for i, (ids, _) in enumerate(hard):
        x, y = a.hard_batch(ids, 100 + i), b.hard_batch(ids, 100 + i)
        assert torch.equal(x.x, y.x) and torch.equal(x.y_b, y.y_b) and torch.equal(x.lam, y.lam)


@requires_cuda
@pytest.mark.parametrize("loader", LOADERS)
def test_streaming_onto_a_gpu_equals_the_resident_cache(mixed_store, loader):
    """On a GPU the streamed batch lands on the device (DALI: decoded there by the mixed decoder; torch:
    copied from pinned memory) and crops as the resident cache does."""
    from hald_ext.train.batches import FusedBatchSource, open_label_store

    folder, labels = mixed_store
    files, store = open_images(folder), open_label_store(labels)
    a = FusedBatchSource(image_source(files, "cuda"), None, store, SIZE, device="cuda")
    b = FusedBatchSource(image_source(files, "cuda", max_bytes=0, loader=loader), None, store, SIZE, device="cuda")
    plan = [(torch.arange(i, i + 10), torch.zeros(10, dtype=torch.int64)) for i in (0, 10, 20)]
    b.prefetch(plan)
    for ids, slots in plan:
        x, y = a.soft_batch(ids, slots), b.soft_batch(ids, slots)
        assert y.x.is_cuda and torch.equal(x.x, y.x)


def test_a_batch_outside_the_plan_is_decoded_on_the_spot(mixed_store):
    files = open_images(mixed_store[0])
    src = FileImages(files, "cpu", "torch", workers=0)
    src.prefetch([torch.tensor([1, 2, 3]), torch.tensor([4, 5])])
    with pytest.warns(UserWarning, match="other than the planned"):
        b = src.batch(torch.tensor([7, 7, 0]))
    assert b.image_ids.tolist() == [1, 1, 0] and b.sample_ids.tolist() == [7, 7, 0]
    want = load_image_set(mixed_store[0])
    assert np.array_equal(b.image(0).numpy(), want.images[0])


def test_the_pipeline_streams_with_the_resident_results(imagenet, teacher_ckpt, tmp_path):
    """select -> relabel -> train on 1,000 classes, resident and with streaming forced by a zero budget:
    the same labels and losses (evaluation: test_streamed_evaluation_equals_the_resident_one)."""
    import json

    train, _ = imagenet
    sel = str(tmp_path / "sel")
    assert hald(["select", "--data", train, "--ipc", "1", "--seed", "1", "--out", sel]) == 0
    runs = {}
    for name, extra in (("resident", []), ("streamed", ["--resident-budget", "0", "--loader", "torch",
                                                       "--workers", "2"])):
        labels = str(tmp_path / f"{name}.safetensors")
        assert hald(["relabel", sel, "--out", labels, "--model", MODEL, "--checkpoint", teacher_ckpt,
                     "--size", str(SIZE), "--batch-size", "250", "--device", "cpu", "--no-progress", *extra]) == 0
        assert hald(["train", "--data", sel, "--labels", labels, "--model", MODEL, "--img-size", str(SIZE),
                     "--schedule", "soft:1,hard:1", "--epochs", "2", "--batch-size", "250", "--device", "cpu",
                     "--output", str(tmp_path), "--experiment", name, "--no-progress", *extra]) == 0
        runs[name] = (store_tensors(labels), json.load(open(tmp_path / name / "metrics.json")))
    (sa, ma), (sb, mb) = runs["resident"], runs["streamed"]
    for n in sa:
        assert torch.equal(sa[n], sb[n]), n
    assert LabelStore.open(str(tmp_path / "resident.safetensors")).k == 5  # --k defaults to min(5, C)
    assert [r["phase"] for r in ma] == ["soft", "hard"]
    assert [r["train_loss"] for r in ma] == [r["train_loss"] for r in mb]


@pytest.mark.parametrize("loader", LOADERS)
def test_streamed_evaluation_equals_the_resident_one(mixed_store, loader):
    from hald_ext.train.evaluate import EvalData, evaluate

    torch.manual_seed(0)
    model = create_model(MODEL, 8)
    streamed = EvalData(mixed_store[0], SIZE, batch_size=16, loader=loader, workers=2)
    assert streamed.loader is None  # a folder: its files, streamed
    decoded = EvalData(load_image_set(mixed_store[0]), SIZE, batch_size=16, loader="torch")
    assert evaluate(model, streamed) == evaluate(model, decoded)


def test_k_defaults_to_the_class_count_below_five(tmp_path, teacher_ckpt):
    root = write_folder(str(tmp_path / "f"), 3, 2)
    torch.manual_seed(0)
    ckpt = str(tmp_path / "t3.pth")
    torch.save(create_model(MODEL, 3).state_dict(), ckpt)
    out = str(tmp_path / "s.safetensors")
    assert hald(["relabel", root, "--out", out, "--model", MODEL, "--checkpoint", ckpt, "--size", str(SIZE),
                 "--device", "cpu", "--no-progress"]) == 0
    assert LabelStore.open(out).k == 3


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("loader", LOADERS)
def test_a_corrupt_file_met_while_streaming_is_named(tmp_path, loader, capsys):
    root = write_folder(str(tmp_path / "f"), 3, 4)
    victim = os.path.join(root, "n00000002", "n00000002_3.JPEG")
    with open(victim, "r+b") as f:
        f.truncate(150)
    code = hald(["train", "--data", root, "--schedule", "hard-only", "--epochs", "1", "--model", MODEL,
                 "--img-size", str(SIZE), "--device", "cpu", "--output", str(tmp_path), "--resident-budget", "0",
                 "--loader", loader, "--workers", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "n00000002_3.JPEG" in err


def test_a_bad_budget_is_refused_by_name(tmp_path, capsys):
    root = write_folder(str(tmp_path / "f"), 2, 2)
    code = hald(["train", "--data", root, "--schedule", "hard-only", "--epochs", "1", "--model", MODEL,
                 "--img-size", str(SIZE), "--device", "cpu", "--output", str(tmp_path), "--resident-budget", "lots"])
    assert code == 2 and "--resident-budget" in capsys.readouterr().err


def test_a_killed_streamed_relabel_resumes(tmp_path):
    root = write_folder(str(tmp_path / "f"), 4, 5)
    files = open_images(root)
    kw = dict(sli=2, k=2, size=SIZE, batch_size=8, seed=3, device="cpu", progress=False, max_resident_bytes=0,
              loader="torch", workers=0)
    torch.manual_seed(0)
    model = create_model(MODEL, 4)
    ref = relabel(files, model, str(tmp_path / "ref.safetensors"), **kw)
    out = str(tmp_path / "s.safetensors")
    forward = interrupt_on_call(model, 3)
    with pytest.raises(KeyboardInterrupt):
        relabel(files, model, out, save_every_s=0, **kw)
    assert os.path.exists(out + ".partial") and not os.path.exists(out)
    model.forward = forward
    s = relabel(files, model, out, save_every_s=0, **kw)
    for n in ("boxes", "flips", "topk_ids", "codes"):
        assert torch.equal(getattr(s, n), getattr(ref, n)), n


def test_packed_batches_take_turns_in_buffers_and_hold_only_pixels():
    """Host batches are packed (no padding: one 40 x 40 image among 2 x 2 ones costs its own pixels,
    not 8 x 40 x 40) and take turns in a few mapped buffers (a fresh one page-faults on every page)."""
    from hald_ext.data.stream import _packed, _PackedBuffers

    ring = _PackedBuffers(count=2)
    ims = [np.full((5, 7, 3), i, np.uint8) for i in range(3)] + [np.full((6, 4, 3), 9, np.uint8)]
    a, _, _ = _packed(ims, ring)
    b, _, _ = _packed(ims[:2], ring)
    c, oc, sc = _packed(ims, ring)
    assert a.data_ptr() == c.data_ptr() != b.data_ptr()  # the third batch reuses the first's buffer
    assert sc.tolist() == [[5, 7]] * 3 + [[6, 4]]
    assert oc.tolist() == [0, 105, 210, 315] and c.numel() == 315 + 72
    batch = ImageBatch(c, sc, torch.arange(4), image_offsets=oc)
    for r, im in enumerate(ims):
        assert np.array_equal(batch.image(r).numpy(), im)
    huge = [np.zeros((2, 2, 3), np.uint8)] * 7 + [np.zeros((40, 40, 3), np.uint8)]
    d, _, _ = _packed(huge, ring)
    assert d.numel() == (7 * 4 + 1600) * 3
