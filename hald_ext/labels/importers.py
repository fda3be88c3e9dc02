"""Importers of public soft-label formats (METHOD.md section 4) into a label store.

  FKD                       one file per image: [coords (N, 4) (y, x, h, w) fractions, flip (N,),
                            labels (N, 2, k): row 0 class ids (as floats), row 1 probabilities]
  SRe2L / LPLD / HALD code  one file per batch per label epoch (epoch_<e>/batch_<b>.tar):
                            [coords (B, 4), flip (B,), mix_index (B,), mix_lambda, mix_bbox (4 ints),
                             soft labels (B, C)]: logits (SRe2L, LPLD) or softmax(logits / T) (HALD)

These files are pickles, and unpickling runs arbitrary code: they are read with
torch.load(weights_only=True) only, which admits tensors and plain containers and refuses the rest.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import re

import numpy as np
import torch

from hald_ext.boxes import quantize_boxes
from hald_ext.labels.format import Header
from hald_ext.labels.quantizer import Quantizer
from hald_ext.labels.store import LabelStore, MixRecord


class LabelImportError(ValueError):
    """An input file that is unsafe (not tensor-only), malformed, or inconsistent with the others."""


@dataclasses.dataclass
class ImportReport:
    store: LabelStore
    files: int
    bytes_before: int
    bytes_after: int

    def summary(self) -> str:
        return (f"imported {self.files} files, {self.bytes_before} bytes -> {self.store.path}: {self.bytes_after} "
                f"bytes ({self.bytes_before / max(self.bytes_after, 1):.1f}x smaller), "
                f"{self.store.num_images} images x {self.store.slots} slots, {self.store.bytes_per_label:.1f} bytes/label")


def safe_load(path: str):
    """torch.load restricted to tensors and plain containers; anything else is refused by name."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message suggests weights_only=False; the one line worth showing names the object.
        lines = [ln.strip() for ln in str(e).splitlines() if "global" in ln.lower() and ln.strip()]
        if lines:
            raise LabelImportError(f"{path}: refused: the file holds objects other than tensors and plain "
                                   f"containers, and unpickling them would run code ({lines[0]})") from None
        raise LabelImportError(f"{path}: not a readable torch tensor file (corrupt or not made by torch.save)") from None
    except Exception as e:  # truncated zip, garbage bytes, ...
        raise LabelImportError(f"{path}: not a readable torch tensor file ({e.__class__.__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''})") from None


def _tensor(x, path: str, what: str) -> torch.Tensor:
    if torch.is_tensor(x):
        return x
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError):
        raise LabelImportError(f"{path}: {what} must be a tensor, got {type(x).__name__}") from None


def _check_probs(p: torch.Tensor, path: str, full_rows: bool) -> None:
    if torch.isnan(p).any():
        raise LabelImportError(f"{path}: soft labels contain NaN")
    if (p < 0).any():
        hint = "; are these logits? (SRe2L / LPLD files hold logits)" if full_rows else ""
        raise LabelImportError(f"{path}: soft labels contain negative probabilities{hint}")
    sums = p.double().sum(-1)
    if full_rows and ((sums - 1).abs() > 0.02).any():
        raise LabelImportError(f"{path}: probability rows must sum to 1 (found {float(sums.min()):.4f}.."
                               f"{float(sums.max()):.4f}); are these logits?")
    if not full_rows and (sums > 1.02).any():
        raise LabelImportError(f"{path}: top-k probabilities sum to more than 1 ({float(sums.max()):.4f})")


def _boxes(coords: torch.Tensor, path: str) -> torch.Tensor:
    c = coords.double()
    if not torch.isfinite(c).all() or (c < -1e-6).any() or (c > 1 + 1e-6).any():
        raise LabelImportError(f"{path}: crop coords must be (y, x, h, w) fractions in [0, 1]")
    return quantize_boxes(c.clamp(0, 1))


