"""Crop boxes: the one convention shared by the label store, relabeling and the crop kernel.

A box is (y, x, h, w) as fractions of the image height / width, the FKD convention. Stored boxes are
quantised to uint16 (value * 65535, rounded). A box maps to integer pixels as
    top = round(y * H), left = round(x * W), height = max(1, round(h * H)), width = max(1, round(w * W)),
clipped to the image, which is what `torchvision.transforms.v2.functional.resized_crop` then crops.
"""
from __future__ import annotations

import math

import torch

BOX_SCALE = 65535


def quantize_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """float (..., 4) in [0, 1] -> uint16 codes."""
    if boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have a last dimension of 4 (y, x, h, w), got {tuple(boxes.shape)}")
    if not torch.isfinite(boxes).all() or (boxes < 0).any() or (boxes > 1).any():
        raise ValueError("boxes must be finite fractions in [0, 1]")
    return (boxes.double() * BOX_SCALE).round().to(torch.int32).to(torch.uint16)


def dequantize_boxes(codes: torch.Tensor) -> torch.Tensor:
    """uint16 codes -> float32 fractions."""
    return codes.to(torch.int32).float() / BOX_SCALE


def boxes_to_pixels(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Fractional (..., 4) boxes -> int64 (top, left, height, width) inside an H x W image."""
    b = boxes.double()
    top = (b[..., 0] * height).round().clamp(0, height - 1)
    left = (b[..., 1] * width).round().clamp(0, width - 1)
    h = (b[..., 2] * height).round().clamp_min(1)
    w = (b[..., 3] * width).round().clamp_min(1)
    h = torch.minimum(h, height - top)
    w = torch.minimum(w, width - left)
    return torch.stack([top, left, h, w], dim=-1).long()


def pixels_to_boxes(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """int (top, left, height, width) -> fractional (y, x, h, w)."""
    p = pixels.double()
    return torch.stack([p[..., 0] / height, p[..., 1] / width, p[..., 2] / height, p[..., 3] / width], -1).float()


def sample_rrc_pixels(height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                      generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop rule: ten attempts, then the centre crop fallback."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = int(torch.randint(0, height - h + 1, (1,), generator=generator).item())
            j = int(torch.randint(0, width - w + 1, (1,), generator=generator).item())
            return i, j, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def mix_boxes_to_pixels(codes: torch.Tensor, size: int) -> torch.Tensor:
    """A label store's CutMix boxes ((y, x, h, w) fractions of the crop, uint16 codes or floats) ->
    int32 (y0, x0, y1, x1) pixels of a `size` x `size` crop, end exclusive: what crop_and_lookup's
    CutMix replay pastes. y0 = round(y * S), y1 = round((y + h) * S), clipped to the crop; a box
    imported from pixel coordinates of an S-pixel crop comes back exactly."""
    f = dequantize_boxes(codes).double() if codes.dtype == torch.uint16 else codes.double()
    y0 = (f[..., 0] * size).round()
    x0 = (f[..., 1] * size).round()
    y1 = ((f[..., 0] + f[..., 2]) * size).round()
    x1 = ((f[..., 1] + f[..., 3]) * size).round()
    return torch.stack([y0, x0, y1, x1], -1).clamp(0, size).to(torch.int32)


ATTEMPTS = 10  # torchvision's RandomResizedCrop.get_params


def sample_rrc_batch(sizes: torch.Tensor, slots: int, scale, ratio, generator: torch.Generator) -> torch.Tensor:
    """int64 [N, slots, 4] (top, left, height, width) pixel boxes for images of `sizes` [N, 2] (H, W):
    the rule of `sample_rrc_pixels`, every draw at once (uniforms for all pairs and attempts first)."""
    n = sizes.shape[0]
    H = sizes[:, 0].double().view(n, 1, 1)
    W = sizes[:, 1].double().view(n, 1, 1)
    u_area = torch.rand(n, slots, ATTEMPTS, generator=generator, dtype=torch.float64)
    u_ratio = torch.rand(n, slots, ATTEMPTS, generator=generator, dtype=torch.float64)
    target = H * W * (scale[0] + u_area * (scale[1] - scale[0]))
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + u_ratio * (hi - lo))
    w = torch.sqrt(target * aspect).round()  # round half to even, as Python's round()
    h = torch.sqrt(target / aspect).round()
    ok = (w > 0) & (w <= W) & (h > 0) & (h <= H)
    first = ok.to(torch.int8).argmax(-1, keepdim=True)  # the first attempt that fits
    h, w = h.gather(-1, first).squeeze(-1), w.gather(-1, first).squeeze(-1)
    H2, W2 = H.view(n, 1), W.view(n, 1)
    u_i = torch.rand(n, slots, generator=generator, dtype=torch.float64)
    u_j = torch.rand(n, slots, generator=generator, dtype=torch.float64)
    top = torch.minimum((u_i * (H2 - h + 1)).floor(), H2 - h)
    left = torch.minimum((u_j * (W2 - w + 1)).floor(), W2 - w)
    # No attempt fits: the centre crop at the nearest allowed aspect ratio.
    in_ratio = W2 / H2
    fw = torch.where(in_ratio < min(ratio), W2, torch.where(in_ratio > max(ratio), (H2 * max(ratio)).round(), W2))
    fh = torch.where(in_ratio < min(ratio), (W2 / min(ratio)).round(), H2)
    fallback = ~ok.any(-1)
    fh, fw = fh.expand_as(h), fw.expand_as(w)
    h, w = torch.where(fallback, fh, h), torch.where(fallback, fw, w)
    top = torch.where(fallback, torch.div(H2 - fh, 2, rounding_mode="floor"), top)
    left = torch.where(fallback, torch.div(W2 - fw, 2, rounding_mode="floor"), left)
    return torch.stack([top, left, h, w], -1).long()
