"""`hald relabel`: teachers label SLI random-resized crops (+ flips, optionally CutMix-ed) of every
image -> one label store.

    hald relabel data/ipc10/ --model resnet18 --checkpoint t.pth --sli 4 -T 20 --cutmix-alpha 1 -o l.safetensors
    torchrun --nproc-per-node 8 -m hald_ext.cli relabel ...            (each rank labels its batches)

Crops: boxes and flips of every (image, slot) pair are drawn first (torchvision's RandomResizedCrop
rule, one seeded generator; `relabel_plan`), quantised, and the quantised box is what is rendered:
the fused op `hald_ext.ops.crop_and_lookup` crops whole batches from the image source
(`hald_ext.data.image_source`: the resident padded cache with per-image sizes, or streaming), so a
crop replayed in training is the crop that was labelled. Pairs are labelled in seeded global
batches, one slot (label epoch) at a time.

CutMix (`--cutmix-alpha A`, the SRe2L / HALD relabel recipe): each batch draws one lambda ~
Beta(A, A), one box and a partner permutation (`hald_ext.ops.crop.sample_cutmix`), the op pastes
the partner's crop into the box, and the teacher labels the mixed crop. The record is stored with
the labels (`MixRecord`: partner image -- of the same slot --, the pasted box as fractions of the
crop, and lambda = 1 - pasted area / S^2, the weight of the image's own crop); a pasted box of zero
area is stored as "not mixed" (partner -1).

Teacher BatchNorm (`--teacher-bn`, default train): HALD's relabel (`relabel_slc.py`) calls
`model.train()` on its teachers for every image kind except RDED's, so each batch is normalised with
its own statistics ("batch-specific soft labelling": distilled or few real images differ from the
data the teacher's running statistics describe). We follow it: BatchNorm layers run in train mode,
everything else (dropout ...) in eval mode, and the running statistics are restored after relabel,
so the teacher is left unchanged. Labels then depend on the batch members, which is why the batch
plan is fixed by the seed and the batch size alone. `--teacher-bn eval` uses the running statistics.

Ensemble: several `--model` / `--checkpoint` pairs; the label is softmax(sum_i w_i logits_i / T)
with w_i = 1 / n, or HALD's softmax(weights / 10) of `--teacher-weights`. Every teacher needs
weights: a model without `--checkpoint`, `--pretrained` or `--pretrained-file` is an error (never random
weights).

Labels: top-k ids and codes (`--k`, `--bits`, `--quantizer`), or full-width labels (`--k` = C: no
ids, every class in class order; with `--quantizer fp16` the float16 probabilities themselves, the
SRe2L / HALD format without loss).

Quality: the header's `stats` record the mean KL(teacher's full label || stored label, decoded with
the store's default decode; `hald_ext.labels.quality`) and the mean KL a uniform label would have,
in nats, so a user sees what top-k keeps before training on it.

Resume and ranks: every `save_every_s` seconds (and on Ctrl-C) each rank writes its labels so far to
its own resume file (`<out>.partial`, or `<out>.rank{r}of{W}.partial` under torchrun); a rerun with
the same arguments (and world size) continues from there. At the end rank 0 gathers every rank's
labels and writes the one store atomically; the resume files are then removed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import time
import warnings

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from hald_ext.core import distributed
from hald_ext.core.boxes import quantize_boxes
from hald_ext.core.normalize import normalization_of
from hald_ext.data import fingerprint, image_sizes, image_source
from hald_ext.labels.format import Header, LabelStoreError
from hald_ext.labels.quantizer import Quantizer
from hald_ext.labels.relabel_plan import (
    concat_results,
    empty_results,
    load_partial,
    make_plan,
    partial_path,
    recipe_json,
    sample_crops,
    save_partial,
)
from hald_ext.labels.relabel_teacher import (
    BN_MODES,
    encode_labels,
    ensemble_logits,
    ensemble_weights,
    label_kl,
    teacher_mode,
)
from hald_ext.labels.store import LabelStore, MixRecord
from hald_ext.ops import crop_and_lookup
from hald_ext.ops.crop import cutmix_lambda, sample_cutmix

__all__ = ["relabel", "relabel_with_stats", "sample_crops", "sha256_file", "sha256_state"]


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
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _as_list(v, n: int, what: str) -> list:
    if v is None:
        return [None] * n
    v = [v] if isinstance(v, str) else list(v)
    if len(v) != n:
        raise ValueError(f"relabel: {len(v)} {what} for {n} teachers")
    return v


def _crop_size(sizes: list, size) -> int:
    if size is None:
        if len(set(sizes)) != 1 or sizes[0][0] != sizes[0][1]:
            raise ValueError("relabel: images are not all of one square size; give the crop output size (--img-size)")
        return int(sizes[0][0])
    if not isinstance(size, int):
        size = [int(s) for s in size]
        if len(size) not in (1, 2) or size[0] != size[-1]:
            raise ValueError(f"relabel: crops are square (crop_and_lookup); got --img-size {size}")
        size = size[0]
    if size < 1:
        raise ValueError(f"relabel: --img-size must be >= 1, got {size}")
    return int(size)


def relabel(images, teacher, out: str, **kw) -> LabelStore:
    """Label `sli` crops of every image of `images` (an ImageSet) with `teacher` (a module or a
    list of modules, an ensemble); write `out`. Keywords: see `relabel_with_stats`."""
    return relabel_with_stats(images, teacher, out, **kw)[0]


def relabel_with_stats(images, teacher, out: str, *, sli: int = 1, k: int = 5, temperature: float = 1.0,
                       bits: int | None = None, quantizer: str = "power", scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                       flip_prob: float = 0.5, size=None, mean=None, std=None, seed: int = 0, batch_size: int = 256,
                       device=None, teacher_name=None, teacher_sha256=None, teacher_weights=None,
                       teacher_bn: str = "train", cutmix_alpha: float | None = None, save_every_s: float = 120.0,
                       restart: bool = False, progress: bool = True, default_decode: str = "marginal",
                       max_resident_bytes: int | str | None = None, shard: bool = True, loader: str = "auto",
                       workers: int | None = None, slots: int | None = None):
    """(store, stats): the store on every rank (written by rank 0 under torch.distributed) and
    {"kl_to_teacher", "kl_uniform"} (mean nats over all labels, also in the store's header).
    `max_resident_bytes`: the image cache's budget on `device` (`hald_ext.data.image_source`);
    a set that does not fit is streamed from disk batch by batch (decoded by `loader` with `workers`,
    the rank's batches prefetched in plan order), so an image folder of any size relabels in bounded
    memory. `shard=False` labels every pair in this
    process even under torch.distributed (a helper that builds a store per rank, e.g. in a test).
    `slots` is the earlier name of `sli` (deprecated)."""
    if slots is not None:
        warnings.warn("relabel: `slots=` is now `sli=` (stored crops per image)", DeprecationWarning, stacklevel=2)
        sli = slots

    teachers = [teacher] if isinstance(teacher, nn.Module) else list(teacher)
    if not teachers or not all(isinstance(t, nn.Module) for t in teachers):
        raise TypeError("relabel: teacher must be a torch.nn.Module or a non-empty list of them")
    names = _as_list(teacher_name, len(teachers), "teacher names")
    shas = _as_list(teacher_sha256, len(teachers), "teacher digests")
    weights = ensemble_weights(len(teachers), teacher_weights)
    if teacher_bn not in BN_MODES:
        raise ValueError(f"relabel: teacher_bn must be one of {BN_MODES}, got {teacher_bn!r}")
    if cutmix_alpha is not None and not cutmix_alpha > 0:
        raise ValueError(f"relabel: --cutmix-alpha must be > 0, got {cutmix_alpha}")
    n = len(images)
    if n == 0:
        raise ValueError("relabel: the image set is empty")
    num_classes = images.num_classes
    if not 1 <= k <= num_classes:
        raise ValueError(f"relabel: k = {k} must be in [1, {num_classes}] (the classes)")
    if sli < 1:
        raise ValueError(f"relabel: sli (--sli) must be >= 1, got {sli}")
    sizes = [tuple(hw) for hw in image_sizes(images).tolist()]  # a folder's from its file headers
    S = _crop_size(sizes, size)
    mean, std = (list(v) for v in normalization_of(
        teachers, [nm or type(t).__name__ for t, nm in zip(teachers, names)], mean, std))
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    info = distributed.current() if shard else distributed.DistInfo()
    q = Quantizer(quantizer, bits)
    members = [{"name": nm or type(t).__name__, "checkpoint_sha256": sh or sha256_state(t),
                **({"pretrained": t.hald_pretrained} if getattr(t, "hald_pretrained", None) else {})}
               for t, nm, sh in zip(teachers, names, shas)]
    teacher_rec = dict(members[0]) if len(members) == 1 else {
        "name": "+".join(m["name"] for m in members),
        "checkpoint_sha256": hashlib.sha256("".join(m["checkpoint_sha256"] for m in members).encode()).hexdigest(),
        "ensemble": members, "weights": weights.tolist()}
    teacher_rec["bn"] = teacher_bn
    header = Header(
        num_images=n, sli=sli, num_classes=num_classes, k=k, temperature=float(temperature), quantizer=q,
        default_decode=default_decode, teacher=teacher_rec, images=fingerprint(images),
        crops={"rule": "torchvision.RandomResizedCrop", "scale": [float(s) for s in scale],
               "ratio": [float(r) for r in ratio], "flip_prob": float(flip_prob), "size": [S, S], "mean": mean,
               "std": std, "resize": "bilinear, antialias, float (crop_and_lookup)", "batch_size": int(batch_size),
               "batches": "slot-major, seeded image order per slot", "cutmix_alpha": cutmix_alpha},
        seed=int(seed), mix=cutmix_alpha is not None, source="relabel")

    plan = make_plan(n, sli, batch_size, seed)
    boxes, flips = sample_crops(sizes, sli, scale, ratio, flip_prob, seed)
    recipe = recipe_json(header.to_json(), rank=info.rank, world_size=info.world_size)
    partial = partial_path(out, info.rank, info.world_size)
    mine = plan.rank_batches(info.rank, info.world_size)
    state = None if restart else load_partial(partial, recipe)
    ids_dtype = torch.uint16 if num_classes <= 65535 else torch.int32
    done, parts = (0, []) if state is None else (state[0], [state[1]])
    if done > len(mine):
        raise LabelStoreError(f"{partial}: says {done} batches are done but this rank has {len(mine)}; delete it "
                              "(or pass --restart) to start over")

    source = image_source(images, device, max_bytes=max_resident_bytes, loader=loader, workers=workers)
    if hasattr(source, "prefetch"):  # streaming: decode this rank's remaining batches ahead, in order
        source.prefetch([plan.batch(b) // sli for b in mine[done:]])
    thresholds = None if q.is_float else q.thresholds().to(device)
    codebook = q.codebook()
    teachers = [t.to(device) for t in teachers]
    flat_boxes, flat_flips = boxes.view(-1, 4), flips.view(-1)
    todo = sum(int(plan.starts[b + 1] - plan.starts[b]) for b in mine[done:])
    bar = tqdm(total=todo, unit="label", desc=f"relabel (rank {info.rank})" if info.enabled else "relabel",
               disable=not progress or not info.is_main)
    last_save, saved = time.monotonic(), done
    try:
        with teacher_mode(teachers, teacher_bn), torch.no_grad():
            for b in mine[done:]:
                pairs = plan.batch(b)
                image_ids = pairs // sli
                batch = source.batch(image_ids.to(device))
                mix = sample_cutmix(len(pairs), S, cutmix_alpha, seed, b, device) if cutmix_alpha else None
                r = crop_and_lookup(batch.images, batch.image_ids, S, **batch.crop_kwargs(),
                                    boxes=flat_boxes[pairs].to(device), flips=flat_flips[pairs].to(device),
                                    cutmix=mix, mean=mean, std=std)
                logits = ensemble_logits(teachers, weights, r.crops)
                if logits.shape != (len(pairs), num_classes):
                    raise ValueError(f"relabel: the teacher returned logits of shape {tuple(logits.shape)}, "
                                     f"expected [{len(pairs)}, {num_classes}]")
                ids, codes = encode_labels(logits, k, temperature, q, thresholds)
                kl, kl_u = label_kl(logits, temperature, ids, codes, codebook, default_decode)
                ids = torch.empty(len(pairs), 0, dtype=ids_dtype) if ids is None else ids.cpu()
                parts.append({"pairs": pairs, "ids": ids, "codes": codes.cpu(), "kl": kl, "kl_uniform": kl_u,
                              **_mix_rows(mix, image_ids, S)})
                done += 1
                bar.update(len(pairs))
                if done < len(mine) and time.monotonic() - last_save >= save_every_s:
                    parts = [concat_results(parts)]
                    save_partial(partial, recipe, done, parts[0])
                    last_save, saved = time.monotonic(), done
    except KeyboardInterrupt:
        if saved < done < len(mine):  # keep the work of an interrupted run (a crash keeps the last save)
            save_partial(partial, recipe, done, concat_results(parts))
        raise
    bar.close()
    results = concat_results(parts) if parts else empty_results(0 if k == num_classes else k, k, ids_dtype,
                                                                 q.code_dtype)
    if info.enabled:
        gathered = [None] * info.world_size if info.is_main else None
        # As numpy arrays: torch cannot unpickle uint16 tensor storages.
        dist.gather_object({f: t.numpy() for f, t in results.items()}, gathered, dst=0)
        gathered = [{f: torch.from_numpy(a) for f, a in g.items()} for g in gathered] if info.is_main else None
    else:
        gathered = [results]
    stats = None
    if info.is_main:
        store, stats = _write_store(out, header, boxes, flips, concat_results(gathered), k)
    if info.enabled:
        distributed.barrier()
    if os.path.exists(partial):
        os.remove(partial)
    if not info.is_main:
        store = LabelStore.open(out, validate=False)
    return store, stats


def _mix_rows(mix, image_ids: torch.Tensor, S: int) -> dict:
    """The batch's CutMix record as store rows: partner image ids (-1: nothing pasted), the pasted
    box as (y, x, h, w) fractions of the crop (uint16 codes), lambda = 1 - pasted area / S^2."""

    B = image_ids.shape[0]
    if mix is None:
        return {"mix_partner": torch.full((B,), -1, dtype=torch.int32),
                "mix_boxes": torch.zeros(B, 4, dtype=torch.uint16), "mix_lambda": torch.ones(B)}
    mb = mix.boxes.cpu().to(torch.int64)  # (y0, x0, y1, x1) output pixels
    lam = cutmix_lambda(mb, S)
    frac = torch.stack([mb[:, 0], mb[:, 1], mb[:, 2] - mb[:, 0], mb[:, 3] - mb[:, 1]], 1).double() / S
    pasted = lam < 1
    partner = torch.where(pasted, image_ids[mix.partner.cpu()], -1).to(torch.int32)
    frac = torch.where(pasted.view(B, 1), frac.clamp(0, 1), 0)
    return {"mix_partner": partner, "mix_boxes": quantize_boxes(frac), "mix_lambda": lam.float()}


def _write_store(out, header, boxes, flips, res: dict, k: int):
    n, slots = header.num_images, header.sli
    pairs = res["pairs"]
    if pairs.numel() != n * slots or not torch.equal(pairs.sort().values, torch.arange(n * slots)):
        raise LabelStoreError(f"{out}: the ranks' results do not cover every (image, slot) pair exactly once "
                              f"({pairs.numel()} rows for {n * slots} pairs)")
    at = torch.argsort(pairs)  # row of each pair, in image-major order
    ids = None if header.full_width else res["ids"][at].view(n, slots, k)
    codes = res["codes"][at].view(n, slots, k)
    mix = None
    if header.mix:
        mix = MixRecord(res["mix_partner"][at].view(n, slots), res["mix_boxes"][at].view(n, slots, 4),
                        res["mix_lambda"][at].view(n, slots))
    stats = {"kl_to_teacher": float(res["kl"].mean()), "kl_uniform": float(res["kl_uniform"].mean())}
    header = dataclasses.replace(header, stats=stats)
    return LabelStore.create(out, header, boxes, flips, ids, codes, mix=mix), stats


# ---------------------------------------------------------------------------------------------- CLI
