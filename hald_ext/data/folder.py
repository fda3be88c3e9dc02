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
import torch

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
        img = decode_image(read_file(path), mode=ImageReadMode.RGB)
        if img.dtype != torch.uint8:  # 16-bit PNGs decode to uint16: keep the high byte (8-bit RGB)
            img = (img.to(torch.int32) >> 8).to(torch.uint8)
        return img.permute(1, 2, 0).numpy()
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"{path}: cannot decode this image file (corrupt or not an image): {e}") from None


def image_size(path: str) -> tuple:
    """(height, width) of an image file from its header (no decode), in the stored orientation (the
    decoders ignore EXIF orientation); ValueError naming a file that is not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise ValueError(f"{path}: cannot read this image file's header (corrupt or not an image): {e}") from None
    return int(h), int(w)


def find_undecodable(paths: list) -> str | None:
    """The first file of `paths` that does not decode (to name it when a batch decoder failed)."""
    for p in paths:
        try:
            decode_file(p)
        except ValueError:
            return p
    return None


_TAIL = 4096  # bytes searched for an end marker (some writers append a little after it)


def _jpeg_markers_valid(path: str) -> bool:
    """Walks a JPEG's marker segments and checks that, inside entropy-coded data, every 0xFF byte is
    followed by a byte that may follow it there (0x00 stuffing, 0xFF fill, RSTn or a marker 0xC0..0xFE):
    the corruption DALI's parser reports as "Invalid marker" (and may then crash on)."""
    data = np.fromfile(path, dtype=np.uint8)
    n, i = len(data), 2
    while i + 2 <= n:
        if data[i] != 0xFF:
            return False
        marker = int(data[i + 1])
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker == 0xD9:
            return True
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length
            i += 2
            continue
        if marker < 0xC0 or i + 4 > n:
            return False
        length = (int(data[i + 2]) << 8) | int(data[i + 3])
        if length < 2:
            return False
        i += 2 + length
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next real marker
            ff = np.flatnonzero(data[i:-1] == 0xFF) + i
            nxt = data[ff + 1]
            real = ~((nxt == 0x00) | (nxt == 0xFF) | ((nxt >= 0xD0) & (nxt <= 0xD7)))
            bad = real & (nxt < 0xC0) & (nxt != 0x01)
            first_real = ff[real]
            if not len(first_real):
                return False
            if bad[: np.argmax(real) + 1].any():
                return False
            i = int(first_real[0])
    return False


class NeedsOtherDecoder(ValueError):
    """A file that fails the structural check but that torchvision's decoder reads (a JPEG with stray
    bytes, data appended after the image): too risky for DALI's CPU decoder, fine for the torch loader."""


def check_image_file(path: str) -> None:
    """A cheap structural check before a batch decoder sees the file (DALI's CPU JPEG decoder can crash
    the process on a truncated file instead of raising): the format's signature at the start and, for
    JPEG / PNG, its end marker near the end. ValueError naming the file when either is missing."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(16)
        f.seek(max(0, size - _TAIL))
        tail = f.read()
    if head.startswith(b"\xff\xd8"):
        ok, what = b"\xff\xd9" in tail, "JPEG end marker (FFD9): the file is truncated"
        if ok:
            ok, what = _jpeg_markers_valid(path), "valid JPEG marker structure: the file is corrupt"
    elif head.startswith(b"\x89PNG\r\n\x1a\n"):
        ok, what = b"IEND" in tail, "PNG IEND chunk: the file is truncated"
    elif head.startswith(b"BM") or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        ok, what = True, ""
    else:
        ok, what = False, "image signature (JPEG, PNG, BMP or WebP): not an image file"
    if not ok:
        raise ValueError(f"{path}: cannot decode this image file: no {what}")
