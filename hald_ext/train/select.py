"""The library side of `hald select` (its options: hald_ext.commands.select): IPC random real images per class, the baseline of "A Label is Worth a Thousand
Images" (random real images + expert soft labels).

    hald select --data fashion-mnist --ipc 10 --seed 0 --out data/fmnist-ipc10.npz
    hald select --data fashion-mnist --ipc 10 --out data/fmnist-ipc10/      (an image folder)
    hald select --data imagenet/train --ipc 50 --out data/in1k-ipc50/ --file-mode hardlink

The NPZ holds `images` [N, H, W, 3] uint8, `labels`, `classes` and `source_indices` (rows of the full
set); both forms load with hald_ext.data.load_image_set.

From an image folder nothing is decoded: the folder is listed, the selection drawn from its labels, and
the chosen files are copied (or hard / symbolic links made) under the same class folders and file
names, so the selection reads in the source's order and keeps the files' identity (a label store made
by `hald relabel --ipc` on the source folder trains on it). Only `--format npz` decodes, and only the
chosen images.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from hald_ext.data import ImageFiles, ImageSet, open_images, write_image_folder
from hald_ext.data.decode import decode_file
from hald_ext.data.select import select_per_class, subset

FILE_MODES = ("copy", "hardlink", "symlink")
FORMATS = ("auto", "npz", "folder")


def with_ordered_class_names(images: ImageSet) -> ImageSet:
    """An image folder's classes are read back in sorted folder order; prefix the names with their
    index when needed, so that class ids (which the teacher and the label store use) survive."""
    if list(images.classes) == sorted(images.classes):
        return images
    width = len(str(len(images.classes) - 1))
    names = [f"{i:0{width}d}_{c}" for i, c in enumerate(images.classes)]
    return ImageSet(images.images, images.labels, names, images.names, kind=images.kind, files=images.files)


def write_npz(images: ImageSet, path: str, source_indices: np.ndarray, files_fingerprint: dict | None = None) -> None:
    """Images of one size as [N, H, W, 3]; of several sizes zero-padded, with `image_sizes` [N, 2]
    (load_image_set crops them back). `files_fingerprint`: the chosen files' identity, when they came
    from an image folder (a store made on those files then accepts the NPZ)."""
    tmp = path + ".tmp.npz"
    padded, sizes = images.padded()
    extra = {} if sizes is None else {"image_sizes": sizes}
    if files_fingerprint is not None:
        extra["files_fingerprint"] = np.asarray(json.dumps(files_fingerprint))
    np.savez(tmp, images=padded, labels=images.labels, classes=np.asarray(images.classes),
             source_indices=source_indices, **extra)
    os.replace(tmp, path)


def write_files(files: ImageFiles, out: str, mode: str = "copy") -> None:
    """The files of `files` under `out` with their relative names (class folders and file names kept),
    copied or linked; written into `<out>.partial` and renamed at the end, so an interrupted run leaves
    no half selection under `out`."""
    if mode not in FILE_MODES:
        raise ValueError(f"--file-mode must be one of {FILE_MODES}, got {mode!r}")
    tmp = out.rstrip("/" + os.sep) + ".partial"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    for cname in sorted({n.decode().split("/")[0] for n in files.names}):
        os.makedirs(os.path.join(tmp, cname))

    def put(i: int) -> None:
        src, dst = os.path.abspath(files.path(i)), os.path.join(tmp, files.names[i].decode())
        if mode == "copy":
            shutil.copyfile(src, dst)
        elif mode == "hardlink":
            os.link(src, dst)
        else:
            os.symlink(src, dst)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(len(files))))
    if os.path.isdir(out):
        os.rmdir(out)  # empty (checked by the caller)
    os.replace(tmp, out)


def decoded(files: ImageFiles) -> ImageSet:
    """The images of `files` decoded (for an NPZ of a selection: only the chosen files)."""
    return ImageSet([decode_file(files.path(i)) for i in range(len(files))], files.labels, files.classes,
                    files.relative_names(), kind="folder", files=files)


def run_select(args) -> int:
    """`hald select` from its resolved options (hald_ext.commands.select.SelectConfig)."""
    try:
        full = open_images(args.data, split=args.split, loader=args.loader)
        idx = select_per_class(full, args.ipc, args.seed)
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"hald select: error: {e}", file=sys.stderr)
        return 2
    chosen = subset(full, idx)
    fmt = args.format if args.format != "auto" else ("npz" if args.out.endswith(".npz") else "folder")
    try:
        if fmt == "npz":
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            if isinstance(chosen, ImageFiles):
                write_npz(decoded(chosen), args.out, idx, chosen.fingerprint())
            else:
                write_npz(chosen, args.out, idx)
        else:
            if os.path.exists(args.out) and (not os.path.isdir(args.out) or os.listdir(args.out)):
                raise ValueError(f"{args.out} is not empty")
            if isinstance(chosen, ImageFiles):
                write_files(chosen, args.out, args.file_mode)
            else:
                write_image_folder(with_ordered_class_names(chosen), args.out)
    except (OSError, ValueError) as e:
        print(f"hald select: error: {e}", file=sys.stderr)
        return 2
    print(f"selected {len(idx)} images ({args.ipc} per class x {full.num_classes} classes, seed {args.seed}) "
          f"-> {args.out}")
    return 0
