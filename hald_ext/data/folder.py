"""The folder walk and the rank sharding, written once below both loaders (torch and DALI).

An image folder is `root/<class>/<file>` with one sub-folder per class. Classes are the sub-folders in
sorted order, files are sorted within a class, and a sample's id is its position in that order: the
id a label store records.

Sharding follows torchrun: rank r of W reads the contiguous block [r * N // W, (r + 1) * N // W) of
the samples (DALI's file-reader sharding), every epoch.
"""
from __future__ import annotations

import os

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def image_folder_classes(root: str):
    """(class names, an iterator of (class index, class name, its image file names sorted)) in the
    order every loader reads the folder, one class at a time (a listing of ImageNet's 1.28M files
    never holds them all as Python strings at once). Refuses a folder without class sub-folders and a
    class sub-folder without images (naming it)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root!r} does not exist")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise ValueError(f"{root}: no class sub-folders (expected one folder per class: {root}/<class>/<image>)")

    def per_class():
        for ci, cname in enumerate(classes):
            files = sorted(f for f in os.listdir(os.path.join(root, cname)) if f.lower().endswith(IMAGE_EXTENSIONS))
            if not files:
                raise ValueError(f"{os.path.join(root, cname)}: class folder {cname!r} holds no images "
                                 f"(extensions {', '.join(IMAGE_EXTENSIONS)}); remove it or add its images")
            yield ci, cname, files

    return classes, per_class()


def list_image_folder(root: str) -> tuple[list, np.ndarray, list]:
    """(paths, class labels int64, class names) in the order every loader reads the folder (see
    image_folder_classes; this one holds every path as a string: for small folders)."""
    classes, per_class = image_folder_classes(root)
    paths, labels = [], []
    for ci, cname, files in per_class:
        paths += [os.path.join(root, cname, f) for f in files]
        labels += [ci] * len(files)
    return paths, np.asarray(labels, dtype=np.int64), classes


def shard_from_env() -> tuple[int, int]:
    """(rank, world size) as torchrun sets them; (0, 1) outside torchrun."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is not in [0, WORLD_SIZE={world})")
    return rank, world


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    return rank * n // world, (rank + 1) * n // world


def epoch_order(n: int, rank: int, world: int, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    """This rank's sample ids for one epoch (shuffled within the shard when asked)."""
    lo, hi = shard_range(n, rank, world)
    ids = np.arange(lo, hi)
    if shuffle:
        np.random.default_rng([seed, epoch]).shuffle(ids)
    return ids


class ShardedEpochs:
    """What every loader shares: this rank's shard of `labels` and its order in each epoch (shuffled
    within the shard when asked, from (seed, epoch))."""

    def _init_epochs(self, labels, batch_size: int, shuffle: bool, seed: int, shard) -> None:
        self.labels = np.asarray(labels)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world = shard if shard is not None else shard_from_env()
        self.epoch = 0

    def num_samples(self) -> int:
        return len(self.labels)

    def __len__(self) -> int:
        lo, hi = shard_range(self.num_samples(), self.rank, self.world)
        return -(-(hi - lo) // self.batch_size)

    def next_order(self) -> np.ndarray:
        order = epoch_order(self.num_samples(), self.rank, self.world, self.shuffle, self.seed, self.epoch)
        self.epoch += 1
        return order
