"""Plain-PyTorch reference of `crop_and_lookup`: torchvision's resized_crop per sample, then flip and
normalisation (the FKD-style path). Used by the tests and as the per-sample benchmark baseline."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from hald_ext.boxes import boxes_to_pixels, dequantize_boxes


def crop_reference(images: torch.Tensor, image_ids: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, *,
                   out_size: int, mean, std, antialias: bool = True, normalize: bool = True,
                   out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """images uint8 [N, H, W, 3]; boxes [B, 4] uint16 codes or float fractions; flips bool [B].

    antialias=True: torchvision resized_crop on the uint8 crop (rounded to uint8, as training code
    gets it). antialias=False: F.interpolate bilinear (align_corners=False) on the float crop, unrounded.
    Returns float [B, 3, S, S]: normalised, or in 0..255 units with normalize=False.
    """
    _, H, W, _ = images.shape
    frac = dequantize_boxes(boxes) if boxes.dtype in (torch.uint16, torch.int16, torch.int32) else boxes.float()
    pixels = boxes_to_pixels(frac, H, W).tolist()
    out = []
    for i, (t, l, h, w), f in zip(image_ids.tolist(), pixels, flips.tolist()):
        img = images[i].permute(2, 0, 1)
        if antialias:
            crop = TF.resized_crop(img, t, l, h, w, [out_size, out_size], antialias=True).float()
        else:
            crop = F.interpolate(img[:, t:t + h, l:l + w][None].float(), size=(out_size, out_size), mode="bilinear",
                                 align_corners=False)[0]
        out.append(crop.flip(-1) if f else crop)
    x = torch.stack(out) if out else torch.empty(0, 3, out_size, out_size)
    if normalize:
        m = torch.tensor(mean).view(1, 3, 1, 1)
        s = torch.tensor(std).view(1, 3, 1, 1)
        x = (x / 255 - m) / s
    return x.to(out_dtype)
