"""The library side of `hald train` (its options and entry point: hald_ext.commands.train): a student
from an image set + label store with the HALD (or a baseline) schedule, from a validated TrainConfig.

The run folder holds args.yaml (the resolved configuration), summary.csv, metrics.json, curves.png
and last.pth (resumable; also loadable by hald_ext.models.create_model(..., checkpoint=...)).
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch

from hald_ext.core import distributed as D
from hald_ext.data import check_same_classes, image_sizes, image_source, load_image_set, open_images
from hald_ext.labels import FingerprintMismatch
from hald_ext.models import create_model
from hald_ext.train import config as C
from hald_ext.train.batches import FusedBatchSource, TorchBatchSource, open_label_store
from hald_ext.train.evaluate import EvalData
from hald_ext.train.schedule import build_schedule
from hald_ext.train.trainer import Trainer


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise C.ConfigError(f"--device {device} but no CUDA device is available")
    return device


def run_dir_for(cfg: C.TrainConfig) -> str:
    """--out; else the deprecated --output PARENT (default runs) and --experiment NAME; else a resumed
    run's folder; else runs/<time>-<schedule>-<model>."""
    if cfg.out:
        return cfg.out
    if cfg.experiment:
        name = cfg.experiment
    elif cfg.resume and os.path.isdir(cfg.resume):
        return cfg.resume  # resuming a run folder continues writing into it
    elif cfg.resume:
        return os.path.dirname(os.path.abspath(cfg.resume))
    else:
        sched = cfg.schedule.replace(":", "").replace(",", "-")
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{sched}-{cfg.model}"
    return os.path.join(cfg.output or "runs", name)


def check_store(store, images) -> None:
    """The store must describe exactly this image set (same images, same classes). A folder's files are
    identified from their bytes, without decoding them (hald_ext.data.fingerprint)."""
    if store.num_images != len(images):
        raise C.ConfigError(f"the label store labels {store.num_images} images but --data has {len(images)}")

    try:
        store.check_images(images)
    except FingerprintMismatch as e:
        raise C.ConfigError(f"{e}: relabel this image set") from e
    if store.num_classes != images.num_classes:
        raise C.ConfigError(f"the label store has {store.num_classes} classes but --data has {images.num_classes}")


def image_shapes(images) -> set:
    """The distinct (height, width) of a set's images: decoded arrays, or a folder's file headers."""

    return {tuple(int(v) for v in hw) for hw in np.unique(image_sizes(images), axis=0)}


def common_img_size(images, asked: int | None, flag: str = "--img-size") -> int:
    """The crop / input size: `asked`, else the images' size when they all have one square size."""
    if asked:
        return int(asked)
    shapes = image_shapes(images)
    if len(shapes) == 1:
        h, w = next(iter(shapes))
        if h == w:
            return int(h)
    raise C.ConfigError(f"the images have {len(shapes)} different sizes (e.g. {sorted(shapes)[:3]}): set {flag} "
                        "(the crop size the model sees)")


def eval_data_for(cfg, images, img_size: int, device):
    """The held-out set as streamed evaluation batches, with the training set's classes."""

    if os.path.isdir(cfg.eval_data):  # a folder streams from its files: decoded batch by batch
        held = cfg.eval_data
    else:
        held = load_image_set(cfg.eval_data, split=cfg.eval_split, loader=cfg.loader)
    data = EvalData(held, img_size, device, cfg.eval_batch_size, cfg.loader, cfg.eval_crop_ratio)
    check_same_classes(images, data.classes, f"--data {cfg.data}", f"--eval-data {cfg.eval_data}")
    return data


def build_trainer(cfg: C.TrainConfig, run_dir: str | None):
    """Everything a run needs, from a validated config (raises ConfigError on bad input)."""

    C.validate(cfg)
    info = D.init_from_env(resolve_device(cfg.device))
    device = D.device_for(resolve_device(cfg.device), info)
    schedule = build_schedule(cfg.schedule, cfg.epochs, cfg.soft_epochs, cfg.period)
    images = open_images(cfg.data, loader=cfg.loader)  # a folder is listed, not decoded
    img_size = common_img_size(images, cfg.img_size)
    store = None
    if schedule.epochs_of("soft"):
        store = open_label_store(cfg.labels)
        check_store(store, images)
    source_cls = FusedBatchSource if cfg.batch_source == "fused" else TorchBatchSource
    # Resident on the device when it fits the budget, else streamed from disk with prefetch.
    cache = image_source(images, device, max_bytes=cfg.resident_budget, loader=cfg.loader, workers=cfg.workers)
    source = source_cls(cache, None, store, img_size, cfg.mean, cfg.std, device,
                        cutmix_alpha=cfg.cutmix_alpha, rrc_scale=cfg.scale, rrc_ratio=cfg.ratio)
    eval_set = eval_data_for(cfg, images, img_size, device) if cfg.eval_data else None
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = create_model(cfg.model, images.num_classes, img_size=img_size)
    meta = {"model_name": cfg.model, "num_classes": images.num_classes, "img_size": img_size,
            "classes": list(images.classes), "mean": list(cfg.mean), "std": list(cfg.std)}
    trainer = Trainer(cfg, model, source, schedule, eval_set, run_dir, device, images.num_classes, meta)
    if trainer.info.is_main:
        mem = cache.memory()
        print(f"images: {len(images)} via {mem.get('backend', cfg.loader)} loader, {mem['kind']} on {mem['device']}"
              + (f", {mem['bytes'] / 2**20:.1f} MiB" if mem.get("bytes") else ""), flush=True)
    if cfg.resume:
        trainer.load_checkpoint(cfg.resume)
    return trainer


def train(cfg: C.TrainConfig) -> int:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        run_dir = run_dir_for(cfg)
        if not cfg.resume and os.path.exists(os.path.join(run_dir, "last.pth")):
            raise C.ConfigError(f"run folder {run_dir} already holds a checkpoint: pass --resume {run_dir} "
                                "to continue it, or another --out")
        trainer = build_trainer(cfg, run_dir)
    except (C.ConfigError, FileNotFoundError, ValueError, RuntimeError, ImportError) as e:
        print(f"hald train: error: {e}", file=sys.stderr)
        return 2
    if trainer.info.is_main:
        os.makedirs(run_dir, exist_ok=True)
        cfg.save(os.path.join(run_dir, "args.yaml"))
        print(f"run folder: {run_dir}\nschedule: {trainer.schedule} on {trainer.device} "
              f"x {trainer.info.world_size} process(es)", flush=True)
    try:
        history = trainer.fit()
    except ValueError as e:  # e.g. an image file that does not decode, met while streaming: named, and the
        print(f"hald train: error: {e}", file=sys.stderr)  # checkpoint of the last finished epoch is kept
        return 2
    if trainer.info.is_main and history and history[-1].get("eval_top1") is not None:
        last = history[-1]
        print(f"final: top-1 {last['eval_top1']:.2f} top-5 {last['eval_top5']:.2f} loss {last['eval_loss']:.4f}")
    return 0
