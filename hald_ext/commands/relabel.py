"""`hald relabel`: teachers label SLI random-resized crops (+ flips, optionally CutMix-ed) of every
image -> one label store (the library side: hald_ext.labels.relabel).

    hald relabel data/ipc10/ --model resnet18 --checkpoint t.pth --sli 4 -T 20 --cutmix-alpha 1 -o l.safetensors
    torchrun --nproc-per-node 8 -m hald_ext.cli relabel ...            (each rank labels its batches)
"""
from __future__ import annotations

import dataclasses
import sys
import time
from typing import Optional

import torch

from hald_ext.commands.options import CROPS, DATA, DEVICES, LABELS, OUTPUT, TEACHER, SourceOptions, describe
from hald_ext.commands.teacher_options import class_map_option
from hald_ext.core import distributed
from hald_ext.data import image_sizes, open_images
from hald_ext.data.select import select_ipc
from hald_ext.labels.format import DECODES, LabelStoreError
from hald_ext.labels.quantizer import KINDS as QUANTIZERS
from hald_ext.labels.relabel import _crop_size, relabel_with_stats, sha256_file
from hald_ext.labels.relabel_teacher import (
    BN_MODES,
    CheckpointAction,
    PretrainedAction,
    PretrainedFileAction,
    load_teachers,
    teacher_weight_specs,
)
from hald_ext.train import options as C

_ROLE = "weights of the --model before it:"


@dataclasses.dataclass
class RelabelConfig(SourceOptions):
    images: str = C.option(None, "image folder (one sub-folder per class), IDX / NPY / NPZ arrays, or "
                                 "'fashion-mnist'", group=DATA, positional=True)
    split: str = C.option("train", "split of a named data set", group=DATA)
    ipc: Optional[int] = C.option(None, "label IPC images per class, the ones `hald select --ipc IPC --seed "
                                        "IPC_SEED` picks", group=DATA)
    ipc_seed: int = C.option(0, "seed of the --ipc selection (as hald select)", group=DATA)
    model: list = C.option(None, "teacher: a timm model name (e.g. resnet18, resnet18.a1_in1k, convnet3) or a "
                                 "torchvision one as tv:NAME (e.g. tv:resnet18); repeat for an ensemble, each followed "
                                 "by its weights: --checkpoint, --pretrained or --pretrained-file", group=TEACHER,
                           action="append", required=True, item=str)
    checkpoint: list = C.option(None, "weights of the --model before it: a state dict of the data's classes (hald "
                                      "teacher / hald train write them; loaded with weights_only=True)",
                                group=TEACHER, action=CheckpointAction, metavar="FILE", factory=list, item=str)
    pretrained: bool = C.option(False, "the --model before it with the published pretrained weights (timm: the "
                                       "Hugging Face hub or its cache; tv:NAME: torchvision's DEFAULT weights); needs "
                                       "network or a cached copy", group=TEACHER, action=PretrainedAction)
    pretrained_file: list = C.option(None, "the --model before it with pretrained weights from a local file (timm: "
                                           "its own file mechanism, .pth / .bin / .safetensors; tv:NAME: a "
                                           "torchvision state dict)", group=TEACHER, action=PretrainedFileAction,
                                     metavar="FILE", factory=list, item=str)
    class_map: Optional[str] = class_map_option()
    teacher_weights: Optional[list] = C.option(None, "ensemble weights w (HALD's rule: logits weighted by "
                                                     "softmax(w / 10)); default: the plain mean of the teachers' "
                                                     "logits", group=TEACHER, nargs="+", item=float)
    teacher_bn: str = C.option("train", "BatchNorm of the teachers: train (as HALD's relabel: each batch "
                                        "normalised by its own statistics; the running statistics are restored "
                                        "afterwards) or eval (running statistics)", group=TEACHER, choices=BN_MODES)
    batch_size: int = C.option(256, "teacher batch (part of the recipe: BatchNorm in train mode and CutMix act per "
                                    "batch)", group=TEACHER)
    sli: int = C.option(1, "stored crops per image (SLI)", group=LABELS, deprecated=("crops_per_image",))
    k: Optional[int] = C.option(None, "top-k entries kept per label (1..C; k = C stores full-width labels, no "
                                      "class ids; default: min(5, C))", group=LABELS)
    temperature: float = C.option(1.0, "labels are softmax(logits / T)", group=LABELS, short=("-T",))
    bits: Optional[int] = C.option(None, "code bits per probability (default: 8; fp16: 16)", group=LABELS,
                                   choices=(8, 16))
    quantizer: str = C.option("power", "code -> probability table (power: gamma 1.5; docs/label-store.md); fp16 "
                                       "stores the float16 probabilities themselves (SRe2L / HALD's labels, no loss)",
                              group=LABELS, choices=QUANTIZERS)
    decode: str = C.option("marginal", "default decode mode recorded for training", group=LABELS, choices=DECODES)
    cutmix_alpha: Optional[float] = C.option(None, "label CutMix-ed crops (SRe2L / HALD relabel): lambda ~ Beta(A, "
                                                   "A) per batch; the mix record is stored with the labels",
                                             group=CROPS)
    scale: tuple = C.option((0.08, 1.0), "random-resized-crop area scale range", nargs=2, group=CROPS)
    ratio: tuple = C.option((3 / 4, 4 / 3), "random-resized-crop aspect ratio range", nargs=2, group=CROPS)
    flip_prob: float = C.option(0.5, "probability of a horizontal flip per crop", group=CROPS)
    img_size: Optional[list] = C.option(None, "crop output size S (square; default: the image size when all images "
                                              "are S x S)", nargs="+", item=int, group=CROPS, deprecated=("size",),
                                        key="size")
    mean: Optional[tuple] = C.option(None, "normalisation mean (default: the teacher's, else ImageNet)", nargs=3,
                                     group=CROPS)
    std: Optional[tuple] = C.option(None, "normalisation std (default: the teacher's, else ImageNet)", nargs=3,
                                    group=CROPS)
    seed: int = C.option(0, "seed of the crop boxes, flips, batches and CutMix draws", group=CROPS)
    out: str = C.option(None, "label store file to write (.safetensors)", group=OUTPUT, required=True,
                        short=("-o",))
    save_every_s: float = C.option(120.0, "write each rank's resume point (<out>.partial) every this many seconds",
                                   group=OUTPUT)
    restart: bool = C.option(False, "ignore an existing resume file", group=OUTPUT)
    progress: bool = C.option(True, "progress bar", group=OUTPUT)
    device: Optional[str] = C.option(None, "cuda or cpu (default: cuda when available; under torchrun each rank's "
                                           "GPU)", group=DEVICES)


