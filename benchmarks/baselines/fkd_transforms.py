"""The crop / flip / CutMix transforms every FKD-family pipeline shares, written from:

  SRe2L  relabel/utils_fkd.py        RandomResizedCropWithCoords, ComposeWithCoords,
                                     RandomHorizontalFlipWithRes, rand_bbox, cutmix, mix_aug
  HALD   relabel/utils_fkd.py        the same classes (its cutmix moves tensors to `images.device`)

Same behaviour: a crop drawn with torchvision's RandomResizedCrop.get_params on the PIL image and
returned as (i, j, h, w) fractions of (H, W, H, W) in a float32 tensor, or replayed from stored
fractions (`coords.any()`); a flip drawn with torch.rand(1) < p or replayed from its stored status;
CutMix with one np.random.beta lambda, one np.random box (rand_bbox, whose first pair indexes rows)
and one torch.randperm partner permutation per batch, or replayed from (index, lambda, bbox).

Simplified: CPU only (the `.cuda()` moves are gone); mixup is not written (the benchmark records
CutMix, as both papers' ImageNet recipes do).
"""
from __future__ import annotations

import numpy as np
import torch
import torchvision
from torchvision.transforms import functional as t_F


class RandomResizedCropWithCoords(torchvision.transforms.RandomResizedCrop):
    def __call__(self, img, coords):
        try:
            reference = bool(coords.any())
        except AttributeError:
            reference = False
        if not reference:
            i, j, h, w = self.get_params(img, self.scale, self.ratio)
            coords = torch.FloatTensor((i / img.size[1], j / img.size[0], h / img.size[1], w / img.size[0]))
        else:
            i = coords[0].item() * img.size[1]
            j = coords[1].item() * img.size[0]
            h = coords[2].item() * img.size[1]
            w = coords[3].item() * img.size[0]
        return t_F.resized_crop(img, i, j, h, w, self.size, self.interpolation), coords


class RandomHorizontalFlipWithRes(torch.nn.Module):
    def __init__(self, p=0.5):
        super().__init__()
        self.p = p

    def forward(self, img, status):
        if status is not None:
            return (t_F.hflip(img), status) if status else (img, status)
        if torch.rand(1) < self.p:
            return t_F.hflip(img), True
        return img, False


class ComposeWithCoords(torchvision.transforms.Compose):
    def __call__(self, img, coords, status):
        for t in self.transforms:
            if isinstance(t, RandomResizedCropWithCoords):
                img, coords = t(img, coords)
            elif isinstance(t, RandomHorizontalFlipWithRes):
                img, status = t(img, status)
            else:
                img = t(img)
        return img, status, coords


def rand_bbox(size, lam):
    W, H = size[2], size[3]
    cut_rat = np.sqrt(1.0 - lam)
    cut_w, cut_h = int(W * cut_rat), int(H * cut_rat)
    cx, cy = np.random.randint(W), np.random.randint(H)
    bbx1 = np.clip(cx - cut_w // 2, 0, W)
    bby1 = np.clip(cy - cut_h // 2, 0, H)
    bbx2 = np.clip(cx + cut_w // 2, 0, W)
    bby2 = np.clip(cy + cut_h // 2, 0, H)
    return bbx1, bby1, bbx2, bby2


def cutmix(images, alpha, rand_index=None, lam=None, bbox=None):
    """fkd_save (rand_index None): draw; fkd_load: replay. Returns (images, index, lambda, bbox)."""
    if rand_index is None:
        rand_index = torch.randperm(images.size()[0])
        lam = np.random.beta(alpha, alpha)
        bbx1, bby1, bbx2, bby2 = rand_bbox(images.size(), lam)
    else:
        bbx1, bby1, bbx2, bby2 = bbox
    images[:, :, bbx1:bbx2, bby1:bby2] = images[rand_index, :, bbx1:bbx2, bby1:bby2]
    return images, rand_index.cpu(), lam, [bbx1, bby1, bbx2, bby2]


def mix_aug(images, mix_type, alpha=1.0, rand_index=None, lam=None, bbox=None):
    if mix_type == "cutmix":
        return cutmix(images, alpha, rand_index, lam, bbox)
    if mix_type is None:
        return images, None, None, None
    raise ValueError(f"mix_type {mix_type!r}: only 'cutmix' or None are written here")


def fkd_transform(size: int, scale=(0.08, 1.0), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
    """The transform both relabel scripts and SRe2L's train_FKD build: RRC with coords (bilinear),
    flip with status, ToTensor, Normalize."""
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode

    return ComposeWithCoords(transforms=[
        RandomResizedCropWithCoords(size=size, scale=scale, interpolation=InterpolationMode.BILINEAR),
        RandomHorizontalFlipWithRes(), transforms.ToTensor(), transforms.Normalize(mean=list(mean), std=list(std))])


def run_batches(batches, step, max_batches=None, on_batch=None):
    """The training loops' common tail: `step(images, target)` for each (images, target) of
    `batches`, counting samples and batches, stopping after `max_batches` (a timed part of an
    epoch); `on_batch(b)` after batch b. Returns (samples, batches)."""
    n = b = 0
    for images, target in batches:
        step(images, target)
        n, b = n + len(images), b + 1
        if on_batch is not None:
            on_batch(b)
        if max_batches is not None and b >= max_batches:
            break
    return n, b
