"""Training images per second for one soft-phase step (crops -> model -> loss -> backward -> AdamW),
three ways:

  pipeline : this package's step: the batch source the trainer uses (the fused crop op when the build
             has it) + label-store rows + the fused soft_hard_loss;
  fkd      : the FKD-style step: per-sample torchvision crop + flip + normalise of the stored box,
             dense decoded soft labels (hald_ext.reference.decode_dense), eager KL;
  resident : the same model and fused loss on fixed resident tensors (no data pipeline at all), so
             1 - resident / pipeline is the pipeline's share of a step.

    python benchmarks/bench_train.py [--device cpu|cuda] [--steps N]

Writes benchmarks/results/train_<device>.json.
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
from hald_ext.boxes import boxes_to_pixels, dequantize_boxes, pixels_to_boxes, quantize_boxes, sample_rrc_pixels  # noqa: E402
from hald_ext.labels import Header, LabelStore, Quantizer  # noqa: E402
from hald_ext.models import create_model  # noqa: E402
from hald_ext.ops import soft_hard_loss  # noqa: E402
from hald_ext.reference import decode_dense  # noqa: E402
from hald_ext.train import batches as B  # noqa: E402

# (model, source image size, output size, classes, batch)
CASES = [("convnet3", 28, 28, 10, 256), ("resnet18", 256, 224, 1000, 32)]


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
    header = Header(num_images=n_images, slots=slots, num_classes=num_classes, k=k, temperature=20.0, quantizer=q)
    id_dtype = torch.uint16 if num_classes <= 65535 else torch.int32
    return LabelStore.create(path, header, boxes, flips, ids.view(n_images, slots, k).to(id_dtype),
                             codes.view(n_images, slots, k))


def fkd_batch(images_hwc: np.ndarray, store, image_ids, slots, size, device):
    """FKD's per-sample path: crop the stored box, resize, flip, normalise; dense soft labels."""
    H, W = images_hwc.shape[1:3]
    pixels = boxes_to_pixels(dequantize_boxes(store.boxes[image_ids, slots]), H, W)
    flips = store.flips[image_ids, slots]
    xs = []
    for i, (t, l, h, w), f in zip(image_ids.tolist(), pixels.tolist(), flips.tolist()):
        img = torch.from_numpy(images_hwc[i]).permute(2, 0, 1)
        c = TF.resized_crop(img, t, l, h, w, [size, size], antialias=True)
        c = TF.horizontal_flip(c) if f else c
        xs.append(TF.normalize(TF.to_dtype(c, torch.float32, scale=True), B.IMAGENET_MEAN, B.IMAGENET_STD))
    ids, codes = store.labels(image_ids, slots)
    q = decode_dense(ids.long(), codes, store.num_classes, "marginal", store.codebook)
    return torch.stack(xs).to(device), q.to(device)


def bench_case(model_name, src, size, num_classes, batch, device, n_images=512, slots=2):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_images, src, src, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        store = make_store(os.path.join(tmp, "labels.safetensors"), n_images, slots, num_classes, 5, src)
        source_cls = getattr(B, "FusedBatchSource", None) or B.TorchBatchSource
        source = source_cls(B.images_to_tensor(list(images)), torch.zeros(n_images, dtype=torch.long), store, size,
                            device=device)
        model = create_model(model_name, num_classes, img_size=size).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        codebook = store.codebook.to(device)
        g = torch.Generator().manual_seed(1)

        def draw():
            return torch.randint(0, n_images, (batch,), generator=g), torch.randint(0, slots, (batch,), generator=g)

        def step(x, loss_fn):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x)).backward()
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

        row = {"model": model_name, "source": src, "size": size, "classes": num_classes, "batch": batch,
               "device": device, "batch_source": source_cls.__name__}
        for name, fn in (("pipeline", pipeline), ("fkd", fkd), ("resident", resident)):
            ms = time_fn(fn, device, warmup=2, min_time=2.0, max_reps=30)
            row[f"{name}_ms"] = ms
            row[f"{name}_img_per_s"] = batch / (ms * 1e-3)
        row["speedup_vs_fkd"] = row["fkd_ms"] / row["pipeline_ms"]
        row["pipeline_overhead"] = 1 - row["resident_ms"] / row["pipeline_ms"]
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--cases", default="all", help="'all' or comma-separated model names")
    args = p.parse_args(argv)
    cases = [c for c in CASES if args.cases == "all" or c[0] in args.cases.split(",")]
    rows = []
    print(f"{'model':<10}{'size':>6}{'batch':>7}{'pipeline img/s':>16}{'fkd img/s':>11}{'resident img/s':>16}"
          f"{'x fkd':>7}{'overhead':>10}  batch source")
    for case in cases:
        r = bench_case(*case, device=args.device)
        rows.append(r)
        print(f"{r['model']:<10}{r['size']:>6}{r['batch']:>7}{r['pipeline_img_per_s']:>16.1f}"
              f"{r['fkd_img_per_s']:>11.1f}{r['resident_img_per_s']:>16.1f}{r['speedup_vs_fkd']:>7.2f}"
              f"{r['pipeline_overhead']:>9.1%}  {r['batch_source']}", flush=True)
    payload = {"benchmark": "one soft-phase training step", "machine": machine(), "build": hald_ext.build_info(),
               "rows": rows}
    print("wrote", write_results(f"train_{device_tag(args.device)}.json", payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
