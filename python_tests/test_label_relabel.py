"""`hald relabel` on real Fashion-MNIST images: crops, replay consistency, resume, image folders, CLI."""
import os

import pytest
import torch
from safetensors import safe_open

from conftest import interrupt_on_call
from hald_ext.cli import main as hald
from hald_ext.data import fingerprint, load_image_set, write_image_folder
from hald_ext.data.sources import FASHION_MNIST_ROOT
from hald_ext.labels import LabelStore, LabelStoreError
from hald_ext.data.select import select_ipc
from hald_ext.labels.relabel import relabel
from hald_ext.models import create_model
from hald_ext.ops import label_encode
from hald_ext.reference.crop import crop_reference

pytestmark = pytest.mark.skipif(not os.path.exists(FASHION_MNIST_ROOT), reason="Fashion-MNIST not installed")


@pytest.fixture(scope="module")
def images():
    return select_ipc(load_image_set("fashion-mnist", split="test"), 3)  # 30 real images


def teacher(seed=0):
    torch.manual_seed(seed)
    return create_model("convnet3", 10, img_size=28)


def run(images, out, model=None, **kw):
    kw = {"sli": 2, "k": 5, "temperature": 4.0, "batch_size": 16, "seed": 7, "progress": False, "device": "cpu",
          **kw}
    return relabel(images, model or teacher(), str(out), **kw)


def batches_done(partial) -> int:
    with safe_open(str(partial), framework="pt") as f:
        return int(f.metadata()["hald.relabel.batches_done"])


def test_relabel_store_and_replay(images, tmp_path):
    model = teacher()
    s = run(images, tmp_path / "s.safetensors", model)
    assert (s.num_images, s.sli, s.num_classes, s.k) == (30, 2, 10, 5)
    assert s.bytes_per_label == 24
    s.check_images(images)
    assert s.header.crops["size"] == [28, 28] and s.header.teacher["name"] == "ConvNet"
    assert 0 < s.flips.float().mean() < 1 and len({tuple(b) for b in s.boxes.view(-1, 4).tolist()}) > 50
    # Every stored label is the teacher's top-k at T of the crop its box and flip replay to.
    stacked = torch.from_numpy(images.stacked())
    ids = torch.arange(30).repeat_interleave(2)
    crops = crop_reference(stacked, ids, 28, s.boxes.view(-1, 4), s.flips.view(-1), mean=s.header.crops["mean"],
                           std=s.header.crops["std"])
    with torch.no_grad():
        logits = model.eval()(crops)
    want_ids, want_codes = label_encode(logits, 5, s.quantizer.thresholds(), temperature=4.0, from_logits=True)
    assert torch.equal(s.topk_ids.view(60, 5), want_ids)
    assert int((s.codes.view(60, 5).long() - want_codes.long()).abs().max()) <= 1


@pytest.mark.parametrize("save_every_s", [0, 1e9], ids=["saved-every-batch", "saved-on-interrupt"])
def test_resume_after_interruption(images, tmp_path, save_every_s):
    ref = run(images, tmp_path / "ref.safetensors")
    out = tmp_path / "s.safetensors"
    model = teacher()
    forward = interrupt_on_call(model, 3)
    with pytest.raises(KeyboardInterrupt):
        run(images, out, model, save_every_s=save_every_s)
    assert not out.exists() and os.path.exists(str(out) + ".partial")
    assert batches_done(str(out) + ".partial") == 2  # 2 slots x 30 images in batches of 16 + 14
    model.forward = forward
    counted = {"n": 0}
    model.register_forward_pre_hook(lambda *_: counted.__setitem__("n", counted["n"] + 1))
    s = run(images, out, model, save_every_s=save_every_s)
    assert counted["n"] == 2  # four batches: two were done, two remained
    assert not os.path.exists(str(out) + ".partial")
    for name in ("boxes", "flips", "topk_ids", "codes"):
        assert torch.equal(getattr(s, name), getattr(ref, name)), name
    assert s.header.to_json() == ref.header.to_json()


def test_partial_from_other_arguments_is_not_resumed(images, tmp_path):
    out = tmp_path / "s.safetensors"
    model = teacher()
    model.forward = lambda x: (_ for _ in ()).throw(KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        run(images, out, model, save_every_s=0, batch_size=8)
    model = teacher()
    # The first batch failed before any save: no partial, and a fresh run works.
    assert not os.path.exists(str(out) + ".partial")
    calls = {"n": 0}
    fwd = model.forward

    def dying(x):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return fwd(x)

    model.forward = dying
    with pytest.raises(KeyboardInterrupt):
        run(images, out, model, save_every_s=0, batch_size=8)
    with pytest.raises(LabelStoreError, match="other arguments"):
        run(images, out, teacher(), k=3, batch_size=8)
    assert run(images, out, teacher(), k=3, restart=True).k == 3


def test_image_folder_and_cli(images, tmp_path, capsys):
    root = tmp_path / "folder"
    write_image_folder(images, str(root))
    out = tmp_path / "f.safetensors"
    ckpt = str(tmp_path / "teacher.pt")
    torch.save(teacher().state_dict(), ckpt)
    assert hald(["relabel", str(root), "--out", str(out), "--model", "convnet3", "--checkpoint", ckpt,
                 "--sli", "2", "-T", "4",
                 "--batch-size", "16", "--no-progress"]) == 0
    folder = load_image_set(str(root))
    s = LabelStore.open(out, images=folder)
    # A store made on a folder identifies its images by their files (hald_ext.data.files_fingerprint).
    assert s.num_images == 30 and s.header.images == fingerprint(folder, "files")
    with pytest.raises(LabelStoreError, match="image set mismatch"):
        s.check_images(images)  # the same pixels as arrays, not the folder's files
    capsys.readouterr()
    assert hald(["labels", "info", str(out), "--images", str(root)]) == 0
    text = capsys.readouterr().out
    assert "30 x slots 2 = 60 labels" in text and "24.00 bytes/label" in text and "top-1 class histogram" in text
    hist = [int(x.split(": ")[1]) for x in text.split("histogram: ")[1].strip().split(", ")]
    assert sum(hist) == 60
    # Errors are one line naming the problem, not a traceback.
    (tmp_path / "bad").write_bytes(b"\x10\0\0\0\0\0\0\0{}")
    assert hald(["labels", "info", str(tmp_path / "bad")]) == 2
    assert "error" in capsys.readouterr().err


def test_cli_on_fashion_mnist_arrays(tmp_path, capsys):
    out = tmp_path / "a.safetensors"
    ckpt = str(tmp_path / "teacher.pt")
    torch.save(teacher().state_dict(), ckpt)
    assert hald(["relabel", "fashion-mnist", "--split", "test", "--ipc", "1", "--out", str(out), "--model", "convnet3",
                 "--checkpoint", ckpt, "--k", "3", "--bits", "16", "--no-progress"]) == 0
    s = LabelStore.open(out, images=select_ipc(load_image_set("fashion-mnist", split="test"), 1))
    assert (s.num_images, s.sli, s.k, s.codes.dtype) == (10, 1, 3, torch.uint16)
    assert s.bytes_per_label == 8 + 1 + 3 * 4
