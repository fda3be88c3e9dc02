"""Resident image cache: decode a (small, distilled) image set once, keep it on the device as uint8,
and gather every step's crops from it with `crop_and_lookup`; stream batches when it does not fit.

Both sources answer `batch(image_ids) -> ImageBatch(images, image_sizes, image_ids, sample_ids)`, ready
for crop_and_lookup: the cache hands back its whole resident tensor and the ids unchanged (no copy at
all); the streaming source copies only the images a batch uses to the device and renumbers the ids
into that batch (`sample_ids` keeps the set's ids, for label lookups).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import torch

from hald_ext.data.batch import ImageBatch, all_equal, pack_images, pad_images, size_bound

if TYPE_CHECKING:  # annotation only
    from hald_ext.data.imageset import ImageSet


def device_budget(device: torch.device, fraction: float = 0.5) -> int:
    """Bytes we allow a resident cache to take: a fraction of the free device (or host) memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * fraction)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * fraction)
    except (ValueError, OSError):  # pragma: no cover - non-POSIX
        return 1 << 30


class ResidentImageCache:
    """The whole image set as one uint8 tensor on the device (decoded once): [N, H, W, 3] when the images
    are all one size (`image_sizes` None), or a padded batch with their sizes, or packed -- one flat
    buffer with image n at byte `image_offsets[n]`, no padding (what a set of real images of mixed sizes
    gets: padded to its largest, one 2,000 px ImageNet file would make every image take 12 MB)."""

    resident = True

    def __init__(self, images: torch.Tensor, image_sizes: torch.Tensor | None, labels: torch.Tensor,
                 image_offsets: torch.Tensor | None = None, max_image_size: tuple[int, int] | None = None):
        self.images = images
        self.image_sizes = image_sizes
        self.labels = labels
        self.image_offsets = image_offsets
        # packed: the bound crop_and_lookup needs on the host, read once here rather than every step
        if image_offsets is not None and max_image_size is None:
            max_image_size = size_bound(image_sizes)
        self.max_image_size = max_image_size if image_offsets is not None else None

    @classmethod
    def from_arrays(cls, images: list, labels, device="cpu") -> ResidentImageCache:
        """HWC uint8 arrays: of one size as one [N, H, W, 3] tensor, of mixed sizes packed."""
        device = torch.device(device)
        labels = torch.as_tensor(labels, dtype=torch.int64).to(device)
        if all_equal([im.shape[:2] for im in images]):
            return cls(torch.from_numpy(np.stack(images)).to(device), None, labels)
        flat, offsets, sizes = pack_images(images)
        return cls(flat.to(device), sizes.to(device), labels, offsets.to(device), size_bound(sizes))

    @classmethod
    def from_image_set(cls, image_set: ImageSet, device="cpu") -> ResidentImageCache:
        return cls.from_arrays(image_set.images, image_set.labels, device)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def batch(self, image_ids: torch.Tensor) -> ImageBatch:
        return ImageBatch(self.images, self.image_sizes, image_ids, image_ids, image_offsets=self.image_offsets,
                          max_image_size=self.max_image_size)

    def memory(self) -> dict:
        """Bytes held on the device, and how much of it is padding (a padded batch of mixed sizes)."""
        n = self.images.numel() * self.images.element_size()
        if self.image_sizes is None:
            payload = n
        else:
            payload = int((self.image_sizes[:, 0].long() * self.image_sizes[:, 1].long()).sum()) * 3
        extra = sum(t.numel() * t.element_size() for t in (self.labels, self.image_sizes, self.image_offsets)
                    if t is not None)
        return {"kind": "resident", "device": str(self.device), "images": len(self),
                "layout": "packed" if self.image_offsets is not None else "padded",
                "shape": list(self.images.shape), "bytes": n + extra, "pixel_bytes": payload,
                "padding_fraction": max(0.0, 1.0 - payload / n) if n else 0.0}


class StreamingImages:
    """Fallback when the set does not fit on the device: the decoded images stay on the host as they
    are (each its own size, no padded copy of the set), and each batch pads only the distinct images
    it uses to that batch's largest height and width and copies them to the device (through pinned
    memory when it is a GPU)."""

    resident = False

    def __init__(self, image_set: ImageSet, device="cpu"):
        self.device = torch.device(device)
        self.images = image_set.images
        self.labels = torch.as_tensor(image_set.labels, dtype=torch.int64).to(self.device)

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, image_ids: torch.Tensor) -> ImageBatch:
        ids = image_ids.cpu()
        unique, local = torch.unique(ids, return_inverse=True)
        padded, sizes = pad_images([self.images[i] for i in unique.tolist()])
        images = torch.from_numpy(padded)
        sizes = None if sizes is None else torch.from_numpy(sizes)
        nb = self.device.type == "cuda"
        if nb:
            images = images.pin_memory()
            sizes = None if sizes is None else sizes.pin_memory()
        return ImageBatch(images.to(self.device, non_blocking=nb),
                          None if sizes is None else sizes.to(self.device, non_blocking=nb),
                          local.to(self.device, non_blocking=nb), image_ids.to(self.device))

    def memory(self) -> dict:
        return {"kind": "streaming", "device": str(self.device), "images": len(self),
                "host_bytes": sum(int(im.nbytes) for im in self.images), "bytes": 0}
