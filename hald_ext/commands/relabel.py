"""`hald relabel`: teachers label SLI random-resized crops (+ flips, optionally CutMix-ed) of every
image -> one label store (the library side: hald_ext.labels.relabel).

    hald relabel data/ipc10/ --model resnet18 --checkpoint t.pth --sli 4 -T 20 --cutmix-alpha 1 -o l.safetensors
    torchrun --nproc-per-node 8 -m hald_ext.cli relabel ...            (each rank labels its batches)
"""
from __future__ import annotations

import sys
import time

import torch

from hald_ext.core import distributed
from hald_ext.data import image_sizes, open_images
from hald_ext.data.select import select_ipc
from hald_ext.data.stream import add_source_arguments
from hald_ext.labels.format import LabelStoreError
from hald_ext.labels.relabel import _crop_size, relabel_with_stats, sha256_file
from hald_ext.labels.relabel_teacher import (
    BN_MODES,
    CheckpointAction,
    PretrainedAction,
    PretrainedFileAction,
    load_teachers,
    teacher_weight_specs,
)
from hald_ext.models.pretrained import add_pretrained_arguments


def add_arguments(p) -> None:
    p.description = __doc__.split("\n\n")[0].replace(" (the library side: hald_ext.labels.relabel)", "")
    p.add_argument("images", help="image folder (one sub-folder per class), IDX / NPY / NPZ arrays, or 'fashion-mnist'")
    p.add_argument("--out", "-o", required=True, help="label store file to write (.safetensors)")
    p.add_argument("--model", action="append", required=True,
                   help="teacher: a timm model name (e.g. resnet18, resnet18.a1_in1k, convnet3) or a torchvision one "
                        "as tv:NAME (e.g. tv:resnet18); repeat for an ensemble, each followed by its weights: "
                        "--checkpoint, --pretrained or --pretrained-file")
    p.add_argument("--checkpoint", action=CheckpointAction, default=[], metavar="FILE",
                   help="weights of the --model before it: a state dict of the data's classes (hald teacher / hald "
                        "train write them; loaded with weights_only=True)")
    add_pretrained_arguments(p, "the --model before it with", actions=(PretrainedAction, PretrainedFileAction))
    p.add_argument("--teacher-weights", type=float, nargs="+",
                   help="ensemble weights w (HALD's rule: logits weighted by softmax(w / 10)); default: the plain "
                        "mean of the teachers' logits")
    p.add_argument("--teacher-bn", choices=BN_MODES, default="train",
                   help="BatchNorm of the teachers: train (default, as HALD's relabel: each batch normalised by its "
                        "own statistics; the running statistics are restored afterwards) or eval (running statistics)")
    p.add_argument("--cutmix-alpha", type=float,
                   help="label CutMix-ed crops (SRe2L / HALD relabel): lambda ~ Beta(A, A) per batch; the mix record "
                        "is stored with the labels")
    p.add_argument("--split", default="train", help="split of a named data set (default: train)")
    p.add_argument("--loader", choices=("auto", "dali", "torch"), default="auto", help="image decoding backend")
    add_source_arguments(p)
    p.add_argument("--ipc", type=int,
                   help="label IPC images per class, the ones `hald select --ipc IPC --seed IPC_SEED` picks")
    p.add_argument("--ipc-seed", type=int, default=0, help="seed of the --ipc selection (default: 0, as hald select)")
    p.add_argument("--sli", "--crops-per-image", dest="sli", type=int, default=1, help="stored crops per image")
    p.add_argument("--k", type=int, default=None,
                   help="top-k entries kept per label (1..C; k = C stores full-width labels, no class ids; "
                        "default: min(5, C))")
    p.add_argument("--temperature", "-T", type=float, default=1.0, help="labels are softmax(logits / T)")
    p.add_argument("--bits", type=int, choices=(8, 16), help="code bits per probability (default: 8; fp16: 16)")
    p.add_argument("--quantizer", choices=("power", "uniform", "log", "fp16"), default="power",
                   help="code -> probability table (default: power, gamma 1.5; see the README's label store section); fp16 "
                        "stores the float16 probabilities themselves (SRe2L / HALD's labels, no loss)")
    p.add_argument("--scale", type=float, nargs=2, default=(0.08, 1.0), help="RRC area scale range")
    p.add_argument("--ratio", type=float, nargs=2, default=(3 / 4, 4 / 3), help="RRC aspect ratio range")
    p.add_argument("--flip-prob", type=float, default=0.5)
    p.add_argument("--size", type=int, nargs="+",
                   help="crop output size S (square; default: the image size when all images are S x S)")
    p.add_argument("--mean", type=float, nargs=3, help="normalisation mean (default: the teacher's, else ImageNet)")
    p.add_argument("--std", type=float, nargs=3, help="normalisation std")
    p.add_argument("--seed", type=int, default=0, help="seed of the crop boxes, flips, batches and CutMix draws")
    p.add_argument("--batch-size", type=int, default=256,
                   help="teacher batch (part of the recipe: BatchNorm in train mode and CutMix act per batch)")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available; under torchrun each rank's GPU)")
    p.add_argument("--decode", choices=("marginal", "renorm", "truncate"), default="marginal",
                   help="default decode mode recorded for training")
    p.add_argument("--save-every-s", type=float, default=120.0,
                   help="write each rank's resume point (<out>.partial) every this many seconds")
    p.add_argument("--restart", action="store_true", help="ignore an existing resume file")
    p.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    try:
        return _run(args)
    except (LabelStoreError, ValueError, FileNotFoundError) as e:
        msg = str(e)
        print(f"hald relabel: error: {msg[len('relabel: '):] if msg.startswith('relabel: ') else msg}",
              file=sys.stderr)
        return 2


