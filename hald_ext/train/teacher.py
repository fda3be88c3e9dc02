"""`hald teacher`: train a teacher on a full labelled set and save a checkpoint that
hald_ext.models.create_model(name, num_classes, img_size=..., checkpoint=PATH) loads (and so
`hald relabel`).

    hald teacher --data fashion-mnist --model convnet3 --epochs 1 --out runs/teacher/convnet3.pth

The default is deliberately short (one epoch of ConvNet-3 on Fashion-MNIST: a few minutes on two
CPU cores): a less-trained expert is not a handicap for soft labels at small IPC ("A Label is Worth
a Thousand Images"), and longer runs are one flag away.
"""
from __future__ import annotations

import json
import os
import sys
import time

import torch
from torch import nn

from hald_ext.train import checkpoint as ckpt
from hald_ext.train.batches import IMAGENET_MEAN, IMAGENET_STD, images_to_tensor, normalize
from hald_ext.train.optim import HalfCosineLR, create_optimizer
from hald_ext.train.trainer import EvalSet, evaluate


def add_arguments(parser) -> None:
    parser.add_argument("--data", default="fashion-mnist", help="full labelled training set (default: fashion-mnist)")
    parser.add_argument("--eval-data", default=None, help="held-out set (default: the test split of a named set)")
    parser.add_argument("--model", default="convnet3", help="timm model name (default: convnet3)")
    parser.add_argument("--img-size", type=int, default=None, help="input size (default: the images' size)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs (default: 1)")
    parser.add_argument("--train-images", type=int, default=None,
                        help="train on a seeded random subset of this many images (default: all)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (default: 128)")
    parser.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate, cosine to 0 (default: 2e-3)")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default: 0.01)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    parser.add_argument("--device", default="auto", help="cpu | cuda | auto (default: auto)")
    parser.add_argument("--out", default="runs/teacher/teacher.pth", help="checkpoint path")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def train_teacher(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, *, epochs: int, batch_size: int,
                  lr: float, weight_decay: float, seed: int, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                  device="cpu", progress: bool = True) -> nn.Module:
    """Plain supervised training: cross-entropy, random horizontal flips, AdamW with a cosine to 0."""
    from tqdm.auto import tqdm

    images, targets = images.to(device), targets.to(device)
    model.to(device).train()
    opt = create_optimizer(model, lr, weight_decay)
    sched = HalfCosineLR(opt, epochs, eta=1.0, on_updates=True)
    gen = torch.Generator().manual_seed(seed)
    steps = (len(images) + batch_size - 1) // batch_size
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=gen).to(device)
        bar = tqdm(order.split(batch_size), desc=f"teacher epoch {epoch + 1}/{epochs}", disable=not progress,
                   leave=False)
        for step, idx in enumerate(bar):
            sched.set_position(epoch + step / steps)
            x = normalize(images[idx], mean, std)
            flip = (torch.rand(len(idx), generator=gen) < 0.5).to(device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss = nn.functional.cross_entropy(model(x), targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


def run(args) -> int:
    from hald_ext.data import load_image_set
    from hald_ext.models import create_model

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        train = load_image_set(args.data, split="train")
        if args.eval_data:
            held = load_image_set(args.eval_data, split="test")
        elif args.data in ("fashion-mnist", "fashion_mnist"):  # a named set has its own test split
            held = load_image_set(args.data, split="test")
        else:
            held = None
        labels = torch.from_numpy(train.labels)
        x = images_to_tensor(train.images)
        if args.train_images is not None:
            if not 0 < args.train_images <= len(x):
                raise ValueError(f"--train-images must be in [1, {len(x)}], got {args.train_images}")
            keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed))[:args.train_images]
            x, labels = x[keep], labels[keep]
        img_size = args.img_size or x.shape[-1]
        torch.manual_seed(args.seed)
        model = create_model(args.model, train.num_classes, img_size=img_size)
    except (FileNotFoundError, ValueError) as e:
        print(f"hald teacher: error: {e}", file=sys.stderr)
        return 2
    if img_size != x.shape[-1]:
        from torchvision.transforms.v2 import functional as TF

        x = TF.resize(x, [img_size, img_size], antialias=True)
    t0 = time.perf_counter()
    train_teacher(model, x, labels, epochs=args.epochs, batch_size=args.batch_size,
                  lr=args.lr, weight_decay=args.weight_decay, seed=args.seed, device=device, progress=args.progress)
    train_time = time.perf_counter() - t0
    result = {"model_name": args.model, "num_classes": train.num_classes, "img_size": img_size,
              "classes": list(train.classes), "data": args.data, "epochs": args.epochs, "train_images": len(x),
              "train_seconds": round(train_time, 1)}
    if held is not None:
        result.update(evaluate(model, EvalSet(images_to_tensor(held.images), torch.from_numpy(held.labels), img_size,
                                              device), IMAGENET_MEAN, IMAGENET_STD))
    ckpt.save_atomic({"model": {k: v.cpu() for k, v in model.state_dict().items()}, **result}, args.out)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(result, f, indent=1)
    acc = f", test top-1 {result['eval_top1']:.2f} %" if "eval_top1" in result else ""
    print(f"teacher {args.model}: {args.epochs} epoch(s) in {train_time:.0f} s{acc} -> {args.out}")
    return 0
