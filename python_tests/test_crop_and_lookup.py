"""crop_and_lookup against the torchvision reference (hald_ext.reference.crop_reference), the fresh-crop
sampler against torchvision's RandomResizedCrop.get_params, determinism, the label gather, errors,
and FusedBatchSource against TorchBatchSource."""
import math

import numpy as np
import pytest
import torch
from conftest import requires_cuda
from torchvision.transforms import RandomResizedCrop

from hald_ext.boxes import boxes_to_pixels, pixels_to_boxes, quantize_boxes
from hald_ext.ops import crop_and_lookup
from hald_ext.reference import crop_reference

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
RAW = dict(mean=(0.0, 0.0, 0.0), std=(1 / 255,) * 3)  # output in 0..255 units
# Measured max |op - torchvision| in 0..255 units with antialias (torchvision rounds to uint8, also
# between its two passes): ~1.0. Plain bilinear equals F.interpolate to float rounding.
TOL_AA = 1.01
TOL_BILINEAR = 1e-3


def _images(n, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    # smooth-ish content plus noise, so both flat and busy regions are exercised
    base = torch.randint(0, 256, (n, h // 4 + 1, w // 4 + 1, 3), generator=g).float()
    up = torch.nn.functional.interpolate(base.permute(0, 3, 1, 2), size=(h, w), mode="bilinear").permute(0, 2, 3, 1)
    noise = torch.randint(-40, 41, (n, h, w, 3), generator=g).float()
    return (up + noise).clamp(0, 255).to(torch.uint8).contiguous()


def _random_boxes(B, H, W, seed):
    g = torch.Generator().manual_seed(seed)
    pix = []
    for _ in range(B):
        h = int(torch.randint(1, H + 1, (1,), generator=g))
        w = int(torch.randint(1, W + 1, (1,), generator=g))
        t = int(torch.randint(0, H - h + 1, (1,), generator=g))
        l = int(torch.randint(0, W - w + 1, (1,), generator=g))
        pix.append((t, l, h, w))
    return pixels_to_boxes(torch.tensor(pix), H, W)


@pytest.mark.parametrize("H,W,S", [(256, 256, 224), (28, 28, 32), (28, 28, 64), (40, 57, 24), (64, 48, 7)])
@pytest.mark.parametrize("antialias", [True, False])
def test_matches_torchvision(H, W, S, antialias):
    images = _images(3, H, W)
    B = 12
    boxes = quantize_boxes(_random_boxes(B, H, W, seed=H + S))
    ids = torch.randint(0, 3, (B,))
    flips = torch.rand(B) < 0.5
    r = crop_and_lookup(images, ids, out_size=S, boxes=boxes, flips=flips, antialias=antialias, **RAW)
    ref = crop_reference(images, ids, boxes, flips, out_size=S, mean=MEAN, std=STD, antialias=antialias,
                         normalize=False)
    tol = TOL_AA if antialias else TOL_BILINEAR
    assert r.crops.shape == (B, 3, S, S)
    assert (r.crops - ref).abs().max().item() <= tol
    assert (r.crops - ref).abs().mean().item() < 0.3
    # boxes used are the pixel boxes of the replayed boxes
    exp_pix = boxes_to_pixels(boxes.int().float() / 65535, H, W)
    assert torch.equal(boxes_to_pixels(r.boxes, H, W), exp_pix)
    assert torch.equal(r.flips, flips)
    assert r.labels is None


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_dtypes_layouts_normalise(out_dtype, channels_last):
    images = _images(2, 48, 40)
    B, S = 6, 20
    boxes = _random_boxes(B, 48, 40, seed=1)  # float fractions
    ids = torch.tensor([0, 1, 1, 0, 1, 0])
    flips = torch.tensor([True, False, True, False, False, True])
    r = crop_and_lookup(images, ids, out_size=S, boxes=boxes, flips=flips, mean=MEAN, std=STD, out_dtype=out_dtype,
                        channels_last=channels_last)
    ref = crop_reference(images, ids, boxes, flips, out_size=S, mean=MEAN, std=STD)
    assert r.crops.dtype == out_dtype and r.crops.shape == (B, 3, S, S)
    if channels_last:
        assert r.crops.is_contiguous(memory_format=torch.channels_last)
    else:
        assert r.crops.is_contiguous()
    tol = TOL_AA / 255 / min(STD) + (0.05 if out_dtype != torch.float32 else 1e-5)
    assert (r.crops.float() - ref).abs().max().item() <= tol


def test_label_gather_and_several_crops_per_image():
    images = _images(4, 32, 32)
    N, SLI, k = 4, 5, 3
    label_ids = torch.randint(0, 1000, (N, SLI, k), dtype=torch.int32)
    label_codes = torch.randint(0, 256, (N, SLI, k), dtype=torch.uint8)
    ids = torch.tensor([0, 0, 0, 3, 2, 3])
    slots = torch.tensor([0, 1, 4, 2, 2, 0])
    boxes = quantize_boxes(_random_boxes(6, 32, 32, seed=3))
    flips = torch.zeros(6, dtype=torch.bool)
    r = crop_and_lookup(images, ids, out_size=16, boxes=boxes, flips=flips, label_ids=label_ids,
                        label_codes=label_codes, slots=slots)
    gi, gc = r.labels
    assert torch.equal(gi, label_ids[ids, slots]) and torch.equal(gc, label_codes[ids, slots])
    assert gi.dtype == torch.int32 and gc.dtype == torch.uint8


def test_fresh_crops_deterministic_and_consistent():
    images = _images(3, 60, 80)
    ids = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    a = crop_and_lookup(images, ids, out_size=24, seed=7, step=3)
    b = crop_and_lookup(images, ids, out_size=24, seed=7, step=3)
    c = crop_and_lookup(images, ids, out_size=24, seed=7, step=4)
    assert torch.equal(a.crops, b.crops) and torch.equal(a.boxes, b.boxes) and torch.equal(a.flips, b.flips)
    assert not torch.equal(a.boxes, c.boxes)
    # replaying the returned boxes gives the same crops
    r = crop_and_lookup(images, ids, out_size=24, boxes=a.boxes, flips=a.flips)
    assert torch.equal(r.crops, a.crops)
    # fresh crops are valid torchvision boxes: inside the image, flips mix
    pix = boxes_to_pixels(a.boxes, 60, 80)
    assert (pix[:, 0] + pix[:, 2] <= 60).all() and (pix[:, 1] + pix[:, 3] <= 80).all()


def test_fresh_flip_prob():
    images = _images(1, 16, 16)
    ids = torch.zeros(4000, dtype=torch.long)
    never = crop_and_lookup(images, ids, out_size=2, seed=1, flip_prob=0.0).flips
    always = crop_and_lookup(images, ids, out_size=2, seed=1, flip_prob=1.0).flips
    half = crop_and_lookup(images, ids, out_size=2, seed=1, flip_prob=0.5).flips
    assert not never.any() and always.all()
    assert abs(half.float().mean().item() - 0.5) < 0.04


def _ks(a, b):
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    return np.max(np.abs(np.searchsorted(a, grid, side="right") / len(a) - np.searchsorted(b, grid, side="right") / len(b)))


@pytest.mark.parametrize("H,W,scale,ratio", [(256, 256, (0.08, 1.0), (3 / 4, 4 / 3)), (28, 28, (0.08, 1.0), (3 / 4, 4 / 3)),
                                             (100, 300, (0.5, 1.0), (0.5, 2.0))])
def test_sampler_matches_torchvision_distribution(H, W, scale, ratio):
    n = 6000
    images = torch.zeros(1, H, W, 3, dtype=torch.uint8)
    r = crop_and_lookup(images, torch.zeros(n, dtype=torch.long), out_size=1, seed=123, scale=scale, ratio=ratio)
    ours = boxes_to_pixels(r.boxes, H, W).numpy().astype(np.float64)
    torch.manual_seed(321)
    img = torch.zeros(3, H, W)
    tv = np.array([RandomResizedCrop.get_params(img, list(scale), list(ratio)) for _ in range(n)], dtype=np.float64)
    # KS statistics of area fraction, aspect ratio and the box centre; the 99.9% critical value for two
    # samples of 6000 is ~0.036 (fixed seeds: not flaky).
    for f in (lambda p: p[:, 2] * p[:, 3] / (H * W), lambda p: p[:, 3] / p[:, 2],
              lambda p: (p[:, 0] + p[:, 2] / 2) / H, lambda p: (p[:, 1] + p[:, 3] / 2) / W):
        assert _ks(f(ours), f(tv)) < 0.036


def test_sampler_fallback_is_centre_crop():
    # scale far above what fits: every attempt fails, torchvision's centre fallback
    images = torch.zeros(1, 20, 60, 3, dtype=torch.uint8)
    r = crop_and_lookup(images, torch.zeros(3, dtype=torch.long), out_size=4, seed=0, scale=(5.0, 6.0))
    pix = boxes_to_pixels(r.boxes, 20, 60)
    # in_ratio = 3 > 4/3: h = 20, w = round(20 * 4/3) = 27, centred
    assert pix.tolist() == [[0, 16, 20, 27]] * 3


def _err(match, **kw):
    images = kw.pop("images", torch.zeros(2, 8, 8, 3, dtype=torch.uint8))
    ids = kw.pop("ids", torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match=match):
        crop_and_lookup(images, ids, out_size=kw.pop("out_size", 4), **kw)


def test_errors():
    ok_boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2)
    fl = torch.zeros(2, dtype=torch.bool)
    _err("image_ids out of range", ids=torch.tensor([0, 2]), seed=0)
    _err("image_ids out of range", ids=torch.tensor([-1, 0]), seed=0)
    _err("image_ids must be an integer", ids=torch.tensor([0.0, 1.0]), seed=0)
    _err("images must be uint8", images=torch.zeros(2, 8, 8, 3), seed=0)
    _err("NHWC", images=torch.zeros(2, 3, 8, 8, dtype=torch.uint8), seed=0)
    _err("either stored boxes", )
    _err("either stored boxes", boxes=ok_boxes, flips=fl, seed=1)
    _err("given together", boxes=ok_boxes)
    _err("fractions in \\[0, 1\\]", boxes=torch.tensor([[0.0, 0.0, 1.5, 1.0]] * 2), flips=fl)
    _err("fractions in \\[0, 1\\]", boxes=torch.tensor([[-0.1, 0.0, 0.5, 1.0]] * 2), flips=fl)
    _err("finite", boxes=torch.tensor([[float("nan"), 0.0, 0.5, 1.0]] * 2), flips=fl)
    _err("empty box", boxes=torch.tensor([[0.0, 0.0, 0.0, 1.0]] * 2), flips=fl)
    _err("outside the image", boxes=torch.tensor([[0.6, 0.0, 0.6, 1.0]] * 2), flips=fl)
    _err("boxes must have shape", boxes=torch.zeros(2, 3), flips=fl)
    _err("boxes must be uint16 codes", boxes=torch.zeros(2, 4, dtype=torch.bool), flips=fl)
    _err("flips must be bool", boxes=ok_boxes, flips=torch.zeros(2))
    _err("out_dtype", seed=0, out_dtype=torch.float64)
    _err("out_size", seed=0, out_size=0)
    _err("mean and std", seed=0, mean=(0.5,), std=(0.5,))
    _err("scale must", seed=0, scale=(0.5, 0.1))
    _err("ratio must", seed=0, ratio=(0.0, 1.0))
    _err("flip_prob", seed=0, flip_prob=1.5)
    li = torch.zeros(2, 3, 4, dtype=torch.long)
    _err("given together", seed=0, label_ids=li)
    _err("slots out of range", seed=0, label_ids=li, label_codes=li.to(torch.uint8), slots=torch.tensor([0, 3]))
    _err("label_ids must have shape", seed=0, label_ids=li[:1], label_codes=li[:1], slots=torch.tensor([0, 0]))
    _err("label_codes must have the shape", seed=0, label_ids=li, label_codes=li[:, :2], slots=torch.tensor([0, 0]))


@requires_cuda
def test_cuda_matches_cpu():
    images = _images(3, 64, 80)
    B = 32
    ids = torch.randint(0, 3, (B,))
    boxes = quantize_boxes(_random_boxes(B, 64, 80, seed=5))
    flips = torch.rand(B) < 0.5
    for aa in (True, False):
        for dt in (torch.float32, torch.bfloat16):
            for cl in (False, True):
                cpu = crop_and_lookup(images, ids, out_size=40, boxes=boxes, flips=flips, antialias=aa, out_dtype=dt,
                                      channels_last=cl)
                gpu = crop_and_lookup(images.cuda(), ids.cuda(), out_size=40, boxes=boxes.cuda(),
                                      flips=flips.cuda(), antialias=aa, out_dtype=dt, channels_last=cl)
                assert (gpu.crops.cpu().float() - cpu.crops.float()).abs().max() < (1e-3 if dt == torch.float32 else 0.05)
                assert torch.equal(gpu.boxes.cpu(), cpu.boxes)
    # fresh crops: the same boxes and flips on both backends
    cpu = crop_and_lookup(images, ids, out_size=40, seed=11, step=2)
    gpu = crop_and_lookup(images.cuda(), ids.cuda(), out_size=40, seed=11, step=2)
    assert torch.equal(gpu.boxes.cpu(), cpu.boxes) and torch.equal(gpu.flips.cpu(), cpu.flips)
    with pytest.raises(RuntimeError, match="is on"):
        crop_and_lookup(images.cuda(), ids, out_size=4, seed=0)


def _sources(cutmix_alpha=1.0):
    import tempfile

    from hald_ext.data import ImageSet
    from hald_ext.labels.relabel import relabel
    from hald_ext.train.batches import FusedBatchSource, TorchBatchSource

    N, H, W, S = 6, 36, 30, 24
    hwc = _images(N, H, W)
    images = hwc.permute(0, 3, 1, 2).contiguous()  # the trainer's uint8 [N, 3, H, W]
    targets = torch.arange(N) % 4
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * S * S, 10))
    image_set = ImageSet(list(hwc.numpy()), targets.numpy(), [str(c) for c in range(10)],
                         [f"t:{i}" for i in range(N)])
    path = tempfile.mkdtemp(prefix="hald-crop-") + "/labels.safetensors"
    labels = relabel(image_set, teacher, path, slots=3, k=4, size=S, seed=1, device="cpu", progress=False)
    kw = dict(out_size=S, cutmix_alpha=cutmix_alpha)
    return TorchBatchSource(images, targets, labels, **kw), FusedBatchSource(images, targets, labels, **kw)


