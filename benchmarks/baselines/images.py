"""A synthetic ImageNet-shaped distilled image set, saved the way SRe2L's recover step saves one.

Layout and format follow SRe2L `recover/data_synthesis.py` (`save_images`): one folder per class
`new{class:03d}/`, files `class{class:03d}_id{ipc_id:03d}.jpg`, written by
`PIL.Image.fromarray(uint8).save(path)` with PIL's default JPEG settings (quality 75), 224 x 224 RGB.
HALD's relabel reads the same folders (`--syn-data-path .../sre2l_ipc10`).

Content: the real images are synthesised by gradient steps on a teacher (textured, noisy); here each
image is a seeded low-resolution random field upsampled to 224 px plus Gaussian pixel noise, which
decodes at the cost of a textured photo-sized JPEG (about 20-30 KB each). Pixel values do not matter
to any timing measured here; file size and decode cost do.

The IPC-n set is the first n ids of every class of the largest set generated, hard-linked, so one
generation serves every IPC.
"""
from __future__ import annotations

import json
import os
from multiprocessing import Pool

import numpy as np

SIZE = 224
SPEC_VERSION = 1


def image_pixels(c: int, i: int, size: int = SIZE) -> np.ndarray:
    rng = np.random.default_rng([SPEC_VERSION, c, i])
    from PIL import Image

    small = rng.integers(0, 256, (14, 14, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC), dtype=np.float32)
    noisy = base + rng.normal(0.0, 20.0, base.shape).astype(np.float32)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def file_name(c: int, i: int) -> str:
    return os.path.join(f"new{c:03d}", f"class{c:03d}_id{i:03d}.jpg")


def _write(args):
    root, c, i, size = args
    from PIL import Image

    path = os.path.join(root, file_name(c, i))
    if not os.path.exists(path):
        Image.fromarray(image_pixels(c, i, size)).save(path)  # PIL's JPEG default: quality 75
    return os.path.getsize(path)


def write_set(root: str, classes: int, ipc: int, size: int = SIZE, workers: int = 2) -> dict:
    """Write (or complete) `root` with `classes` x `ipc` images; returns its description."""
    spec = {"version": SPEC_VERSION, "classes": classes, "ipc": ipc, "size": size, "format": "JPEG, PIL default (q75)"}
    marker = os.path.join(root, "..", os.path.basename(root.rstrip("/")) + ".json")
    if os.path.exists(marker):
        with open(marker) as f:
            done = json.load(f)
        if {k: done.get(k) for k in spec} == spec:
            return done
    for c in range(classes):
        os.makedirs(os.path.join(root, f"new{c:03d}"), exist_ok=True)
    jobs = [(root, c, i, size) for c in range(classes) for i in range(ipc)]
    if workers > 1:
        with Pool(workers) as pool:
            sizes = pool.map(_write, jobs, chunksize=64)
    else:
        sizes = [_write(j) for j in jobs]
    spec["bytes"] = int(sum(sizes))
    with open(marker, "w") as f:
        json.dump(spec, f)
    return spec


def ipc_view(full_root: str, root: str, classes: int, ipc: int) -> str:
    """`root` as the first `ipc` images per class of `full_root` (hard links; no new bytes)."""
    for c in range(classes):
        d = os.path.join(root, f"new{c:03d}")
        os.makedirs(d, exist_ok=True)
        for i in range(ipc):
            dst = os.path.join(root, file_name(c, i))
            if not os.path.exists(dst):
                try:
                    os.link(os.path.join(full_root, file_name(c, i)), dst)
                except OSError:  # another file system: copy
                    import shutil

                    shutil.copyfile(os.path.join(full_root, file_name(c, i)), dst)
    return root


def distilled_sets(work_dir: str, classes: int, ipcs: list, size: int = SIZE, workers: int = 2) -> dict:
    """{ipc: folder} for every IPC in `ipcs`, generated once under `work_dir`."""
    top = max(ipcs)
    full = os.path.join(work_dir, f"syn_c{classes}_ipc{top}_{size}")
    write_set(full, classes, top, size, workers)
    return {ipc: full if ipc == top else ipc_view(full, os.path.join(work_dir, f"syn_c{classes}_ipc{ipc}_{size}"),
                                                    classes, ipc) for ipc in ipcs}
