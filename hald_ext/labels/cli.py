"""The bodies of `hald labels` info / import-fkd / import-sre2l (their options: hald_ext.commands.labels):
inspect label stores and import public soft-label formats.

  hald labels info FILE [--json]
  hald labels import-fkd DIR --out FILE --num-classes C
  hald labels import-sre2l DIR --out FILE --num-classes C -T T --crop-size S [--flavor sre2l|lpld|lpqld|hald]

Imports are exact or refused: the temperature is required where the files hold logits (or
--recipe-temperature, printed), the crop size is checked against the CutMix boxes and the images,
values are stored as float16 by default, CutMix files without their sampler order and pruned epochs
are refused unless --file-order / --fill-missing repeat say otherwise (docs/importers.md).

Sizes are reported in the papers' units: total MB (10^6 bytes), SLI (stored labels per image), SLC
(stored labels per class = SLI x IPC), and what the same labels take as SRe2L / LPLD / HALD write
them (fp16 C-wide: 2*C + 25 bytes per label, docs/label-store.md; HALD's float16 coords: 2*C + 17) and as
FKD's generator writes them (float32 numpy: coords 16 + flip 1 + 2 x k x 4 bytes per label).
"""
from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import torch

from hald_ext.data import open_images
from hald_ext.data.select import select_ipc
from hald_ext.labels.importers import LabelImportError, import_batches, import_fkd, read_epoch_count, sre2l_order
from hald_ext.labels.store import LabelStore


def sizes(store) -> dict:
    """The store's size in the papers' units, and the same labels in the SRe2L and FKD formats."""
    h, labels = store.header, store.num_labels
    fkd_per_label = 4 * 4 + 1 + 2 * min(h.k, h.num_classes) * 4
    return {
        "total_mb": store.nbytes / 1e6,
        "bytes_per_label": store.bytes_per_label,
        "sli": store.sli,
        "slc": labels / h.num_classes,
        # SRe2L / LPLD: float32 coords (16) + flip (1) + int64 mix index (8) + fp16 logits (2 C)
        "sre2l_mb": labels * (2 * h.num_classes + 25) / 1e6,
        "sre2l_bytes_per_label": 2 * h.num_classes + 25,
        # HALD's relabel_slc.py: float16 coords (8) + flip (1) + int64 mix index (8) + fp16 probabilities (2 C)
        "hald_mb": labels * (2 * h.num_classes + 17) / 1e6,
        "hald_bytes_per_label": 2 * h.num_classes + 17,
        "fkd_mb": labels * fkd_per_label / 1e6,
        "fkd_bytes_per_label": fkd_per_label,
    }


def top1_histogram(store, rows: int = 1 << 14) -> torch.Tensor:
    """Count of each class as a label's most probable class (codes rise with probability)."""
    hist = torch.zeros(store.num_classes, dtype=torch.int64)
    if store.topk_ids is not None:
        top1 = store.topk_ids[..., 0].reshape(-1).to(torch.int64)
        return hist + torch.bincount(top1, minlength=store.num_classes) if top1.numel() else hist
    values = store.codes.reshape(-1, store.num_classes)
    for lo in range(0, values.shape[0], rows):
        v = values[lo:lo + rows]
        hist += torch.bincount(v.to(torch.float32 if v.is_floating_point() else torch.int32).argmax(1),
                               minlength=store.num_classes)
    return hist


def store_summary(store) -> dict:
    return {
        "file": store.path,
        "header": json.loads(store.header.to_json()),
        "images": store.num_images,
        "sli": store.sli,
        "labels": store.num_labels,
        "bytes_per_label": store.bytes_per_label,
        "nbytes": store.nbytes,
        "sizes": sizes(store),
        "top1_histogram": top1_histogram(store).tolist(),
    }


