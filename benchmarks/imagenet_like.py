"""ImageNet-shaped image folders for the scale benchmark (bench_scale.py), without ImageNet.

A *pool* of distinct JPEGs is generated once (deterministically, resumably: files already there are kept)
and folders of any size are then filled with hard links to pool files, so a 200k-image folder costs
directory entries, not 22 GB of disk:

    pool/manifest.json          one entry per pool file: file, class, kind, width, height, bytes
    pool/c0000_j00.JPEG ...     `per_class` files for each of `num_classes` classes
    imagenet_like_<N>/n01234567/n01234567_<k>.JPEG   (hard links; <N>.complete marks a finished folder)

What the files are like (roughly ImageNet's train set):
  - sizes: half 500x375, 15 % 375x500, then 500x333 / 333x500, 500x500, longer side 500 with the shorter
    side anywhere in 260-480, 8 % large (longer side 600-2000 px) and 2 % tiny (longer side 40-200);
  - content: a smooth two-colour gradient, a dozen filled shapes, blur, coarse texture and pixel noise,
    JPEG quality 90: about 110 KB a file on average (printed by `build_pool`). The gradient and most shapes
    take the class's hue, so a teacher can learn something from the pixels;
  - the odd files ImageNet has, as slot 0 of the first classes (so every folder holds each of them):
    a grayscale JPEG, a CMYK JPEG, two EXIF-rotated JPEGs (orientation 6 and 8: the stored pixels are
    the displayed picture rotated, as a camera writes them), a PNG saved under a .JPEG name, and a
    progressive JPEG.

Repeated files are hard links to the same inode: after the first read the page cache serves them,
where real ImageNet reads 1.28M distinct files from disk. Results from these folders say so.

    python benchmarks/imagenet_like.py --root data/scale --sizes 10000,50000,200000 [--jobs 2]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import time

import numpy as np

ODD_KINDS = ("gray", "cmyk", "exif6", "exif8", "png", "progressive")
JPEG_QUALITY = 90
EXIF_ORIENTATION = 0x0112


def wnids(num_classes: int = 1000, seed: int = 1000) -> list[str]:
    """ImageNet-style class folder names (n + 8 digits), sorted, distinct, the same every run."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(np.arange(1_000_000, 15_000_000), size=num_classes, replace=False)
    return [f"n{i:08d}" for i in sorted(ids.tolist())]


def sample_size(rng) -> tuple[int, int]:
    """(width, height) of one image, drawn from the ImageNet-like mix described in the module docstring."""
    r = rng.random()
    if r < 0.50:
        return 500, 375
    if r < 0.65:
        return 375, 500
    if r < 0.72:
        return (500, 333) if rng.random() < 0.5 else (333, 500)
    if r < 0.78:
        return 500, 500
    if r < 0.90:
        long, short = 500, int(rng.integers(260, 481))
    elif r < 0.98:
        long = int(np.exp(rng.uniform(np.log(600), np.log(2000))))
        short = int(long / rng.uniform(1.0, 1.6))
    else:
        long = int(rng.integers(40, 201))
        short = max(int(long / rng.uniform(1.0, 1.5)), 8)
    return (long, short) if rng.random() < 0.7 else (short, long)


def class_hue(cls: int) -> float:
    return (cls * 0.6180339887) % 1.0  # golden-ratio steps: neighbouring classes get distant hues


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    import colorsys

    return np.asarray(colorsys.hsv_to_rgb(h % 1.0, s, v)) * 255.0


