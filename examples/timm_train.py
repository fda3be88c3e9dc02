"""A timm-style training loop (timm's Mixup / CutMix making dense soft targets, a timm model, AdamW)
with the fused loss swapped in by one line, on Fashion-MNIST.

    python examples/timm_train.py --steps 30                # fused loss (hald_ext.timm)
    python examples/timm_train.py --steps 30 --loss timm    # timm's own SoftTargetCrossEntropy
    python examples/timm_train.py --steps 30 --distill      # + online distillation from a teacher

The swap is the import: timm's train.py builds `train_loss_fn = SoftTargetCrossEntropy()` when Mixup or
CutMix is on; `from hald_ext.timm import SoftTargetCrossEntropy` gives the same loss (values and
gradients) from one fused pass over the logits. `--distill` uses `hald_ext.timm.LogitDistillationTask`,
timm's `LogitDistillationTask` with the distillation term fused (the teacher here is an untrained copy:
the loop shows the wiring, not a useful teacher).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import timm  # noqa: E402
from timm.data import Mixup  # noqa: E402

import hald_ext.timm  # noqa: E402
from hald_ext.data import load_image_set  # noqa: E402

MEAN, STD = 0.286, 0.353  # Fashion-MNIST


def tensors(split: str, limit: int):
    """First `limit` images of a split as normalised [N, 1, 28, 28] float32, and int64 labels."""
    images = load_image_set("fashion-mnist", split=split)
    x = np.stack(images.images[:limit])[..., 0].astype(np.float32) / 255.0  # RGB copies of grey: one channel
    x = (torch.from_numpy(x)[:, None] - MEAN) / STD
    return x, torch.as_tensor(np.asarray(images.labels[:limit]), dtype=torch.int64)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--loss", choices=["fused", "timm"], default="fused")
    p.add_argument("--distill", action="store_true", help="train through LogitDistillationTask")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--images", type=int, default=2000, help="training images used (first N)")
    p.add_argument("--model", default="test_efficientnet")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)  # timm's Mixup draws lambda and the mode with numpy

    x_train, y_train = tensors("train", args.images)
    x_test, y_test = tensors("test", 1000)
    model = timm.create_model(args.model, num_classes=10, in_chans=1, pretrained=False)
    mixup_fn = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10)

    # The one-line swap (timm's train.py: `train_loss_fn = SoftTargetCrossEntropy()`):
    if args.loss == "fused":
        train_loss_fn = hald_ext.timm.SoftTargetCrossEntropy()
    else:
        train_loss_fn = timm.loss.SoftTargetCrossEntropy()

    if args.distill:
        teacher = timm.create_model(args.model, num_classes=10, in_chans=1, pretrained=False)
        task_cls = hald_ext.timm.LogitDistillationTask if args.loss == "fused" else timm.task.LogitDistillationTask
        task = task_cls(model, teacher, criterion=train_loss_fn, temperature=4.0, task_loss_weight=0.5,
                        verbose=False)
        step_fn = lambda x, y: task(x, y)["loss"]  # noqa: E731
    else:
        step_fn = lambda x, y: train_loss_fn(model(x), y)  # noqa: E731

    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    model.train()
    t0 = time.perf_counter()
    for step in range(args.steps):
        idx = torch.randint(0, len(x_train), (args.batch,))
        x, y = mixup_fn(x_train[idx], y_train[idx])  # y: dense [B, 10] soft targets
        loss = step_fn(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}", flush=True)
    elapsed = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        acc = (model(x_test).argmax(1) == y_test).float().mean().item()
    print(f"{args.loss} loss{' + distillation' if args.distill else ''}: {args.steps} steps in {elapsed:.1f} s, "
          f"test top-1 on 1000 images {acc:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
