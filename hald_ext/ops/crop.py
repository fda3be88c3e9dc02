"""`hald::crop_and_lookup`: fused random-resized crop + flip + normalise + label-row gather.

    out = crop_and_lookup(images, image_ids, 224, boxes=codes, flips=flips,      # replay
                          label_ids=ids, label_values=vals, slots=slots)
    out = crop_and_lookup(images, image_ids, 224, seed=0, offset=step,           # fresh RRC
                          cutmix_alpha=1.0)
    logits = model(out.crops)
    loss = soft_hard_loss(logits, out.label_ids, out.label_values, ...)          # soft phase
    loss = soft_hard_loss(logits, hard_target=y, target_b=y[out.mix_partner],     # hard phase
                          mix_lambda=out.mix_lambda, hard_weight=1, soft_weight=0)
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from hald_ext import _ext
from hald_ext.core.device import to_device
from hald_ext.core.normalize import IMAGENET_MEAN, IMAGENET_STD

_OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class CutMix(NamedTuple):
    """A CutMix record for one batch: sample b shows sample partner[b]'s crop inside boxes[b]
    ((y0, x0, y1, x1) output pixels, end exclusive)."""

    partner: torch.Tensor  # int64 [B]
    boxes: torch.Tensor  # int32 [B, 4]


class CropResult(NamedTuple):
    crops: torch.Tensor  # [B, 3, S, S]
    boxes: torch.Tensor  # float32 [B, 4] (y, x, h, w) fractions actually cropped
    flips: torch.Tensor  # bool [B]
    label_ids: torch.Tensor | None  # [B, k] gathered rows, or None
    label_values: torch.Tensor | None
    mix_partner: torch.Tensor | None  # int64 [B] (CutMix), or None
    mix_lambda: torch.Tensor | None  # float32 [B]: share of each crop that is its own image


if _ext.loaded():
    @torch.library.register_fake("hald::crop_and_lookup")
    def _crop_fake(*args, **kwargs):
        a = dict(zip(_ext.schema_names(torch.ops.hald.crop_and_lookup.default), args), **kwargs)
        images, size = a["images"], a["size"]
        packed = a.get("image_offsets") is not None
        torch._check(images.dim() == (1 if packed else 4),
                     lambda: "crop_and_lookup: images must be [N, H, W, 3] (or flat [total] with image_offsets)")
        B = a["image_ids"].shape[0]
        rows = B if a.get("out_rows", -1) < 0 else a["out_rows"]
        crops = images.new_empty((rows, 3, size, size), dtype=a["out_dtype"])
        if a["channels_last"]:
            crops = crops.contiguous(memory_format=torch.channels_last)
        if a["label_ids"] is not None:
            k = a["label_ids"].shape[2]
            lid, lval = a["label_ids"].new_empty((B, k)), a["label_values"].new_empty((B, k))
        else:
            lid, lval = images.new_empty((0,), dtype=torch.int64), images.new_empty((0,), dtype=torch.float32)
        return (crops, images.new_empty((B, 4), dtype=torch.float32), images.new_empty((B,), dtype=torch.bool),
                lid, lval)


def sample_cutmix(batch: int, size: int, alpha: float, seed: int, offset: int,
                  device: torch.device | str = "cpu") -> CutMix:
    """A fresh CutMix record, the SRe2L / HALD rule: one lambda ~ Beta(alpha, alpha) and one box per
    batch, partners a random permutation. Drawn from (seed, offset) on the host (O(1) numpy calls
    per batch, no per-sample Python) and replayed by the kernel; a stored record replays the same way.
    On CUDA the record is copied from pinned memory without blocking the host."""
    if alpha <= 0:
        raise ValueError(f"cutmix alpha must be > 0, got {alpha}")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(seed) >> 32 & 0xFFFFFFFF, int(offset), 0xC07])
    lam = float(rng.beta(alpha, alpha))
    partner = rng.permutation(batch)
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(size * cut), int(size * cut)
    cy, cx = int(rng.integers(size)), int(rng.integers(size))
    y0, y1 = np.clip([cy - ch // 2, cy + ch // 2], 0, size)
    x0, x1 = np.clip([cx - cw // 2, cx + cw // 2], 0, size)
    box = torch.tensor([int(y0), int(x0), int(y1), int(x1)], dtype=torch.int32)
    return CutMix(to_device(torch.from_numpy(partner), device), to_device(box.expand(batch, 4).contiguous(), device))


def cutmix_lambda(mix_boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Effective lambda per sample (the weight of its own label): 1 - pasted area / S^2."""
    mb = mix_boxes.to(torch.int64)
    area = (mb[:, 2] - mb[:, 0]).clamp_min(0) * (mb[:, 3] - mb[:, 1]).clamp_min(0)
    return 1.0 - area.to(torch.float32) / float(size * size)


