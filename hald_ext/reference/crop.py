"""Plain-PyTorch reference of `crop_and_lookup`: torchvision functional crops, one sample at a time.

This is the FKD-style path (crop box -> resized_crop -> flip -> normalise) written as obviously as
possible; the tests compare the fused kernel with it and the benchmark times it.
"""
from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from hald_ext.core.boxes import boxes_to_pixels, dequantize_boxes
from hald_ext.core.normalize import IMAGENET_MEAN, IMAGENET_STD


def crop_reference(images: torch.Tensor, image_ids: torch.Tensor, size: int, boxes: torch.Tensor,
                   flips: torch.Tensor, *, image_sizes: torch.Tensor | None = None,
                   mean=IMAGENET_MEAN, std=IMAGENET_STD, antialias: bool = True,
                   mix_partner: torch.Tensor | None = None, mix_boxes: torch.Tensor | None = None,
                   uint8_resize: bool = False, compute_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[B, 3, size, size] float32 crops.

    images: uint8 [N, H, W, 3] (a padded batch when image_sizes [N, 2] gives the true sizes);
    boxes: [B, 4] (y, x, h, w) fractions or uint16 codes; flips: bool [B].
    uint8_resize=False resizes the uint8 pixels as float (the exact function the kernel computes);
    True resizes uint8 -> uint8 as torchvision does on uint8 tensors (rounded output), the path
    users run today. compute_dtype=torch.float64 resizes in double: torch's float bilinear computes
    its source coordinates in float, which at 2000-4000 px sources is itself ~0.07 grey levels off.
    """
    if boxes.dtype == torch.uint16:
        boxes = dequantize_boxes(boxes)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    out = []
    for b in range(len(image_ids)):
        i = int(image_ids[b])
        H, W = (int(v) for v in image_sizes[i]) if image_sizes is not None else images.shape[1:3]
        img = images[i, :H, :W].permute(2, 0, 1)
        top, left, h, w = (int(v) for v in boxes_to_pixels(boxes[b].cpu(), H, W))
        crop = TF.resized_crop(img if uint8_resize else img.to(compute_dtype), top, left, h, w, [size, size],
                               interpolation=InterpolationMode.BILINEAR, antialias=antialias)
        if bool(flips[b]):
            crop = TF.horizontal_flip(crop)
        out.append((crop.float() / 255 - mean_t) / std_t)
    crops = torch.stack(out) if out else torch.empty(0, 3, size, size)
    return crops if mix_partner is None else paste_reference(crops, mix_partner, mix_boxes)


def paste_reference(x: torch.Tensor, partner: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """CutMix paste, per sample: row b shows row partner[b] of `x` inside boxes[b] ((y0, x0, y1, x1),
    pixels, end exclusive); `x` is left as it is."""
    out = x.clone()
    for b, (p, (y0, x0, y1, x1)) in enumerate(zip(partner.tolist(), boxes.tolist())):
        out[b, :, int(y0):int(y1), int(x0):int(x1)] = x[int(p), :, int(y0):int(y1), int(x0):int(x1)]
    return out


def gather_labels_reference(label_ids: torch.Tensor, label_values: torch.Tensor, image_ids: torch.Tensor,
                            slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [B, k] of [N, SLI, k] label tensors at (image_id, slot)."""
    return label_ids[image_ids.long(), slots.long()], label_values[image_ids.long(), slots.long()]


def cutmix_lambda_reference(mix_boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Effective CutMix lambda: the share of each crop that stays its own."""
    area = (mix_boxes[:, 2] - mix_boxes[:, 0]).clamp_min(0) * (mix_boxes[:, 3] - mix_boxes[:, 1]).clamp_min(0)
    return 1.0 - area.float() / float(size * size)
