"""Label-structure transforms ("A Label is Worth a Thousand Images", section on label structure): keep
each stored label's top-1 class and probability and change the rest, written as a new label store.

- `swap`: the non-top-1 probabilities move to other classes at random (a seeded random permutation of
  the C - 1 non-top-1 classes per label): the same numbers, the class structure gone.
- `zero`: the non-top-1 entries become 0; the new store's default decode becomes `truncate`, so the
  removed mass is not spread back over the classes (`hald train --decode` can still override it).

Boxes, flips, CutMix records, the quantiser and the image fingerprint are copied, so the new store
replays exactly the same crops as the source.

    hald labels transform labels.safetensors swapped.safetensors --mode swap --seed 0
"""
from __future__ import annotations

import dataclasses
import os

import torch

from hald_ext.labels.store import LabelStore

MODES = ("swap", "zero")
_CHUNK = 1 << 15


def _random_order(rows: int, classes: int, top: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per row a random order of the classes with the row's top-1 class first."""
    keys = torch.rand(rows, classes, generator=gen)
    keys.scatter_(1, top[:, None], -1.0)
    return keys.argsort(dim=1)


def _zero_code(codebook: torch.Tensor) -> int:
    code = int(codebook.abs().argmin())
    if float(codebook[code]) != 0.0:
        raise ValueError(f"the store's codebook has no code for probability 0 (smallest {float(codebook[code])})")
    return code


def transform_topk(ids: torch.Tensor, codes: torch.Tensor, num_classes: int, mode: str, zero_code=0,
                   gen: torch.Generator | None = None) -> tuple:
    """ids [M, k] (by decreasing probability), codes [M, k] -> new (ids, codes)."""
    ids, codes = ids.clone(), codes.clone()
    if ids.shape[1] < 2:
        return ids, codes
    if mode == "zero":
        codes[:, 1:] = zero_code
        return ids, codes
    gen = gen or torch.Generator().manual_seed(0)
    k = ids.shape[1]
    for lo in range(0, len(ids), _CHUNK):
        top = ids[lo:lo + _CHUNK, 0].to(torch.int64)
        order = _random_order(len(top), num_classes, top, gen)
        ids[lo:lo + _CHUNK, 1:] = order[:, 1:k].to(ids.dtype)
    return ids, codes


def transform_dense(values: torch.Tensor, mode: str, zero_value=0, gen: torch.Generator | None = None) -> torch.Tensor:
    """values [M, C] in class order (codes or probabilities) -> the transformed values."""
    out = values.clone()
    gen = gen or torch.Generator().manual_seed(0)
    C = values.shape[1]
    for lo in range(0, len(values), _CHUNK):
        v = values[lo:lo + _CHUNK]
        top = v.to(torch.float64).argmax(dim=1)
        if mode == "zero":
            keep = v.gather(1, top[:, None])
            blk = torch.full_like(v, zero_value)
            blk.scatter_(1, top[:, None], keep)
        else:
            src = _random_order(len(v), C, top, gen)
            dst = _random_order(len(v), C, top, gen)
            blk = torch.empty_like(v)
            blk.scatter_(1, dst, v.gather(1, src))
        out[lo:lo + _CHUNK] = blk
    return out


def transform_store(src: str, dst: str, mode: str, seed: int = 0):
    """Write the `mode` transform of the store at `src` to `dst` (atomically); returns the new store."""

    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if os.path.abspath(src) == os.path.abspath(dst):
        raise ValueError(f"the output {dst} must differ from the source store")
    store = LabelStore.open(src)
    h = store.header
    gen = torch.Generator().manual_seed(int(seed))
    ids = getattr(store, "topk_ids", None)
    codes = store.codes
    codebook = store.codebook
    shape = codes.shape
    if ids is None:  # a full-width store: values in class order
        zero = 0 if codebook is None else _zero_code(codebook)
        new_codes = transform_dense(codes.reshape(-1, shape[-1]), mode, zero, gen).reshape(shape)
        new_ids = None
    else:
        zero = _zero_code(codebook) if codebook is not None else 0
        new_ids, new_codes = transform_topk(ids.reshape(-1, shape[-1]), codes.reshape(-1, shape[-1]),
                                            h.num_classes, mode, zero, gen)
        new_ids, new_codes = new_ids.reshape(shape), new_codes.reshape(shape)
    header = dataclasses.replace(h, source=f"{h.source}+{mode}", seed=int(seed),
                                 default_decode="truncate" if mode == "zero" else h.default_decode)
    if hasattr(header, "stats"):  # statistics of the source labels no longer describe these
        header = dataclasses.replace(header, stats={})
    return LabelStore.create(dst, header, store.boxes.clone(), store.flips.clone(), new_ids, new_codes,
                             codebook=None if codebook is None else codebook.clone(), mix=store.mix)
