"""Reading small image sets: IDX (Fashion-MNIST), NPY/NPZ arrays and image folders.

Everything returns an `ImageSet`: uint8 images (a list of HWC arrays of any size, 3 channels) plus int64
labels, the class names and a fingerprint that label stores record so a store is never replayed on
other images. Image folders are decoded by the loaders of hald_ext.data.loader (DALI or torch, the
same pixels), never by a decoder of their own.
"""
from __future__ import annotations

import gzip
import json
import os
import struct

import numpy as np
from PIL import Image

from hald_ext.data.files import ImageFiles
from hald_ext.data.folder import IMAGE_EXTENSIONS, list_image_folder  # noqa: F401  (re-exported)
from hald_ext.data.imageset import FINGERPRINT_KINDS, ImageSet, fingerprint, image_sizes  # noqa: F401  (re-exported)
from hald_ext.data.loader import decode_all, loader_backend, make_loader

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle_boot"]
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """An IDX file (optionally gzipped) as a numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    dims = struct.unpack(">" + "I" * ndim, data[4:header])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    count = int(np.prod(dims)) if dims else 1
    if len(data) - header != count * dtype.itemsize:
        raise ValueError(f"{path}: IDX payload has {len(data) - header} bytes, header says {count * dtype.itemsize}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _to_rgb(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    if img.shape[2] == 4:
        img = img[:, :, :3]
    return np.ascontiguousarray(img, dtype=np.uint8)


def load_fashion_mnist(split: str = "train", root: str = FASHION_MNIST_ROOT) -> ImageSet:
    """Fashion-MNIST from Debian's `dataset-fashion-mnist` (IDX files, gzipped), as 28x28 RGB."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    img_path = os.path.join(root, f"{prefix}-images-idx3-ubyte.gz")
    lab_path = os.path.join(root, f"{prefix}-labels-idx1-ubyte.gz")
    if not os.path.exists(img_path):
        raise FileNotFoundError(f"Fashion-MNIST not found at {root}: install Debian's package "
                                "`dataset-fashion-mnist` (`make data` does it)")
    images = read_idx(img_path)
    labels = read_idx(lab_path).astype(np.int64)
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(f"{root}: images {images.shape} and labels {labels.shape} disagree")
    return ImageSet([_to_rgb(im) for im in images], labels, list(FASHION_MNIST_CLASSES),
                    [f"fashion-mnist/{split}/{i}" for i in range(len(images))])


def _load_arrays(path: str) -> ImageSet:
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
            classes = [str(c) for c in z["classes"]] if "classes" in z else None
            sizes = z["image_sizes"] if "image_sizes" in z else None
            files_fp = json.loads(str(z["files_fingerprint"])) if "files_fingerprint" in z else None
        if images.dtype != np.uint8:
            raise ValueError(f"{path}: images must be uint8, got {images.dtype}")
        if sizes is not None:  # a padded stack of images of different sizes (hald select writes it)
            if sizes.shape != (len(images), 2) or (sizes < 1).any() or (sizes > images.shape[1:3]).any():
                raise ValueError(f"{path}: image_sizes {sizes.shape} does not describe images {images.shape}")
            images = [images[i, :h, :w] for i, (h, w) in enumerate(sizes.tolist())]
    else:
        images = np.load(path, allow_pickle=False)
        lab = path[: -len(".npy")] + "_labels.npy" if path.endswith(".npy") else None
        if lab is None or not os.path.exists(lab):
            raise FileNotFoundError(f"{path}: expected labels beside it in {lab}")
        labels = np.load(lab, allow_pickle=False)
        classes, files_fp = None, None
        if images.dtype != np.uint8:
            raise ValueError(f"{path}: images must be uint8, got {images.dtype}")
    labels = labels.astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{path}: {len(images)} images but {len(labels)} labels")
    if classes is None:
        classes = [str(c) for c in range(int(labels.max()) + 1 if len(labels) else 0)]
    return ImageSet([_to_rgb(im) for im in images], labels, classes, [f"array:{i}" for i in range(len(images))],
                    files_fingerprint=files_fp)


