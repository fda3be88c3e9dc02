"""THE IPC selection: `ipc` random real images per class, drawn with a seeded generator. `hald select`,
`hald relabel --ipc` and `hald train` all call it, so one (ipc, seed) means the same images everywhere."""
from __future__ import annotations

import numpy as np
import torch

from hald_ext.data.files import ImageFiles
from hald_ext.data.imageset import ImageSet


def select_per_class(images: ImageSet, ipc: int, seed: int = 0) -> np.ndarray:
    """Indices of `ipc` images of every class, drawn without replacement with a seeded generator;
    classes in order, indices ascending within a class. THE IPC selection: `hald select`, `relabel
    --ipc` and `train` all call it, so one (ipc, seed) means the same images everywhere."""
    if ipc <= 0:
        raise ValueError(f"--ipc must be positive, got {ipc}")
    gen = torch.Generator().manual_seed(seed)
    picked = []
    for c in range(images.num_classes):
        members = np.flatnonzero(images.labels == c)
        if len(members) < ipc:
            raise ValueError(f"class {images.classes[c]!r} has {len(members)} images, fewer than --ipc {ipc}")
        order = torch.randperm(len(members), generator=gen)[:ipc].numpy()
        picked.append(np.sort(members[order]))
    return np.concatenate(picked)


def subset(images, idx: np.ndarray):
    """The images `idx` of an ImageSet or an ImageFiles (the same kind back)."""
    if isinstance(images, ImageFiles):
        return images.subset(idx)
    files = None if images.files is None else images.files.subset(idx)
    return ImageSet([images.images[i] for i in idx], images.labels[idx], list(images.classes),
                    [images.names[i] for i in idx], kind=images.kind, files=files)


def select_ipc(images, ipc: int, seed: int = 0):
    """The `ipc` images per class that `hald select --ipc` picks with `seed`."""
    return subset(images, select_per_class(images, ipc, seed))
