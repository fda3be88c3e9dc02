"""Training images per second for one soft-phase step (crops -> model -> loss -> backward -> AdamW),
three ways, on the trainer's own image path:

  pipeline : this package's step as `hald train` runs it: images read by hald_ext.data's loader (DALI or
             torch) into the image source (resident cache, padded with true sizes), the trainer's batch
             source (the fused crop op when the build has it) + label-store rows + the fused
             soft_hard_loss; `pipeline_hard` is the hard-phase step (fresh crops + CutMix) the same way;
  fkd      : the FKD-style step: per-sample torchvision crop + flip + normalise of the stored box,
             dense decoded soft labels (hald_ext.reference.decode_dense), eager KL;
  resident : the same model and fused loss on fixed resident tensors (no data pipeline at all), so
             1 - resident / pipeline is the pipeline's share of a step.

Sources: `array` (one size, as Fashion-MNIST) and `folder` (a JPEG folder of mixed sizes and aspect
ratios written first, as ImageNet-style data; its one-time decode into the cache is timed as well).

    python benchmarks/bench_train.py [--device cpu|cuda] [--sources array,folder] [--small]

Writes benchmarks/results/train_<device>.json (array) and train_folder_<device>.json (folder).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torchvision.transforms.v2 import functional as TF  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import device_tag, machine, time_fn, write_results  # noqa: E402

import hald_ext  # noqa: E402
from hald_ext.core.boxes import boxes_to_pixels, dequantize_boxes, pixels_to_boxes, quantize_boxes, sample_rrc_pixels  # noqa: E402
from hald_ext.labels import Header, LabelStore, Quantizer  # noqa: E402
from hald_ext.models import create_model  # noqa: E402
from hald_ext.ops import soft_hard_loss  # noqa: E402
from hald_ext.reference import decode_dense  # noqa: E402
from hald_ext.train import batches as B  # noqa: E402
from hald_ext.train.evaluate import autocast  # noqa: E402

# (model, source image size, output size, classes, batch)
CASES = [("convnet3", 28, 28, 10, 256), ("resnet18", 256, 224, 1000, 32)]
SMALL_CASES = [("convnet3", 28, 28, 10, 64), ("resnet18", 72, 64, 100, 16)]
ROUNDS = 3
ASPECTS = (1.0, 0.75, 4 / 3, 0.6, 1.5)  # folder images: height = src, width = src * aspect (and transposed)


def make_store(path, n_images, slots, num_classes, k, src, seed=0):
    """A store with random (but valid) crops and top-k labels: the step's cost does not depend on the
    label values."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.tensor([[sample_rrc_pixels(src, src, generator=g) for _ in range(slots)]
                           for _ in range(n_images)])
    boxes = quantize_boxes(pixels_to_boxes(pixels, src, src))
    flips = torch.rand(n_images, slots, generator=g) < 0.5
    ids = torch.stack([torch.randperm(num_classes, generator=g)[:k] for _ in range(n_images * slots)])
    q = Quantizer("power", 8)
    probs = torch.softmax(torch.randn(n_images * slots, k, generator=g) * 2, 1).sort(1, descending=True).values
    codes = torch.bucketize(probs, q.thresholds()).clamp_max(255).to(torch.uint8)
    header = Header(num_images=n_images, sli=slots, num_classes=num_classes, k=k, temperature=20.0, quantizer=q)
    id_dtype = torch.uint16 if num_classes <= 65535 else torch.int32
    return LabelStore.create(path, header, boxes, flips, ids.view(n_images, slots, k).to(id_dtype),
                             codes.view(n_images, slots, k))


def fkd_batch(images_hwc: list, store, image_ids, slots, size, device):
    """FKD's per-sample path: crop the stored box, resize, flip, normalise; dense soft labels."""
    boxes = dequantize_boxes(store.boxes[image_ids, slots])
    flips = store.flips[image_ids, slots]
    xs = []
    for i, box, f in zip(image_ids.tolist(), boxes, flips.tolist()):
        t, l, h, w = boxes_to_pixels(box, *images_hwc[i].shape[:2]).tolist()
        img = torch.from_numpy(images_hwc[i]).permute(2, 0, 1)
        c = TF.resized_crop(img, t, l, h, w, [size, size], antialias=True)
        c = TF.horizontal_flip(c) if f else c
        xs.append(TF.normalize(TF.to_dtype(c, torch.float32, scale=True), B.IMAGENET_MEAN, B.IMAGENET_STD))
    ids, codes = store.labels(image_ids, slots)
    q = decode_dense(ids.long(), codes, store.num_classes, "marginal", store.codebook)
    return torch.stack(xs).to(device), q.to(device)


