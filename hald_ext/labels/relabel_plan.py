"""What `hald relabel` labels, in which batches, on which rank, and its per-rank resume file.

Boxes and flips of every (image, slot) pair are drawn once, vectorised, from one seeded generator
with torchvision's RandomResizedCrop rule (`hald_ext.core.boxes.sample_rrc_batch`, the batched
`sample_rrc_pixels`: ten attempts, then the centre-crop fallback) and quantised; the crop that is labelled is the one the quantised box
replays. The pairs are labelled in global batches: slot-major (a slot is one label epoch, as in
SRe2L / HALD relabel), each slot's images in a seeded random order, cut into batches of
`batch_size` (a trailing batch of one joins the batch before it: a BatchNorm in train mode cannot
normalise a single sample). A batch's members matter when CutMix pastes crops into each other and
when the teacher's BatchNorm runs on batch statistics, so the plan depends only on the seed, the
image count, the slots and the batch size -- never on the number of ranks. Rank r of W labels the
batches r, r + W, r + 2W, ...
"""
from __future__ import annotations

import json
import os
from typing import NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hald_ext.core.boxes import quantize_boxes, sample_rrc_batch
from hald_ext.labels.atomic import atomic_path
from hald_ext.labels.format import LabelStoreError


def sample_crops(image_sizes, slots: int, scale, ratio, flip_prob: float, seed: int):
    """(boxes uint16 [N, S, 4], flips bool [N, S]) from one seeded generator."""
    g = torch.Generator().manual_seed(int(seed))
    sizes = torch.as_tensor(image_sizes, dtype=torch.int64).view(-1, 2)
    pixels = sample_rrc_batch(sizes, slots, scale, ratio, g)
    hw = sizes.double().view(-1, 1, 2)
    boxes = pixels.double() / torch.cat([hw, hw], -1)  # (top, left, h, w) / (H, W, H, W)
    flips = torch.rand(sizes.shape[0], slots, generator=g) < flip_prob
    return quantize_boxes(boxes.clamp(0, 1)), flips


class Plan(NamedTuple):
    """The global batches: batch b labels pairs order[starts[b]:starts[b + 1]] (pair = image * S + slot)."""
    order: torch.Tensor  # int64 [N * S]
    starts: torch.Tensor  # int64 [B + 1]

    @property
    def num_batches(self) -> int:
        return self.starts.numel() - 1

    def batch(self, b: int) -> torch.Tensor:
        return self.order[int(self.starts[b]): int(self.starts[b + 1])]

    def rank_batches(self, rank: int, world_size: int) -> list:
        return list(range(rank, self.num_batches, world_size))


def make_plan(num_images: int, slots: int, batch_size: int, seed: int) -> Plan:
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    order, starts = [], [0]
    for s in range(slots):
        g = torch.Generator().manual_seed(int(seed) * 1000003 + s + 1)
        order.append(torch.randperm(num_images, generator=g) * slots + s)
        cuts = list(range(batch_size, num_images, batch_size))
        if cuts and num_images - cuts[-1] == 1:
            cuts.pop()  # a trailing single sample joins the batch before it
        starts += [starts[-1] + c for c in cuts] + [starts[-1] + num_images]
    return Plan(torch.cat(order), torch.tensor(starts, dtype=torch.int64))


# --------------------------------------------------------------------------- per-rank results
FIELDS = ("pairs", "ids", "codes", "mix_partner", "mix_boxes", "mix_lambda", "kl", "kl_uniform")


def empty_results(ids_width: int, k: int, ids_dtype, code_dtype) -> dict:
    return {"pairs": torch.empty(0, dtype=torch.int64), "ids": torch.empty(0, ids_width, dtype=ids_dtype),
            "codes": torch.empty(0, k, dtype=code_dtype), "mix_partner": torch.empty(0, dtype=torch.int32),
            "mix_boxes": torch.empty(0, 4, dtype=torch.uint16), "mix_lambda": torch.empty(0, dtype=torch.float32),
            "kl": torch.empty(0, dtype=torch.float64), "kl_uniform": torch.empty(0, dtype=torch.float64)}


def concat_results(parts: list) -> dict:
    return {f: torch.cat([p[f] for p in parts]) for f in FIELDS}


def partial_path(out: str, rank: int, world_size: int) -> str:
    return out + ".partial" if world_size == 1 else f"{out}.rank{rank}of{world_size}.partial"


def save_partial(path: str, recipe: str, batches_done: int, results: dict) -> None:
    """This rank's labels so far, written atomically (safetensors: no pickle)."""

    meta = {"hald.relabel.recipe": recipe, "hald.relabel.batches_done": str(batches_done)}
    tensors = {f: results[f].contiguous() for f in FIELDS}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=meta)


def load_partial(path: str, recipe: str):
    """(batches_done, results) of a resume file made with the same recipe, None when there is none."""
    if not os.path.exists(path):
        return None

    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            results = {name: f.get_tensor(name) for name in FIELDS}
        done = int(meta["hald.relabel.batches_done"])
    except Exception as e:  # noqa: BLE001 - any unreadable resume file gets the same advice
        raise LabelStoreError(f"{path}: unreadable resume file ({e.__class__.__name__}: {e}); delete it (or pass "
                              "--restart) to start over") from None
    if meta.get("hald.relabel.recipe") != recipe:
        raise LabelStoreError(f"{path}: a partial relabel made with other arguments, teacher or images; delete it "
                              "(or pass --restart) to start over")
    n = results["pairs"].shape[0]
    if done < 0 or any(results[f].shape[0] != n for f in FIELDS):
        raise LabelStoreError(f"{path}: corrupt resume file (arrays of different lengths); delete it (or pass "
                              "--restart) to start over")
    return done, results


def recipe_json(header_json: str, **plan) -> str:
    """What a resume file must agree on: the store header and the batch plan (incl. rank / world size)."""
    return json.dumps({"header": json.loads(header_json), **plan}, sort_keys=True)
