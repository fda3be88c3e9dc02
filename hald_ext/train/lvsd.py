"""`hald lvsd`: local-view semantic drift diagnostics (docs/method.md, "Local-view drift").

- Tr(Sigma) per image: the trace of the covariance of the teacher's soft label over `m` random
  crops. High values mean a few stored crop labels are a noisy estimate of what the image is.
- Crop consistency of a student: cosine similarity and Jensen-Shannon divergence between its output
  distributions on two random crops of the same image (HALD's analysis: phase B raises the cosine
  0.744 -> 0.959 and lowers JS 0.181 -> 0.039 on ImageNet).

    hald lvsd --data sel.npz --teacher runs/teacher/teacher.pth --crops 32
    hald lvsd --data imagenet-sel/ --model resnet18.a1_in1k --pretrained-file r18.safetensors --class-map imagenet
    hald lvsd --data sel.npz --student runs/hald-ipc10/last.pth --out lvsd.json
"""
from __future__ import annotations

import json
import sys

import torch

from hald_ext.core.normalize import IMAGENET_MEAN, IMAGENET_STD, normalization_of
from hald_ext.data import image_sizes, image_source, open_images
from hald_ext.models import create_model, for_classes, pretrained_model
from hald_ext.models.factory import load_checkpoint_state
from hald_ext.ops import crop_and_lookup
from hald_ext.train import checkpoint as ckpt
from hald_ext.train.batches import as_image_source


def random_crops(images, per_image: int, size: int, scale=(0.08, 1.0), seed: int = 0, mean=IMAGENET_MEAN,
                 std=IMAGENET_STD, image_ids=None, offset: int = 0) -> torch.Tensor:
    """Normalised float [n * per_image, 3, size, size], image-major: seeded random-resized crops +
    flips of the images `image_ids` (default: all) of an image source (or ImageSet / ImageFiles), cut by
    crop_and_lookup within each image's true size."""

    src = as_image_source(images)
    if image_ids is None:
        image_ids = torch.arange(len(src))
    ids = image_ids.repeat_interleave(per_image)
    b = src.batch(ids.to(src.labels.device))
    return crop_and_lookup(b.images, b.image_ids, size, **b.crop_kwargs(), seed=seed, offset=offset,
                           scale=tuple(scale), mean=mean, std=std).crops


