"""Where the trainer's batches come from: the only module that knows about the label store and the
crop op.

The trainer sees two things:
- a `LabelSource` (the label store's read side): per (image, slot) a stored crop box + flip and a
  top-k label (class ids + integer codes decoded through `codebook`), the CutMix record the labels
  were made on (`mix`, or None), plus the header values the loss needs (`num_classes`, `k`,
  `temperature`, `default_decode`, `slots`) and `check_images()`;
- a `BatchSource` that turns sample ids into model-ready batches:
    soft_batch(image_ids, slots)      -> SoftBatch(x, topk_ids, topk_codes)   replayed crops
    hard_batch(image_ids, step_seed)  -> HardBatch(x, y_a, y_b, lam)          fresh RRC + CutMix
  where x is a normalised float [B, 3, S, S] on the training device.

Images come from hald_ext.data's image sources (the resident cache, or the streaming source when the
set does not fit), padded with their true sizes, so image sets of mixed sizes train like any other.
`FusedBatchSource` crops with the fused `crop_and_lookup` op; `TorchBatchSource` is the plain
per-sample torchvision path it is checked against.

A soft batch replays the stored CutMix record whenever the store has one: sample (i, s) shows image
i's stored crop with image partner[i, s]'s crop of the same slot pasted into the stored box, which is
the crop its label was made on (the SRe2L / HALD relabel).
"""
from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from hald_ext.core.boxes import boxes_to_pixels, dequantize_boxes, mix_boxes_to_pixels, sample_rrc_pixels
from hald_ext.core.device import take, to_device
from hald_ext.core.normalize import IMAGENET_MEAN, IMAGENET_STD, normalize  # noqa: F401  (re-exported)
from hald_ext.data.cache import ResidentImageCache, StreamingImages
from hald_ext.data.files import ImageFiles
from hald_ext.data.sources import ImageSet
from hald_ext.data.stream import FileImages, image_source
from hald_ext.labels import LabelStore
from hald_ext.ops import crop_and_lookup
from hald_ext.ops.crop import CutMix


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
    topk_ids: torch.Tensor | None  # [B, k] (None: a full-width store, codes are [B, C])
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

    def prefetch(self, batches: list) -> None: ...


def open_label_store(path: str) -> LabelSource:
    """The label store at `path` (validated on open: ids, codebook, boxes)."""

    return LabelStore.open(path)


def as_image_source(images, targets=None, device="cpu"):
    """An image source (ResidentImageCache / StreamingImages / FileImages, kept), an ImageSet or an
    ImageFiles (the cache, or a streaming source when it does not fit), or a uint8 [N, 3, H, W] tensor
    of one size with `targets` (a cache around it)."""
    device = torch.device(device)
    if isinstance(images, (ResidentImageCache, StreamingImages, FileImages)):
        return images
    if isinstance(images, (ImageSet, ImageFiles)):
        return image_source(images, device)
    if torch.is_tensor(images) and images.dim() == 4 and images.shape[1] == 3 and images.dtype == torch.uint8:
        if targets is None:
            raise ValueError("images given as a tensor need their class targets")
        return ResidentImageCache(images.to(device).permute(0, 2, 3, 1).contiguous(), None,
                                  torch.as_tensor(targets, dtype=torch.int64).to(device))
    raise TypeError(f"images must be an image source, an ImageSet or uint8 [N, 3, H, W], got {type(images)}")