def _list_files(root: str) -> list:
    if os.path.isfile(root):
        return [root]
    out = []
    for d, _, names in os.walk(root):
        out += [os.path.join(d, n) for n in names if not n.startswith(".")]
    return sorted(out, key=_natural_key)


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def import_fkd(root: str, out: str, num_classes: int, *, bits: int = 8, quantizer: str = "power",
               temperature: float = 1.0, images=None, teacher: dict | None = None) -> ImportReport:
    """FKD per-image files (sorted by path, natural order: image i = i-th file) -> store at `out`."""
    from hald_ext.data import fingerprint

    files = _list_files(root)
    if not files:
        raise LabelImportError(f"{root}: no files to import")
    if images is not None and len(images) != len(files):
        raise LabelImportError(f"{root}: {len(files)} FKD files but the image set has {len(images)} images")
    q = Quantizer(quantizer, bits)
    thresholds = q.thresholds().double()
    boxes, flips, ids, codes = [], [], [], []
    shape = None
    for path in files:
        obj = safe_load(path)
        if not isinstance(obj, (list, tuple)) or len(obj) != 3:
            raise LabelImportError(f"{path}: an FKD file holds [coords, flip, labels], got {type(obj).__name__}"
                                   f"{' of length ' + str(len(obj)) if isinstance(obj, (list, tuple)) else ''}")
        coords, flip, lab = (_tensor(x, path, w) for x, w in zip(obj, ("coords", "flip", "labels")))
        if lab.dim() != 3 or lab.shape[1] != 2 or coords.shape != (lab.shape[0], 4) or flip.shape != (lab.shape[0],):
            raise LabelImportError(f"{path}: expected coords [N, 4], flip [N], labels [N, 2, k]; got "
                                   f"{list(coords.shape)}, {list(flip.shape)}, {list(lab.shape)}")
        if shape is None:
            shape = tuple(lab.shape)
        elif tuple(lab.shape) != shape:
            raise LabelImportError(f"{path}: labels {list(lab.shape)} differ from the first file's {list(shape)}")
        raw_ids, p = lab[:, 0].double(), lab[:, 1].double()
        if not torch.isfinite(raw_ids).all() or (raw_ids != raw_ids.round()).any():
            raise LabelImportError(f"{path}: class ids must be whole numbers")
        if (raw_ids < 0).any() or (raw_ids >= num_classes).any():
            raise LabelImportError(f"{path}: class id {int(raw_ids.max() if raw_ids.max() >= num_classes else raw_ids.min())} "
                                   f"is out of range for C = {num_classes}")
        _check_probs(p, path, full_rows=False)
        order = torch.sort(-p, dim=1, stable=True).indices  # the store keeps decreasing probability
        p, raw_ids = p.gather(1, order), raw_ids.gather(1, order)
        boxes.append(_boxes(coords, path))
        flips.append(flip.bool())
        ids.append(raw_ids.long())
        codes.append(torch.searchsorted(thresholds, p.contiguous(), right=True))
    n_slots, k = shape[0], shape[2]
    if k > min(num_classes, 64):
        raise LabelImportError(f"{root}: k = {k} exceeds min(C, 64)")
    header = Header(num_images=len(files), slots=n_slots, num_classes=num_classes, k=k,
                    temperature=float(temperature), quantizer=q, teacher=teacher or {},
                    images=fingerprint(images) if images is not None else None,
                    crops={"rule": "imported from FKD"}, source="import-fkd")
    ids_t = torch.stack(ids).to(torch.int32)
    store = LabelStore.create(out, header, torch.stack(boxes), torch.stack(flips),
                              ids_t.to(torch.uint16) if num_classes <= 65535 else ids_t,
                              torch.stack(codes).to(torch.int32).to(q.code_dtype))
    return ImportReport(store, len(files), sum(os.path.getsize(f) for f in files), store.nbytes)


def _epoch_dirs(root: str) -> list:
    eps = [d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))]
    return [os.path.join(root, d) for d in sorted(eps, key=_natural_key)] if eps else [root]