CONFIG = RelabelConfig
SWEEP_MANAGED = ("images", "out", "checkpoint", "seed", "device", "progress", "restart")
SWEEP_ONLY: dict = {}


def add_arguments(p) -> None:
    describe(p, __doc__, RelabelConfig)


def run(args) -> int:
    try:
        cfg = C.resolve_config(RelabelConfig, args, "hald relabel")
        return _run(cfg, teacher_weight_specs(args) or [("checkpoint", c) for c in cfg.checkpoint])
    except (C.ConfigError, LabelStoreError, ValueError, FileNotFoundError) as e:
        msg = str(e)
        print(f"hald relabel: error: {msg[len('relabel: '):] if msg.startswith('relabel: ') else msg}",
              file=sys.stderr)
        return 2


def _load_images(args):
    images = open_images(args.images, args.split, loader=args.loader)  # a folder is listed, not decoded
    return select_ipc(images, args.ipc, args.ipc_seed) if args.ipc else images


def _run(args, weights) -> int:
    images = _load_images(args)
    size = _crop_size([tuple(hw) for hw in image_sizes(images).tolist()], args.img_size)
    teachers = load_teachers(args.model, weights, images.num_classes, size, images.classes, args.class_map)
    info = distributed.init_from_env(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    device = distributed.device_for(args.device or ("cuda" if torch.cuda.is_available() else "cpu"), info)
    t0 = time.time()
    store, stats = relabel_with_stats(
        images, teachers, args.out, sli=args.sli, k=min(5, images.num_classes) if args.k is None else args.k,
        temperature=args.temperature, bits=args.bits,
        quantizer=args.quantizer, scale=tuple(args.scale), ratio=tuple(args.ratio), flip_prob=args.flip_prob,
        size=size, mean=args.mean, std=args.std, seed=args.seed, batch_size=args.batch_size, device=device,
        teacher_name=args.model, teacher_sha256=[sha256_file(v) if v else None for _, v in weights],
        teacher_weights=args.teacher_weights, teacher_bn=args.teacher_bn, cutmix_alpha=args.cutmix_alpha,
        save_every_s=args.save_every_s, restart=args.restart, progress=args.progress,
        default_decode=args.decode, max_resident_bytes=args.resident_budget, loader=args.loader, workers=args.workers)
    if info.is_main:
        print(f"wrote {args.out}: {store.num_images} images x SLI {store.sli} = {store.num_labels} labels, "
              f"{store.bytes_per_label:.1f} bytes/label, {store.nbytes} bytes, {time.time() - t0:.1f} s; "
              f"KL(teacher || stored label) {stats['kl_to_teacher']:.4f} nats (a uniform label: "
              f"{stats['kl_uniform']:.4f})")
    return 0