def crop_and_lookup(images: torch.Tensor, image_ids: torch.Tensor, size: int, *,
                    image_sizes: torch.Tensor | None = None, image_offsets: torch.Tensor | None = None,
                    boxes: torch.Tensor | None = None, flips: torch.Tensor | None = None,
                    label_ids: torch.Tensor | None = None, label_values: torch.Tensor | None = None,
                    slots: torch.Tensor | None = None,
                    seed: int = 0, offset: int = 0, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                    flip_prob: float = 0.5,
                    cutmix: CutMix | None = None, cutmix_alpha: float | None = None,
                    mean=IMAGENET_MEAN, std=IMAGENET_STD, antialias: bool = True,
                    out_dtype: torch.dtype = torch.float32, channels_last: bool = False,
                    check: bool = True, out_rows: int | None = None,
                    max_image_size: tuple[int, int] | None = None) -> CropResult:
    """Crops, flips and normalises B samples of uint8 NHWC `images` to [B, 3, size, size].

    Boxes: replayed from `boxes` [B, 4] ((y, x, h, w) fractions, or the label store's uint16 codes),
    or drawn fresh on the device with torchvision's RandomResizedCrop rule (`scale`, `ratio`, ten
    attempts then the centre crop) from (`seed`, `offset`); `offset` is the step counter. Flips:
    replayed from `flips` [B] or drawn with `flip_prob`. Several samples may share an image.
    Labels: with `label_ids` / `label_values` [N, SLI, k] and `slots` [B], the rows at
    (image_id, slot) are gathered in the same launch.
    CutMix: replay a record (`cutmix=CutMix(partner, boxes)`) or draw one (`cutmix_alpha`).
    `out_rows`: render only the first `out_rows` samples (crops [out_rows, 3, S, S]); the others only
    give CutMix partners their crop geometry (replaying a stored CutMix needs each partner's own box,
    not its whole crop). Boxes, flips and label rows come back for every sample.
    `image_sizes` [N, 2] gives the true (H, W) of each image of a padded batch. Packed images: `images`
    one flat uint8 buffer, image n's H x W x 3 bytes at byte `image_offsets[n]` (int64 [N]), sizes
    required -- no padding, so a batch costs its pixels whatever its largest image. The kernels need the
    largest (H, W) on the host: give it as `max_image_size` (what `ImageBatch.crop_kwargs()` does), or
    the op reads it from `image_sizes` (on CUDA one wait for the device, even with `check=False`).
    `check=False` skips the value checks that read tensors (they synchronise a GPU); the kernels
    still never read out of bounds, but bad ids then give garbage instead of an error. On CUDA with
    `check=False` the call never waits for the device (fresh CutMix records included).
    Interpolation is bilinear; `antialias=True` matches torchvision's resized_crop(antialias=True).
    On the CPU, the crops' buffer comes from a small pool of buffers that earlier (freed) batches of
    the same size returned, so a training loop pays no page faults for fresh output memory; a buffer
    is reused only once no tensor or view of it is left (docs/kernels-crop.md).
    """
    _ext.require()
    if not isinstance(images, torch.Tensor) or not isinstance(image_ids, torch.Tensor):
        raise TypeError("crop_and_lookup: images and image_ids must be tensors")
    if out_dtype not in _OUT_DTYPES:
        raise TypeError(f"crop_and_lookup: out_dtype must be one of {_OUT_DTYPES}, got {out_dtype}")
    if cutmix is not None and cutmix_alpha is not None:
        raise ValueError("crop_and_lookup: give either a CutMix record to replay or cutmix_alpha, not both")
    if cutmix_alpha is not None:
        cutmix = sample_cutmix(image_ids.shape[0], size, cutmix_alpha, seed, offset, images.device)
    partner, mix_boxes = (cutmix.partner, cutmix.boxes) if cutmix is not None else (None, None)
    # Checked here as well as in C++: with a meta / fake tensor among the inputs the dispatcher
    # would never reach the C++ checks.
    for name, t in (("image_ids", image_ids), ("image_sizes", image_sizes), ("image_offsets", image_offsets),
                    ("boxes", boxes), ("flips", flips),
                    ("label_ids", label_ids), ("label_values", label_values), ("slots", slots),
                    ("cutmix.partner", partner), ("cutmix.boxes", mix_boxes)):
        if t is not None and t.device != images.device:
            raise ValueError(f"crop_and_lookup: {name} is on {t.device} but images are on {images.device} "
                             "(all inputs must be on one device)")
    crops, boxes_used, flips_used, lid, lval = torch.ops.hald.crop_and_lookup.default(
        images=images, image_sizes=image_sizes, image_offsets=image_offsets, image_ids=image_ids, size=int(size), boxes=boxes, flips=flips,
        label_ids=label_ids, label_values=label_values, slots=slots, mix_partner=partner, mix_boxes=mix_boxes,
        seed=int(seed), offset=int(offset), scale=[float(v) for v in scale], ratio=[float(v) for v in ratio],
        flip_prob=float(flip_prob), mean=[float(v) for v in mean], std=[float(v) for v in std],
        antialias=bool(antialias), out_dtype=out_dtype, channels_last=bool(channels_last), check=bool(check),
        out_rows=-1 if out_rows is None else int(out_rows),
        max_image_size=[] if max_image_size is None else [int(v) for v in max_image_size])
    has_labels = label_ids is not None
    return CropResult(crops, boxes_used, flips_used, lid if has_labels else None, lval if has_labels else None,
                      None if partner is None else partner.to(torch.int64),
                      None if mix_boxes is None else cutmix_lambda(mix_boxes, size))
