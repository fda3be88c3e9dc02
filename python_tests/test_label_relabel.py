"""`hald relabel` on real Fashion-MNIST images: crops, replay consistency, resume, image folders, CLI."""
import os

import numpy as np
import pytest
import torch

from hald_ext.boxes import boxes_to_pixels, dequantize_boxes, sample_rrc_pixels
from hald_ext.cli import main as hald
from hald_ext.data import fingerprint, load_image_set, write_image_folder
from hald_ext.data.sources import FASHION_MNIST_ROOT
from hald_ext.labels import LabelStore, LabelStoreError
from hald_ext.labels.relabel import CropRenderer, relabel, select_ipc
from hald_ext.models import create_model

pytestmark = pytest.mark.skipif(not os.path.exists(FASHION_MNIST_ROOT), reason="Fashion-MNIST not installed")


@pytest.fixture(scope="module")
def images():
    return select_ipc(load_image_set("fashion-mnist", split="test"), 3)  # 30 real images


def teacher(seed=0):
    torch.manual_seed(seed)
    return create_model("convnet3", 10, img_size=28)


def run(images, out, model=None, **kw):
    kw = {"slots": 2, "k": 5, "temperature": 4.0, "batch_size": 16, "seed": 7, "progress": False, **kw}
    return relabel(images, model or teacher(), str(out), **kw)


def test_relabel_store_and_replay(images, tmp_path):
    model = teacher()
    s = run(images, tmp_path / "s.safetensors", model)
    assert (s.num_images, s.slots, s.num_classes, s.k) == (30, 2, 10, 5)
    assert s.bytes_per_label == 24
    s.check_images(images)
    assert s.header.crops["size"] == [28, 28] and s.header.teacher["name"] == "ConvNet"
    # The boxes are torchvision's RRC draws from the seeded generator, and replay to the same pixels.
    g = torch.Generator().manual_seed(7)
    want = torch.tensor([[sample_rrc_pixels(28, 28, generator=g) for _ in range(2)] for _ in range(30)])
    assert torch.equal(boxes_to_pixels(dequantize_boxes(s.boxes), 28, 28), want)
    assert 0 < s.flips.float().mean() < 1
    # A crop rendered for replay is torchvision's resized_crop (+ flip, normalise) of that box.
    from torchvision.transforms.v2 import functional as TF

    r = CropRenderer(images.images, [28, 28], s.header.crops["mean"], s.header.crops["std"])
    i, slot = 4, 1
    top, left, h, w = want[i, slot].tolist()
    ref = TF.resized_crop(torch.from_numpy(images.images[i]).permute(2, 0, 1), top, left, h, w, [28, 28],
                          antialias=True)
    ref = TF.horizontal_flip(ref) if s.flips[i, slot] else ref
    ref = TF.normalize(ref.float() / 255, s.header.crops["mean"], s.header.crops["std"])
    got = r(torch.tensor([i]), s.boxes[i, slot].view(1, 4), s.flips[i, slot].view(1))[0]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    # The stored label is the teacher's top-k of that crop at T, quantised.
    with torch.no_grad():
        logits = model(got[None])
    p = torch.softmax(logits.double() / 4.0, 1)[0]
    ids, codes = s.labels([i], [slot])
    assert torch.equal(ids[0].long(), p.topk(5).indices)
    want = torch.searchsorted(s.quantizer.thresholds().double(), p.topk(5).values, right=True)
    assert int((codes[0].long() - want).abs().max()) <= 1  # float32 kernel vs float64 here, at a threshold


@pytest.mark.parametrize("save_every_s", [0, 1e9], ids=["saved-every-batch", "saved-on-interrupt"])
def test_resume_after_interruption(images, tmp_path, save_every_s):
    ref = run(images, tmp_path / "ref.safetensors")
    out = tmp_path / "s.safetensors"
    model = teacher()
    calls = {"n": 0}
    forward = model.forward

    def dying_forward(x):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return forward(x)

    model.forward = dying_forward
    with pytest.raises(KeyboardInterrupt):
        run(images, out, model, save_every_s=save_every_s)
    assert not out.exists() and os.path.exists(str(out) + ".partial")
    assert LabelStore.open(str(out) + ".partial", allow_partial=True).header.progress == 32
    model.forward = forward
    counted = {"n": 0}
    model.register_forward_pre_hook(lambda *_: counted.__setitem__("n", counted["n"] + 1))
    s = run(images, out, model, save_every_s=save_every_s)
    assert counted["n"] == 2  # 60 labels in batches of 16: 32 were done, two batches remained
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
    assert hald(["relabel", str(root), "--out", str(out), "--model", "convnet3", "--sli", "2", "-T", "4",
                 "--batch-size", "16", "--no-progress"]) == 0
    folder = load_image_set(str(root))
    s = LabelStore.open(out, images=folder)
    assert s.num_images == 30 and s.header.images == fingerprint(folder)
    with pytest.raises(LabelStoreError, match="image set mismatch"):
        s.check_images(images)  # same pixels, other names: a different image set
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
    assert hald(["relabel", "fashion-mnist", "--split", "test", "--ipc", "1", "--out", str(out), "--model", "convnet3",
                 "--k", "3", "--bits", "16", "--no-progress"]) == 0
    s = LabelStore.open(out)
    assert (s.num_images, s.slots, s.k, s.codes.dtype) == (10, 1, 3, torch.uint16)
    assert s.bytes_per_label == 8 + 1 + 3 * 4
