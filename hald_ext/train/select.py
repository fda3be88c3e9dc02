"""`hald select`: IPC random real images per class, the baseline of "A Label is Worth a Thousand
Images" (random real images + expert soft labels).

    hald select --data fashion-mnist --ipc 10 --seed 0 --out data/fmnist-ipc10.npz
    hald select --data fashion-mnist --ipc 10 --out data/fmnist-ipc10/      (an image folder)

The NPZ holds `images` [N, H, W, 3] uint8, `labels`, `classes` and `source_indices` (rows of the full
set); both forms load with hald_ext.data.load_image_set.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch

from hald_ext.data import ImageSet, load_image_set, write_image_folder


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


def subset(images: ImageSet, idx: np.ndarray) -> ImageSet:
    return ImageSet([images.images[i] for i in idx], images.labels[idx], list(images.classes),
                    [images.names[i] for i in idx])


def with_ordered_class_names(images: ImageSet) -> ImageSet:
    """An image folder's classes are read back in sorted folder order; prefix the names with their
    index when needed, so that class ids (which the teacher and the label store use) survive."""
    if list(images.classes) == sorted(images.classes):
        return images
    width = len(str(len(images.classes) - 1))
    names = [f"{i:0{width}d}_{c}" for i, c in enumerate(images.classes)]
    return ImageSet(images.images, images.labels, names, images.names)


def write_npz(images: ImageSet, path: str, source_indices: np.ndarray) -> None:
    """Images of one size as [N, H, W, 3]; of several sizes zero-padded, with `image_sizes` [N, 2]
    (load_image_set crops them back)."""
    tmp = path + ".tmp.npz"
    padded, sizes = images.padded()
    extra = {} if sizes is None else {"image_sizes": sizes}
    np.savez(tmp, images=padded, labels=images.labels, classes=np.asarray(images.classes),
             source_indices=source_indices, **extra)
    os.replace(tmp, path)


def add_arguments(parser) -> None:
    parser.add_argument("--data", default="fashion-mnist", help="full labelled set (default: fashion-mnist)")
    parser.add_argument("--split", default="train", help="split of a named set (default: train)")
    parser.add_argument("--loader", choices=("auto", "dali", "torch"), default="auto",
                        help="image decoder for a folder: DALI when installed (auto), or torch")
    parser.add_argument("--ipc", type=int, default=10, help="images per class (default: 10)")
    parser.add_argument("--seed", type=int, default=0, help="selection seed (default: 0)")
    parser.add_argument("--out", required=True, help="output: a .npz file, or a folder for an image folder")
    parser.add_argument("--format", choices=("auto", "npz", "folder"), default="auto",
                        help="auto: npz when --out ends with .npz, else an image folder of PNGs")


def run(args) -> int:
    try:
        full = load_image_set(args.data, split=args.split, loader=args.loader)
        idx = select_per_class(full, args.ipc, args.seed)
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"hald select: error: {e}", file=sys.stderr)
        return 2
    chosen = subset(full, idx)
    fmt = args.format if args.format != "auto" else ("npz" if args.out.endswith(".npz") else "folder")
    if fmt == "npz":
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        write_npz(chosen, args.out, idx)
    else:
        if os.path.isdir(args.out) and os.listdir(args.out):
            print(f"hald select: error: {args.out} is not empty", file=sys.stderr)
            return 2
        write_image_folder(with_ordered_class_names(chosen), args.out)
    print(f"selected {len(idx)} images ({args.ipc} per class x {full.num_classes} classes, seed {args.seed}) "
          f"-> {args.out}")
    return 0
