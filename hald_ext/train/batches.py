"""Where the trainer's batches come from: the only module that knows about the label store and the
crop op.

The trainer sees two things:
- a `LabelSource` (the label store's read side): per (image, slot) a stored crop box + flip and a
  top-k label (class ids + integer codes decoded through `codebook`), plus the header values the loss
  needs (`num_classes`, `k`, `temperature`, `default_decode`, `slots`) and `check_images()`;
- a `BatchSource` that turns sample ids into model-ready batches:
    soft_batch(image_ids, slots)      -> SoftBatch(x, topk_ids, topk_codes)   replayed crops
    hard_batch(image_ids, step_seed)  -> HardBatch(x, y_a, y_b, lam)          fresh RRC + CutMix
  where x is a normalised float [B, 3, S, S] on the training device.

`TorchBatchSource` is the plain implementation (torchvision crops of the resident uint8 images); the
fused `crop_and_lookup` op slots in as another `BatchSource` with the same two methods.
"""
from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from hald_ext.boxes import boxes_to_pixels, dequantize_boxes, pixels_to_boxes, quantize_boxes, sample_rrc_pixels

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------------
# Interfaces
@runtime_checkable
class LabelSource(Protocol):
    num_images: int
    slots: int  # stored crops per image (SLI)
    num_classes: int
    k: int
    temperature: float
    default_decode: str
    codebook: torch.Tensor  # fp32 [256] or [65536]
    boxes: torch.Tensor  # uint16 [num_images, slots, 4]: (y, x, h, w) fractions * 65535
    flips: torch.Tensor  # bool / uint8 [num_images, slots]

    def labels(self, image_ids: torch.Tensor, slots: torch.Tensor, device=None) -> tuple: ...

    def check_images(self, images) -> None: ...


@dataclasses.dataclass
class SoftBatch:
    x: torch.Tensor  # float [B, 3, S, S], normalised
    topk_ids: torch.Tensor  # [B, k]
    topk_codes: torch.Tensor  # [B, k] uint8 / uint16 codes into the store's codebook


@dataclasses.dataclass
class HardBatch:
    x: torch.Tensor  # float [B, 3, S, S], normalised, CutMix applied
    y_a: torch.Tensor  # int64 [B]
    y_b: torch.Tensor  # int64 [B] (the CutMix partner's label; == y_a without CutMix)
    lam: torch.Tensor  # float32 [B]: weight of y_a


@runtime_checkable
class BatchSource(Protocol):
    num_images: int
    labels: LabelSource | None  # None: hard phases only

    def soft_batch(self, image_ids: torch.Tensor, slots: torch.Tensor) -> SoftBatch: ...

    def hard_batch(self, image_ids: torch.Tensor, step_seed: int) -> HardBatch: ...


def open_label_store(path: str) -> LabelSource:
    """The label store at `path` (validated on open: ids, codebook, boxes)."""
    from hald_ext.labels import LabelStore

    return LabelStore.open(path)


# --------------------------------------------------------------------------------------------------
# Plain torch implementation
def images_to_tensor(images) -> torch.Tensor:
    """A list / array of HWC uint8 images (an ImageSet's `.images`) -> uint8 [N, 3, H, W]."""
    arr = np.stack(images) if isinstance(images, (list, tuple)) else np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [N, H, W, 3], got {arr.dtype} {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).contiguous()


def normalize(x_uint8: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, device=x_uint8.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x_uint8.device).view(1, 3, 1, 1)
    return (x_uint8.float().div_(255) - m) / s


def crop_resize(images: torch.Tensor, image_ids: torch.Tensor, pixels: torch.Tensor, flips: torch.Tensor,
                size: int) -> torch.Tensor:
    """uint8 crops [B, 3, size, size]: crop (top, left, h, w) of each image, resize (bilinear,
    antialiased), flip. A per-sample loop; the fused crop op replaces it."""
    out = torch.empty((len(image_ids), images.shape[1], size, size), dtype=torch.uint8, device=images.device)
    for row, (i, (t, l, h, w), f) in enumerate(zip(image_ids.tolist(), pixels.tolist(), flips.tolist())):
        crop = TF.resized_crop(images[i], t, l, h, w, [size, size], antialias=True)
        out[row] = crop.flip(-1) if f else crop
    return out


def cutmix(x: torch.Tensor, y: torch.Tensor, alpha: float, rng: np.random.Generator,
           gen: torch.Generator) -> tuple:
    """CutMix on a batch (one box per batch, timm's rand_bbox): returns (x, y_b, lam) with lam the
    exact kept area fraction after clipping the box."""
    B, _, H, W = x.shape
    if alpha <= 0 or B < 2:
        return x, y, torch.ones(B)
    lam = float(rng.beta(alpha, alpha))
    cut_h, cut_w = int(H * np.sqrt(1 - lam)), int(W * np.sqrt(1 - lam))
    cy, cx = int(rng.integers(H)), int(rng.integers(W))
    y1, y2 = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, H)
    x1, x2 = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, W)
    perm = torch.randperm(B, generator=gen).to(x.device)
    x = x.clone()
    x[:, :, y1:y2, x1:x2] = x[perm][:, :, y1:y2, x1:x2]
    lam = 1.0 - (y2 - y1) * (x2 - x1) / (H * W)
    return x, y[perm], torch.full((B,), lam)


