"""Reading small image sets: IDX (Fashion-MNIST), NPY/NPZ arrays and image folders.

Everything returns an `ImageSet`: uint8 images (a list of HWC arrays of any size, 3 channels) plus int64
labels, the class names and a fingerprint that label stores record so a store is never replayed on
other images. Image folders are decoded by the loaders of hald_ext.data.loader (DALI or torch, the
same pixels), never by a decoder of their own.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import struct

import numpy as np

from hald_ext.data.files import ImageFiles
from hald_ext.data.decode import decode_file
from hald_ext.data.folder import IMAGE_EXTENSIONS, list_image_folder  # noqa: F401  (re-exported)

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle_boot"]
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclasses.dataclass
class ImageSet:
    images: list  # uint8 HWC numpy arrays (C = 3)
    labels: np.ndarray  # int64 [N]
    classes: list
    names: list  # one stable name per image (file path relative to the root, or "array:<i>")
    kind: str = "arrays"  # "folder" (natural images, decoded from files) or "arrays" (IDX / NPZ / NPY)
    # The folder files these images were decoded from (`load_image_set` of a folder), or their files
    # fingerprint (an NPZ that `hald select` wrote from a folder records it): a store identifying its
    # images by their files then accepts the decoded set.
    files: "ImageFiles | None" = None
    files_fingerprint: dict | None = None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def fingerprint(self) -> dict:
        return fingerprint(self)

    def padded(self) -> tuple:
        """([N, Hmax, Wmax, 3] uint8 zero-padded, int32 [N, 2] true sizes or None when all are equal)."""
        from hald_ext.data.batch import pad_images

        return pad_images(self.images)

    def stacked(self) -> np.ndarray:
        """[N, H, W, 3] uint8 when every image has the same size."""
        shapes = {im.shape for im in self.images}
        if len(shapes) != 1:
            raise ValueError(f"images have {len(shapes)} different shapes; use a padded batch instead")
        return np.stack(self.images)


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
    from hald_ext.data.loader import decode_all, make_loader

    ld = make_loader(root, batch_size, backend=loader, shard=(0, 1))
    images = decode_all(ld)
    names = [os.path.relpath(p, root).replace(os.sep, "/") for p in ld.paths]
    return ImageSet(images, np.asarray(ld.labels, dtype=np.int64), list(ld.classes), names, kind="folder",
                    files=ImageFiles.open(root))


def load_image_set(source: str, split: str = "train", loader: str = "auto") -> ImageSet:
    """`fashion-mnist` (Debian's copy), a folder of class sub-folders, an IDX images file (labels
    beside it as *labels-idx1-ubyte*), or NPZ / NPY arrays. `loader` (auto | dali | torch) decodes a
    folder; both give the same pixels. A file that does not decode raises ValueError naming it."""
    from hald_ext.data.loader import loader_backend

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
    from PIL import Image

    paths = []
    for i, (im, lab) in enumerate(zip(images.images, images.labels)):
        d = os.path.join(root, images.classes[int(lab)])
        os.makedirs(d, exist_ok=True)
        p = os.path.join(d, f"{i:06d}.{fmt}")
        Image.fromarray(im).save(p)
        paths.append(p)
    return paths


FINGERPRINT_KINDS = ("pixels", "files")


def fingerprint(images, kind: str | None = None) -> dict:
    """The identity a label store records and checks on replay: {"kind", "count", "sha256"}.

    "files" (an image folder's ImageFiles, the default for one): from each file's bytes without
    decoding (hald_ext.data.files.files_fingerprint). "pixels" (arrays, the default for an ImageSet;
    and what stores made before folders were read as files record -- an ImageFiles then decodes its
    files once, batch by batch, to check one): sha256 over each image's class id, shape and pixel
    bytes, in order. Names are left out on purpose either way: the same images keep their identity
    when `hald select` writes them to an NPZ or a renamed folder."""
    kind = kind or ("files" if isinstance(images, ImageFiles) else "pixels")
    if kind not in FINGERPRINT_KINDS:
        raise ValueError(f"unknown image fingerprint kind {kind!r} (known: {', '.join(FINGERPRINT_KINDS)})")
    if kind == "files":
        if isinstance(images, ImageFiles):
            return images.fingerprint()
        if getattr(images, "files", None) is not None:
            return images.files.fingerprint()
        if getattr(images, "files_fingerprint", None):
            return dict(images.files_fingerprint)
        raise ValueError("these labels identify their images by the files of an image folder: give that "
                         "folder (or an NPZ `hald select` wrote from it), not other decoded arrays")
    h = hashlib.sha256()
    if isinstance(images, ImageFiles):
        pixels = (decode_file(images.path(i)) for i in range(len(images)))
    else:
        pixels = iter(images.images)
    for label, im in zip(np.asarray(images.labels).tolist(), pixels):
        h.update(repr((int(label), im.shape)).encode())
        h.update(np.ascontiguousarray(im).tobytes())
    return {"kind": "pixels", "count": len(images), "sha256": h.hexdigest()}


def image_sizes(images) -> np.ndarray:
    """int32 [N, 2] (height, width) of every image: an ImageSet's arrays, or an ImageFiles' headers."""
    if isinstance(images, ImageFiles):
        return images.sizes()
    return np.array([im.shape[:2] for im in images.images], dtype=np.int32).reshape(-1, 2)


def open_images(source: str, split: str = "train", loader: str = "auto"):
    """What every command opens: an image folder as its files (ImageFiles: a listing, nothing decoded),
    anything else as decoded arrays (`load_image_set`: Fashion-MNIST, IDX, NPZ / NPY)."""
    from hald_ext.data.loader import loader_backend

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
