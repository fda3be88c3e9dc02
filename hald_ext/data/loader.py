"""Batches of decoded uint8 images for crop_and_lookup, from an image folder or an ImageSet.

`make_loader` reads an image folder through FolderLoader (its files streamed by
hald_ext.data.stream.FileImages: DALI when installed, torch DataLoader workers otherwise; one decode
convention, hald_ext.data.decode) and decoded arrays through TorchLoader or DaliLoader;
`loader_backend()` says which decoder runs. All:
  * read a folder in hald_ext.data.folder's order (class folders sorted, files sorted), so sample ids
    are the ids a label store records;
  * shard by torchrun's RANK / WORLD_SIZE (hald_ext.data.folder.shard_range), every epoch;
  * yield `ImageBatch(images, image_sizes int32 [M, 2], image_ids [B], sample_ids int64 [B])` on the
    device (sample j is row image_ids[j]): arrays zero-padded to the batch's largest image (uint8
    [M, Hmax, Wmax, 3]); a folder's images packed with no padding (`.image_offsets`, see ImageBatch;
    `.image(row)` reads either layout, `.crop_kwargs()` hands either to crop_and_lookup).
A file that cannot be decoded raises ValueError naming it, whichever backend runs.
"""
from __future__ import annotations

from typing import Iterator

import torch

from hald_ext.data.batch import ImageBatch, all_equal, collate, packed_offsets, size_bound, unpad
from hald_ext.data.cache import ResidentImageCache
from hald_ext.data.dali import DaliLoader
from hald_ext.data.files import ImageFiles
from hald_ext.data.folder import ShardedEpochs
from hald_ext.data.stream import BACKENDS, FileImages, dali_available, loader_backend  # noqa: F401  (re-exported)


class FolderLoader(ShardedEpochs):
    """Epochs over an image folder's files: this rank's shard in `epoch_order` (shuffled when asked), cut
    into batches that a streaming source (FileImages: DALI or torch workers) decodes ahead. A batch's
    rows are its distinct images (`image_ids` maps each sample to its row, `sample_ids` are the folder's
    ids)."""

    def __init__(self, files: ImageFiles, batch_size: int, *, device="cpu", shuffle=False, seed=0, shard=None,
                 backend: str = "torch", num_threads: int = 2):
        self._init_epochs(files.labels, batch_size, shuffle, seed, shard)
        self.device = torch.device(device)
        self.files, self.classes = files, list(files.classes)
        self.backend = backend
        # batches are handed to the caller, who may keep them: no reused buffers
        self.source = FileImages(files, self.device, backend, workers=num_threads, reuse_buffers=False)

    @property
    def paths(self) -> list:
        return self.files.paths

    def __iter__(self) -> Iterator[ImageBatch]:
        plan = list(torch.from_numpy(self.next_order()).split(self.batch_size))
        self.source.prefetch(plan)
        for ids in plan:
            yield self.source.batch(ids)


class TorchLoader(ShardedEpochs):
    """Batches of decoded arrays (an ImageSet) on the device, in the folder loaders' batch layout."""

    backend = "torch"

    def __init__(self, source, batch_size: int, *, device="cpu", shuffle=False, seed=0, shard=None):
        self._init_epochs(source.labels, batch_size, shuffle, seed, shard)
        self.device = torch.device(device)
        self.paths = None
        self.images, self.classes = source.images, list(source.classes)

    def __iter__(self) -> Iterator[ImageBatch]:
        order = self.next_order()
        for s in range(0, len(order), self.batch_size):
            ids = order[s: s + self.batch_size]
            yield collate([self.images[int(i)] for i in ids], ids, self.device)


def make_loader(source, batch_size: int, *, device="cpu", shuffle: bool = False, seed: int = 0,
                shard: tuple[int, int] | None = None, backend: str = "auto", num_threads: int = 2):
    """A loader over an image folder (a path or an ImageFiles: its files streamed, see FolderLoader) or
    an ImageSet (arrays); see the module docstring. `shard` = (rank, world) overrides RANK / WORLD_SIZE.
    The returned object's `.backend` says 'dali' or 'torch'; `.labels` and `.classes` describe the whole
    source."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    chosen = loader_backend(backend)
    if isinstance(source, str):
        source = ImageFiles.open(source)
    if isinstance(source, ImageFiles):
        return FolderLoader(source, batch_size, device=device, shuffle=shuffle, seed=seed, shard=shard,
                            backend=chosen, num_threads=num_threads)
    if chosen == "dali":
        return DaliLoader(source, batch_size, device=device, shuffle=shuffle, seed=seed, shard=shard,
                          num_threads=num_threads)
    return TorchLoader(source, batch_size, device=device, shuffle=shuffle, seed=seed, shard=shard)


def decode_all(loader) -> list:
    """Every image of the loader's shard as an HWC uint8 array at its true size, by sample id (one
    epoch of the loader; a sample outside the shard stays None)."""

    out = [None] * loader.num_samples()
    for b in loader:
        for sid, im in zip(b.sample_ids.tolist(), unpad(b)):
            out[sid] = im
    return out


def resident_cache_from_loader(loader, num_samples: int | None = None):
    """Decode every sample of the loader's shard once (one epoch) into a ResidentImageCache on the
    loader's device, indexed by sample id (ids outside the shard stay empty, size 1 x 1): one
    [N, H, W, 3] tensor when the images are all one size, else packed (their pixels, no padding)."""

    batches = list(loader)
    n = num_samples if num_samples is not None else loader.num_samples()
    dev = batches[0].images.device
    sizes = torch.ones(n, 2, dtype=torch.int32)
    for b in batches:  # row image_ids[j] of a batch is sample sample_ids[j]
        sizes[b.sample_ids.cpu()] = b.image_sizes[b.image_ids].cpu().to(torch.int32)
    labels = torch.as_tensor(loader.labels, dtype=torch.int64, device=dev)
    if all_equal(sizes.numpy()):
        h, w = (int(v) for v in sizes[0])
        images = torch.zeros(n, h, w, 3, dtype=torch.uint8, device=dev)
        for b in batches:
            if b.image_offsets is None:
                images[b.sample_ids] = b.images[b.image_ids, :h, :w]
            else:
                for row, sid in zip(b.image_ids.tolist(), b.sample_ids.tolist()):
                    images[sid] = b.image(row)
        return ResidentImageCache(images, None, labels)
    offsets, total = packed_offsets(sizes.numpy())
    images = torch.zeros(total, dtype=torch.uint8, device=dev)
    for b in batches:  # once per set, on the device, image by image
        for row, sid in zip(b.image_ids.tolist(), b.sample_ids.tolist()):
            im = b.image(row)
            images[int(offsets[sid]):int(offsets[sid]) + im.numel()] = im.reshape(-1)
    return ResidentImageCache(images, sizes.to(dev), labels, torch.from_numpy(offsets).to(dev), size_bound(sizes))
