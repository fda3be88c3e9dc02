"""The one batch type of the data path, and padding of images of different sizes into it."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


class ImageBatch(NamedTuple):
    """What every image source and loader hands to `crop_and_lookup`:
    sample b is row `image_ids[b]` of `images`, cropped within its true size `image_sizes[image_ids[b]]`,
    and is sample `sample_ids[b]` of the image set (the id a label store records)."""

    images: torch.Tensor  # uint8 [M, Hmax, Wmax, 3], zero-padded bottom / right
    image_sizes: torch.Tensor | None  # int32 [M, 2] (height, width); None when all are Hmax x Wmax
    image_ids: torch.Tensor  # int64 [B]: row of `images` of each sample
    sample_ids: torch.Tensor  # int64 [B]: index of each sample in the image set


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


def padded_nbytes(images: list) -> int:
    if not images:
        return 0
    hmax = max(im.shape[0] for im in images)
    wmax = max(im.shape[1] for im in images)
    return len(images) * hmax * wmax * 3


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
    images = batch.images.cpu().numpy()
    sizes = None if batch.image_sizes is None else batch.image_sizes.cpu().numpy()
    out = []
    for row in batch.image_ids.tolist():
        h, w = sizes[row] if sizes is not None else images.shape[1:3]
        out.append(np.ascontiguousarray(images[row, :h, :w]))
    return out