def image_chunks(n: int, per_image: int, size: int, max_bytes: int = 256 << 20) -> list:
    """Image id chunks whose crops (n_chunk * per_image float crops of size^2) stay within `max_bytes`:
    the diagnostics hold one chunk's crops at a time, whatever the set's size. A set that fits is one
    chunk (offset 0: the crops of one call over every image)."""
    per_chunk = max(1, max_bytes // (per_image * 3 * size * size * 4))
    return list(torch.arange(n).split(per_chunk))


def chunked_probs(model, src, per_image: int, size: int, scale, seed: int, mean, std,
                  temperature: float = 1.0) -> torch.Tensor:
    """[N, per_image, C] softmax(model(crop) / T) over random crops of every image of `src`, one chunk
    of images at a time (chunk c draws its crops with offset c); a streaming source decodes the chunks
    ahead."""
    chunks = image_chunks(len(src), per_image, size)
    if hasattr(src, "prefetch"):
        src.prefetch([c.repeat_interleave(per_image) for c in chunks])
    out = []
    for c, ids in enumerate(chunks):
        crops = random_crops(src, per_image, size, scale, seed, mean, std, image_ids=ids, offset=c)
        out.append(crop_probs(model, crops, temperature).view(len(ids), per_image, -1))
    return torch.cat(out)


@torch.no_grad()
def crop_probs(model, crops: torch.Tensor, temperature: float = 1.0, batch_size: int = 512) -> torch.Tensor:
    """softmax(model(crops) / T) of normalised crops, in batches."""
    model.eval()
    out = [torch.softmax(model(c).float() / temperature, dim=1) for c in crops.split(batch_size)]
    return torch.cat(out)


def trace_sigma(probs: torch.Tensor) -> torch.Tensor:
    """[N, m, C] soft labels of m crops per image -> [N] trace of the (unbiased) covariance."""
    centred = probs - probs.mean(dim=1, keepdim=True)
    return centred.pow(2).sum(dim=(1, 2)) / (probs.shape[1] - 1)


def js_divergence(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    m = 0.5 * (p + q)
    kl = lambda a, b: (a * ((a + eps).log() - (b + eps).log())).sum(-1)  # noqa: E731
    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def consistency(probs: torch.Tensor) -> tuple:
    """[N, 2, C] outputs on two crops per image -> per-image (cosine, JS divergence)."""
    a, b = probs[:, 0], probs[:, 1]
    return torch.nn.functional.cosine_similarity(a, b, dim=1), js_divergence(a, b)


def load_model(path: str, num_classes: int, img_size: int, name: str | None = None):
    """A checkpoint written by `hald teacher` / `hald train` (they record model_name and img_size)."""

    state = ckpt.load(path)
    name = name or state.get("model_name")
    if name is None:
        raise ValueError(f"{path} does not record its model: pass the model name")
    model = create_model(name, num_classes, img_size=state.get("img_size", img_size))
    load_checkpoint_state(model, state)
    return model, int(state.get("img_size", img_size))


def load_teacher(args, data, natural: int):
    """(teacher, crop size): the --teacher checkpoint, or --model with its pretrained weights
    (--pretrained / --pretrained-file), read as the data's classes (--class-map when its class count
    differs); crops at --img-size, else the weights' input size."""

    if args.teacher and (args.pretrained or args.pretrained_file):
        raise ValueError("give the teacher one way: --teacher CHECKPOINT, or --model with --pretrained / "
                         "--pretrained-file")
    if args.pretrained and args.pretrained_file:
        raise ValueError("--pretrained (the hub's weights) and --pretrained-file (a local file): give one")
    if args.teacher:
        model, size = load_model(args.teacher, data.num_classes, natural, args.model)
        return model, args.img_size or size
    if not args.model:
        raise ValueError("--pretrained / --pretrained-file need --model NAME (a timm model, or tv:NAME)")
    model = for_classes(pretrained_model(args.model, args.pretrained_file), list(data.classes), args.class_map)
    return model, args.img_size or int(model.hald_pretrained.get("input_size", natural))


def run_lvsd(args, report=None) -> int:
    """`hald lvsd` from its resolved options (hald_ext.commands.lvsd.LvsdConfig); `report(args, result)`
    runs after the result is written."""
    with_teacher = bool(args.teacher or args.pretrained or args.pretrained_file)
    if not (with_teacher or args.student):
        print("hald lvsd: error: give --teacher (or --model with --pretrained / --pretrained-file: Tr(Sigma)) "
              "and / or --student (crop consistency)", file=sys.stderr)
        return 2
    if args.crops < 2 or args.pairs < 1:
        print("hald lvsd: error: --crops must be >= 2 and --pairs >= 1", file=sys.stderr)
        return 2
    try:
        data = open_images(args.data, loader=args.loader)  # a folder is listed, not decoded
        x = image_source(data, max_bytes=args.resident_budget, loader=args.loader, workers=args.workers)
        natural = int(image_sizes(data).max())  # a checkpoint that records no size
        result = {"data": args.data, "num_images": len(data)}
        if with_teacher:
            teacher, size = load_teacher(args, data, natural)
            mean, std = normalization_of([teacher], [args.teacher or args.model])
            if getattr(teacher, "hald_pretrained", None):
                result["teacher_weights"] = teacher.hald_pretrained
            tr = trace_sigma(chunked_probs(teacher, x, args.crops, size, tuple(args.scale), args.seed, mean, std,
                                           args.temperature))
            result.update(trace_sigma_mean=tr.mean().item(), trace_sigma=tr.tolist(), crops=args.crops,
                          temperature=args.temperature)
            print(f"Tr(Sigma) over {args.crops} crops: mean {tr.mean():.4f}, median {tr.median():.4f}, "
                  f"max {tr.max():.4f}")
        if args.student:
            student, size = load_model(args.student, data.num_classes, natural, args.model)
            mean, std = normalization_of([student], [args.student])
            probs = chunked_probs(student, x, 2 * args.pairs, size, tuple(args.scale), args.seed + 1, mean,
                                  std).view(len(data) * args.pairs, 2, -1)
            cos, js = (v.view(len(data), args.pairs).mean(1) for v in consistency(probs))
            result.update(cosine_mean=cos.mean().item(), js_mean=js.mean().item(), cosine=cos.tolist(), js=js.tolist())
            print(f"crop consistency over {args.pairs} pair(s): cosine {cos.mean():.4f}, JS {js.mean():.4f}")
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"hald lvsd: error: {e}", file=sys.stderr)
        return 2
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    if report is not None:
        report(args, result)
    return 0
