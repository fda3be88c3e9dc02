"""Batches of decoded uint8 images + sample ids for crop_and_lookup, from an image folder or arrays.

`make_loader` picks DALI (hald_ext.data.dali) when it is installed and a plain torch loader with the
same outputs otherwise; `loader_backend()` says which one runs. Both:
  * read the folder in `load_image_set`'s order (class folders sorted, files sorted), so sample ids
    are the ids a label store records;
  * shard by torchrun's RANK / WORLD_SIZE: rank r reads the contiguous block
    [r * N // W, (r + 1) * N // W) of the samples (DALI's file-reader sharding), every epoch;
  * yield `LoadedBatch(images uint8 [B, Hmax, Wmax, 3], image_sizes int32 [B, 2], sample_ids int64 [B])`
    on the device, zero-padded to the batch's largest image; sample i's image is images[i].
"""
from __future__ import annotations

import os
from typing import Iterator, NamedTuple

import numpy as np
import torch

from hald_ext.data.sources import IMAGE_EXTENSIONS, ImageSet

BACKENDS = ("auto", "dali", "torch")


class LoadedBatch(NamedTuple):
    images: torch.Tensor  # uint8 [B, Hmax, Wmax, 3]
    image_sizes: torch.Tensor  # int32 [B, 2] (height, width)
    sample_ids: torch.Tensor  # int64 [B] indices into the image set


def shard_from_env() -> tuple[int, int]:
    """(rank, world size) as torchrun sets them; (0, 1) outside torchrun."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is not in [0, WORLD_SIZE={world})")
    return rank, world


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    return rank * n // world, (rank + 1) * n // world


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
        raise ValueError(f"backend must be one of {BACKENDS}, got {prefer!r}")
    if prefer == "torch":
        return "torch"
    if dali_available():
        return "dali"
    if prefer == "dali":
        raise ImportError("backend='dali' was asked for but nvidia.dali (with its PyTorch plugin) is not installed")
    return "torch"


def list_image_folder(root: str) -> tuple[list, np.ndarray, list]:
    """(paths, class labels, class names) in the order load_image_set reads the folder."""
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise ValueError(f"{root}: no class sub-folders (expected one folder per class)")
    paths, labels = [], []
    for ci, cname in enumerate(classes):
        for fname in sorted(os.listdir(os.path.join(root, cname))):
            if fname.lower().endswith(IMAGE_EXTENSIONS):
                paths.append(os.path.join(root, cname, fname))
                labels.append(ci)
    if not paths:
        raise ValueError(f"{root}: no images with extensions {IMAGE_EXTENSIONS}")
    return paths, np.asarray(labels, dtype=np.int64), classes


def epoch_order(n: int, rank: int, world: int, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    lo, hi = shard_range(n, rank, world)
    ids = np.arange(lo, hi)
    if shuffle:
        np.random.default_rng([seed, epoch]).shuffle(ids)
    return ids


def collate(images: list, ids: np.ndarray, device: torch.device) -> LoadedBatch:
    """HWC uint8 arrays -> one zero-padded batch on the device (one host->device copy)."""
    sizes = np.array([im.shape[:2] for im in images], dtype=np.int32).reshape(-1, 2)
    hmax, wmax = sizes.max(0)
    out = np.zeros((len(images), hmax, wmax, 3), dtype=np.uint8)
    for i, im in enumerate(images):  # the copy decoding already needed, once per sample
        out[i, : im.shape[0], : im.shape[1]] = im
    pin = device.type == "cuda"
    t = torch.from_numpy(out)
    return LoadedBatch((t.pin_memory() if pin else t).to(device, non_blocking=pin),
                       torch.from_numpy(sizes).to(device), torch.from_numpy(ids.astype(np.int64)).to(device))


class TorchLoader:
    """The fallback: torchvision.io decodes files (PNG / JPEG in C++) on the host."""

    backend = "torch"

    def __init__(self, source, batch_size: int, *, device="cpu", shuffle=False, seed=0, shard=None):
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.shuffle, self.seed = shuffle, seed
        self.rank, self.world = shard if shard is not None else shard_from_env()
        if isinstance(source, ImageSet):
            self.paths, self.images = None, source.images
            self.labels = np.asarray(source.labels)
        else:
            self.paths, self.labels, _ = list_image_folder(source)
            self.images = None
        self.epoch = 0

    def num_samples(self) -> int:
        return len(self.labels)

    def __len__(self) -> int:
        lo, hi = shard_range(self.num_samples(), self.rank, self.world)
        return -(-(hi - lo) // self.batch_size)

    def _decode(self, i: int) -> np.ndarray:
        if self.images is not None:
            return self.images[i]
        from torchvision.io import ImageReadMode, decode_image, read_file

        return decode_image(read_file(self.paths[i]), mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()

    def __iter__(self) -> Iterator[LoadedBatch]:
        order = epoch_order(self.num_samples(), self.rank, self.world, self.shuffle, self.seed, self.epoch)
        self.epoch += 1
        for s in range(0, len(order), self.batch_size):
            ids = order[s: s + self.batch_size]
            yield collate([self._decode(int(i)) for i in ids], ids, self.device)


def make_loader(source, batch_size: int, *, device="cpu", shuffle: bool = False, seed: int = 0,
                shard: tuple[int, int] | None = None, backend: str = "auto", num_threads: int = 2):
    """A loader over an image folder (path) or an ImageSet (arrays); see the module docstring.
    `shard` = (rank, world) overrides RANK / WORLD_SIZE. The returned object's `.backend` says
    'dali' or 'torch'."""
    if loader_backend(backend) == "dali":
        from hald_ext.data.dali import DaliLoader

        return DaliLoader(source, batch_size, device=device, shuffle=shuffle, seed=seed, shard=shard,
                          num_threads=num_threads)
    return TorchLoader(source, batch_size, device=device, shuffle=shuffle, seed=seed, shard=shard)


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