def _load_folder(root: str, loader: str = "auto", batch_size: int = 64) -> ImageSet:
    """Decode a class-per-folder tree through the loader (DALI or torch), in the folder's order."""

    ld = make_loader(root, batch_size, backend=loader, shard=(0, 1))
    images = decode_all(ld)
    names = [os.path.relpath(p, root).replace(os.sep, "/") for p in ld.paths]
    return ImageSet(images, np.asarray(ld.labels, dtype=np.int64), list(ld.classes), names, kind="folder",
                    files=ImageFiles.open(root))


def load_image_set(source: str, split: str = "train", loader: str = "auto") -> ImageSet:
    """`fashion-mnist` (Debian's copy), a folder of class sub-folders, an IDX images file (labels
    beside it as *labels-idx1-ubyte*), or NPZ / NPY arrays. `loader` (auto | dali | torch) decodes a
    folder; both give the same pixels. A file that does not decode raises ValueError naming it."""

    loader_backend(loader)  # an unknown name is an error whatever the source
    if source in ("fashion-mnist", "fashion_mnist"):
        return load_fashion_mnist(split)
    if os.path.isdir(source):
        return _load_folder(source, loader)
    if not os.path.exists(source):
        raise FileNotFoundError(f"image source {source!r} does not exist")
    if "idx3-ubyte" in source:
        images = read_idx(source)
        labels = read_idx(source.replace("images-idx3", "labels-idx1")).astype(np.int64)
        return ImageSet([_to_rgb(im) for im in images], labels, [str(c) for c in range(int(labels.max()) + 1)],
                        [f"array:{i}" for i in range(len(images))])
    return _load_arrays(source)


def write_image_folder(images: ImageSet, root: str, fmt: str = "png") -> list:
    """Write an ImageSet as root/<class>/<index>.<fmt>; returns the written paths."""

    paths = []
    for i, (im, lab) in enumerate(zip(images.images, images.labels)):
        d = os.path.join(root, images.classes[int(lab)])
        os.makedirs(d, exist_ok=True)
        p = os.path.join(d, f"{i:06d}.{fmt}")
        Image.fromarray(im).save(p)
        paths.append(p)
    return paths


def open_images(source: str, split: str = "train", loader: str = "auto"):
    """What every command opens: an image folder as its files (ImageFiles: a listing, nothing decoded),
    anything else as decoded arrays (`load_image_set`: Fashion-MNIST, IDX, NPZ / NPY)."""

    loader_backend(loader)  # an unknown name is an error whatever the source
    if isinstance(source, str) and os.path.isdir(source):
        return ImageFiles.open(source)
    return load_image_set(source, split, loader)


def check_same_classes(train: "ImageSet | list", held, train_name: str, held_name: str) -> None:
    """A held-out set must name the classes of the training set, in the same order (the class ids
    of the model's outputs); refuse, naming both, when it does not."""
    a = list(getattr(train, "classes", train))
    b = list(getattr(held, "classes", held))
    if a == b or _without_index_prefix(a) == _without_index_prefix(b):
        return
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    detail = (f"only in {train_name}: {only_a[:5]}; only in {held_name}: {only_b[:5]}" if only_a or only_b
              else "the same names in another order")
    raise ValueError(f"{held_name} has classes other than {train_name} ({len(b)} vs {len(a)} classes; {detail}): "
                     "the held-out set must hold the training set's classes")


def _without_index_prefix(classes: list) -> list:
    """Class names without the "<index>_" prefix `hald select` writes into folder names to keep a
    set's class order (e.g. Fashion-MNIST's "0_T-shirt_top"), when every name carries it."""
    width = len(str(len(classes) - 1))
    prefixes = [f"{i:0{width}d}_" for i in range(len(classes))]
    if all(c.startswith(p) for c, p in zip(classes, prefixes)):
        return [c[len(p):] for c, p in zip(classes, prefixes)]
    return list(classes)
