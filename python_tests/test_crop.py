"""crop_and_lookup against the torchvision reference (hald_ext.reference.crop_reference)."""
import math

import pytest
import torch

from hald_ext.core.boxes import boxes_to_pixels, dequantize_boxes, quantize_boxes, sample_rrc_pixels
from hald_ext.ops import CutMix, crop_and_lookup, soft_hard_loss
from hald_ext.reference import crop_reference, cutmix_lambda_reference, gather_labels_reference

STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
# Normalised-output tolerance against the float reference (same function, float rounding only).
ATOL = {torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 4e-3}


def padded_batch(n, max_h, max_w, seed=0, equal=False):
    """uint8 [n, max_h, max_w, 3] with random true sizes (garbage in the padding, to catch reads)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, max_h, max_w, 3), dtype=torch.uint8, generator=g)
    if equal:
        return images, None
    hs = torch.randint(max(1, max_h // 4), max_h + 1, (n,), generator=g)
    ws = torch.randint(max(1, max_w // 4), max_w + 1, (n,), generator=g)
    return images, torch.stack([hs, ws], 1)


def packed_batch(images, sizes, seed=0):
    """The images of a padded batch packed into one flat buffer, in a shuffled order with garbage
    bytes between them (to catch a wrong stride or offset): (flat uint8, int64 offsets, int32 sizes)."""
    g = torch.Generator().manual_seed(seed)
    n, hmax, wmax = images.shape[:3]
    sizes = torch.tensor([[hmax, wmax]] * n) if sizes is None else sizes
    parts, offsets, pos = [], [0] * n, 0
    for i in torch.randperm(n, generator=g).tolist():
        gap = torch.randint(0, 256, (int(torch.randint(0, 9, (1,), generator=g)),), dtype=torch.uint8, generator=g)
        h, w = (int(v) for v in sizes[i])
        parts += [gap, images[i, :h, :w].reshape(-1)]
        offsets[i] = pos + gap.numel()
        pos += gap.numel() + h * w * 3
    parts.append(torch.randint(0, 256, (5,), dtype=torch.uint8, generator=g))
    return torch.cat(parts), torch.tensor(offsets, dtype=torch.int64), sizes.to(torch.int32)


def random_boxes(B, seed=0):
    """(y, x, h, w) fractions inside the unit square, including tiny and full boxes."""
    g = torch.Generator().manual_seed(seed)
    hw = torch.rand(B, 2, generator=g) * 0.95 + 0.05
    hw[0] = 1.0
    hw[1] = 0.01
    yx = torch.rand(B, 2, generator=g) * (1 - hw)
    return torch.cat([yx[:, :1], yx[:, 1:], hw[:, :1], hw[:, 1:]], 1)


@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("size", [7, 32, 64])
@pytest.mark.parametrize("equal", [True, False])
def test_replay_matches_reference(antialias, size, equal):
    images, sizes = padded_batch(5, 90, 70, seed=size, equal=equal)
    B = 24
    ids = torch.arange(B) % 5  # several crops per image
    boxes = random_boxes(B, seed=size)
    flips = torch.arange(B) % 3 == 0
    out = crop_and_lookup(images, ids, size, image_sizes=sizes, boxes=boxes, flips=flips, antialias=antialias)
    ref = crop_reference(images, ids, size, boxes, flips, image_sizes=sizes, antialias=antialias)
    torch.testing.assert_close(out.crops, ref, atol=ATOL[torch.float32], rtol=0)
    assert torch.equal(out.flips, flips)
    # The boxes returned are the pixels cropped, and map back to the same pixels.
    hw = sizes[ids] if sizes is not None else torch.tensor([[90, 70]]).expand(B, 2)
    for b in range(B):
        H, W = int(hw[b, 0]), int(hw[b, 1])
        assert torch.equal(boxes_to_pixels(out.boxes[b], H, W), boxes_to_pixels(boxes[b], H, W))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_dtypes_and_layouts(dtype, channels_last):
    images, sizes = padded_batch(3, 64, 80, seed=1)
    ids = torch.tensor([0, 1, 2, 2, 1])
    out = crop_and_lookup(images, ids, 40, image_sizes=sizes, seed=3, out_dtype=dtype, channels_last=channels_last)
    ref = crop_reference(images, ids, 40, out.boxes, out.flips, image_sizes=sizes)
    assert out.crops.dtype == dtype and out.crops.shape == (5, 3, 40, 40)
    assert out.crops.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    torch.testing.assert_close(out.crops.float(), ref, atol=ATOL[dtype], rtol=ATOL[dtype])


def test_uint8_torchvision_path_within_documented_tolerance():
    """torchvision resizes uint8 -> uint8 (fixed-point weights, rounded); we keep fp32. Documented
    tolerance: at most 1.5 grey levels (of 255) anywhere, under 0.35 on average (the rounding to
    uint8 alone accounts for 0.25)."""
    images, _ = padded_batch(8, 256, 256, seed=2, equal=True)
    ids = torch.arange(32) % 8
    for size, aa in [(224, True), (64, True), (32, True), (96, False)]:
        out = crop_and_lookup(images, ids, size, seed=size, antialias=aa)
        ref = crop_reference(images, ids, size, out.boxes, out.flips, antialias=aa, uint8_resize=True)
        levels = ((out.crops - ref) * STD * 255).abs()
        assert levels.max() <= 1.5, (size, aa, levels.max())
        assert levels.mean() <= 0.35, (size, aa, levels.mean())


def test_uint16_codes_replay_like_fractions():
    images, _ = padded_batch(4, 50, 60, seed=3, equal=True)
    ids = torch.tensor([3, 2, 1, 0, 0])
    codes = quantize_boxes(random_boxes(5, seed=4))
    flips = torch.tensor([True, False, True, False, True])
    a = crop_and_lookup(images, ids, 24, boxes=codes, flips=flips)
    b = crop_and_lookup(images, ids, 24, boxes=dequantize_boxes(codes).double(), flips=flips)
    assert torch.equal(a.crops, b.crops)


def test_label_rows_gathered():
    images, _ = padded_batch(6, 20, 20, seed=5, equal=True)
    g = torch.Generator().manual_seed(5)
    for id_dtype, val in [(torch.int16, torch.rand(6, 4, 5, generator=g).half()),
                          (torch.int64, (torch.rand(6, 4, 5, generator=g) * 255).to(torch.uint8))]:
        lid = torch.randint(0, 1000, (6, 4, 5), generator=g).to(id_dtype)
        ids = torch.tensor([5, 0, 0, 3, 2, 5, 1])
        slots = torch.tensor([3, 0, 1, 2, 3, 0, 1])
        out = crop_and_lookup(images, ids, 8, label_ids=lid, label_values=val, slots=slots, seed=0)
        ref_ids, ref_vals = gather_labels_reference(lid, val, ids, slots)
        assert out.label_ids.dtype == id_dtype and torch.equal(out.label_ids, ref_ids)
        assert torch.equal(out.label_values, ref_vals)


def test_cutmix_replay_matches_reference():
    images, sizes = padded_batch(4, 48, 48, seed=6)
    ids = torch.tensor([0, 1, 2, 3, 1, 0])
    partner = torch.tensor([5, 2, 1, 0, 4, 3])  # sample 4 mixes with itself
    mix = torch.tensor([[4, 8, 20, 30], [0, 0, 32, 32], [10, 10, 10, 20], [5, 0, 6, 32], [1, 1, 9, 9],
                        [0, 0, 0, 0]], dtype=torch.int32)
    boxes, flips = random_boxes(6, seed=7), torch.tensor([1, 0, 1, 1, 0, 0], dtype=torch.bool)
    out = crop_and_lookup(images, ids, 32, image_sizes=sizes, boxes=boxes, flips=flips,
                          cutmix=CutMix(partner, mix))
    ref = crop_reference(images, ids, 32, boxes, flips, image_sizes=sizes, mix_partner=partner, mix_boxes=mix)
    torch.testing.assert_close(out.crops, ref, atol=ATOL[torch.float32], rtol=0)
    torch.testing.assert_close(out.mix_lambda, cutmix_lambda_reference(mix, 32))
    assert out.mix_lambda[1] == 0 and out.mix_lambda[5] == 1


def test_fresh_cutmix_is_seeded_and_consistent():
    images, _ = padded_batch(4, 40, 40, seed=8, equal=True)
    ids = torch.arange(16) % 4
    a = crop_and_lookup(images, ids, 32, seed=11, offset=2, cutmix_alpha=1.0)
    b = crop_and_lookup(images, ids, 32, seed=11, offset=2, cutmix_alpha=1.0)
    c = crop_and_lookup(images, ids, 32, seed=11, offset=3, cutmix_alpha=1.0)
    assert torch.equal(a.crops, b.crops) and torch.equal(a.mix_partner, b.mix_partner)
    assert not torch.equal(a.mix_partner, c.mix_partner)
    assert sorted(a.mix_partner.tolist()) == list(range(16))  # a permutation of the batch
    assert ((a.mix_lambda >= 0) & (a.mix_lambda <= 1)).all()
    # Lambda ~ Beta(1, 1) sets the box, whose clipping at the border makes the effective lambda
    # larger on average (about 0.7 at alpha 1); small lambdas (big pastes) still occur.
    lams = torch.tensor([float(crop_and_lookup(images, ids[:2], 32, seed=1, offset=s, cutmix_alpha=1.0)
                               .mix_lambda[0]) for s in range(200)])
    assert 0.55 < float(lams.mean()) < 0.85 and float(lams.min()) < 0.3


def test_determinism_by_seed_and_thread_count():
    images, sizes = padded_batch(5, 120, 100, seed=9)
    ids = torch.arange(40) % 5
    a = crop_and_lookup(images, ids, 48, image_sizes=sizes, seed=123, offset=7)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        b = crop_and_lookup(images, ids, 48, image_sizes=sizes, seed=123, offset=7)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(a.crops, b.crops) and torch.equal(a.boxes, b.boxes) and torch.equal(a.flips, b.flips)
    c = crop_and_lookup(images, ids, 48, image_sizes=sizes, seed=123, offset=8)
    d = crop_and_lookup(images, ids, 48, image_sizes=sizes, seed=124, offset=7)
    assert not torch.equal(a.boxes, c.boxes) and not torch.equal(a.boxes, d.boxes)


def ks_statistic(x, y):
    """Two-sample Kolmogorov-Smirnov statistic."""
    x, y = torch.sort(x.double())[0], torch.sort(y.double())[0]
    grid = torch.cat([x, y])
    cdf_x = torch.searchsorted(x, grid, right=True).double() / len(x)
    cdf_y = torch.searchsorted(y, grid, right=True).double() / len(y)
    return float((cdf_x - cdf_y).abs().max())


def torchvision_rrc_pixels(H, W, scale, ratio, n, seed):
    from torchvision.transforms import RandomResizedCrop  # the v1 class holds the shared get_params

    torch.manual_seed(seed)
    img = torch.zeros(3, H, W)
    return torch.tensor([RandomResizedCrop.get_params(img, list(scale), list(ratio)) for _ in range(n)]).double()


def fresh_rrc_pixels(H, W, scale, ratio, n, seed):
    images = torch.zeros(1, H, W, 3, dtype=torch.uint8)
    out = crop_and_lookup(images, torch.zeros(n, dtype=torch.long), 4, seed=seed, scale=scale, ratio=ratio)
    return boxes_to_pixels(out.boxes, H, W).double()


RRC_STATS = {"area": lambda p, H, W: p[:, 2] * p[:, 3] / (H * W),
             "log ratio": lambda p, H, W: (p[:, 3] / p[:, 2]).log(),
             "top": lambda p, H, W: p[:, 0] / H,
             "left": lambda p, H, W: p[:, 1] / W}


@pytest.mark.parametrize("hw,scale,ratio", [((256, 256), (0.08, 1.0), (3 / 4, 4 / 3)),
                                            ((120, 300), (0.25, 0.9), (0.5, 2.0))])
def test_fresh_crop_distribution_matches_torchvision(hw, scale, ratio):
    """Area fraction, log aspect and position of fresh crops vs torchvision's RandomResizedCrop:
    two-sample KS statistics at fixed seeds (deterministic) against the 0.1% critical value."""
    H, W = hw
    n = 20000
    ours = fresh_rrc_pixels(H, W, scale, ratio, n, seed=1)
    tv = torchvision_rrc_pixels(H, W, scale, ratio, n, seed=1)
    crit = 1.95 * math.sqrt(2 / n)
    for name, f in RRC_STATS.items():
        d = ks_statistic(f(ours, H, W), f(tv, H, W))
        assert d < crit, f"{name}: KS {d:.4f} >= {crit:.4f}"
    # The test has power: a slightly different scale range is rejected.
    wrong = fresh_rrc_pixels(H, W, (scale[0] * 1.25, scale[1]), ratio, n, seed=1)
    assert ks_statistic(RRC_STATS["area"](wrong, H, W), RRC_STATS["area"](tv, H, W)) > crit


def test_fallback_is_torchvision_centre_crop():
    """No attempt can fit (scale near 1 on a very wide image): both take the centre fallback."""
    H, W = 10, 400
    images = torch.zeros(1, H, W, 3, dtype=torch.uint8)
    out = crop_and_lookup(images, torch.zeros(50, dtype=torch.long), 8, seed=0, scale=(0.9, 1.0))
    expected = torch.tensor(sample_rrc_pixels(H, W, scale=(0.9, 1.0)))
    assert (boxes_to_pixels(out.boxes, H, W) == expected).all()


def test_fresh_flip_rate():
    images = torch.zeros(1, 8, 8, 3, dtype=torch.uint8)
    ids = torch.zeros(4000, dtype=torch.long)
    for p in (0.0, 0.5, 1.0):
        rate = crop_and_lookup(images, ids, 4, seed=5, flip_prob=p).flips.float().mean()
        assert abs(float(rate) - p) < 0.03


def test_feeds_soft_hard_loss_with_cutmix():
    """Outputs plug into the loss: label rows for the soft term, partners + lambdas for the hard one."""
    images, _ = padded_batch(4, 32, 32, seed=10, equal=True)
    lid = torch.stack([torch.randperm(10)[:3] for _ in range(8)]).view(4, 2, 3)  # distinct classes per row
    lval = torch.softmax(torch.randn(4, 2, 3), -1)
    ids, slots = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 1, 0])
    out = crop_and_lookup(images, ids, 16, label_ids=lid, label_values=lval, slots=slots, cutmix_alpha=1.0)
    logits = torch.nn.Linear(3 * 16 * 16, 10)(out.crops.flatten(1))
    y = torch.tensor([1, 2, 3, 4])
    loss = soft_hard_loss(logits, out.label_ids, out.label_values, y, target_b=y[out.mix_partner],
                          mix_lambda=out.mix_lambda, hard_weight=1.0)
    loss.backward()
    assert torch.isfinite(loss)


def test_opcheck():
    images, sizes = padded_batch(3, 20, 24, seed=11)
    args = (images, sizes, torch.tensor([0, 2, 1]), 12, None, None, None, None, None, None, None, 1, 0,
            [0.08, 1.0], [0.75, 4 / 3], 0.5, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], True, torch.float32, False, True)
    torch.library.opcheck(torch.ops.hald.crop_and_lookup.default, args)
    flat, offsets, true = packed_batch(images, sizes)  # the packed layout (image_offsets, last)
    torch.library.opcheck(torch.ops.hald.crop_and_lookup.default, (flat, true) + args[2:] + (offsets,))
    bound = [int(v) for v in true.max(0).values]  # max_image_size, after out_rows
    torch.library.opcheck(torch.ops.hald.crop_and_lookup.default, (flat, true) + args[2:] + (offsets, -1, bound))


# ---------------------------------------------------------------------------------------------- errors
def _base():
    images, _ = padded_batch(3, 16, 16, seed=12, equal=True)
    return images, torch.tensor([0, 1, 2])


@pytest.mark.parametrize("mutate,match", [
    (lambda im, ids: dict(images=im.float()), "images must be uint8"),
    (lambda im, ids: dict(images=im[..., :1]), r"\[N, H, W, 3\]"),
    (lambda im, ids: dict(image_ids=torch.tensor([0, 3, 1])), "image_ids out of range"),
    (lambda im, ids: dict(image_ids=torch.tensor([0, -1, 1])), "image_ids out of range"),
    (lambda im, ids: dict(image_ids=ids.float()), "image_ids must be an integer"),
    (lambda im, ids: dict(boxes=torch.tensor([[0.5, 0.0, 0.6, 0.5]] * 3)), "boxes outside the image"),
    (lambda im, ids: dict(boxes=torch.tensor([[-0.1, 0.0, 0.5, 0.5]] * 3)), "boxes outside the image"),
    (lambda im, ids: dict(boxes=torch.tensor([[0.0, 0.0, float("nan"), 0.5]] * 3)), "boxes outside the image"),
    (lambda im, ids: dict(boxes=torch.tensor([[0.0, 0.0, 0.0, 0.5]] * 3)), "boxes outside the image"),
    (lambda im, ids: dict(boxes=torch.zeros(3, 4, dtype=torch.float16)), "boxes must be float32/float64"),
    (lambda im, ids: dict(boxes=torch.zeros(2, 4)), r"boxes must be \[3, 4\]"),
    (lambda im, ids: dict(flips=torch.zeros(3)), "flips must be bool or uint8"),
    (lambda im, ids: dict(image_sizes=torch.tensor([[16, 16], [17, 16], [4, 4]])), "image_sizes"),
    (lambda im, ids: dict(label_ids=torch.zeros(3, 2, 4, dtype=torch.long), label_values=torch.zeros(3, 2, 4),
                          slots=torch.tensor([0, 2, 1])), "slots out of range"),
    (lambda im, ids: dict(label_ids=torch.zeros(3, 2, 4, dtype=torch.long), label_values=torch.zeros(3, 2, 4)),
     "need slots"),
    (lambda im, ids: dict(label_ids=torch.zeros(2, 2, 4, dtype=torch.long), label_values=torch.zeros(2, 2, 4),
                          slots=torch.tensor([0, 1, 1])), r"label_ids must be \[3, SLI, k\]"),
    (lambda im, ids: dict(cutmix=CutMix(torch.tensor([0, 1, 3]), torch.zeros(3, 4, dtype=torch.int32))),
     "mix_partner out of range"),
    (lambda im, ids: dict(cutmix=CutMix(torch.tensor([0, 1, 2]), torch.full((3, 4), 9, dtype=torch.int32))),
     "mix_boxes out of range"),
    (lambda im, ids: dict(out_dtype=torch.float64), "out_dtype"),
    (lambda im, ids: dict(scale=(0.5, 0.1)), "scale must be"),
    (lambda im, ids: dict(image_ids=ids.to("meta")), "on one device"),
    (lambda im, ids: dict(boxes=torch.zeros(3, 4, device="meta")), "on one device"),
])
def test_errors(mutate, match):
    images, ids = _base()
    kw = dict(images=images, image_ids=ids)
    kw.update(mutate(images, ids))
    size = 8
    with pytest.raises((RuntimeError, ValueError, TypeError), match=match):
        crop_and_lookup(kw.pop("images"), kw.pop("image_ids"), size, **kw)

# CUDA: test_crop_cuda.py


# ------------------------------------------------------------------ awkward sizes, both renderers
# `_crop_and_lookup_band` renders on the CPU with the CUDA kernel's per-thread code (hald/resample.h's
# render_band_column, the CUDA tiling, window choice and CutMix handling), so the arithmetic of the
# CUDA kernel is checked here too; test_crop_cuda.py compares the GPU with it.
_SCHEMA_DEFAULTS = dict(image_sizes=None, boxes=None, flips=None, label_ids=None, label_values=None, slots=None,
                        mix_partner=None, mix_boxes=None, seed=0, offset=0, scale=[0.08, 1.0], ratio=[0.75, 4 / 3],
                        flip_prob=0.5, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], antialias=True,
                        out_dtype=torch.float32, channels_last=False, check=True)


def band_crop(images, image_ids, size, **kw):
    """The crops of `_crop_and_lookup_band` (the same keywords as the op's schema)."""
    args = dict(_SCHEMA_DEFAULTS, **kw)
    return torch.ops.hald._crop_and_lookup_band.default(images=images, image_ids=image_ids, size=size, **args)[0]


def pixel_boxes(pix, hw):
    """(top, left, h, w) pixel boxes -> fractions that map back to exactly those pixels."""
    pix, hw = torch.tensor(pix, dtype=torch.float64), torch.tensor(hw, dtype=torch.float64)
    return torch.stack([pix[:, 0] / hw[:, 0], pix[:, 1] / hw[:, 1], pix[:, 2] / hw[:, 0], pix[:, 3] / hw[:, 1]], 1)


# (name, images (n, Hmax, Wmax), size, antialias): every window of the CUDA kernel (2, 4, 8, 16, direct)
BAND_CASES = [("upscale_w2", (4, 20, 30), 64, True), ("mild_w4", (4, 60, 50), 40, True),
              ("w8", (4, 90, 70), 32, True), ("w16", (3, 160, 150), 24, True), ("direct", (3, 300, 260), 8, True),
              ("no_antialias", (4, 90, 70), 16, False), ("size_1", (3, 40, 30), 1, True),
              ("wide_band", (2, 50, 40), 45, True)]


def band_case(shape, size):
    """A padded batch of 10 replayed crops with flips and a CutMix record (boxes on both sides of the
    band boundaries): (images, sizes, ids, boxes, flips, partner, mix boxes)."""
    n, H, W = shape
    images, sizes = padded_batch(n, H, W, seed=size)
    B = 10
    mix = torch.tensor([[0, 0, size, size // 2 + 1]] * (B // 2) + [[size // 3, 1, size, size]] * (B - B // 2),
                       dtype=torch.int32).clamp(max=size)
    return (images, sizes, torch.arange(B) % n, random_boxes(B, seed=size + 1), torch.arange(B) % 2 == 1,
            torch.roll(torch.arange(B), 3), mix)


@pytest.mark.parametrize("name,shape,size,antialias", BAND_CASES, ids=[c[0] for c in BAND_CASES])
def test_band_renderer_matches_cpu_kernel_and_reference(name, shape, size, antialias):
    images, sizes, ids, boxes, flips, partner, mix = band_case(shape, size)
    kw = dict(image_sizes=sizes, boxes=boxes, flips=flips, antialias=antialias)
    cpu = crop_and_lookup(images, ids, size, **kw, cutmix=CutMix(partner, mix)).crops
    band = band_crop(images, ids, size, **kw, mix_partner=partner, mix_boxes=mix)
    ref = crop_reference(images, ids, size, boxes, flips, image_sizes=sizes, antialias=antialias,
                         mix_partner=partner, mix_boxes=mix)
    torch.testing.assert_close(band, ref, atol=ATOL[torch.float32], rtol=0)
    torch.testing.assert_close(band, cpu, atol=ATOL[torch.float32], rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_band_renderer_dtypes_and_layouts(dtype):
    images, sizes = padded_batch(3, 64, 80, seed=1)
    ids = torch.tensor([0, 1, 2, 2, 1])
    for channels_last in (False, True):
        cpu = crop_and_lookup(images, ids, 40, image_sizes=sizes, seed=3, out_dtype=dtype, channels_last=channels_last)
        band = band_crop(images, ids, 40, image_sizes=sizes, seed=3, out_dtype=dtype, channels_last=channels_last)
        assert band.dtype == dtype
        assert band.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        torch.testing.assert_close(band.float(), cpu.crops.float(), atol=ATOL[dtype], rtol=ATOL[dtype])


def test_awkward_crops_match_reference():
    """1-pixel crops, a 1-pixel output, 1 x n and n x 1 strips (extreme aspect ratios, up- and
    downscaled), tiny crops upscaled 100x, in a padded batch of mixed sizes, through both renderers."""
    g = torch.Generator().manual_seed(31)
    images = torch.randint(0, 256, (4, 120, 200, 3), dtype=torch.uint8, generator=g)
    sizes = torch.tensor([[120, 200], [3, 200], [120, 2], [17, 9]])
    ids = torch.tensor([0, 0, 1, 2, 3, 0, 1, 2, 3, 0])
    hw = sizes[ids].tolist()
    pix = [[5, 7, 1, 1], [0, 0, 120, 1], [1, 0, 1, 200], [0, 1, 120, 1], [0, 0, 17, 9], [60, 100, 2, 3],
           [0, 150, 3, 50], [100, 0, 20, 2], [16, 8, 1, 1], [0, 0, 1, 200]]
    boxes = pixel_boxes(pix, hw)
    flips = torch.tensor([0, 1, 0, 1, 1, 0, 1, 0, 1, 1], dtype=torch.bool)
    for size in (1, 7, 96):
        for antialias in (True, False):
            kw = dict(image_sizes=sizes, boxes=boxes, flips=flips, antialias=antialias)
            out = crop_and_lookup(images, ids, size, **kw)
            assert [boxes_to_pixels(out.boxes[b], *hw[b]).tolist() for b in range(len(ids))] == pix
            # Ground truth in double: torch's float bilinear is itself 4e-5 off on these strips.
            ref = crop_reference(images, ids, size, boxes, flips, image_sizes=sizes, antialias=antialias,
                                 compute_dtype=torch.float64)
            torch.testing.assert_close(out.crops, ref, atol=ATOL[torch.float32], rtol=0, msg=f"S={size}")
            torch.testing.assert_close(band_crop(images, ids, size, **kw), ref, atol=ATOL[torch.float32], rtol=0,
                                       msg=f"band S={size}")


def test_reused_output_buffers_are_not_shared():
    """Outputs come from a pool of recycled buffers: a live batch is never handed out again, and a
    freed one is reused with every pixel rewritten."""
    images, _ = padded_batch(4, 256, 256, seed=40, equal=True)
    ids = torch.arange(64) % 4
    a = crop_and_lookup(images, ids, 224, seed=1)  # 38 MB: pooled
    a_copy = a.crops.clone()
    b = crop_and_lookup(images, ids, 224, seed=2)
    assert a.crops.data_ptr() != b.crops.data_ptr() and torch.equal(a.crops, a_copy)
    ptr = a.crops.data_ptr()
    del a
    c = crop_and_lookup(images, ids, 224, seed=1)  # the freed buffer, rewritten in full
    assert c.crops.data_ptr() == ptr and torch.equal(c.crops, a_copy)
    view = c.crops[:3]
    del c
    d = crop_and_lookup(images, ids, 224, seed=3)  # a view keeps its buffer alive
    assert d.crops.data_ptr() != ptr and torch.equal(view, a_copy[:3])


# ---------------------------------------------------------------------------------------------------
# Packed images (image_offsets): the same crops as the padded batch they were cut from.

@pytest.mark.parametrize("op", ["crop_and_lookup", "_crop_and_lookup_band"])
@pytest.mark.parametrize("case", ["fresh", "replay", "labels_cutmix", "upscale_bf16_cl", "no_antialias_equal"])
def test_packed_images_give_the_padded_batch_crops(op, case):
    images, sizes = padded_batch(6, 70, 90, seed=21, equal=case == "no_antialias_equal")
    flat, offsets, true = packed_batch(images, sizes, seed=3)
    ids = torch.tensor([5, 0, 3, 3, 1, 2, 4, 0, 5])
    kw = dict(size=24, seed=7, offset=3, scale=[0.08, 1.0], ratio=[3 / 4, 4 / 3], flip_prob=0.5,
              mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], antialias=True, out_dtype=torch.float32,
              channels_last=False, check=True, boxes=None, flips=None, label_ids=None, label_values=None,
              slots=None, mix_partner=None, mix_boxes=None)
    if case == "replay":
        kw.update(boxes=random_boxes(len(ids), seed=4), flips=torch.tensor([1, 0, 1, 1, 0, 0, 1, 0, 1], dtype=torch.bool))
    if case == "labels_cutmix":
        lid = torch.randint(0, 50, (6, 2, 3))
        kw.update(label_ids=lid, label_values=torch.rand(6, 2, 3), slots=torch.randint(0, 2, (9,)),
                  mix_partner=torch.randperm(9), mix_boxes=torch.tensor([[2, 3, 15, 20]] * 9, dtype=torch.int32))
    if case == "upscale_bf16_cl":
        kw.update(size=120, out_dtype=torch.bfloat16, channels_last=True)
    if case == "no_antialias_equal":
        kw.update(antialias=False)
    fn = getattr(torch.ops.hald, op).default
    padded = fn(images=images, image_sizes=sizes, image_ids=ids, **kw)
    packed = fn(images=flat, image_sizes=true, image_ids=ids, image_offsets=offsets, **kw)
    for name, a, b in zip(("crops", "boxes", "flips", "label_ids", "label_values"), padded, packed):
        assert torch.equal(a, b), name


def test_packed_images_through_the_python_wrapper():
    images, sizes = padded_batch(4, 40, 30, seed=5)
    flat, offsets, true = packed_batch(images, sizes, seed=6)
    ids = torch.tensor([3, 1, 1, 0, 2])
    a = crop_and_lookup(images, ids, 16, image_sizes=sizes, seed=1, offset=2)
    b = crop_and_lookup(flat, ids, 16, image_sizes=true, image_offsets=offsets, seed=1, offset=2)
    assert torch.equal(a.crops, b.crops) and torch.equal(a.boxes, b.boxes) and torch.equal(a.flips, b.flips)


@pytest.mark.parametrize("change, match", [
    (lambda f, o, s: (f.view(-1, 3), o, s), "one flat uint8 buffer"),
    (lambda f, o, s: (f, o, None), "image_offsets need image_sizes"),
    (lambda f, o, s: (f, o.float(), s), "image_offsets must be an integer tensor"),
    (lambda f, o, s: (f, o[:-1], s), r"image_sizes must be \[2, 2\]"),
    (lambda f, o, s: (f, o.view(3, 1), s), "image_offsets must be 1-D"),
    (lambda f, o, s: (f, o - o.max() - 1, s), "image_offsets out of range"),
    (lambda f, o, s: (f, o + (f.numel() - o.max() - 2), s), "a packed image ends at byte"),
    (lambda f, o, s: (f, o, s * 0), r"image_sizes out of range"),
    (lambda f, o, s: (f.float(), o, s), "images must be uint8"),
])
def test_packed_images_bad_input_named(change, match):
    images, sizes = padded_batch(3, 12, 10, seed=8)
    flat, offsets, true = packed_batch(images, sizes, seed=9)
    f, o, s = change(flat, offsets, true)
    with pytest.raises((RuntimeError, ValueError), match=match):
        crop_and_lookup(f, torch.tensor([0, 1, 2]), 8, image_sizes=s, image_offsets=o)


def test_packed_images_out_of_the_buffer_without_checks_read_nothing_outside():
    """check=False skips the range checks; an image said to lie past the buffer's end then gets a 1 x 1
    crop at a clamped offset (the kernels never read outside), the others their true crops."""
    images, sizes = padded_batch(3, 12, 10, seed=12)
    flat, offsets, true = packed_batch(images, sizes, seed=13)
    bad = offsets.clone()
    bad[1] = flat.numel() + 10_000_000
    ids = torch.tensor([0, 1, 2])
    for op in (torch.ops.hald.crop_and_lookup.default, torch.ops.hald._crop_and_lookup_band.default):
        def run(offs, check):
            return op(images=flat, image_sizes=true, image_ids=ids, size=8, boxes=None, flips=None, label_ids=None,
                      label_values=None, slots=None, mix_partner=None, mix_boxes=None, seed=2, offset=0,
                      scale=[0.08, 1.0], ratio=[3 / 4, 4 / 3], flip_prob=0.5, mean=[0.485, 0.456, 0.406],
                      std=[0.229, 0.224, 0.225], antialias=True, out_dtype=torch.float32, channels_last=False,
                      check=check, image_offsets=offs)
        good, out = run(offsets, True), run(bad, False)
        assert torch.isfinite(out[0]).all()
        assert torch.equal(out[0][0], good[0][0]) and torch.equal(out[0][2], good[0][2])
        assert out[1][1].tolist() == [0.0, 0.0, 0.0, 0.0]
        assert out[0][1].flatten(1).std(1).max() == 0  # one pixel, spread over the crop


@pytest.mark.parametrize("op", ["crop_and_lookup", "_crop_and_lookup_band"])
def test_packed_images_with_max_image_size_give_the_same_crops(op):
    """max_image_size hands the kernels the bound they otherwise read from image_sizes: the exact bound
    and a looser one give the crops of the call without it (fresh boxes at upscale and downscale)."""
    images, sizes = padded_batch(6, 70, 90, seed=22)
    flat, offsets, true = packed_batch(images, sizes, seed=23)
    ids = torch.tensor([5, 0, 3, 3, 1, 2, 4, 0, 5])
    fn = getattr(torch.ops.hald, op).default
    hmax, wmax = (int(v) for v in true.max(0).values)
    for size in (24, 120):
        kw = dict(images=flat, image_sizes=true, image_ids=ids, image_offsets=offsets, size=size, seed=7,
                  offset=3, scale=[0.08, 1.0], ratio=[3 / 4, 4 / 3], flip_prob=0.5, mean=[0.485, 0.456, 0.406],
                  std=[0.229, 0.224, 0.225], antialias=True, out_dtype=torch.float32, channels_last=False,
                  check=True, boxes=None, flips=None, label_ids=None, label_values=None, slots=None,
                  mix_partner=None, mix_boxes=None)
        ref = fn(**kw)
        for bound in ([hmax, wmax], [hmax + 300, wmax + 7]):
            got = fn(**kw, max_image_size=bound)
            for name, a, b in zip(("crops", "boxes", "flips"), ref, got):
                assert torch.equal(a, b), (size, bound, name)


@pytest.mark.parametrize("bound, padded, match", [
    ((5,), False, "max_image_size must be"),
    ((0, 10), False, r"max_image_size must be in \[1"),
    ("short_h", False, r"image_sizes\[:, 0\] out of range.*within max_image_size"),
    ("short_w", False, r"image_sizes\[:, 1\] out of range.*within max_image_size"),
    ((40, 40), True, "max_image_size is for packed images"),
])
def test_max_image_size_bad_input_named(bound, padded, match):
    images, sizes = padded_batch(3, 12, 10, seed=8)
    flat, offsets, true = packed_batch(images, sizes, seed=9)
    hmax, wmax = (int(v) for v in true.max(0).values)
    bound = {"short_h": (hmax - 1, wmax), "short_w": (hmax, wmax - 1)}.get(bound, bound)
    with pytest.raises((RuntimeError, ValueError), match=match):
        if padded:
            crop_and_lookup(images, torch.tensor([0, 1, 2]), 8, image_sizes=sizes, max_image_size=bound)
        else:
            crop_and_lookup(flat, torch.tensor([0, 1, 2]), 8, image_sizes=true, image_offsets=offsets,
                            max_image_size=bound)


def test_max_image_size_too_small_without_checks_reads_nothing_outside():
    """check=False trusts max_image_size; a bound below the images' sizes clamps them (wrong pixels, never
    a read outside an image's bytes or the buffer)."""
    images, sizes = padded_batch(4, 40, 30, seed=14)
    flat, offsets, true = packed_batch(images, sizes, seed=15)
    ids = torch.tensor([0, 1, 2, 3, 1])
    for size in (8, 64):
        out = crop_and_lookup(flat, ids, size, image_sizes=true, image_offsets=offsets, max_image_size=(3, 2),
                              check=False, seed=1)
        assert torch.isfinite(out.crops).all()
        assert ((out.boxes[:, 0] + out.boxes[:, 2]) <= 1 + 1e-6).all()


# ---------------------------------------------------------------------------------------------------
# out_rows: only the first samples are rendered; the rest give CutMix partners their geometry.

@pytest.mark.parametrize("op", ["crop_and_lookup", "_crop_and_lookup_band"])
def test_out_rows_renders_the_first_samples_only(op):
    """A stored CutMix replays each partner's own crop (rows B..2B of the soft batch): with
    out_rows=B those rows give their geometry to the paste and are not drawn, and the B crops are
    the first B of the full render, bit for bit; boxes, flips and label rows come for every sample."""
    images, sizes = padded_batch(5, 60, 50, seed=41)
    B = 6
    ids = torch.tensor([0, 1, 2, 3, 4, 0, 2, 2, 4, 1, 3, 0])
    partner = torch.cat([torch.arange(B, 2 * B), torch.arange(B, 2 * B)])
    mix_boxes = torch.cat([torch.tensor([[2, 3, 15, 20]] * B), torch.zeros(B, 4, dtype=torch.int64)]).to(torch.int32)
    kw = dict(images=images, image_sizes=sizes, image_ids=ids, size=24, boxes=random_boxes(2 * B, seed=5),
              flips=torch.arange(2 * B) % 3 == 0, label_ids=torch.randint(0, 50, (5, 2, 3)),
              label_values=torch.rand(5, 2, 3), slots=torch.arange(2 * B) % 2, mix_partner=partner,
              mix_boxes=mix_boxes, seed=0, offset=0, scale=[0.08, 1.0], ratio=[3 / 4, 4 / 3], flip_prob=0.5,
              mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], antialias=True, out_dtype=torch.float32,
              channels_last=False, check=True)
    fn = getattr(torch.ops.hald, op).default
    full = fn(**kw)
    part = fn(**kw, out_rows=B)
    assert part[0].shape == (B, 3, 24, 24) and torch.equal(part[0], full[0][:B])
    for a, b in zip(full[1:], part[1:]):
        assert torch.equal(a, b)
    assert fn(**kw, out_rows=0)[0].shape == (0, 3, 24, 24)


def test_out_rows_out_of_range_is_named():
    images, sizes = padded_batch(2, 10, 10, seed=42)
    for bad in (-2, 5):
        with pytest.raises(RuntimeError, match=r"out_rows must be -1 \(every sample\) or in \[0, 4\]"):
            crop_and_lookup(images, torch.tensor([0, 1, 1, 0]), 8, image_sizes=sizes, out_rows=bad)
