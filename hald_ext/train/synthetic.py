"""A tiny synthetic image set and a fixed "teacher" for smoke tests and examples that must run in
seconds on a CPU. The class is the colour of a large blob on a noisy background, so it survives
random-resized crops and a small network learns it in a few epochs."""
from __future__ import annotations

import os
import tempfile

import numpy as np
import torch
from torch import nn

from hald_ext.data import ImageSet
from hald_ext.labels.relabel import relabel
from hald_ext.train.batches import IMAGENET_MEAN, IMAGENET_STD

CLASS_COLORS = np.array([[230, 40, 40], [40, 200, 40], [40, 60, 230], [220, 220, 40], [200, 40, 200],
                         [40, 200, 200], [140, 90, 30], [240, 240, 240]], dtype=np.float32)


def color_blobs(per_class: int, num_classes: int = 4, size: int = 16, seed: int = 0, prefix: str = "blob") -> ImageSet:
    if not 2 <= num_classes <= len(CLASS_COLORS):
        raise ValueError(f"num_classes must be in [2, {len(CLASS_COLORS)}]")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, labels = [], []
    for c in range(num_classes):
        for _ in range(per_class):
            img = rng.normal(110, 50, (size, size, 3))
            cy, cx = rng.uniform(0.3, 0.7, 2) * size
            r = rng.uniform(0.2, 0.4) * size
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            img[mask] = CLASS_COLORS[c] + rng.normal(0, 50, (mask.sum(), 3))
            images.append(np.clip(img, 0, 255).astype(np.uint8))
            labels.append(c)
    order = rng.permutation(len(images))
    return ImageSet([images[i] for i in order], np.asarray(labels, dtype=np.int64)[order],
                    [f"c{c}" for c in range(num_classes)], [f"{prefix}:{i}" for i in range(len(images))])


class ColorTeacher(nn.Module):
    """Logits = -distance between the mean colour of the crop and each class colour (normalised):
    a deterministic stand-in teacher whose crop labels drift when a crop misses the blob."""

    def __init__(self, num_classes: int, mean, std, sharpness: float = 4.0):
        super().__init__()
        colors = torch.from_numpy(CLASS_COLORS[:num_classes]) / 255
        m, s = torch.tensor(mean), torch.tensor(std)
        self.register_buffer("colors", (colors - m) / s)
        self.sharpness = sharpness

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = x.mean(dim=(2, 3))
        return -self.sharpness * torch.cdist(feat, self.colors)


def color_blob_labels(images: ImageSet, sli: int = 2, k: int = 3, temperature: float = 1.0, seed: int = 0,
                      path: str | None = None):
    """A real label store for `images`, written by `relabel` with ColorTeacher as the teacher (top-k of
    `sli` seeded crops per image); in a fresh temporary folder unless `path` is given."""


    if path is None:
        path = os.path.join(tempfile.mkdtemp(prefix="hald-blobs-"), "labels.safetensors")
    teacher = ColorTeacher(images.num_classes, IMAGENET_MEAN, IMAGENET_STD)
    return relabel(images, teacher, path, sli=sli, k=k, temperature=temperature, seed=seed, mean=IMAGENET_MEAN,
                   std=IMAGENET_STD, device="cpu", teacher_name="color-teacher", progress=False,
                   shard=False)
