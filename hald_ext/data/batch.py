"""The one batch type of the data path, and padding of images of different sizes into it."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


class _ImageBatchFields(NamedTuple):
    images: torch.Tensor  # uint8 [M, Hmax, Wmax, 3], zero-padded bottom / right; or packed (see ImageBatch)
    image_sizes: torch.Tensor | None  # int32 [M, 2] (height, width); None when all are Hmax x Wmax
    image_ids: torch.Tensor  # int64 [B]: row of `images` of each sample


class ImageBatch(_ImageBatchFields):
    """What every image source and loader hands to `crop_and_lookup`, `(images, image_sizes, image_ids)`:
    sample b is row `image_ids[b]` of `images`, cropped within its true size `image_sizes[image_ids[b]]`.
    `.sample_ids[b]` is its index in the image set (the id a label store records): the same as
    `image_ids` for the resident cache, the set's ids where a loader or the streaming source renumbered
    the rows. (An attribute, not a fourth field: the batch unpacks as the three crop_and_lookup inputs.)
    `.image_offsets` (int64 [M], or None for a padded batch): the batch is packed -- `images` one flat
    uint8 buffer holding image m's H x W x 3 bytes at byte `image_offsets[m]`, no padding -- and is
    passed to `crop_and_lookup(..., image_offsets=)` as it is (`.crop_kwargs()` gives the keywords).
    `.max_image_size` ((H, W) ints, or None): a bound on a packed batch's sizes known on the host, so the
    op need not read it from the device (its producers set it; None: the op reads `image_sizes`)."""

    def __new__(cls, images, image_sizes, image_ids, sample_ids=None, image_offsets=None, max_image_size=None):
        self = super().__new__(cls, images, image_sizes, image_ids)
        self.sample_ids = image_ids if sample_ids is None else sample_ids
        self.image_offsets = image_offsets
        self.max_image_size = None if max_image_size is None else (int(max_image_size[0]), int(max_image_size[1]))
        return self

    def __getnewargs__(self):
        return (*self, self.sample_ids, self.image_offsets, self.max_image_size)

    def crop_kwargs(self) -> dict:
        """The image layout keywords of crop_and_lookup for this batch."""
        if self.image_offsets is None:
            return {"image_sizes": self.image_sizes, "image_offsets": None}
        return {"image_sizes": self.image_sizes, "image_offsets": self.image_offsets,
                "max_image_size": self.max_image_size}

    def image(self, row: int) -> torch.Tensor:
        """Row `row`'s image, HWC uint8 at its true size (a view)."""
        if self.image_offsets is None:
            if self.image_sizes is None:
                return self.images[row]
            h, w = (int(v) for v in self.image_sizes[row])
            return self.images[row, :h, :w]
        h, w = (int(v) for v in self.image_sizes[row])
        o = int(self.image_offsets[row])
        return self.images[o:o + h * w * 3].view(h, w, 3)


LoadedBatch = ImageBatch  # the loaders' name for it before there was one type


def pad_images(images: list) -> tuple[np.ndarray, np.ndarray | None]:
    """HWC uint8 arrays -> one [N, Hmax, Wmax, 3] array (zero padding, bottom / right) and the true
    sizes [N, 2], or None for the sizes when every image already has the same shape."""
    shapes = np.array([im.shape[:2] for im in images], dtype=np.int32).reshape(-1, 2)
    if len(images) and (shapes == shapes[0]).all():
        return np.stack(images), None
    hmax, wmax = shapes.max(0) if len(images) else (1, 1)
    out = np.zeros((len(images), hmax, wmax, 3), dtype=np.uint8)
    for i, im in enumerate(images):  # one copy per image, the copy decoding already needed
        out[i, : im.shape[0], : im.shape[1]] = im
    return out, shapes


def packed_offsets(sizes: np.ndarray) -> tuple[np.ndarray, int]:
    """Byte offsets of images of `sizes` [N, 2] (height, width) packed one after another with no
    padding (crop_and_lookup's `image_offsets` layout), and the bytes they take (at least one pixel's)."""
    sizes = np.asarray(sizes).reshape(-1, 2)
    nbytes = sizes[:, 0].astype(np.int64) * sizes[:, 1] * 3
    offsets = np.zeros(len(sizes), dtype=np.int64)
    np.cumsum(nbytes[:-1], out=offsets[1:])
    return offsets, max(int(nbytes.sum()), 3)


def pack_images(images: list, alloc=None) -> tuple:
    """HWC uint8 images (arrays or tensors) -> (uint8 [total] holding them one after another, int64 [M]
    byte offsets, int32 [M, 2] sizes): crop_and_lookup's `image_offsets` layout, no padding. The
    buffer comes from `alloc(total)` when given (e.g. a reused one), else fresh memory."""
    sizes = np.array([im.shape[:2] for im in images], dtype=np.int32).reshape(-1, 2)
    offsets, total = packed_offsets(sizes)
    out = torch.empty(total, dtype=torch.uint8) if alloc is None else alloc(total)
    view = out.numpy()
    for o, im in zip(offsets.tolist(), images):
        a = np.asarray(im)
        view[o:o + a.size] = a.reshape(-1)
    return out, torch.from_numpy(offsets), torch.from_numpy(sizes)


def size_bound(sizes) -> tuple[int, int]:
    """The largest (height, width) of `sizes` [M, 2] (array or tensor; read once, at least 1 x 1): the
    `max_image_size` of a packed batch, computed where the sizes are still on the host."""
    s = sizes.cpu().numpy() if isinstance(sizes, torch.Tensor) else np.asarray(sizes)
    s = s.reshape(-1, 2)
    if not len(s):
        return 1, 1
    h, w = s.max(0)
    return max(int(h), 1), max(int(w), 1)


def all_equal(sizes: np.ndarray) -> bool:
    sizes = np.asarray(sizes).reshape(-1, 2)
    return bool(len(sizes) == 0 or (sizes == sizes[0]).all())


def resident_nbytes(sizes: np.ndarray) -> int:
    """Bytes a resident cache of images of `sizes` [N, 2] takes: one [N, H, W, 3] tensor when they are
    all one size, else packed (their pixels: no padding to the largest)."""
    return packed_offsets(sizes)[1] if len(np.asarray(sizes).reshape(-1, 2)) else 0


def collate(images: list, sample_ids: np.ndarray, device: torch.device) -> ImageBatch:
    """Decoded HWC uint8 arrays -> one zero-padded batch on the device (one host -> device copy);
    image sizes always given, so a loader's batches look alike whatever the images."""
    padded, sizes = pad_images(images)
    if sizes is None:
        sizes = np.tile(np.array(padded.shape[1:3], dtype=np.int32), (len(images), 1))
    pin = device.type == "cuda"
    t = torch.from_numpy(padded)
    b = len(images)
    return ImageBatch((t.pin_memory() if pin else t).to(device, non_blocking=pin), torch.from_numpy(sizes).to(device),
                      torch.arange(b, device=device), torch.from_numpy(sample_ids.astype(np.int64)).to(device))


def unpad(batch: ImageBatch) -> list:
    """The batch's images as HWC uint8 numpy arrays at their true sizes, in sample order."""
    return [np.ascontiguousarray(batch.image(row).cpu().numpy()) for row in batch.image_ids.tolist()]