def render(cls: int, width: int, height: int, rng):
    """One picture (PIL RGB) of class `cls`: class-hued gradient + shapes, blur, texture and noise."""
    from PIL import Image, ImageDraw, ImageFilter

    hue = class_hue(cls)
    c0 = _hsv(hue + rng.normal(0, 0.03), rng.uniform(0.4, 0.9), rng.uniform(0.3, 0.9))
    c1 = _hsv(hue + rng.normal(0, 0.08), rng.uniform(0.2, 0.9), rng.uniform(0.4, 1.0))
    ang = rng.uniform(0, 2 * np.pi)
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    t = np.cos(ang) * x + np.sin(ang) * y
    t = (t - t.min()) / (np.ptp(t) + 1e-6)
    img = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    im = Image.fromarray(img.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    side = min(width, height)
    for _ in range(int(rng.integers(6, 16))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(0.05, 0.4) * side, rng.uniform(0.05, 0.4) * side
        if rng.random() < 0.7:
            colour = _hsv(hue + rng.normal(0, 0.05), rng.uniform(0.3, 1.0), rng.uniform(0.2, 1.0))
        else:
            colour = rng.uniform(0, 255, 3)
        fill = tuple(int(v) for v in colour)
        if (cls + int(rng.integers(0, 3))) % 3:  # class-dependent mix of ellipses and rectangles
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=fill)
        else:
            draw.rectangle([cx - rx, cy - ry, cx + rx, cy + ry], fill=fill)
    im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))
    a = np.asarray(im).astype(np.float32)
    lw, lh = max(width // 4, 1), max(height // 4, 1)
    tex = rng.uniform(15, 35)
    low = Image.fromarray(rng.normal(128, tex, (lh, lw)).clip(0, 255).astype(np.uint8)).resize(
        (width, height), Image.BILINEAR)
    a += (np.asarray(low, np.float32) - 128.0)[..., None]
    sigma = rng.uniform(7, 14)
    a += rng.normal(0, sigma, (height, width, 1)).astype(np.float32)
    a += rng.normal(0, sigma / 3, (height, width, 3)).astype(np.float32)
    return Image.fromarray(a.clip(0, 255).astype(np.uint8))


def pool_specs(num_classes: int, per_class: int, odd: bool = True, seed: int = 0) -> list[dict]:
    """What every pool file is (name, class, kind, displayed size), decided before any file is written
    so that a resumed generation writes the same files."""
    specs = []
    for c in range(num_classes):
        for j in range(per_class):
            rng = np.random.default_rng([seed, c, j])
            w, h = sample_size(rng)
            kind = "jpeg"
            if odd and j == 0 and c < len(ODD_KINDS):
                kind = ODD_KINDS[c]
            specs.append({"file": f"c{c:04d}_j{j:02d}.JPEG", "class": c, "index": j, "kind": kind,
                          "width": w, "height": h, "seed": seed})
    return specs


def encode(spec: dict) -> bytes:
    """The file bytes of one pool spec (deterministic in the spec)."""
    from PIL import Image

    rng = np.random.default_rng([spec["seed"], spec["class"], spec["index"], 1])
    im = render(spec["class"], spec["width"], spec["height"], rng)
    buf = io.BytesIO()
    kind = spec["kind"]
    if kind == "jpeg":
        im.save(buf, "JPEG", quality=JPEG_QUALITY)
    elif kind == "gray":
        im.convert("L").save(buf, "JPEG", quality=JPEG_QUALITY)
    elif kind == "cmyk":
        im.convert("CMYK").save(buf, "JPEG", quality=JPEG_QUALITY)
    elif kind in ("exif6", "exif8"):
        # Stored as a camera writes it: the displayed picture (width x height) rotated; the tag says
        # how to turn it back (6: rotate 90 clockwise to display, 8: 90 counter-clockwise).
        orientation = int(kind[-1])
        stored = im.transpose(Image.ROTATE_90 if orientation == 6 else Image.ROTATE_270)
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = orientation
        stored.save(buf, "JPEG", quality=JPEG_QUALITY, exif=exif.tobytes())
    elif kind == "png":
        im.save(buf, "PNG")
    elif kind == "progressive":
        im.save(buf, "JPEG", quality=JPEG_QUALITY, progressive=True)
    else:
        raise ValueError(f"unknown pool file kind {kind!r}")
    return buf.getvalue()


def _write_one(args) -> tuple[str, int]:
    pool_dir, spec = args
    path = os.path.join(pool_dir, spec["file"])
    if not os.path.exists(path):
        data = encode(spec)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return spec["file"], os.path.getsize(path)


def build_pool(pool_dir: str, num_classes: int = 1000, per_class: int = 10, *, odd: bool = True,
               jobs: int = 1, seed: int = 0, verbose: bool = True) -> list[dict]:
    """Generate the pool (files already there are kept) and write pool_dir/manifest.json; returns the
    manifest. A finished pool with the same parameters is returned from its manifest at once."""
    os.makedirs(pool_dir, exist_ok=True)
    manifest_path = os.path.join(pool_dir, "manifest.json")
    params = {"num_classes": num_classes, "per_class": per_class, "odd": odd, "seed": seed}
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            done = json.load(f)
        if done.get("params") == params:
            return done["files"]
        other = dict(done.get("params", {}), per_class=per_class)
        if other != params:  # only per_class may differ: file (c, j) does not depend on it
            raise ValueError(f"{pool_dir} holds a pool made with {done.get('params')}, not {params}: "
                             f"use another --root or remove it")
        os.remove(manifest_path)
    specs = pool_specs(num_classes, per_class, odd, seed)
    t0 = time.time()
    # index-major order: an interrupted run leaves whole rounds of every class, and a pool of
    # per_class P is the first P files of every class of a bigger one
    todo = [(pool_dir, s) for s in sorted(specs, key=lambda s: (s["index"], s["class"]))]
    sizes = {}
    if jobs > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(jobs) as p:
            for i, (name, n) in enumerate(p.imap_unordered(_write_one, todo, chunksize=16)):
                sizes[name] = n
                if verbose and (i + 1) % 1000 == 0:
                    print(f"  pool: {i + 1}/{len(specs)} files ({time.time() - t0:.0f} s)", flush=True)
    else:
        for i, item in enumerate(todo):
            name, n = _write_one(item)
            sizes[name] = n
            if verbose and (i + 1) % 1000 == 0:
                print(f"  pool: {i + 1}/{len(specs)} files ({time.time() - t0:.0f} s)", flush=True)
    files = [dict(s, bytes=sizes[s["file"]]) for s in specs]
    for f in files:
        f.pop("seed")
    tmp = manifest_path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump({"params": params, "wnids": wnids(num_classes), "files": files}, fh)
    os.replace(tmp, manifest_path)
    if verbose:
        mean_kb = np.mean([f["bytes"] for f in files]) / 1e3
        print(f"pool: {len(files)} files in {pool_dir}, mean {mean_kb:.0f} KB ({time.time() - t0:.0f} s)")
    return files


def folder_path(root: str, n_images: int) -> str:
    return os.path.join(root, f"imagenet_like_{n_images}")


def _same_links(made: dict | None, now: dict, n_images: int) -> bool:
    """Whether a folder made from pool `made` links the same files as one made from pool `now`: file
    (c, j) does not depend on per_class, so pools that differ only there give the same folder while
    both hold every index the folder uses."""
    if made is None or dict(made, per_class=0) != dict(now, per_class=0):
        return False
    used = -(-n_images // now["num_classes"])  # files per class of the folder (ceil)
    return made["per_class"] == now["per_class"] or min(made["per_class"], now["per_class"]) >= used


def build_folder(pool_dir: str, out_dir: str, n_images: int, *, verbose: bool = True) -> dict:
    """An image folder of `n_images` files over all the pool's classes (n_images // C per class, the
    remainder to the first classes), each a hard link to a pool file of its class (a copy when the
    folder is on another file system). Resumable; `<out_dir>.complete` records a finished folder."""
    with open(os.path.join(pool_dir, "manifest.json")) as f:
        manifest = json.load(f)
    marker = out_dir.rstrip("/") + ".complete"
    pool_params = manifest["params"]
    if os.path.exists(marker):
        with open(marker) as f:
            info = json.load(f)
        same = info.get("n_images") == n_images and _same_links(info.get("pool_params"), pool_params, n_images)
        if same and "kinds" in info:
            return info
        os.remove(marker)
        if not same:  # made from another pool: its links point elsewhere (else: an older record, re-counted)
            shutil.rmtree(out_dir, ignore_errors=True)
    names = manifest["wnids"]
    num_classes = len(names)
    by_class: list[list[str]] = [[] for _ in range(num_classes)]
    entry = {}
    for e in manifest["files"]:
        by_class[e["class"]].append(e["file"])
        entry[e["file"]] = e
    if n_images < num_classes:
        raise ValueError(f"{n_images} images cannot fill {num_classes} classes")
    t0 = time.time()
    linked = copied = total_bytes = 0
    distinct = set()
    kinds: dict[str, int] = {}
    for c, wnid in enumerate(names):
        count = n_images // num_classes + (1 if c < n_images % num_classes else 0)
        cdir = os.path.join(out_dir, wnid)
        os.makedirs(cdir, exist_ok=True)
        pool = by_class[c]
        for k in range(count):
            e = entry[pool[k % len(pool)]]
            src = os.path.join(pool_dir, e["file"])
            distinct.add(src)
            total_bytes += e["bytes"]
            kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
            dst = os.path.join(cdir, f"{wnid}_{k}.JPEG")
            if os.path.exists(dst):
                continue
            try:
                os.link(src, dst)
                linked += 1
            except OSError:
                shutil.copyfile(src, dst)
                copied += 1
    info = {"n_images": n_images, "num_classes": num_classes, "distinct_files": len(distinct),
            "mean_file_kb": total_bytes / n_images / 1e3, "kinds": kinds, "links": "hard" if not copied else "mixed",
            "pool": os.path.abspath(pool_dir), "pool_params": pool_params, "copied": copied}
    with open(marker, "w") as f:
        json.dump(info, f)
    if verbose:
        print(f"folder: {out_dir}: {n_images} images, {len(distinct)} distinct files "
              f"({linked} links made, {copied} copies, {time.time() - t0:.0f} s)", flush=True)
    return info


def folder_info(out_dir: str) -> dict | None:
    """What build_folder recorded for a finished folder (None when unfinished)."""
    marker = out_dir.rstrip("/") + ".complete"
    if not os.path.exists(marker):
        return None
    with open(marker) as f:
        return json.load(f)


def folder_ready(out_dir: str, n_images: int) -> bool:
    info = folder_info(out_dir)
    return info is not None and info.get("n_images") == n_images and "kinds" in info


def ensure(root: str, sizes, *, num_classes: int = 1000, per_class: int = 10, jobs: int = 1,
           verbose: bool = True) -> dict:
    """The pool under root/pool and one folder per size; {size: folder path}."""
    pool_dir = os.path.join(root, "pool")
    build_pool(pool_dir, num_classes, per_class, jobs=jobs, verbose=verbose)
    out = {}
    for n in sizes:
        out[n] = folder_path(root, n)
        build_folder(pool_dir, out[n], n, verbose=verbose)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "scale"), help="pool and folders go here")
    p.add_argument("--sizes", default="10000,50000,200000", help="folder sizes (images), comma-separated")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--per-class", type=int, default=10, help="distinct pool files per class")
    p.add_argument("--jobs", type=int, default=1, help="generator processes")
    a = p.parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(",") if s]
    ensure(a.root, sizes, num_classes=a.classes, per_class=a.per_class, jobs=a.jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