def import_batches(root: str, out: str, num_classes: int, *, values: str = "logits", temperature: float = 1.0,
                   k: int = 5, bits: int = 8, quantizer: str = "power", crop_size: int = 224, order=None,
                   images=None, teacher: dict | None = None, flavor: str = "sre2l") -> ImportReport:
    """SRe2L / LPLD / HALD per-batch files -> store. One sub-folder per label epoch (= one slot),
    batch files in natural order; `order` ([E, N] or [N] image ids of the rows, in file order; the
    identity by default) says which image each row labels."""
    from hald_ext.data import fingerprint
    from hald_ext.ops import label_encode

    if values not in ("logits", "probs"):
        raise ValueError(f"values must be 'logits' or 'probs', got {values!r}")
    q = Quantizer(quantizer, bits)
    thresholds = q.thresholds()
    epochs = [_list_files(d) for d in _epoch_dirs(root)]
    epochs = [e for e in epochs if e]
    if not epochs:
        raise LabelImportError(f"{root}: no batch files to import")
    per_epoch, all_files = [], []
    for files in epochs:
        rows = {"boxes": [], "flips": [], "ids": [], "codes": [], "partner": [], "mix_boxes": [], "lam": []}
        for path in files:
            all_files.append(path)
            obj = safe_load(path)
            if not isinstance(obj, (list, tuple)) or len(obj) != 6:
                raise LabelImportError(f"{path}: a batch file holds [coords, flip, mix_index, mix_lambda, mix_bbox, "
                                       "soft_labels]")
            coords, flip, mix_index, lam, bbox, soft = obj
            soft = _tensor(soft, path, "soft labels")
            coords, flip = _tensor(coords, path, "coords"), _tensor(flip, path, "flip")
            if soft.dim() != 2 or soft.shape[1] != num_classes:
                raise LabelImportError(f"{path}: soft labels must be [B, C = {num_classes}], got {list(soft.shape)}")
            B = soft.shape[0]
            if coords.shape != (B, 4) or flip.shape != (B,):
                raise LabelImportError(f"{path}: coords {list(coords.shape)} / flip {list(flip.shape)} do not match "
                                       f"{B} labels")
            soft = soft.float()
            if values == "probs":
                _check_probs(soft, path, full_rows=True)
            elif not torch.isfinite(soft).all():
                raise LabelImportError(f"{path}: logits contain NaN or inf")
            bi, bc = label_encode(soft, k, thresholds, temperature=temperature if values == "logits" else 1.0,
                                  from_logits=values == "logits")
            rows["boxes"].append(_boxes(coords, path))
            rows["flips"].append(flip.bool())
            rows["ids"].append(bi)
            rows["codes"].append(bc)
            partner, mbox, mlam = _mix_rows(path, mix_index, lam, bbox, B, crop_size)
            offset = sum(len(r) for r in rows["partner"])  # batch rows -> rows of the epoch
            rows["partner"].append(torch.where(partner >= 0, partner + offset, partner))
            rows["mix_boxes"].append(mbox)
            rows["lam"].append(mlam)
        per_epoch.append({key: torch.cat(v) for key, v in rows.items()})
    n = per_epoch[0]["ids"].shape[0]
    if any(e["ids"].shape[0] != n for e in per_epoch):
        raise LabelImportError(f"{root}: label epochs hold different numbers of rows "
                               f"({[e['ids'].shape[0] for e in per_epoch]})")
    if images is not None and len(images) != n:
        raise LabelImportError(f"{root}: each epoch labels {n} crops but the image set has {len(images)} images")
    E = len(per_epoch)
    if order is None:
        order = torch.arange(n).expand(E, n)
    else:
        order = torch.as_tensor(np.asarray(order)).long()
        order = order.expand(E, n) if order.dim() == 1 else order
        if tuple(order.shape) != (E, n):
            raise LabelImportError(f"order must be [N = {n}] or [E = {E}, N], got {list(order.shape)}")
        if ((order.sort(1).values != torch.arange(n)).any()):
            raise LabelImportError("order must be a permutation of the images in every epoch")
    # Row r of epoch e labels image order[e, r]: scatter rows into [N, E] (slot e = epoch e).
    out_t = {}
    for key in per_epoch[0]:
        # Image i's row is at position argsort(order[e])[i] (a gather: uint16 has no index_put).
        dest = [e_rows[key][torch.argsort(order[e])] for e, e_rows in enumerate(per_epoch)]
        out_t[key] = torch.stack(dest, 1).contiguous()  # [n, E, ...]
    # Partners are rows of the epoch; as image ids they follow the same permutation.
    partner_rows = out_t["partner"].long()
    for e in range(E):
        p = partner_rows[:, e]
        partner_rows[:, e] = torch.where(p >= 0, order[e][p.clamp_min(0)], p)
    has_mix = bool((partner_rows >= 0).any())
    header = Header(num_images=n, slots=E, num_classes=num_classes, k=k, temperature=float(temperature),
                    quantizer=q, teacher=teacher or {}, images=fingerprint(images) if images is not None else None,
                    crops={"rule": f"imported from {flavor}", "crop_size": crop_size}, mix=has_mix,
                    source=f"import-{flavor}")
    mix = MixRecord(partner_rows.to(torch.int32), out_t["mix_boxes"], out_t["lam"]) if has_mix else None
    store = LabelStore.create(out, header, out_t["boxes"], out_t["flips"], out_t["ids"], out_t["codes"], mix=mix)
    return ImportReport(store, len(all_files), sum(os.path.getsize(f) for f in all_files), store.nbytes)


def _mix_rows(path, mix_index, lam, bbox, B: int, crop_size: int):
    """Per-row (partner row in the batch or -1, pasted box uint16 (y, x, h, w), own-crop weight)."""
    none = (torch.full((B,), -1, dtype=torch.long), torch.zeros(B, 4, dtype=torch.uint16), torch.ones(B))
    if mix_index is None or lam is None or bbox is None:
        return none
    idx = _tensor(mix_index, path, "mix_index").long().view(-1)
    lam_v = float(_tensor(lam, path, "mix_lambda").double().view(-1)[0])
    box = _tensor(bbox, path, "mix_bbox").double().view(-1)
    if idx.shape != (B,) or box.shape != (4,):
        raise LabelImportError(f"{path}: mix_index must be [B] and mix_bbox 4 numbers")
    if (idx < 0).any() or (idx >= B).any():
        raise LabelImportError(f"{path}: mix_index points outside the batch")
    if not (0 <= lam_v <= 1):
        raise LabelImportError(f"{path}: mix_lambda {lam_v} is not in [0, 1]")
    if lam_v == 1:
        return none
    # SRe2L's rand_bbox returns (bbx1, bby1, bbx2, bby2) and pastes images[:, :, bbx1:bbx2, bby1:bby2]:
    # the first pair indexes rows (y), the second columns (x).
    x1, y1, x2, y2 = box.tolist()
    frac = torch.tensor([x1, y1, x2 - x1, y2 - y1], dtype=torch.float64) / crop_size
    if (frac < 0).any() or (frac > 1).any() or frac[0] + frac[2] > 1 or frac[1] + frac[3] > 1:
        raise LabelImportError(f"{path}: mix_bbox {box.tolist()} lies outside a {crop_size}-pixel crop (--crop-size)")
    return idx, quantize_boxes(frac).expand(B, 4).clone(), torch.full((B,), lam_v)
