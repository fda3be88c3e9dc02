"""`hald::crop_and_lookup`: fake kernel and the wrapper."""
from __future__ import annotations

from typing import NamedTuple

import torch

from hald_ext import _ext

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

if _ext.loaded():

    @torch.library.register_fake("hald::crop_and_lookup")
    def _crop_and_lookup_fake(images, image_ids, out_size, boxes, flips, seed, step, scale, ratio, flip_prob, mean,
                              std, out_dtype, channels_last, antialias, label_ids, label_codes, slots):
        torch._check(images.dim() == 4, lambda: "crop_and_lookup: images must be [N, H, W, 3]")
        B = image_ids.shape[0]
        if channels_last:
            out = images.new_empty((B, out_size, out_size, 3), dtype=out_dtype).permute(0, 3, 1, 2)
        else:
            out = images.new_empty((B, 3, out_size, out_size), dtype=out_dtype)
        used = images.new_empty((B, 4), dtype=torch.float32)
        fl = images.new_empty((B,), dtype=torch.bool)
        if label_ids is not None:
            gi = label_ids.new_empty((B, label_ids.shape[2]))
            gc = label_codes.new_empty((B, label_codes.shape[2]))
        else:
            gi = images.new_empty((0,), dtype=torch.int64)
            gc = images.new_empty((0,), dtype=torch.uint8)
        return out, used, fl, gi, gc


class CropResult(NamedTuple):
    crops: torch.Tensor  # [B, 3, S, S] out_dtype, normalised (NCHW or channels_last strides)
    boxes: torch.Tensor  # float32 [B, 4] (y, x, h, w) fractions of the pixel boxes used
    flips: torch.Tensor  # bool [B]
    labels: tuple | None  # (ids [B, k], codes [B, k]) gathered from the label tables, or None


def crop_and_lookup(images: torch.Tensor, image_ids: torch.Tensor, *, out_size: int,
                    boxes: torch.Tensor | None = None, flips: torch.Tensor | None = None, seed: int | None = None,
                    step: int = 0, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip_prob: float = 0.5,
                    mean=IMAGENET_MEAN, std=IMAGENET_STD, out_dtype: torch.dtype = torch.float32,
                    channels_last: bool = False, antialias: bool = True, label_ids: torch.Tensor | None = None,
                    label_codes: torch.Tensor | None = None, slots: torch.Tensor | None = None) -> CropResult:
    """Fused random-resized-crop + flip + normalise + label lookup, one call per batch.

    Args:
        images: uint8 [N, H, W, 3] (NHWC), the resident source images.
        image_ids: [B] integer index into `images` per output sample (repeats allowed: several crops
            per image).
        out_size: S, the output is S x S.
        boxes, flips: replay mode: [B, 4] boxes (y, x, h, w) as uint16 codes (value * 65535, the label
            store's format) or float fractions, mapped to pixels by `hald_ext.boxes.boxes_to_pixels`;
            flips bool [B].
        seed, step: fresh mode: per-sample crops drawn with torchvision's RandomResizedCrop rule (`scale`,
            `ratio`, ten attempts then the centre fallback) and flips with probability `flip_prob`, from a
            counter-based RNG keyed by (seed, step, sample index): the same crops on CPU and CUDA.
        mean, std: per-channel normalisation of x / 255.
        out_dtype: float32, bfloat16 or float16. channels_last: NHWC memory (NCHW shape).
        antialias: True = bilinear with antialiasing (PyTorch's upsample_bilinear2d_aa, as
            torchvision's resized_crop(antialias=True)); False = plain bilinear (align_corners=False).
        label_ids, label_codes, slots: label tables [N, SLI, k] and a slot per sample [B]: the rows
            [image_ids, slots] are gathered in the same call.

    Returns a CropResult (crops, boxes used as fractions, flips used, gathered labels or None).
    Ids, slots and boxes are validated (on CUDA this reads them on the host: one sync).
    Against torchvision on uint8 the crops differ by at most ~1 in 0..255 units (torchvision rounds
    its intermediate and output values to uint8; this op keeps float).
    """
    _ext.require()
    out, used, fl, gi, gc = torch.ops.hald.crop_and_lookup.default(
        images, image_ids, int(out_size), boxes, flips, None if seed is None else int(seed), int(step),
        [float(v) for v in scale], [float(v) for v in ratio], float(flip_prob), [float(v) for v in mean],
        [float(v) for v in std], out_dtype, bool(channels_last), bool(antialias), label_ids, label_codes, slots)
    return CropResult(out, used, fl, (gi, gc) if label_ids is not None else None)