def test_fused_batch_source_soft_matches_torch():
    ref, fused = _sources()
    ids = torch.tensor([0, 5, 2, 2, 3, 1, 4, 0])
    slots = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    a, b = ref.soft_batch(ids, slots), fused.soft_batch(ids, slots)
    assert a.x.shape == b.x.shape and b.x.dtype == torch.float32
    assert (a.x - b.x).abs().max().item() <= TOL_AA / 255 / min(STD) + 1e-5
    assert torch.equal(a.topk_ids, b.topk_ids) and torch.equal(a.topk_codes, b.topk_codes)


def test_fused_batch_source_hard():
    ref, fused = _sources()
    ids = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1])
    h1, h2, h3 = fused.hard_batch(ids, 5), fused.hard_batch(ids, 5), fused.hard_batch(ids, 6)
    r = ref.hard_batch(ids, 5)
    assert h1.x.shape == r.x.shape and h1.lam.shape == r.lam.shape and h1.y_b.shape == r.y_b.shape
    assert torch.equal(h1.x, h2.x) and torch.equal(h1.lam, h2.lam) and not torch.equal(h1.x, h3.x)
    assert torch.equal(h1.y_a, fused.targets[ids])
    assert ((h1.lam > 0) & (h1.lam <= 1)).all()
    # CutMix off: y_b == y_a and lam == 1
    _, plain = _sources(cutmix_alpha=0.0)
    h = plain.hard_batch(ids, 5)
    assert torch.equal(h.y_b, h.y_a) and (h.lam == 1).all()