def _load_images(args):
    images = open_images(args.images, args.split, loader=args.loader)  # a folder is listed, not decoded
    return select_ipc(images, args.ipc, args.ipc_seed) if args.ipc else images


def _run(args) -> int:
    images = _load_images(args)
    size = _crop_size([tuple(hw) for hw in image_sizes(images).tolist()], args.size)
    weights = teacher_weight_specs(args)
    teachers = load_teachers(args.model, weights, images.num_classes, size, images.classes, args.class_map)
    info = distributed.init_from_env(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    device = distributed.device_for(args.device or ("cuda" if torch.cuda.is_available() else "cpu"), info)
    t0 = time.time()
    store, stats = relabel_with_stats(
        images, teachers, args.out, slots=args.sli, k=min(5, images.num_classes) if args.k is None else args.k,
        temperature=args.temperature, bits=args.bits,
        quantizer=args.quantizer, scale=tuple(args.scale), ratio=tuple(args.ratio), flip_prob=args.flip_prob,
        size=size, mean=args.mean, std=args.std, seed=args.seed, batch_size=args.batch_size, device=device,
        teacher_name=args.model, teacher_sha256=[sha256_file(v) if v else None for _, v in weights],
        teacher_weights=args.teacher_weights, teacher_bn=args.teacher_bn, cutmix_alpha=args.cutmix_alpha,
        save_every_s=args.save_every_s, restart=args.restart, progress=not args.no_progress,
        default_decode=args.decode, max_resident_bytes=args.resident_budget, loader=args.loader, workers=args.workers)
    if info.is_main:
        print(f"wrote {args.out}: {store.num_images} images x {store.slots} slots = {store.num_labels} labels, "
              f"{store.bytes_per_label:.1f} bytes/label, {store.nbytes} bytes, {time.time() - t0:.1f} s; "
              f"KL(teacher || stored label) {stats['kl_to_teacher']:.4f} nats (a uniform label: "
              f"{stats['kl_uniform']:.4f})")
    return 0
