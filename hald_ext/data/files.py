"""An image folder as a list of files: opening it lists paths and labels and decodes nothing.

`ImageFiles` is what every command holds for a folder (`open_images`): the relative file names (one
compact byte array, about 40 bytes per file: 50 MB for ImageNet's 1.28M), int64 labels and the class
names, in hald_ext.data.folder's order (class folders sorted, files sorted within a class; a sample's
id is its position). Images are decoded per batch by the image sources (hald_ext.data.stream), or once
into the resident cache when the set fits its budget.

What may need more than the listing is computed on demand and kept:
  * `sizes()`: every image's (height, width) from its header (no decode), for relabel's crop boxes and
    the resident budget;
  * `fingerprint()`: the identity a label store records, from the files' bytes without decoding them
    (see `files_fingerprint`).
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from hald_ext.data.decode import image_size
from hald_ext.data.folder import image_folder_classes

# Bytes of each file that enter its identity: the start (format, dimensions, tables) and the end (the
# last entropy-coded data, which differs between images), with the file's length.
_HEAD, _TAIL = 1024, 4096
_IO_THREADS = 16  # file reads wait on the disk, not the GIL


class ImageFiles:
    """The files of an image folder (see the module docstring). `subset(ids)` keeps the root and the
    order of the ids given (a selection)."""

    kind = "folder"

    def __init__(self, root: str, names: np.ndarray, labels: np.ndarray, classes: list,
                 sizes: np.ndarray | None = None):
        self.root = root
        self.names = names  # bytes [N]: paths relative to root, "/"-separated
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = list(classes)
        self._sizes = sizes
        self._fingerprint: dict | None = None

    @classmethod
    def open(cls, root: str) -> "ImageFiles":
        classes, per_class = image_folder_classes(root)
        names, labels = [], []
        for ci, cname, files in per_class:  # one class's names as Python strings at a time
            names.append(np.array([f"{cname}/{f}".encode() for f in files], dtype=np.bytes_))
            labels.append(np.full(len(files), ci, dtype=np.int64))
        width = max(a.dtype.itemsize for a in names)
        return cls(root, np.concatenate([a.astype(f"S{width}") for a in names]), np.concatenate(labels), classes)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def path(self, i: int) -> str:
        return os.path.join(self.root, self.names[int(i)].decode())

    @property
    def paths(self) -> list:
        """Every file's path (a list of N strings: for small sets and tests; the sources use `path`)."""
        return [self.path(i) for i in range(len(self))]

    def relative_names(self) -> list:
        return [n.decode() for n in self.names]

    def subset(self, ids) -> "ImageFiles":
        ids = np.asarray(ids, dtype=np.int64)
        sizes = None if self._sizes is None else self._sizes[ids]
        return ImageFiles(self.root, self.names[ids], self.labels[ids], self.classes, sizes)

    def sizes(self) -> np.ndarray:
        """int32 [N, 2] (height, width) of every image, read from the file headers (stored orientation,
        as the decoders give it); ValueError naming a file that is not an image."""
        if self._sizes is None:
            sizes = np.empty((len(self), 2), dtype=np.int32)
            step = 8192  # filled chunk by chunk: never a Python tuple per file of the whole folder at once
            with ThreadPoolExecutor(_IO_THREADS) as pool:
                for start in range(0, len(self), step):
                    stop = min(start + step, len(self))
                    sizes[start:stop] = list(pool.map(image_size, (self.path(i) for i in range(start, stop)),
                                                      chunksize=64))
            self._sizes = sizes
        return self._sizes

    def fingerprint(self) -> dict:
        if self._fingerprint is None:
            self._fingerprint = files_fingerprint(self)
        return self._fingerprint

    def __repr__(self) -> str:
        return f"ImageFiles({self.root!r}, {len(self)} files, {self.num_classes} classes)"


def _file_digest(path: str) -> bytes:
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(_HEAD)
            if size > _HEAD + _TAIL:
                f.seek(size - _TAIL)
            tail = f.read()
    except OSError as e:
        raise ValueError(f"{path}: cannot read this image file: {e.strerror or e}") from None
    return hashlib.sha256(size.to_bytes(8, "little") + head + tail).digest()


def files_fingerprint(files: ImageFiles) -> dict:
    """{"kind": "files", "count", "sha256"}: sha256 over each file's class id and a digest of its length,
    first 1 KiB and last 4 KiB, in order. It reads about 5 KiB a file (no decode: about 6 GB for
    ImageNet's 1.28M files instead of the 140 GB of the whole set, and nothing held in memory) and
    survives what keeps the bytes: a copy, a link, a renamed folder, and `hald select` writing the
    chosen files of a folder -- so a store made by `hald relabel --ipc` on the source folder trains on
    the selection. A changed or re-encoded image changes it."""
    h = hashlib.sha256()
    with ThreadPoolExecutor(_IO_THREADS) as pool:
        digests = pool.map(_file_digest, (files.path(i) for i in range(len(files))), chunksize=64)
        for label, d in zip(files.labels.tolist(), digests):
            h.update(int(label).to_bytes(8, "little", signed=True))
            h.update(d)
    return {"kind": "files", "count": len(files), "sha256": h.hexdigest()}
