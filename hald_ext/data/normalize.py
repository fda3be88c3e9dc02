"""The normalisation constants (ImageNet's mean / std, the timm and torchvision default) and the one
uint8 -> normalised float conversion outside the crop op. Everything in the package imports them from
here."""
from __future__ import annotations

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(x_uint8: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float32 (x / 255 - mean) / std."""
    m = torch.tensor(mean, device=x_uint8.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x_uint8.device).view(1, 3, 1, 1)
    return (x_uint8.float().div_(255) - m) / s
