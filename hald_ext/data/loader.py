"""Batches of decoded uint8 images for crop_and_lookup, from an image folder or an ImageSet.

`make_loader` picks DALI (hald_ext.data.dali) when it is installed and a plain torch loader with the
same outputs otherwise; `loader_backend()` says which one runs. Both:
  * read the folder in hald_ext.data.folder's order (class folders sorted, files sorted), so sample
    ids are the ids a label store records;
  * shard by torchrun's RANK / WORLD_SIZE (hald_ext.data.folder.shard_range), every epoch;
  * yield `ImageBatch(images uint8 [B, Hmax, Wmax, 3], image_sizes int32 [B, 2], image_ids = 0..B-1,
    sample_ids int64 [B])` on the device, zero-padded to the batch's largest image.
A file that cannot be decoded raises ValueError naming it, whichever backend runs.
"""
from __future__ import annotations

import warnings
from typing import Iterator

import numpy as np
import torch

from hald_ext.data.batch import ImageBatch, collate
from hald_ext.data.folder import decode_file, epoch_order, list_image_folder, shard_from_env, shard_range

BACKENDS = ("auto", "dali", "torch")


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except ImportError:
        return False
    return True


def loader_backend(prefer: str = "auto") -> str:
    """'dali' or 'torch': what `make_loader(backend=prefer)` will use here."""
    if prefer not in BACKENDS:
        raise ValueError(f"backend (--loader) must be one of {BACKENDS}, got {prefer!r}")
    if prefer == "torch":
        return "torch"
    if dali_available():
        return "dali"
    if prefer == "dali":
        raise ImportError("backend='dali' was asked for but nvidia.dali (with its PyTorch plugin) is not installed")
    return "torch"


def _source_parts(source):
    """(paths or None, images or None, labels, classes) of a folder path or an ImageSet."""
    from hald_ext.data.sources import ImageSet

    if isinstance(source, ImageSet):
        return None, source.images, np.asarray(source.labels), list(source.classes)
    paths, labels, classes = list_image_folder(source)
    return paths, None, labels, classes


class TorchLoader:
    """The fallback: torchvision.io decodes files (PNG / JPEG in C++) on the host."""

    backend = "torch"

    def __init__(self, source, batch_size: int, *, device="cpu", shuffle=False, seed=0, shard=None):
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.shuffle, self.seed = shuffle, seed
        self.rank, self.world = shard if shard is not None else shard_from_env()
        self.paths, self.images, self.labels, self.classes = _source_parts(source)
        self.epoch = 0

    def num_samples(self) -> int:
        return len(self.labels)

    def __len__(self) -> int:
        lo, hi = shard_range(self.num_samples(), self.rank, self.world)
        return -(-(hi - lo) // self.batch_size)

    def _decode(self, i: int) -> np.ndarray:
        return self.images[i] if self.images is not None else decode_file(self.paths[i])

    def __iter__(self) -> Iterator[ImageBatch]:
        order = epoch_order(self.num_samples(), self.rank, self.world, self.shuffle, self.seed, self.epoch)
        self.epoch += 1
        for s in range(0, len(order), self.batch_size):
            ids = order[s: s + self.batch_size]
            yield collate([self._decode(int(i)) for i in ids], ids, self.device)


def make_loader(source, batch_size: int, *, device="cpu", shuffle: bool = False, seed: int = 0,
                shard: tuple[int, int] | None = None, backend: str = "auto", num_threads: int = 2):
    """A loader over an image folder (path) or an ImageSet (arrays); see the module docstring.
    `shard` = (rank, world) overrides RANK / WORLD_SIZE. The returned object's `.backend` says
    'dali' or 'torch'; `.labels` and `.classes` describe the whole source."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if loader_backend(backend) == "dali":
        from hald_ext.data.dali import DaliLoader
        from hald_ext.data.folder import NeedsOtherDecoder

        try:
            return DaliLoader(source, batch_size, device=device, shuffle=shuffle, seed=seed, shard=shard,
                              num_threads=num_threads)
        except NeedsOtherDecoder as e:
            if backend == "dali":
                raise
            warnings.warn(f"{e}: reading this image set with the torch loader instead of DALI", stacklevel=2)
    return TorchLoader(source, batch_size, device=device, shuffle=shuffle, seed=seed, shard=shard)


def decode_all(loader) -> list:
    """Every image of the loader's shard as an HWC uint8 array at its true size, by sample id (one
    epoch of the loader; a sample outside the shard stays None)."""
    from hald_ext.data.batch import unpad

    out = [None] * loader.num_samples()
    for b in loader:
        for sid, im in zip(b.sample_ids.tolist(), unpad(b)):
            out[sid] = im
    return out


def resident_cache_from_loader(loader, num_samples: int | None = None):
    """Decode every sample of the loader's shard once (one epoch) into a ResidentImageCache on the
    loader's device, indexed by sample id (ids outside the shard stay empty, size 1 x 1)."""
    from hald_ext.data.cache import ResidentImageCache

    batches = list(loader)
    n = num_samples if num_samples is not None else loader.num_samples()
    hmax = max(int(b.images.shape[1]) for b in batches)
    wmax = max(int(b.images.shape[2]) for b in batches)
    dev = batches[0].images.device
    images = torch.zeros(n, hmax, wmax, 3, dtype=torch.uint8, device=dev)
    sizes = torch.ones(n, 2, dtype=torch.int32, device=dev)
    for b in batches:  # once per set, on the device
        images[b.sample_ids, : b.images.shape[1], : b.images.shape[2]] = b.images
        sizes[b.sample_ids] = b.image_sizes
    labels = torch.as_tensor(loader.labels, dtype=torch.int64, device=dev)
    equal = bool((sizes[:, 0] == hmax).all() and (sizes[:, 1] == wmax).all())
    return ResidentImageCache(images, None if equal else sizes, labels)
