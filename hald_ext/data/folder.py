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


def list_image_folder(root: str) -> tuple[list, np.ndarray, list]:
    """(paths, class labels int64, class names) in the order every loader reads the folder. Refuses a
    folder without class sub-folders and a class sub-folder without images (naming it)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root!r} does not exist")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise ValueError(f"{root}: no class sub-folders (expected one folder per class: {root}/<class>/<image>)")
    paths, labels = [], []
    for ci, cname in enumerate(classes):
        files = [f for f in sorted(os.listdir(os.path.join(root, cname))) if f.lower().endswith(IMAGE_EXTENSIONS)]
        if not files:
            raise ValueError(f"{os.path.join(root, cname)}: class folder {cname!r} holds no images "
                             f"(extensions {', '.join(IMAGE_EXTENSIONS)}); remove it or add its images")
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


def decode_file(path: str) -> np.ndarray:
    """One image file as HWC uint8 RGB (torchvision's C++ decoders); ValueError naming a bad file."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    try:
        return decode_image(read_file(path), mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"{path}: cannot decode this image file (corrupt or not an image): {e}") from None


def find_undecodable(paths: list) -> str | None:
    """The first file of `paths` that does not decode (to name it when a batch decoder failed)."""
    for p in paths:
        try:
            decode_file(p)
        except ValueError:
            return p
    return None
