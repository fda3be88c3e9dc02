"""`hald relabel` at scale: mixed-size JPEG folders through the fused crop op, CutMix records that
replay to the labelled crops, the teacher's BatchNorm mode, ensembles, missing weights, --ipc."""
import copy
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from hald_ext.core.boxes import mix_boxes_to_pixels, sample_rrc_batch, sample_rrc_pixels
from hald_ext.cli import main as hald
from hald_ext.data import dali_available, fingerprint, load_image_set
from hald_ext.data.cache import pad_images
from hald_ext.labels import LabelStore
from hald_ext.labels.relabel import relabel
from hald_ext.labels.relabel_plan import make_plan
from hald_ext.ops import label_encode
from hald_ext.reference.crop import crop_reference
from hald_ext.data.select import select_per_class, subset

S = 16
SIZES = [(40, 56), (64, 48), (50, 50), (23, 37)]  # four sizes, three aspect ratios
CROP_TOL = 1e-4  # the op against the plain-PyTorch reference (float resize), normalised units


def write_jpeg_folder(root, per_class=3, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    for c in range(classes):
        os.makedirs(os.path.join(root, f"class{c}"))
        for i in range(per_class):
            h, w = SIZES[(c * per_class + i) % len(SIZES)]
            yy, xx = np.mgrid[:h, :w]
            img = np.stack([(xx * (40 + 60 * c) // w), (yy * 200 // h), np.full((h, w), 80 * c)], -1)
            img = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(os.path.join(root, f"class{c}", f"img{i}.JPEG"), quality=90)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_jpeg_folder(str(tmp_path_factory.mktemp("jpegs") / "train"))


@pytest.fixture(scope="module")
def images(folder):
    return load_image_set(folder)


def small_net(seed=0, classes=3, bn=True):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8) if bn else nn.Identity(), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, classes))


class Recorder(nn.Module):
    """Wraps a teacher and keeps every batch it was shown."""

    def __init__(self, net):
        super().__init__()
        self.net, self.inputs = net, []

    def forward(self, x):
        self.inputs.append(x.clone())
        return self.net(x)


def run(images, out, teacher, **kw):
    kw = {"sli": 2, "k": 2, "temperature": 2.0, "batch_size": 4, "seed": 3, "size": S, "progress": False,
          "device": "cpu", **kw}
    return relabel(images, teacher, str(out), **kw)


def captured_rows(rec, store, batch_size=4, seed=3):
    """Teacher inputs [N, S, 3, S, S] in (image, slot) order, from the recorded batches."""
    plan = make_plan(store.num_images, store.sli, batch_size, seed)
    x = torch.cat(rec.inputs)
    out = torch.empty(store.num_images * store.sli, *x.shape[1:])
    out[plan.order] = x
    return out.view(store.num_images, store.sli, *x.shape[1:])


def reference_crop(images, store, i, s):
    """Crop (i, s) rendered from the store alone by the plain-PyTorch reference, CutMix replayed."""
    padded, sizes = pad_images(images.images)
    padded, sizes = torch.from_numpy(padded), None if sizes is None else torch.from_numpy(sizes)
    mean, std = store.header.crops["mean"], store.header.crops["std"]
    p = int(store.mix.partner[i, s]) if store.mix is not None else -1
    ids = torch.tensor([i] if p < 0 else [i, p])
    kw = {}
    if p >= 0:
        box = mix_boxes_to_pixels(store.mix.boxes[i, s], S)  # the trainer's replay of a stored box
        kw = {"mix_partner": torch.tensor([1, 1]), "mix_boxes": box.view(1, 4).expand(2, 4)}
    crops = crop_reference(padded, ids, S, store.boxes[ids, s], store.flips[ids, s], image_sizes=sizes, mean=mean,
                           std=std, **kw)
    return crops[0]


@pytest.mark.parametrize("cutmix_alpha", [None, 1.0], ids=["plain", "cutmix"])
def test_labels_are_the_teachers_on_replayed_crops(images, tmp_path, cutmix_alpha):
    net = small_net()
    rec = Recorder(net)
    store = run(images, tmp_path / "s.safetensors", rec, cutmix_alpha=cutmix_alpha, teacher_bn="eval")
    assert (store.num_images, store.sli, store.header.mix) == (9, 2, cutmix_alpha is not None)
    assert {tuple(im.shape[:2]) for im in images.images} == set(SIZES)
    x = captured_rows(rec, store)
    ref = torch.stack([torch.stack([reference_crop(images, store, i, s) for s in range(2)]) for i in range(9)])
    # The crop the teacher saw is the crop the store replays (box, flip and CutMix record).
    torch.testing.assert_close(x, ref, atol=CROP_TOL, rtol=0)
    if cutmix_alpha is not None:
        mixed = store.mix.partner >= 0
        assert mixed.any() and (store.mix.lam[mixed] < 1).all() and (store.mix.lam[~mixed] == 1).all()
        assert (store.mix.partner[mixed] != torch.arange(9).view(9, 1).expand(9, 2)[mixed]).any()
    # The stored label is the teacher's (eval mode) top-k on the reference crop at T.
    with torch.no_grad():
        logits = net.eval()(ref.view(18, 3, S, S))
    ids, codes = label_encode(logits, 2, store.quantizer.thresholds(), temperature=2.0, from_logits=True)
    assert torch.equal(ids.view(9, 2, 2), store.topk_ids)
    assert int((codes.view(9, 2, 2).long() - store.codes.long()).abs().max()) <= 1


def test_batchnorm_train_mode_uses_batch_statistics_and_restores_the_teacher(images, tmp_path):
    net = small_net()
    net.train()
    with torch.no_grad():  # give the running statistics values a batch would change
        net(torch.randn(8, 3, S, S) * 3 + 1)
    before = copy.deepcopy(net.state_dict())
    rec = Recorder(net)
    train = run(images, tmp_path / "train.safetensors", rec, teacher_bn="train")
    for name, v in net.state_dict().items():
        assert torch.equal(v, before[name]), name
    assert net.training and rec.training  # modes are restored as well
    ev = run(images, tmp_path / "eval.safetensors", net, teacher_bn="eval")
    assert not torch.equal(train.codes, ev.codes) or not torch.equal(train.topk_ids, ev.topk_ids)
    assert train.header.teacher["bn"] == "train" and ev.header.teacher["bn"] == "eval"
    # Train mode: each batch normalised by its own statistics (what HALD's model.train() computes).
    want = []
    by_hand = copy.deepcopy(net).train()
    with torch.no_grad():
        for x in rec.inputs:
            want.append(label_encode(by_hand(x), 2, train.quantizer.thresholds(), temperature=2.0, from_logits=True))
    plan = make_plan(9, 2, 4, 3)
    ids = torch.cat([w[0] for w in want])
    got = train.topk_ids.view(18, 2)[plan.order]
    assert torch.equal(ids, got)


@pytest.mark.parametrize("weights", [None, [1.0, 3.0]], ids=["mean", "hald-weights"])
def test_ensemble_averages_logits_like_hald(images, tmp_path, weights):
    a, b = small_net(1), small_net(2)
    recs = [Recorder(a), Recorder(b)]
    store = run(images, tmp_path / "e.safetensors", recs, teacher_weights=weights, teacher_bn="eval",
                teacher_name=["a", "b"])
    x = torch.cat(recs[0].inputs)
    assert torch.equal(x, torch.cat(recs[1].inputs))
    w = [0.5, 0.5] if weights is None else torch.softmax(torch.tensor(weights, dtype=torch.float64) / 10, 0).tolist()
    with torch.no_grad():
        z = w[0] * a.eval()(x) + w[1] * b.eval()(x)
    ids, codes = label_encode(z, 2, store.quantizer.thresholds(), temperature=2.0, from_logits=True)
    order = make_plan(9, 2, 4, 3).order
    assert torch.equal(ids, store.topk_ids.view(18, 2)[order])
    assert int((codes.long() - store.codes.view(18, 2)[order].long()).abs().max()) <= 1
    assert store.header.teacher["name"] == "a+b" and len(store.header.teacher["ensemble"]) == 2
    assert store.header.teacher["weights"] == pytest.approx(w)


def test_vectorised_boxes_follow_the_rrc_rule():
    g = torch.Generator().manual_seed(0)
    sizes = torch.tensor([[40, 56], [64, 48], [7, 200]])
    px = sample_rrc_batch(sizes, 400, (0.08, 1.0), (3 / 4, 4 / 3), g)
    H, W = sizes[:, 0].view(3, 1), sizes[:, 1].view(3, 1)
    top, left, h, w = px.unbind(-1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= H).all() and (left + w <= W).all()
    assert (h >= 1).all() and (w >= 1).all()
    area = (h * w).double() / (H * W).double()
    # Rounding h and w to pixels moves the area and aspect a little past the sampled range.
    assert area[:2].min() > 0.05 and area[:2].max() <= 1.0 and area[:2].min() < 0.2 and area[:2].max() > 0.8
    aspect = (w.double() / h.double())[:2]
    assert aspect.min() > 0.6 and aspect.max() < 1.6
    assert len({tuple(b) for b in px[0].tolist()}) > 350  # draws, not one box
    # A 7 x 200 image fits no attempt: every draw is torchvision's centre-crop fallback.
    assert (px[2] == torch.tensor(sample_rrc_pixels(7, 200))).all()


def save_checkpoint(path, seed=0):
    from hald_ext.models import create_model

    torch.manual_seed(seed)
    torch.save(create_model("convnet3", 3, img_size=S).state_dict(), path)
    return str(path)


def test_a_teacher_without_weights_is_an_error(folder, tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    assert hald(["relabel", folder, "-o", str(out), "--model", "convnet3", "--size", str(S), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "'convnet3' has no weights" in err and "--checkpoint" in err
    ck = save_checkpoint(tmp_path / "t.pt")
    assert hald(["relabel", folder, "-o", str(out), "--model", "convnet3", "--checkpoint", ck, "--model", "resnet18",
                 "--size", str(S), "--no-progress"]) == 2
    assert "'resnet18' has no weights" in capsys.readouterr().err
    assert hald(["relabel", folder, "-o", str(out), "--model", "convnet3", "--checkpoint", str(tmp_path / "nope.pt"),
                 "--size", str(S), "--no-progress"]) == 2
    assert "nope.pt" in capsys.readouterr().err
    assert not out.exists()


def test_cli_ipc_is_the_select_rule(folder, images, tmp_path, capsys):
    from hald_ext.models import create_model

    ck = save_checkpoint(tmp_path / "t.pt")
    out = tmp_path / "ipc.safetensors"
    assert hald(["relabel", folder, "-o", str(out), "--model", "convnet3", "--checkpoint", ck, "--ipc", "2",
                 "--ipc-seed", "1", "--size", str(S), "--sli", "2", "--k", "2", "--cutmix-alpha", "1",
                 "--batch-size", "3", "--no-progress"]) == 0
    assert "KL(teacher || stored label)" in capsys.readouterr().out
    chosen = subset(images, select_per_class(images, 2, 1))
    store = LabelStore.open(out, images=chosen)
    assert store.header.images == fingerprint(chosen, "files") and store.num_images == 6 and store.header.mix
    assert store.header.teacher["bn"] == "train"
    # The same labels through the Python API with the loaded teacher.
    net = create_model("convnet3", 3, img_size=S, checkpoint=ck)
    api = relabel(chosen, net, str(tmp_path / "api.safetensors"), sli=2, k=2, size=S, batch_size=3,
                  cutmix_alpha=1.0, progress=False, device="cpu")
    for name in ("boxes", "flips", "topk_ids", "codes"):
        assert torch.equal(getattr(api, name), getattr(store, name)), name


@pytest.mark.skipif(not dali_available(), reason="DALI is not installed")
def test_cli_dali_and_torch_loaders_give_the_same_store(folder, tmp_path):
    ck = save_checkpoint(tmp_path / "t.pt")
    stores = []
    for loader in ("dali", "torch"):
        out = tmp_path / f"{loader}.safetensors"
        assert hald(["relabel", folder, "-o", str(out), "--model", "convnet3", "--checkpoint", ck, "--loader", loader,
                     "--size", str(S), "--k", "2", "--sli", "2", "--cutmix-alpha", "1", "--batch-size", "4",
                     "--no-progress"]) == 0
        stores.append(LabelStore.open(out))
    a, b = stores
    assert a.header.to_json() == b.header.to_json()  # the same image fingerprint (pixels and names) too
    for name in ("boxes", "flips", "topk_ids", "codes"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.equal(a.mix.partner, b.mix.partner)
