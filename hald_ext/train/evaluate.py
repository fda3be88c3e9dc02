"""Evaluation as the field does it: the held-out set streamed in batches through the loader (DALI or
torch), each image resized so its shorter side is S / ratio and center-cropped to S x S (torchvision's
Resize(int(S / 0.875)) + CenterCrop(S), timm's crop_pct, HALD's validation), then top-1, top-5 and the
mean cross-entropy.

The resize + center crop is one crop_and_lookup call per batch: the center window of the resized
image, mapped back to the original image's pixels (rounded to whole pixels), is cropped and resized
to S with the same antialiased bilinear filter. Images already S x S are used untouched. The ratio
defaults to 0.875 for image folders (natural images) and to 1 for array sets (Fashion-MNIST, NPZ),
whose images are whole, centred objects that a crop would cut.
"""
from __future__ import annotations

import contextlib
import os

import torch
from torch import nn

from hald_ext.core import distributed as D
from hald_ext.core.device import take
from hald_ext.core.normalize import IMAGENET_MEAN, IMAGENET_STD
from hald_ext.data.files import ImageFiles
from hald_ext.data.folder import shard_range
from hald_ext.data.loader import loader_backend, make_loader
from hald_ext.data.sources import ImageSet
from hald_ext.data.stream import FileImages
from hald_ext.ops import crop_and_lookup

DEFAULT_CROP_RATIO = 0.875


def center_crop_boxes(image_sizes: torch.Tensor, size: int, ratio: float) -> torch.Tensor:
    """float32 [M, 4] (y, x, h, w) fractions of each image: the window that Resize(int(size / ratio)) on
    the shorter side then CenterCrop(size) keeps, in whole pixels of the original; (0, 0, 1, 1) for an
    image already size x size. Element-wise on the sizes' device (no host sync on a GPU)."""
    if not 0 < ratio <= 1:
        raise ValueError(f"eval crop ratio must be in (0, 1], got {ratio}")
    hw = image_sizes.to(torch.float64)
    h, w = hw[:, 0], hw[:, 1]
    resized = int(size / ratio)
    # torchvision Resize(int): shorter side -> resized, longer side -> int(resized * long / short).
    rh = torch.where(h <= w, torch.full_like(h, resized), (resized * h / w).floor())
    rw = torch.where(w < h, torch.full_like(w, resized), (resized * w / h).floor())
    scale_h, scale_w = h / rh, w / rw
    top = ((rh - size) / 2).round() * scale_h
    left = ((rw - size) / 2).round() * scale_w
    ch, cw = (size * scale_h).round().clamp(1), (size * scale_w).round().clamp(1)
    top = top.round().clamp(0).minimum(h - ch)
    left = left.round().clamp(0).minimum(w - cw)
    boxes = torch.stack([top / h, left / w, ch / h, cw / w], -1)
    exact = ((h == size) & (w == size))[:, None]
    whole = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64, device=boxes.device)
    return torch.where(exact, whole, boxes).float()


class EvalData:
    """A held-out set read in batches of `batch_size` (each torchrun rank its shard). `source`: an image
    folder (a path or an ImageFiles: its files streamed from disk, decoded ahead by `loader`'s DALI
    pipeline or torch workers, never kept) or an ImageSet (decoded arrays, through the loader).
    `crop_ratio` None: 0.875 for a folder, 1 for arrays."""

    def __init__(self, source, img_size: int, device="cpu", batch_size: int = 256, loader: str = "auto",
                 crop_ratio: float | None = None, workers: int | None = None):
        self.device = torch.device(device)
        self.img_size = int(img_size)
        if isinstance(source, str) and os.path.isdir(source):
            source = ImageFiles.open(source)
        folder = not isinstance(source, ImageSet) or source.kind == "folder"
        self.crop_ratio = (DEFAULT_CROP_RATIO if folder else 1.0) if crop_ratio is None else float(crop_ratio)
        if not 0 < self.crop_ratio <= 1:
            raise ValueError(f"eval crop ratio must be in (0, 1], got {self.crop_ratio}")
        info = D.current()  # a process group set up without torchrun's env still shards by its ranks
        shard = (info.rank, info.world_size) if info.enabled else None
        if isinstance(source, ImageFiles):
            self.loader = None
            self.files = FileImages(source, self.device, loader_backend(loader), workers)
            rank, world = shard if shard is not None else (0, 1)
            lo, hi = shard_range(len(source), rank, world)
            self.plan = list(torch.arange(lo, hi).split(batch_size))
            self.classes, labels = list(source.classes), source.labels
        else:
            self.loader = make_loader(source, batch_size, device=self.device, backend=loader, shard=shard)
            self.classes, labels = list(self.loader.classes), self.loader.labels
        self.targets = torch.as_tensor(labels, dtype=torch.int64, device=self.device)

    def __len__(self) -> int:
        return len(self.targets)

    def _image_batches(self):
        if self.loader is not None:
            yield from self.loader
            return
        self.files.prefetch(self.plan)
        for ids in self.plan:
            yield self.files.batch(ids)

    def batches(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        """(normalised crops [B, 3, S, S], int64 targets [B], sample ids [B]) per batch of this rank."""

        for b in self._image_batches():
            sizes = b.image_sizes if b.image_sizes is not None else \
                torch.tensor(b.images.shape[1:3], dtype=torch.int32).expand(b.images.shape[0], 2)
            boxes = center_crop_boxes(sizes, self.img_size, self.crop_ratio)
            r = crop_and_lookup(b.images, b.image_ids, self.img_size, **b.crop_kwargs(),
                                boxes=take(boxes, b.image_ids), flips=torch.zeros_like(b.image_ids, dtype=torch.bool),
                                mean=mean, std=std)
            yield r.crops, self.targets[b.sample_ids], b.sample_ids


@torch.no_grad()
def evaluate(model: nn.Module, data: EvalData, mean=IMAGENET_MEAN, std=IMAGENET_STD, amp: bool = False) -> dict:
    """top-1 / top-5 accuracy (%) and mean cross-entropy; under torchrun each rank evaluates its
    shard and the sums are all-reduced."""
    was_training = model.training
    model.eval()
    device = data.device
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top-1 hits, top-5 hits, count
    for x, y, _ in data.batches(mean, std):
        with autocast(device, amp):
            logits = model(x)
        logits = logits.float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit = top == y[:, None]
        sums += torch.stack([nn.functional.cross_entropy(logits, y, reduction="sum").double(),
                             hit[:, 0].sum().double(), hit.any(1).sum().double(),
                             torch.tensor(float(len(y)), dtype=torch.float64, device=device)])
    D.all_reduce_sum(sums)
    model.train(was_training)
    loss, top1, top5, n = sums.tolist()
    return {"eval_loss": loss / n, "eval_top1": 100 * top1 / n, "eval_top5": 100 * top5 / n}


def autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