class TorchBatchSource:
    """Resident uint8 images on `device`; torchvision crops; CutMix with torch ops."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, labels: LabelSource | None, out_size: int,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, device="cpu", cutmix_alpha: float = 1.0,
                 rrc_scale=(0.08, 1.0), rrc_ratio=(3 / 4, 4 / 3), hflip: float = 0.5):
        self.images = images.to(device)
        self.targets = targets.to(device=device, dtype=torch.long)
        self.labels = labels
        self.num_images = len(images)
        self.out_size = out_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.device = torch.device(device)
        self.cutmix_alpha = cutmix_alpha
        self.rrc_scale, self.rrc_ratio, self.hflip = tuple(rrc_scale), tuple(rrc_ratio), hflip

    def soft_batch(self, image_ids: torch.Tensor, slots: torch.Tensor) -> SoftBatch:
        _, _, H, W = self.images.shape
        pixels = boxes_to_pixels(dequantize_boxes(self.labels.boxes[image_ids, slots]), H, W)
        flips = self.labels.flips[image_ids, slots].bool()
        x = crop_resize(self.images, image_ids, pixels, flips, self.out_size)
        ids, codes = self.labels.labels(image_ids, slots, device=self.device)
        return SoftBatch(normalize(x, self.mean, self.std), ids, codes)

    def hard_batch(self, image_ids: torch.Tensor, step_seed: int) -> HardBatch:
        _, _, H, W = self.images.shape
        gen = torch.Generator().manual_seed(step_seed)
        pixels = torch.tensor([sample_rrc_pixels(H, W, self.rrc_scale, self.rrc_ratio, gen) for _ in image_ids])
        flips = torch.rand(len(image_ids), generator=gen) < self.hflip
        x = crop_resize(self.images, image_ids, pixels, flips, self.out_size)
        y = self.targets[image_ids.to(self.device)]
        x, y_b, lam = cutmix(x, y, self.cutmix_alpha, np.random.default_rng(step_seed), gen)
        return HardBatch(normalize(x, self.mean, self.std), y, y_b, lam.to(self.device))


class FusedBatchSource:
    """TorchBatchSource's interface on the fused `crop_and_lookup` op: one call per batch crops,
    resizes (antialiased bilinear), flips and normalises on the images' device, and gathers the
    labels of the replayed slots in the same call. Soft batches replay the store's boxes and flips
    (the same crops as TorchBatchSource, within torchvision's uint8 rounding); hard batches draw fresh
    crops and a CutMix paste (one Beta(alpha, alpha) lambda, box and partner permutation per batch)
    from `step_seed` in the same call."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, labels: LabelSource | None, out_size: int,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, device="cpu", cutmix_alpha: float = 1.0,
                 rrc_scale=(0.08, 1.0), rrc_ratio=(3 / 4, 4 / 3), hflip: float = 0.5,
                 out_dtype: torch.dtype = torch.float32, channels_last: bool = False):
        self.device = torch.device(device)
        self.images = images.to(self.device).permute(0, 2, 3, 1).contiguous()  # uint8 NHWC for the op
        self.targets = targets.to(device=self.device, dtype=torch.long)
        self.labels = labels
        self.num_images = len(images)
        self.out_size = out_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.cutmix_alpha = cutmix_alpha
        self.rrc_scale, self.rrc_ratio, self.hflip = tuple(rrc_scale), tuple(rrc_ratio), hflip
        self.out_dtype, self.channels_last = out_dtype, channels_last
        self._tables = None
        if labels is not None:
            self._boxes = labels.boxes.to(self.device)
            self._flips = labels.flips.to(self.device).bool()
            ids, codes = getattr(labels, "topk_ids", None), getattr(labels, "codes", None)
            if torch.is_tensor(ids) and torch.is_tensor(codes) and ids.dim() == 3:
                self._tables = (ids.to(self.device), codes.to(self.device))

    def _kw(self) -> dict:
        # The op's range checks read ids back to the host, a sync per batch on a GPU. Here they are
        # redundant: the store validated its ids on open and the trainer draws image ids and slots
        # in range itself. On CPU they cost nothing and stay on.
        return dict(mean=self.mean, std=self.std, out_dtype=self.out_dtype, channels_last=self.channels_last,
                    check=self.device.type != "cuda")

    def soft_batch(self, image_ids: torch.Tensor, slots: torch.Tensor) -> SoftBatch:
        from hald_ext.ops import crop_and_lookup  # noqa: PLC0415  (needs the compiled extension)

        ids = image_ids.to(self.device)
        sl = slots.to(self.device)
        boxes, flips = self._boxes[ids, sl], self._flips[ids, sl]
        if self._tables is not None:
            r = crop_and_lookup(self.images, ids, self.out_size, boxes=boxes, flips=flips,
                                label_ids=self._tables[0], label_values=self._tables[1], slots=sl, **self._kw())
            topk_ids, topk_codes = r.label_ids, r.label_values
        else:
            r = crop_and_lookup(self.images, ids, self.out_size, boxes=boxes, flips=flips, **self._kw())
            topk_ids, topk_codes = self.labels.labels(image_ids, slots, device=self.device)
        return SoftBatch(r.crops, topk_ids, topk_codes)

    def hard_batch(self, image_ids: torch.Tensor, step_seed: int) -> HardBatch:
        from hald_ext.ops import crop_and_lookup  # noqa: PLC0415

        ids = image_ids.to(self.device)
        # Fresh crops and CutMix in the same call, both drawn from the step's seed.
        r = crop_and_lookup(self.images, ids, self.out_size, seed=step_seed, offset=0, scale=self.rrc_scale,
                            ratio=self.rrc_ratio, flip_prob=self.hflip,
                            cutmix_alpha=self.cutmix_alpha if self.cutmix_alpha > 0 and len(ids) > 1 else None,
                            **self._kw())
        y = self.targets[ids]
        if r.mix_partner is None:
            return HardBatch(r.crops, y, y, torch.ones(len(ids), device=self.device))
        return HardBatch(r.crops, y, y[r.mix_partner.to(self.device).long()], r.mix_lambda.to(self.device).float())
