"""`hald relabel`: a teacher labels SLI random-resized crops (+ flips) of every image -> a label store.

Boxes and flips of every (image, slot) are drawn first, from one seeded generator with torchvision's
RandomResizedCrop rule, and quantised; the crop that is labelled is the one the quantised box
replays. Labels are then computed in batches (image-major order) and, every `save_every_s` seconds,
the store so far is written atomically to `<out>.partial` (a time interval, not a batch count: each
save rewrites the whole partial store); a rerun with the same arguments resumes from there. The
final store replaces `<out>` atomically.
"""
from __future__ import annotations

import hashlib
import os
import time

import torch
from tqdm import tqdm

from hald_ext.boxes import boxes_to_pixels, dequantize_boxes, quantize_boxes, sample_rrc_pixels
from hald_ext.labels.format import Header, LabelStoreError
from hald_ext.labels.quantizer import Quantizer
from hald_ext.labels.store import LabelStore

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_state(model: torch.nn.Module) -> str:
    """Digest of a model's weights (names, shapes, bytes): identifies a teacher given as an object."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(repr((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def sample_crops(image_sizes, slots: int, scale, ratio, flip_prob: float, seed: int):
    """(boxes uint16 [N, S, 4], flips bool [N, S]) drawn with one seeded generator, image-major."""
    g = torch.Generator().manual_seed(seed)
    n = len(image_sizes)
    pixels = torch.empty(n, slots, 4, dtype=torch.int64)
    for i, (h, w) in enumerate(image_sizes):
        for s in range(slots):
            pixels[i, s] = torch.tensor(sample_rrc_pixels(h, w, scale, ratio, generator=g))
    hw = torch.tensor(image_sizes, dtype=torch.float64).view(n, 1, 2)
    boxes = pixels.double() / torch.cat([hw, hw], -1)  # (top, left, h, w) / (H, W, H, W)
    flips = torch.rand(n, slots, generator=g) < flip_prob
    return quantize_boxes(boxes.clamp(0, 1)), flips


class CropRenderer:
    """Crops stored boxes out of uint8 images: resized_crop(antialias=True) on uint8, flip, normalise."""

    def __init__(self, images, size, mean, std):
        from torchvision.transforms.v2 import functional as TF

        self._tf = TF
        self.images = [torch.tensor(im).permute(2, 0, 1).contiguous() for im in images]  # CHW uint8 copies
        self.size = list(size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255

    def __call__(self, image_ids, boxes_u16, flips) -> torch.Tensor:
        crops = []
        # One resized_crop per crop: crop sizes differ, so this loop stays until the fused crop kernel.
        for i, box in zip(image_ids.tolist(), dequantize_boxes(boxes_u16)):
            im = self.images[i]
            top, left, h, w = boxes_to_pixels(box, im.shape[1], im.shape[2]).tolist()
            crops.append(self._tf.resized_crop(im, top, left, h, w, self.size, antialias=True))
        batch = torch.stack(crops)
        batch = torch.where(flips.view(-1, 1, 1, 1), batch.flip(-1), batch)
        return (batch.float() - self.mean) / self.std


def relabel(images, teacher: torch.nn.Module, out: str, *, slots: int = 1, k: int = 5, temperature: float = 1.0,
            bits: int = 8, quantizer: str = "power", scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip_prob: float = 0.5,
            size=None, mean=None, std=None, seed: int = 0, batch_size: int = 256, device=None,
            teacher_name: str | None = None, teacher_sha256: str | None = None, save_every_s: float = 120.0,
            restart: bool = False, progress: bool = True, default_decode: str = "marginal") -> LabelStore:
    """Label `slots` crops of every image of `images` (an ImageSet) with `teacher`; write `out`."""
    from hald_ext.data import fingerprint
    from hald_ext.ops import label_encode

    n = len(images)
    if n == 0:
        raise ValueError("relabel: the image set is empty")
    num_classes = images.num_classes
    sizes = [tuple(im.shape[:2]) for im in images.images]
    if size is None:
        if len(set(sizes)) != 1:
            raise ValueError("relabel: images differ in size; give the crop output size (--size)")
        size = sizes[0]
    size = [int(size), int(size)] if isinstance(size, int) else [int(s) for s in size]
    cfg = getattr(teacher, "pretrained_cfg", None) or {}
    mean = [float(m) for m in (mean or cfg.get("mean") or IMAGENET_MEAN)]
    std = [float(s) for s in (std or cfg.get("std") or IMAGENET_STD)]
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    q = Quantizer(quantizer, bits)
    header = Header(
        num_images=n, slots=slots, num_classes=num_classes, k=k, temperature=float(temperature), quantizer=q,
        default_decode=default_decode,
        teacher={"name": teacher_name or type(teacher).__name__, "checkpoint_sha256": teacher_sha256 or sha256_state(teacher)},
        images=fingerprint(images),
        crops={"rule": "torchvision.RandomResizedCrop", "scale": [float(s) for s in scale],
               "ratio": [float(r) for r in ratio], "flip_prob": float(flip_prob), "size": size, "mean": mean,
               "std": std, "resize": "bilinear, antialias, on uint8"},
        seed=int(seed), source="relabel")
    if k > num_classes:
        raise ValueError(f"relabel: k = {k} exceeds the {num_classes} classes")

    partial = out + ".partial"
    state = _resume(partial, header) if not restart else None
    if state is None:
        boxes, flips = sample_crops(sizes, slots, scale, ratio, flip_prob, seed)
        ids = torch.zeros(n, slots, k, dtype=torch.uint16 if num_classes <= 65535 else torch.int32)
        codes = torch.zeros(n, slots, k, dtype=q.code_dtype)
        done = 0
    else:
        boxes, flips, ids, codes, done = state

    render = CropRenderer(images.images, size, mean, std)
    thresholds = q.thresholds().to(device)
    teacher = teacher.to(device).eval()
    total = n * slots
    flat_ids, flat_codes = ids.view(total, k), codes.view(total, k)
    flat_boxes, flat_flips = boxes.view(total, 4), flips.view(total)
    image_of = torch.arange(n).repeat_interleave(slots)
    bar = tqdm(total=total, initial=done, unit="label", desc="relabel", disable=not progress)
    last_save = time.monotonic()
    saved = done
    try:
        with torch.inference_mode():
            while done < total:
                hi = min(done + batch_size, total)
                x = render(image_of[done:hi], flat_boxes[done:hi], flat_flips[done:hi]).to(device)
                logits = teacher(x).float()
                if logits.shape != (hi - done, num_classes):
                    raise ValueError(f"relabel: the teacher returned logits of shape {tuple(logits.shape)}, "
                                     f"expected [{hi - done}, {num_classes}]")
                bi, bc = label_encode(logits, k, thresholds, temperature=temperature, from_logits=True)
                flat_ids[done:hi], flat_codes[done:hi] = bi.cpu(), bc.cpu()
                bar.update(hi - done)
                done = hi
                if done < total and time.monotonic() - last_save >= save_every_s:
                    _save_partial(partial, header, boxes, flips, ids, codes, done)
                    last_save, saved = time.monotonic(), done
    except KeyboardInterrupt:
        if saved < done < total:  # keep the work of an interrupted run (a crash keeps the last save)
            _save_partial(partial, header, boxes, flips, ids, codes, done)
        raise
    bar.close()
    store = LabelStore.create(out, header, boxes, flips, ids, codes)
    if os.path.exists(partial):
        os.remove(partial)
    return store


def _save_partial(partial, header, boxes, flips, ids, codes, done):
    import dataclasses

    LabelStore.create(partial, dataclasses.replace(header, progress=done), boxes, flips, ids, codes)


def _resume(partial: str, header: Header):
    if not os.path.exists(partial):
        return None
    try:
        st = LabelStore.open(partial, allow_partial=True)
    except LabelStoreError as e:
        raise LabelStoreError(f"{e}; delete {partial} (or pass --restart) to start over") from None
    if st.header.progress is None or not st.header.same_recipe(header):
        raise LabelStoreError(f"{partial}: a partial store made with other arguments, teacher or images; delete it "
                              "(or pass --restart) to start over")
    return (st.boxes.clone(), st.flips.clone(), st.topk_ids.clone(), st.codes.clone(), st.header.progress)


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments(p) -> None:
    p.add_argument("images", help="image folder (one sub-folder per class), IDX / NPY / NPZ arrays, or 'fashion-mnist'")
    p.add_argument("--out", "-o", required=True, help="label store file to write (.safetensors)")
    p.add_argument("--model", required=True, help="teacher: a timm model name (e.g. resnet18, convnet3)")
    p.add_argument("--checkpoint", help="teacher weights (a state dict; loaded with weights_only=True)")
    p.add_argument("--split", default="train", help="split of a named data set (default: train)")
    p.add_argument("--ipc", type=int, help="use only the first IPC images of each class")
    p.add_argument("--sli", "--crops-per-image", dest="sli", type=int, default=1, help="stored crops per image")
    p.add_argument("--k", type=int, default=5, help="top-k entries kept per label (<= 64)")
    p.add_argument("--temperature", "-T", type=float, default=1.0, help="labels are softmax(logits / T)")
    p.add_argument("--bits", type=int, choices=(8, 16), default=8, help="code bits per probability")
    p.add_argument("--quantizer", choices=("power", "uniform", "log"), default="power",
                   help="code -> probability table (default: power, gamma 1.5; see benchmarks/STORAGE.md)")
    p.add_argument("--scale", type=float, nargs=2, default=(0.08, 1.0), help="RRC area scale range")
    p.add_argument("--ratio", type=float, nargs=2, default=(3 / 4, 4 / 3), help="RRC aspect ratio range")
    p.add_argument("--flip-prob", type=float, default=0.5)
    p.add_argument("--size", type=int, nargs="+", help="crop output size (default: the image size)")
    p.add_argument("--mean", type=float, nargs=3, help="normalisation mean (default: the teacher's, else ImageNet)")
    p.add_argument("--std", type=float, nargs=3, help="normalisation std")
    p.add_argument("--seed", type=int, default=0, help="seed of the crop sampler (and of an uninitialised teacher)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--decode", choices=("marginal", "renorm", "truncate"), default="marginal",
                   help="default decode mode recorded for training")
    p.add_argument("--save-every-s", type=float, default=120.0,
                   help="write the resume point <out>.partial every this many seconds")
    p.add_argument("--restart", action="store_true", help="ignore an existing <out>.partial")
    p.add_argument("--no-progress", action="store_true")


def select_ipc(images, ipc: int):
    """The first `ipc` images of every class, in the set's order."""
    import numpy as np

    from hald_ext.data import ImageSet

    keep = np.concatenate([np.flatnonzero(images.labels == c)[:ipc] for c in range(images.num_classes)])
    keep.sort()
    return ImageSet([images.images[i] for i in keep], images.labels[keep], images.classes,
                    [images.names[i] for i in keep])