def image_set(kind, n_images, src, num_classes, tmp, loader):
    """(ImageSet read the way `hald train` reads it, seconds to read it, description of the source)."""
    import time

    from PIL import Image

    from hald_ext.data import ImageSet, load_image_set

    rng = np.random.default_rng(0)
    labels = np.arange(n_images) % num_classes
    if kind == "array":
        images = list(rng.integers(0, 256, (n_images, src, src, 3), dtype=np.uint8))
        return ImageSet(images, labels, [str(c) for c in range(num_classes)],
                        [f"array:{i}" for i in range(n_images)]), 0.0, src
    root = os.path.join(tmp, "folder")
    for i in range(n_images):
        a = ASPECTS[i % len(ASPECTS)]
        h, w = (src, int(src * a)) if i % 2 else (int(src * a), src)
        d = os.path.join(root, f"c{labels[i]:04d}")
        os.makedirs(d, exist_ok=True)
        # Smooth content (a blurred random field) compresses like a photo, not like noise.
        small = rng.integers(0, 256, (max(h // 8, 2), max(w // 8, 2), 3), dtype=np.uint8)
        Image.fromarray(small).resize((w, h), Image.BILINEAR).save(os.path.join(d, f"{i:06d}.JPEG"), quality=90)
    t0 = time.perf_counter()
    images = load_image_set(root, loader=loader)
    return images, time.perf_counter() - t0, f"JPEG {int(src * min(ASPECTS))}-{int(src * max(ASPECTS))} px"


def bench_case(model_name, src, size, num_classes, batch, device, n_images=512, slots=2, kind="array",
               loader="auto", amp=False):
    """One row; amp: the model under bfloat16 autocast (as `hald train --amp`) and the batch source's crops
    made in bfloat16."""
    from hald_ext.data import image_source, loader_backend

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        data, read_s, described = image_set(kind, n_images, src, num_classes, tmp, loader)
        images = data.images
        store = make_store(os.path.join(tmp, "labels.safetensors"), n_images, slots, num_classes, 5, src)
        source_cls = getattr(B, "FusedBatchSource", None) or B.TorchBatchSource
        cache = image_source(data, device)  # what build_trainer does: resident, or streaming if too big
        crop_dtype = dict(out_dtype=torch.bfloat16) if amp else {}
        source = source_cls(cache, None, store, size, device=device, **crop_dtype)
        model = create_model(model_name, num_classes, img_size=size).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        codebook = store.codebook.to(device)
        g = torch.Generator().manual_seed(1)

        def draw():
            return torch.randint(0, n_images, (batch,), generator=g), torch.randint(0, slots, (batch,), generator=g)

        def step(x, loss_fn):
            opt.zero_grad(set_to_none=True)
            with autocast(torch.device(device), amp):
                loss = loss_fn(model(x))
            loss.backward()
            opt.step()

        def pipeline():
            b = source.soft_batch(*draw())
            step(b.x, lambda z: soft_hard_loss(z, b.topk_ids, b.topk_codes, codebook=codebook, temperature=20.0))

        def fkd():
            x, q = fkd_batch(images, store, *draw(), size, device)
            step(x, lambda z: F.kl_div(F.log_softmax(z / 20.0, 1), q, reduction="batchmean"))

        fixed = source.soft_batch(*draw())

        def resident():
            step(fixed.x, lambda z: soft_hard_loss(z, fixed.topk_ids, fixed.topk_codes, codebook=codebook,
                                                   temperature=20.0))

        def pipeline_hard():
            ids = draw()[0]
            b = source.hard_batch(ids, int(ids[0]))
            step(b.x, lambda z: soft_hard_loss(z, hard_target=b.y_a, target_b=b.y_b, mix_lambda=b.lam,
                                               soft_weight=0.0, hard_weight=1.0, label_smoothing=0.1))

        mem = cache.memory()
        row = {"model": model_name, "source": described, "size": size, "classes": num_classes, "batch": batch,
               "amp_bf16": amp, "device": device, "batch_source": source_cls.__name__, "images": n_images,
               "source_kind": kind,
               "loader": loader_backend(loader) if kind == "folder" else None,
               "read_into_cache_s": round(read_s, 3), "cache": mem["kind"], "cache_bytes": mem["bytes"],
               "padding_fraction": mem.get("padding_fraction")}
        fns = {"pipeline": pipeline, "pipeline_hard": pipeline_hard, "fkd": fkd, "resident": resident}
        # Interleaved rounds, best round per method: on a shared host the load drifts within a run,
        # and timing the methods one after another would charge the drift to whichever ran last.
        best = {name: float("inf") for name in fns}
        for r in range(ROUNDS):
            for name, fn in fns.items():
                best[name] = min(best[name], time_fn(fn, device, warmup=2 if r == 0 else 1, min_time=0.7,
                                                     max_reps=15))
        row["rounds"] = ROUNDS
        for name, ms in best.items():
            row[f"{name}_ms"] = ms
            row[f"{name}_img_per_s"] = batch / (ms * 1e-3)
        row["speedup_vs_fkd"] = row["fkd_ms"] / row["pipeline_ms"]
        row["pipeline_overhead"] = 1 - row["resident_ms"] / row["pipeline_ms"]
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--cases", default="all", help="'all' or comma-separated model names")
    p.add_argument("--sources", default="array,folder", help="array, folder or both (comma-separated)")
    p.add_argument("--loader", choices=("auto", "dali", "torch"), default="auto", help="folder decoder")
    p.add_argument("--images", type=int, default=512, help="images in the set (default: 512)")
    p.add_argument("--small", action="store_true", help="small inputs (a quick CPU run): " + str(SMALL_CASES))
    p.add_argument("--batch", type=int, default=None, help="batch size of every case (default: the case's own)")
    p.add_argument("--amp", action="store_true", help="bfloat16: the model under autocast (as hald train --amp; CUDA "
                   "only) and the crops made in bfloat16")
    args = p.parse_args(argv)
    table = SMALL_CASES if args.small else CASES
    if args.amp and args.device != "cuda":
        p.error("--amp: bfloat16 autocast runs on CUDA only (--device cuda)")
    if args.batch:
        table = [c[:4] + (args.batch,) for c in table]
    cases = [c for c in table if args.cases == "all" or c[0] in args.cases.split(",")]
    for kind in args.sources.split(","):
        rows = []
        print(f"{kind}: {'model':<10}{'size':>6}{'batch':>7}{'pipeline img/s':>16}{'hard img/s':>12}{'fkd img/s':>11}"
              f"{'resident img/s':>16}{'x fkd':>7}{'overhead':>10}  batch source")
        for case in cases:
            r = bench_case(*case, device=args.device, n_images=args.images, kind=kind, loader=args.loader, amp=args.amp)
            rows.append(r)
            print(f"{kind}: {r['model']:<10}{r['size']:>6}{r['batch']:>7}{r['pipeline_img_per_s']:>16.1f}"
                  f"{r['pipeline_hard_img_per_s']:>12.1f}{r['fkd_img_per_s']:>11.1f}{r['resident_img_per_s']:>16.1f}"
                  f"{r['speedup_vs_fkd']:>7.2f}{r['pipeline_overhead']:>9.1%}  {r['batch_source']}", flush=True)
        what = "one soft-phase training step" + (", images from a JPEG folder of mixed sizes" if kind == "folder" else "")
        payload = {"benchmark": what, "machine": machine(), "build": hald_ext.build_info(), "small": args.small,
                   "rows": rows}
        name = (f"train_{'folder_' if kind == 'folder' else ''}{'small_' if args.small else ''}"
                f"{f'b{args.batch}_' if args.batch else ''}{'bf16_' if args.amp else ''}{device_tag(args.device)}")
        print("wrote", write_results(name + ".json", payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
