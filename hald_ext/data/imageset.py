"""ImageSet (decoded uint8 arrays with labels and class names) and the identity a label store records
of its images (`fingerprint`): the bottom of hald_ext.data, imported by the loaders and the sources."""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from hald_ext.data.batch import pad_images
from hald_ext.data.decode import decode_file
from hald_ext.data.files import ImageFiles


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

        return pad_images(self.images)

    def stacked(self) -> np.ndarray:
        """[N, H, W, 3] uint8 when every image has the same size."""
        shapes = {im.shape for im in self.images}
        if len(shapes) != 1:
            raise ValueError(f"images have {len(shapes)} different shapes; use a padded batch instead")
        return np.stack(self.images)


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