def paste_rows(x: torch.Tensor, partner: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """CutMix paste for a batch [B, C, H, W]: row b shows row partner[b] inside boxes[b] ((y0, x0, y1,
    x1) pixels, end exclusive), as one masked select; `x` is left as it is."""
    H, W = x.shape[-2:]
    y0, x0, y1, x1 = boxes.to(device=x.device, dtype=torch.int64).unbind(1)
    ys = torch.arange(H, device=x.device)[None, :, None]
    xs = torch.arange(W, device=x.device)[None, None, :]
    inside = ((ys >= y0[:, None, None]) & (ys < y1[:, None, None]) &
              (xs >= x0[:, None, None]) & (xs < x1[:, None, None]))
    return torch.where(inside[:, None], x[partner.to(device=x.device, dtype=torch.int64)], x)


def mix_rows(mix, image_ids: torch.Tensor, slots: torch.Tensor, size: int):
    """The rows a soft batch crops to replay a stored CutMix record (a MixRecord on the ids' device),
    and the record in batch terms.

    Returns (row_ids [2B], row_slots [2B], partner [2B], paste boxes int32 [2B, 4]): rows B..2B-1
    are each sample's partner crop (the partner image at the same slot; the sample's own image where
    it was not mixed, with an empty paste box), and sample b pastes row B + b inside its box. Always
    2B rows: no data-dependent shapes, so no host sync on a GPU."""
    B = image_ids.shape[0]
    dev = image_ids.device
    partner = mix.partner[image_ids, slots].to(torch.int64)
    mixed = partner >= 0
    row_ids = torch.cat([image_ids, torch.where(mixed, partner, image_ids)])
    row_slots = torch.cat([slots, slots])
    paste = mix_boxes_to_pixels(take(mix.boxes, image_ids, slots), size)
    paste = torch.where(mixed[:, None], paste, torch.zeros_like(paste))
    partner_rows = torch.cat([torch.arange(B, 2 * B, device=dev), torch.arange(B, 2 * B, device=dev)])
    boxes = torch.cat([paste, torch.zeros_like(paste)])
    return row_ids, row_slots, partner_rows, boxes


# --------------------------------------------------------------------------------------------------
# Plain torch implementation


def true_sizes(batch) -> list:
    """[(H, W)] of every row of an ImageBatch's images."""
    if batch.image_sizes is None:
        return [tuple(batch.images.shape[1:3])] * batch.images.shape[0]
    return [tuple(s) for s in batch.image_sizes.tolist()]


def crop_resize(batch, pixels: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 crops [B, 3, size, size] of an ImageBatch: crop (top, left, h, w) of each sample's image,
    resize (bilinear, antialiased), flip. A per-sample loop; the fused crop op replaces it."""
    out = torch.empty((len(batch.image_ids), 3, size, size), dtype=torch.uint8, device=batch.images.device)
    for row, (i, (t, l, h, w), f) in enumerate(zip(batch.image_ids.tolist(), pixels.tolist(), flips.tolist())):
        crop = TF.resized_crop(batch.image(i).permute(2, 0, 1), t, l, h, w, [size, size], antialias=True)
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


class _SourceBase:
    """What both batch sources share: the image source, class targets, store and crop settings."""

    def __init__(self, images, targets, labels: LabelSource | None, out_size: int, mean=IMAGENET_MEAN,
                 std=IMAGENET_STD, device="cpu", cutmix_alpha: float = 1.0, rrc_scale=(0.08, 1.0),
                 rrc_ratio=(3 / 4, 4 / 3), hflip: float = 0.5):
        self.device = torch.device(device)
        self.images = as_image_source(images, targets, self.device)
        self.targets = self.images.labels.to(device=self.device, dtype=torch.long)
        self.labels = labels
        self.num_images = len(self.images)
        self.out_size = out_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.cutmix_alpha = cutmix_alpha
        self.rrc_scale, self.rrc_ratio, self.hflip = tuple(rrc_scale), tuple(rrc_ratio), hflip
        mix = getattr(labels, "mix", None) if labels is not None else None
        # Moved to the device once: a soft step gathers its rows there without a copy.
        self.mix = None if mix is None else type(mix)(*(t.to(self.device) for t in mix))
        self._mix_cpu = mix  # for planning a streaming source's rows on the host

    def prefetch(self, batches: list) -> None:
        """The epoch's batches ahead, as (image_ids, slots) pairs (slots None: hard batches), in the order
        they will be asked for: a streaming image source starts decoding them (the rows a soft batch reads
        include its stored CutMix partners). Nothing to do for a resident source."""
        if not hasattr(self.images, "prefetch"):
            return
        rows = []
        for ids, slots in batches:
            if slots is not None and self.mix is not None:
                ids = mix_rows(self._mix_cpu, ids.cpu(), slots.cpu(), self.out_size)[0]
            rows.append(ids)
        self.images.prefetch(rows)

    def _soft_rows(self, image_ids: torch.Tensor, slots: torch.Tensor):
        """(rows' image ids, rows' slots, CutMix record in batch terms or None) of a soft batch."""
        if self.mix is None:
            return image_ids, slots, None
        row_ids, row_slots, partner, boxes = mix_rows(self.mix, image_ids, slots, self.out_size)
        return row_ids, row_slots, (partner, boxes)


class TorchBatchSource(_SourceBase):
    """Per-sample torchvision crops of the image source's padded images; CutMix with torch ops."""

    def soft_batch(self, image_ids: torch.Tensor, slots: torch.Tensor) -> SoftBatch:
        B = len(image_ids)
        row_ids, row_slots, mix = self._soft_rows(image_ids.to(self.device), slots.to(self.device))
        b = self.images.batch(row_ids)
        row_ids, row_slots = row_ids.cpu(), row_slots.cpu()  # the store's tables live on the host
        dq = dequantize_boxes(self.labels.boxes[row_ids, row_slots])
        sizes = true_sizes(b)
        pixels = torch.stack([boxes_to_pixels(box, *sizes[i]) for box, i in zip(dq, b.image_ids.tolist())])
        flips = self.labels.flips[row_ids, row_slots].bool()
        x = crop_resize(b, pixels, flips, self.out_size)
        if mix is not None:
            x = paste_rows(x, *mix)
        ids, codes = self.labels.labels(image_ids, slots, device=self.device)
        return SoftBatch(normalize(x[:B], self.mean, self.std), ids, codes)

    def hard_batch(self, image_ids: torch.Tensor, step_seed: int) -> HardBatch:
        gen = torch.Generator().manual_seed(step_seed)
        b = self.images.batch(image_ids.to(self.device))
        sizes = true_sizes(b)
        pixels = torch.tensor([sample_rrc_pixels(*sizes[i], self.rrc_scale, self.rrc_ratio, gen)
                               for i in b.image_ids.tolist()])
        flips = torch.rand(len(image_ids), generator=gen) < self.hflip
        x = crop_resize(b, pixels, flips, self.out_size)
        y = self.targets[image_ids.to(self.device)]
        x, y_b, lam = cutmix(x, y, self.cutmix_alpha, np.random.default_rng(step_seed), gen)
        return HardBatch(normalize(x, self.mean, self.std), y, y_b, lam.to(self.device))


class FusedBatchSource(_SourceBase):
    """TorchBatchSource's interface on the fused `crop_and_lookup` op: one call per batch crops,
    resizes (antialiased bilinear), flips and normalises on the images' device, replays the stored
    CutMix record, and gathers the labels of the replayed slots in the same call. Soft batches replay
    the store's boxes and flips (the same crops as TorchBatchSource, within torchvision's uint8
    rounding); hard batches draw fresh crops and a CutMix paste (one Beta(alpha, alpha) lambda, box
    and partner permutation per batch) from `step_seed` in the same call."""

    def __init__(self, images, targets, labels: LabelSource | None, out_size: int, mean=IMAGENET_MEAN,
                 std=IMAGENET_STD, device="cpu", cutmix_alpha: float = 1.0, rrc_scale=(0.08, 1.0),
                 rrc_ratio=(3 / 4, 4 / 3), hflip: float = 0.5, out_dtype: torch.dtype = torch.float32,
                 channels_last: bool = False):
        super().__init__(images, targets, labels, out_size, mean, std, device, cutmix_alpha, rrc_scale, rrc_ratio,
                         hflip)
        self.out_dtype, self.channels_last = out_dtype, channels_last
        self._tables = None
        if labels is not None:
            self._boxes = labels.boxes.to(self.device)
            self._flips = labels.flips.to(self.device).bool()
            ids, codes = getattr(labels, "topk_ids", None), getattr(labels, "codes", None)
            # The op gathers label rows by the batch's image ids: only when those are the set's ids.
            if self.images.resident and torch.is_tensor(ids) and torch.is_tensor(codes) and ids.dim() == 3:
                self._tables = (ids.to(self.device), codes.to(self.device))

    def _kw(self, b) -> dict:
        # The op's range checks read ids back to the host, a sync per batch on a GPU. Here they are
        # redundant: the store validated its ids on open and the trainer draws image ids and slots
        # in range itself. On CPU they cost nothing and stay on.
        return dict(**b.crop_kwargs(), mean=self.mean, std=self.std, out_dtype=self.out_dtype,
                    channels_last=self.channels_last, check=self.device.type != "cuda")

    def soft_batch(self, image_ids: torch.Tensor, slots: torch.Tensor) -> SoftBatch:
        ids, sl = to_device(image_ids, self.device), to_device(slots, self.device)
        B = ids.shape[0]
        row_ids, row_slots, mix = self._soft_rows(ids, sl)
        b = self.images.batch(row_ids)
        # with a stored CutMix the rows B..2B only give the partners' crop geometry: not rendered
        kw = dict(boxes=take(self._boxes, row_ids, row_slots), flips=self._flips[row_ids, row_slots],
                  cutmix=None if mix is None else CutMix(*mix), out_rows=B, **self._kw(b))
        if self._tables is not None:
            r = crop_and_lookup(b.images, b.image_ids, self.out_size, label_ids=self._tables[0],
                                label_values=self._tables[1], slots=row_slots, **kw)
            topk_ids, topk_codes = r.label_ids[:B], r.label_values[:B]
        else:
            r = crop_and_lookup(b.images, b.image_ids, self.out_size, **kw)
            topk_ids, topk_codes = self.labels.labels(image_ids, slots, device=self.device)
        return SoftBatch(r.crops[:B], topk_ids, topk_codes)

    def hard_batch(self, image_ids: torch.Tensor, step_seed: int) -> HardBatch:
        ids = to_device(image_ids, self.device)
        b = self.images.batch(ids)
        # Fresh crops and CutMix in the same call, both drawn from the step's seed.
        r = crop_and_lookup(b.images, b.image_ids, self.out_size, seed=step_seed, offset=0, scale=self.rrc_scale,
                            ratio=self.rrc_ratio, flip_prob=self.hflip,
                            cutmix_alpha=self.cutmix_alpha if self.cutmix_alpha > 0 and len(ids) > 1 else None,
                            **self._kw(b))
        y = self.targets[ids]
        if r.mix_partner is None:
            return HardBatch(r.crops, y, y, torch.ones(len(ids), device=self.device))
        return HardBatch(r.crops, y, y[r.mix_partner.to(self.device).long()], r.mix_lambda.to(self.device).float())
