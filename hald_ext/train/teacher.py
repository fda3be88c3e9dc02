"""The library side of `hald teacher` (its options: hald_ext.commands.teacher): train a teacher on a full labelled set and save a checkpoint that
hald_ext.models.create_model(name, num_classes, img_size=..., checkpoint=PATH) loads (and so
`hald relabel`).

    hald teacher --data fashion-mnist --model convnet3 --epochs 1 --out runs/teacher/convnet3.pth
    hald teacher --data imagenet/train --eval-data imagenet/val --model resnet18 --img-size 224 \
        --scale 0.08 1 --epochs 30 --save-every 5 --out runs/teacher/r18.pth   (+ r18-epoch005.pth, ...)

Images go through the same path as every command (loader -> resident cache or streaming source ->
crop_and_lookup), so a folder of mixed-size JPEGs trains as it is; evaluation streams the held-out set
with resize + center crop (hald_ext.train.evaluate).

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

from hald_ext.core.device import to_device
from hald_ext.core.normalize import IMAGENET_MEAN, IMAGENET_STD, checked
from hald_ext.data import check_same_classes, image_source, load_image_set, open_images
from hald_ext.data.select import subset
from hald_ext.models import create_model
from hald_ext.ops import crop_and_lookup
from hald_ext.train import checkpoint as ckpt
from hald_ext.train.batches import as_image_source
from hald_ext.train.cli import common_img_size
from hald_ext.train.evaluate import EvalData, evaluate
from hald_ext.train.optim import HalfCosineLR, create_optimizer


def epoch_checkpoint_path(out: str, epoch: int) -> str:
    """runs/teacher/t.pth, 3 -> runs/teacher/t-epoch003.pth"""
    stem, ext = os.path.splitext(out)
    return f"{stem}-epoch{epoch:03d}{ext or '.pth'}"


class _CachedEpochs:
    """Epochs over an image source: a seeded permutation per epoch, batches gathered from the source."""

    def __init__(self, src, batch_size: int, gen: torch.Generator):
        self.src, self.batch_size, self.gen = src, batch_size, gen
        self.labels = src.labels

    def __len__(self) -> int:
        return -(-len(self.src) // self.batch_size)

    def epoch(self, epoch: int):
        order = torch.randperm(len(self.src), generator=self.gen)
        batches = order.split(self.batch_size)
        if hasattr(self.src, "prefetch"):  # streaming from disk: decode the epoch's batches ahead
            self.src.prefetch(batches)
        dev = self.labels.device
        return (self.src.batch(idx.to(dev)) for idx in batches)


class _LoaderEpochs:
    """Epochs decoded from the files every time (a shuffled loader): for sets too big to keep decoded."""

    def __init__(self, loader, device):
        self.loader = loader
        self.labels = torch.as_tensor(loader.labels, dtype=torch.int64, device=device)

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int):
        return iter(self.loader)


def train_teacher(model: nn.Module, images, targets=None, *, epochs: int, batch_size: int, lr: float,
                  weight_decay: float, seed: int, img_size: int | None = None, rrc_scale=None,
                  mean=IMAGENET_MEAN, std=IMAGENET_STD, device="cpu", progress: bool = True,
                  on_epoch=None, resume: dict | None = None) -> nn.Module:
    """Plain supervised training through the image path every command uses: batches from the image
    source (resident cache or streaming; `images` may also be an ImageSet, a uint8 [N, 3, H, W] tensor
    with `targets`, or a loader from hald_ext.data.make_loader that decodes every epoch), crop_and_lookup
    crops (the whole image, or random-resized crops with `rrc_scale`) and random horizontal flips,
    cross-entropy, AdamW with a cosine to 0. `on_epoch(epoch, model, state)` runs after every epoch
    (1-based); `state` (optimizer, sampler generator and torch RNG states) passed back as `resume`
    (with "model" and "epoch") continues the run exactly where that epoch ended."""
    from tqdm.auto import tqdm


    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    if hasattr(images, "backend"):  # a loader
        epochs_of = _LoaderEpochs(images, device)
    else:
        src = as_image_source(images, targets, device)
        if img_size is None and src.resident and src.image_sizes is None and src.images.shape[1] == src.images.shape[2]:
            img_size = src.images.shape[1]
        epochs_of = _CachedEpochs(src, batch_size, gen)
    if img_size is None:
        raise ValueError("img_size is needed: the images are not all one square size")
    size = int(img_size)
    labels = epochs_of.labels.to(device)
    model.to(device).train()
    opt = create_optimizer(model, lr, weight_decay)
    start = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        gen.set_state(resume["generator"])
        torch.set_rng_state(resume["torch_rng"])
        start = int(resume["epoch"])
    sched = HalfCosineLR(opt, epochs, eta=1.0, on_updates=True)
    steps = len(epochs_of)
    whole = torch.tensor([[0.0, 0.0, 1.0, 1.0]], device=device)
    for epoch in range(start, epochs):
        bar = tqdm(epochs_of.epoch(epoch), total=steps, desc=f"teacher epoch {epoch + 1}/{epochs}",
                   disable=not progress, leave=False)
        for step, b in enumerate(bar):
            sched.set_position(epoch + step / steps)
            B = b.image_ids.shape[0]
            if rrc_scale is None:
                flips = to_device(torch.rand(B, generator=gen) < 0.5, device)
                x = crop_and_lookup(b.images, b.image_ids, size, **b.crop_kwargs(),
                                    boxes=whole.expand(B, 4), flips=flips, mean=mean, std=std).crops
            else:
                x = crop_and_lookup(b.images, b.image_ids, size, **b.crop_kwargs(), seed=seed,
                                    offset=epoch * steps + step, scale=tuple(rrc_scale), mean=mean, std=std).crops
            loss = nn.functional.cross_entropy(model(x), labels[b.sample_ids.to(device)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        if on_epoch is not None:
            on_epoch(epoch + 1, model, {"optimizer": opt.state_dict(), "generator": gen.get_state(),
                                        "torch_rng": torch.get_rng_state()})
    return model.eval()


# The options that decide a teacher's weights: a resume file is used only when they all match.
_DECIDES = {"data", "model", "pretrained", "pretrained_file", "epochs", "train_images", "batch_size", "lr",
            "weight_decay", "rrc_scale", "img_size", "seed", "mean", "std", "loader"}


def _options(args) -> dict:
    """The options by the names resume files record (--scale was --rrc-scale)."""
    return {("rrc_scale" if k == "scale" else k): v for k, v in vars(args).items()}


def held_out_for(args):
    """The held-out set of a teacher run: a folder path (streamed), an ImageSet, or None."""

    if args.eval_data:
        held = args.eval_data if os.path.isdir(args.eval_data) else load_image_set(args.eval_data, split="test",
                                                                                   loader=args.loader)
    elif args.data in ("fashion-mnist", "fashion_mnist"):  # a named set has its own test split
        held = load_image_set(args.data, split="test")
    else:
        return None
    return held


def run_teacher(args) -> int:
    """`hald teacher` from its resolved options (hald_ext.commands.teacher.TeacherConfig)."""
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        if args.save_every < 0:
            raise ValueError(f"--save-every must be >= 0, got {args.save_every}")
        mean, std = checked(args.mean or IMAGENET_MEAN, args.std or IMAGENET_STD)
        budget = 0 if args.stream else args.resident_budget
        train = open_images(args.data, split="train", loader=args.loader)  # a folder is listed, not decoded
        if args.train_images is not None:
            if not 0 < args.train_images <= len(train):
                raise ValueError(f"--train-images must be in [1, {len(train)}], got {args.train_images}")
            keep = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))[:args.train_images]
            train = subset(train, keep.numpy())
        img_size = common_img_size(train, args.img_size)
        held = held_out_for(args)
        eval_data = None
        if held is not None:
            eval_data = EvalData(held, img_size, device, 256, args.loader, args.eval_crop_ratio)
            check_same_classes(list(train.classes), eval_data.classes, f"--data {args.data}",
                               f"--eval-data {args.eval_data or args.data}")
        torch.manual_seed(args.seed)
        num_classes = len(train.classes)
        if args.pretrained and args.pretrained_file:
            raise ValueError("--pretrained (the hub's weights) and --pretrained-file (a local file): give one")
        model = create_model(args.model, num_classes, img_size=img_size, pretrained=args.pretrained,
                             pretrained_file=args.pretrained_file)
        if getattr(model, "hald_pretrained", None) and args.mean is None and args.std is None:
            mean, std = model.hald_normalization  # the normalisation the pretrained weights expect
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"hald teacher: error: {e}", file=sys.stderr)
        return 2
    n_train = len(train)
    meta = {"model_name": args.model, "num_classes": num_classes, "img_size": img_size,
            "classes": list(train.classes), "data": args.data, "train_images": n_train,
            "mean": list(mean), "std": list(std)}  # relabel and lvsd normalise crops with these

    def save(path: str, epoch: int, model: nn.Module, extra: dict | None = None) -> None:
        ckpt.save_atomic({"model": {k: v.cpu() for k, v in model.state_dict().items()}, **meta, "epochs": epoch,
                          **(extra or {})}, path)

    # The state after each finished epoch, so a killed run continues instead of starting again.
    partial = args.out + ".partial"
    decided = {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(_options(args).items())
               if k in _DECIDES}
    resume = None
    if os.path.exists(partial) and not args.restart:
        try:
            resume = ckpt.load(partial)
        except Exception as e:  # noqa: BLE001 - any unreadable file: say which, lose nothing
            print(f"hald teacher: error: {partial} is not a readable resume file ({str(e).splitlines()[0]}); "
                  "delete it or pass --restart", file=sys.stderr)
            return 2
        if resume.get("options") != decided:
            was = resume.get("options") or {}
            diff = sorted("scale" if k == "rrc_scale" else k  # the option's name today
                          for k in set(was) | set(decided) if was.get(k) != decided.get(k))
            print(f"hald teacher: error: {partial} was written with other options ({', '.join(diff)}): delete it, "
                  "pass --restart, or rerun with the same options", file=sys.stderr)
            return 2
        print(f"resuming from {partial} after epoch {resume['epoch']} of {args.epochs}", flush=True)

    def on_epoch(epoch: int, model: nn.Module, state: dict) -> None:
        if args.save_every and epoch % args.save_every == 0 and epoch < args.epochs:
            save(epoch_checkpoint_path(args.out, epoch), epoch, model)
        if epoch < args.epochs:
            save(partial, epoch, model, {"epoch": epoch, "options": decided, **state})

    t0 = time.perf_counter()
    try:
        source = image_source(train, device, max_bytes=budget, loader=args.loader, workers=args.workers)
    except (ValueError, ImportError) as e:
        print(f"hald teacher: error: {e}", file=sys.stderr)
        return 2
    train_teacher(model, source, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                  weight_decay=args.weight_decay, seed=args.seed, img_size=img_size,
                  rrc_scale=args.scale, mean=mean, std=std, device=device, progress=args.progress,
                  on_epoch=on_epoch, resume=resume)
    train_time = time.perf_counter() - t0
    result = {**meta, "epochs": args.epochs, "train_seconds": round(train_time, 1)}
    if eval_data is not None:
        result.update(evaluate(model, eval_data, mean=mean, std=std))
    if resume is not None:
        result["resumed_after_epoch"] = int(resume["epoch"])  # train_seconds counts this process only
    save(args.out, args.epochs, model, result)
    if args.save_every and args.epochs % args.save_every == 0:
        save(epoch_checkpoint_path(args.out, args.epochs), args.epochs, model, result)
    if os.path.exists(partial):
        os.remove(partial)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(result, f, indent=1)
    acc = f", test top-1 {result['eval_top1']:.2f} %" if "eval_top1" in result else ""
    print(f"teacher {args.model}: {args.epochs} epoch(s) in {train_time:.0f} s{acc} -> {args.out}")
    return 0