def run_info(args) -> int:
    images = _load_images(args)
    s = store_summary(LabelStore.open(args.file, images=images))
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    h, z = s["header"], s["sizes"]
    C, k = h["num_classes"], h["k"]
    print(f"{s['file']}: HALD label store v{h['version']} ({h['source']})")
    print(f"  images {s['images']} x slots {z['sli']} = {s['labels']} labels (SLI {z['sli']}, SLC {z['slc']:g} per "
          f"class); C = {C}, "
          f"{'full width (k = C, no ids)' if k == C else f'top-k = {k}'}, T = {h['temperature']:g}")
    q = h["quantizer"]
    fp16 = "float16 probabilities (fp16: no codebook, the store's most precise values)"
    print("  values: " + (fp16 if q["kind"] == "fp16" else
                           f"{h['code_bits']}-bit {q['kind']} codes {q}") +
          f"; default decode {h['default_decode']}; CutMix record: {'yes' if h['mix'] else 'no'}")
    print(f"  teacher: {h['teacher'] or '-'}")
    print(f"  images fingerprint: {h['images'] or '-'}" + ("  (matches)" if images is not None else ""))
    print(f"  crops: {h['crops']}; seed {h['seed']}")
    print(f"  size: {z['total_mb']:.3f} MB ({s['nbytes']} bytes), {z['bytes_per_label']:.2f} bytes/label")
    print(f"  the same labels as SRe2L / LPLD write them (fp16, C wide, {z['sre2l_bytes_per_label']} bytes/label): "
          f"{z['sre2l_mb']:.3f} MB ({z['sre2l_mb'] / max(z['total_mb'], 1e-12):.1f}x this store); as HALD writes "
          f"them (fp16 coords too, {z['hald_bytes_per_label']} bytes/label): {z['hald_mb']:.3f} MB")
    print(f"  as FKD's generator writes them (float32 top-{min(k, C)}, {z['fkd_bytes_per_label']} bytes/label): "
          f"{z['fkd_mb']:.3f} MB")
    st = h.get("stats") or {}
    if st:
        parts = [f"{key} {v:.4g}" for key, v in sorted(st.items())]
        print("  quality: " + ", ".join(parts) + (
            "  (mean nats: KL(teacher's full label || stored label), and a uniform label's for comparison)"
            if "kl_to_teacher" in st else ""))
        if st.get("kl_uniform", 0) > 0 and "kl_to_teacher" in st:
            ratio = st["kl_to_teacher"] / st["kl_uniform"]
            print(f"  the stored labels are {ratio:.0%} as far from the teacher's as a uniform label" +
                  ("; warning: they keep little of the teacher's distribution (raise k, or store full width)"
                   if ratio > 0.5 else ""))
    hist = s["top1_histogram"]
    shown = sorted(range(len(hist)), key=lambda c: -hist[c])[:20]
    print("  top-1 class histogram" + (" (20 most frequent)" if len(hist) > 20 else "") + ": " +
          ", ".join(f"{c}: {hist[c]}" for c in (shown if len(hist) > 20 else range(len(hist)))))
    return 0


def _load_images(args):
    if not args.images:
        return None


    images = open_images(args.images, getattr(args, "split", "train"))  # a folder is listed, not decoded
    return select_ipc(images, args.ipc, args.ipc_seed) if args.ipc else images


def run_import_fkd(args) -> int:
    rep = import_fkd(args.input, args.out, args.num_classes, bits=args.bits, quantizer=args.quantizer,
                     temperature=args.temperature, images=_load_images(args), crop_size=args.crop_size,
                     teacher={"name": args.teacher} if args.teacher else None)
    print(rep.summary())
    return 0


def run_import_sre2l(args) -> int:



    if args.recipe_temperature and args.temperature is not None:
        raise LabelImportError("give either -T or --recipe-temperature, not both")
    temperature = "recipe" if args.recipe_temperature else args.temperature
    images = _load_images(args)
    order, order_name = None, "--order"
    if args.order and args.sampler_seed is not None:
        raise LabelImportError("give either --order or --sampler-seed, not both")
    if args.order:
        try:
            order = np.load(args.order, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise LabelImportError(f"{args.order}: not a readable NPY file of image ids ({e})") from None
    elif args.sampler_seed is not None:
        if images is None:
            raise LabelImportError("--sampler-seed needs --images (the image count fixes the permutation)")
        order = sre2l_order(len(images), read_epoch_count(args.input), args.sampler_seed)
        order_name = f"--sampler-seed {args.sampler_seed}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rep = import_batches(args.input, args.out, args.num_classes, temperature=temperature,
                             k=args.k, bits=args.bits, quantizer=args.quantizer, crop_size=args.crop_size,
                             order=order, sampler=args.sampler, images=images,
                             teacher={"name": args.teacher} if args.teacher else None, flavor=args.flavor,
                             file_order=args.file_order, fill_missing=args.fill_missing,
                             lpqld_decode=args.lpqld_decode, order_name=order_name)
    for w in caught:
        print(f"hald labels import-sre2l: warning: {w.message}", file=sys.stderr)
    print(rep.summary())
    return 0
