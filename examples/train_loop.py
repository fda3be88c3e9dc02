"""A training-shaped loop over the data path of hald_ext:

    loader (DALI, or the torch fallback) -> resident image cache (decoded once)
      -> crop_and_lookup (soft steps: replay stored boxes/flips and gather the stored top-k rows;
                          hard steps: fresh RRC + flip + CutMix from a seed)
      -> model logits -> hald_ext.ops.soft_hard_loss -> backward -> AdamW

The label store here is a stand-in built in memory (stored boxes from a fresh-crop call, a synthetic
top-k "teacher" that puts most mass on the true class); `hald relabel` produces the real one.

    python examples/train_loop.py --data fashion-mnist --images 200 --steps 50
    python examples/train_loop.py --folder /tmp/fmnist_png --steps 50 --backend torch
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hald_ext.core.boxes import quantize_boxes  # noqa: E402
from hald_ext.data.loader import make_loader, resident_cache_from_loader  # noqa: E402
from hald_ext.data.sources import ImageSet, load_image_set, write_image_folder  # noqa: E402
from hald_ext.models.factory import create_model  # noqa: E402
from hald_ext.data.select import select_ipc  # noqa: E402
from hald_ext.ops import crop_and_lookup, soft_hard_loss  # noqa: E402

FMNIST_MEAN, FMNIST_STD = (0.286,) * 3, (0.353,) * 3


def subset(images: ImageSet, per_class: int, seed: int = 0) -> ImageSet:
    """`per_class` random images of every class (a random-real 'distilled' set, IPC = per_class), drawn
    by the package's one IPC selection, so `hald select --ipc N --seed S` picks the same images."""
    return select_ipc(images, per_class, seed)


def stand_in_store(cache, size: int, sli: int, k: int, num_classes: int, seed: int):
    """SLI stored crops per image (uint16 boxes + flips) and top-k labels with distinct class ids."""
    n = len(cache)
    ids = torch.arange(n, device=cache.device).repeat_interleave(sli)
    b = cache.batch(ids)
    made = crop_and_lookup(b.images, b.image_ids, size, **b.crop_kwargs(), seed=seed + 1)
    boxes = quantize_boxes(made.boxes).view(n, sli, 4)
    flips = made.flips.view(n, sli)
    g = torch.Generator().manual_seed(seed)
    others = torch.argsort(torch.rand(n * sli, num_classes, generator=g), dim=1).to(cache.device)
    truth = cache.labels.repeat_interleave(sli)
    others = others[others != truth[:, None]].view(n * sli, num_classes - 1)
    label_ids = torch.cat([truth[:, None], others[:, : k - 1]], 1).view(n, sli, k)
    probs = torch.softmax(torch.randn(n * sli, k, generator=g) + torch.tensor([3.0] + [0.0] * (k - 1)), 1)
    return boxes, flips, label_ids, probs.half().view(n, sli, k).to(cache.device)


def train_loop(source, *, steps: int, batch_size: int = 16, size: int = 28, sli: int = 2, k: int = 3,
               device: str = "cpu", backend: str = "auto", seed: int = 0, temperature: float = 4.0,
               log=print) -> dict:
    device = torch.device(device)
    loader = make_loader(source, 64, device=device, backend=backend)
    t0 = time.perf_counter()
    cache = resident_cache_from_loader(loader)  # decode once, keep uint8 on the device
    log(f"loader: {loader.backend}; cache: {cache.memory()}; decoded in {time.perf_counter() - t0:.2f}s")
    num_classes = int(cache.labels.max()) + 1
    boxes, flips, label_ids, label_values = stand_in_store(cache, size, sli, k, num_classes, seed)
    model = create_model("convnet3", num_classes, img_size=size).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    g = torch.Generator(device=device).manual_seed(seed)
    losses = []
    for step in range(steps):
        image_ids = torch.randint(len(cache), (batch_size,), generator=g, device=device)
        b = cache.batch(image_ids)  # the cache's layout (one tensor, or packed images of mixed sizes)
        common = dict(**b.crop_kwargs(), mean=FMNIST_MEAN, std=FMNIST_STD)
        if step % 2 == 0:  # soft step: replay stored crops and their labels
            slots = torch.randint(sli, (batch_size,), generator=g, device=device)
            out = crop_and_lookup(b.images, b.image_ids, size, boxes=boxes[image_ids, slots],
                                  flips=flips[image_ids, slots], label_ids=label_ids, label_values=label_values,
                                  slots=slots, **common)
            loss = soft_hard_loss(model(out.crops), out.label_ids, out.label_values, temperature=temperature)
        else:  # hard step: fresh crops + CutMix, class labels with smoothing
            out = crop_and_lookup(b.images, b.image_ids, size, seed=seed, offset=step, cutmix_alpha=1.0, **common)
            y = cache.labels[image_ids]
            loss = soft_hard_loss(model(out.crops), hard_target=y, target_b=y[out.mix_partner],
                                  mix_lambda=out.mix_lambda, hard_weight=1.0, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if step % 10 == 0 or step == steps - 1:
            log(f"step {step:4d} {'soft' if step % 2 == 0 else 'hard'} loss {losses[-1]:.4f}")
    return {"losses": losses, "backend": loader.backend, "memory": cache.memory()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="fashion-mnist", help="image set for load_image_set (arrays path)")
    ap.add_argument("--folder", default=None, help="read this image folder instead (file-reader path)")
    ap.add_argument("--images", type=int, default=20, help="images per class taken from --data")
    ap.add_argument("--as-folder", action="store_true", help="write the --data subset as PNGs and read those")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backend", default="auto", choices=["auto", "dali", "torch"])
    args = ap.parse_args(argv)
    if args.folder:
        source = args.folder
    else:
        source = subset(load_image_set(args.data), args.images)
        if args.as_folder:
            tmp = tempfile.mkdtemp(prefix="hald_folder_")
            write_image_folder(source, tmp)
            source = tmp
    res = train_loop(source, steps=args.steps, batch_size=args.batch_size, device=args.device,
                     backend=args.backend)
    print(f"done: backend {res['backend']}, first loss {res['losses'][0]:.4f}, last {res['losses'][-1]:.4f}")


if __name__ == "__main__":
    main()