def run(args) -> int:
    try:
        return _run(args)
    except LabelStoreError as e:
        import sys

        print(f"hald relabel: error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from hald_ext.data import load_image_set
    from hald_ext.models import create_model

    images = load_image_set(args.images, args.split)
    if args.ipc:
        images = select_ipc(images, args.ipc)
    size = args.size[0] if args.size and len(args.size) == 1 else args.size
    img_size = size if isinstance(size, int) else (size[0] if size else images.images[0].shape[0])
    torch.manual_seed(args.seed)  # an uninitialised teacher (plumbing tests) is then reproducible
    teacher = create_model(args.model, images.num_classes, img_size=img_size, checkpoint=args.checkpoint)
    t0 = time.time()
    store = relabel(images, teacher, args.out, slots=args.sli, k=args.k, temperature=args.temperature,
                    bits=args.bits, quantizer=args.quantizer, scale=tuple(args.scale), ratio=tuple(args.ratio),
                    flip_prob=args.flip_prob, size=size, mean=args.mean, std=args.std, seed=args.seed,
                    batch_size=args.batch_size, device=args.device, teacher_name=args.model,
                    teacher_sha256=sha256_file(args.checkpoint) if args.checkpoint else None,
                    save_every_s=args.save_every_s, restart=args.restart, progress=not args.no_progress,
                    default_decode=args.decode)
    print(f"wrote {args.out}: {store.num_images} images x {store.slots} slots = {store.num_labels} labels, "
          f"{store.bytes_per_label:.1f} bytes/label, {store.nbytes} bytes, {time.time() - t0:.1f} s")
    return 0
