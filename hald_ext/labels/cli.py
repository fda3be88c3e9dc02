"""`hald labels`: inspect label stores and import public soft-label formats.

  hald labels info FILE [--json]
  hald labels import-fkd DIR --out FILE --num-classes C
  hald labels import-sre2l DIR --out FILE --num-classes C [--flavor sre2l|lpld|hald]
"""
from __future__ import annotations

import json

import torch


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="labels_command", required=True)
    info = sub.add_parser("info", help="header, counts, bytes per label, size, top-1 class histogram")
    info.add_argument("file")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.add_argument("--images", help="also check the store against this image set (fingerprint)")
    info.add_argument("--ipc", type=int, help="with --images: its first IPC images per class (as `hald relabel --ipc`)")

    def common(q):
        q.add_argument("input", help="directory of files (or one file)")
        q.add_argument("--out", "-o", required=True, help="label store to write")
        q.add_argument("--num-classes", "-C", type=int, required=True)
        q.add_argument("--bits", type=int, choices=(8, 16), default=8)
        q.add_argument("--quantizer", choices=("power", "uniform", "log"), default="power")
        q.add_argument("--images", help="the image set the labels belong to (recorded as its fingerprint)")
        q.add_argument("--split", default="train")
        q.add_argument("--ipc", type=int, help="with --images: its first IPC images per class (as `hald relabel --ipc`)")
        q.add_argument("--teacher", help="teacher name to record")

    fkd = sub.add_parser("import-fkd", help="FKD per-image soft label files -> store")
    common(fkd)
    fkd.add_argument("--temperature", "-T", type=float, default=1.0, help="temperature the labels were made at")
    b = sub.add_parser("import-sre2l", help="SRe2L / LPLD / HALD per-batch soft label files -> store")
    common(b)
    b.add_argument("--flavor", choices=("sre2l", "lpld", "hald"), default="sre2l",
                   help="sre2l / lpld files store logits; hald files store softmax(logits / 20)")
    b.add_argument("--temperature", "-T", type=float,
                   help="labels are softmax(logits / T) (default: 20 for hald, else 1)")
    b.add_argument("--k", type=int, default=5)
    b.add_argument("--crop-size", type=int, default=224, help="crop size the CutMix boxes are in pixels of")
    b.add_argument("--order", help="NPY file: image id of every row, [N] or [epochs, N] (default: identity)")


def run(args) -> int:
    import sys

    from hald_ext.labels.format import LabelStoreError
    from hald_ext.labels.importers import LabelImportError

    try:
        return {"info": _info, "import-fkd": _import_fkd, "import-sre2l": _import_sre2l}[args.labels_command](args)
    except (LabelStoreError, LabelImportError) as e:
        print(f"hald labels {args.labels_command}: error: {e}", file=sys.stderr)
        return 2


def store_summary(store) -> dict:
    top1 = store.topk_ids[..., 0].reshape(-1).to(torch.int64)
    hist = torch.bincount(top1, minlength=store.num_classes) if top1.numel() else torch.zeros(store.num_classes)
    return {
        "file": store.path,
        "header": json.loads(store.header.to_json()),
        "images": store.num_images,
        "slots": store.slots,
        "labels": store.num_labels,
        "bytes_per_label": store.bytes_per_label,
        "nbytes": store.nbytes,
        "top1_histogram": hist.tolist(),
    }


def _info(args) -> int:
    from hald_ext.labels.store import LabelStore

    images = None
    if args.images:
        from hald_ext.data import load_image_set

        from hald_ext.labels.relabel import select_ipc

        images = load_image_set(args.images)
        images = select_ipc(images, args.ipc) if args.ipc else images
    s = store_summary(LabelStore.open(args.file, images=images))
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    h = s["header"]
    print(f"{s['file']}: HALD label store v{h['version']} ({h['source']})")
    print(f"  images {s['images']} x slots {s['slots']} = {s['labels']} labels; C = {h['num_classes']}, k = {h['k']}, "
          f"T = {h['temperature']:g}")
    print(f"  codes: {h['code_bits']}-bit {h['quantizer']['kind']} quantizer {h['quantizer']}; default decode "
          f"{h['default_decode']}; CutMix record: {'yes' if h['mix'] else 'no'}")
    print(f"  teacher: {h['teacher'] or '-'}")
    print(f"  images fingerprint: {h['images'] or '-'}" + ("  (matches)" if images is not None else ""))
    print(f"  crops: {h['crops']}; seed {h['seed']}")
    print(f"  size: {s['bytes_per_label']:.2f} bytes/label, {s['nbytes']} bytes in all "
          f"(SRe2L fp16 would take {2 * h['num_classes'] + 25} bytes/label)")
    hist = s["top1_histogram"]
    shown = sorted(range(len(hist)), key=lambda c: -hist[c])[:20]
    print("  top-1 class histogram" + (" (20 most frequent)" if len(hist) > 20 else "") + ": " +
          ", ".join(f"{c}: {hist[c]}" for c in (shown if len(hist) > 20 else range(len(hist)))))
    return 0


def _load_images(args):
    if not args.images:
        return None
    from hald_ext.data import load_image_set

    from hald_ext.labels.relabel import select_ipc

    images = load_image_set(args.images, args.split)
    return select_ipc(images, args.ipc) if args.ipc else images


def _import_fkd(args) -> int:
    from hald_ext.labels.importers import import_fkd

    rep = import_fkd(args.input, args.out, args.num_classes, bits=args.bits, quantizer=args.quantizer,
                     temperature=args.temperature, images=_load_images(args),
                     teacher={"name": args.teacher} if args.teacher else None)
    print(rep.summary())
    return 0


def _import_sre2l(args) -> int:
    import numpy as np

    from hald_ext.labels.importers import import_batches

    values = "probs" if args.flavor == "hald" else "logits"
    temperature = args.temperature if args.temperature is not None else (20.0 if args.flavor == "hald" else 1.0)
    order = np.load(args.order, allow_pickle=False) if args.order else None
    rep = import_batches(args.input, args.out, args.num_classes, values=values, temperature=temperature, k=args.k,
                         bits=args.bits, quantizer=args.quantizer, crop_size=args.crop_size, order=order,
                         images=_load_images(args), teacher={"name": args.teacher} if args.teacher else None,
                         flavor=args.flavor)
    print(rep.summary())
    return 0
