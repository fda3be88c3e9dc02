"""`LabelStore`: the top-k (or full-width, k == C) soft labels of N images x S slots with their crop
boxes and flips, in one safetensors file (format: hald_ext.labels.format), opened lazily through
memory maps."""
from __future__ import annotations

import os
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
from safetensors.torch import save_file

from hald_ext import _ext
from hald_ext.core.device import to_device
from hald_ext.data import fingerprint
from hald_ext.labels import format as fmt
from hald_ext.labels.atomic import atomic_path
from hald_ext.labels.format import FingerprintMismatch, Header, LabelStoreError

_TORCH_DTYPES = {"U16": torch.uint16, "BOOL": torch.bool, "U8": torch.uint8, "I32": torch.int32,
                 "F32": torch.float32, "F16": torch.float16}
_NP_DTYPES = {"U16": np.dtype("<u2"), "BOOL": np.dtype("?"), "U8": np.dtype("u1"), "I32": np.dtype("<i4"),
              "F32": np.dtype("<f4"), "F16": np.dtype("<f2")}
_DTYPE_NAMES = {v: k for k, v in _TORCH_DTYPES.items()}


class SlotLabels(NamedTuple):
    """One slot of every image (what one label epoch replays), image-major."""
    slot: int
    boxes: torch.Tensor  # uint16 [n, 4]
    flips: torch.Tensor  # bool [n]
    topk_ids: torch.Tensor | None  # [n, k]; None for full-width labels
    codes: torch.Tensor  # [n, k] codes, or float16 probabilities (fp16 quantizer)


class MixRecord(NamedTuple):
    partner: torch.Tensor  # int32 [n, S], -1 where the crop was not mixed
    boxes: torch.Tensor  # uint16 [n, S, 4]
    lam: torch.Tensor  # float32 [n, S]


_STORE_ERRORS = {  # hald::label_store_check's codes -> the message (row and value filled in)
    1: "class id {value} is out of range for C = {C} classes (label row {row})",
    2: "a label lists the same class id twice in its top-k (class {value}, label row {row})",
    3: "boxes reach outside the image (y + h or x + w > 1; box {row})",
    4: "boxes with zero height or width (box {row})",
    5: "a CutMix partner is not an image of this store (ids must be in [-1, {N})): {value} at row {row}",
    6: "CutMix lambdas must be finite and in [0, 1] (row {row})",
    7: "mix_boxes reach outside the image (y + h or x + w > 1; row {row})",
}


def _check_arrays(h: Header, t: dict, where: str, image_offset: int = 0) -> None:
    """Value checks the dtypes cannot express: ids in range and distinct per label, a sane codebook,
    boxes inside the image, mix records that point at real images. One native pass over the rows
    (hald::label_store_check; its reference is hald_ext.reference.label_store_check)."""
    done = h.progress  # an unfinished relabel: labels past `progress` are not written yet
    if h.quantizer.is_float:
        _check_float_values(t["codes"].reshape(-1, h.k)[:done], where)
    else:
        _check_codebook(t["codebook"], where)
    ids = t["topk_ids"].reshape(-1, h.k)[:done] if "topk_ids" in t else None
    mix = h.mix
    _ext.require()
    code, row, value = torch.ops.hald.label_store_check.default(
        ids, h.num_classes, t["boxes"].reshape(-1, 4), t["mix_partner"].reshape(-1) if mix else None,
        h.num_images, t["mix_lambda"].reshape(-1) if mix else None, t["mix_boxes"].reshape(-1, 4) if mix else None)
    if code:
        raise LabelStoreError(f"{where}: " + _STORE_ERRORS[code].format(value=value, row=row, C=h.num_classes,
                                                                     N=h.num_images))


def _check_float_values(v: torch.Tensor, where: str, rows: int = 1 << 16) -> None:
    """fp16 probabilities: finite, in [0, 1], rows summing to at most 1 (plus float16 rounding)."""
    for lo in range(0, v.shape[0], rows):
        x = v[lo:lo + rows].float()
        if not torch.isfinite(x).all():
            raise LabelStoreError(f"{where}: stored float16 probabilities contain NaN or inf")
        if (x < 0).any() or (x > 1).any():
            raise LabelStoreError(f"{where}: stored float16 probabilities lie outside [0, 1]")
        if x.numel() and float(x.sum(1).max()) > 1.01:  # float16 rounding adds at most 2^-11
            raise LabelStoreError(f"{where}: a stored label's probabilities sum to more than 1")


def _check_codebook(cb: torch.Tensor, where: str) -> None:
    if torch.isnan(cb).any():
        raise LabelStoreError(f"{where}: the codebook contains NaN probabilities")
    if (cb < 0).any() or (cb > 1).any() or not torch.isfinite(cb).all():
        raise LabelStoreError(f"{where}: the codebook has probabilities outside [0, 1] (negative or > 1)")
    if (cb[1:] < cb[:-1]).any():
        raise LabelStoreError(f"{where}: the codebook is not sorted (corrupt quantiser table)")


def _map_tensor(path: str, offset: int, dtype: str, shape: list) -> torch.Tensor:
    """A copy-on-write memory map of one tensor: pages are read when touched."""
    if any(d == 0 for d in shape):
        return torch.empty(shape, dtype=_TORCH_DTYPES[dtype])
    arr = np.memmap(path, dtype=_NP_DTYPES[dtype], mode="c", offset=offset, shape=tuple(shape))
    if not arr.flags.aligned:  # a foreign writer's layout: kernels may assume aligned elements
        arr = np.array(arr)
    return torch.from_numpy(arr)


class LabelStore:
    """Top-k soft labels, crop boxes and flips of every (image, slot) of an image set.

        store = LabelStore.open("labels.safetensors", images=image_set)
        ids, codes = store.labels(image_ids, slots, device="cuda")  # ids None when k == C
        loss = soft_hard_loss(logits, ids, codes, codebook=store.codebook_on("cuda"),
                              temperature=store.temperature, decode=store.default_decode)

    A shard (`store.shard(rank, world_size)`) covers a contiguous block of images and takes the same
    global image ids; only its block of the file is ever read.
    """

    def __init__(self, path: str, header: Header, tensors: dict, nbytes: int, image_offset: int = 0):
        self.path = path
        self.header = header
        self._t = tensors
        self._nbytes = nbytes
        self.image_offset = image_offset
        self._codebooks: dict = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def open(cls, path, images=None, validate: bool = True, allow_partial: bool = False) -> "LabelStore":
        """Open a store: header and every tensor's dtype and shape are always checked; `validate`
        also checks the values (ids in range, codebook, boxes: one pass over the labels). `images`
        (an ImageSet or its fingerprint dict) must be the image set the store was made for."""
        path = os.fspath(path)
        raw, header_len, size = fmt.read_raw_header(path)
        header = Header.from_metadata(raw.get("__metadata__"), path)
        if header.progress is not None and not allow_partial:
            raise LabelStoreError(f"{path}: an unfinished relabel ({header.progress} of "
                                  f"{header.num_images * header.sli} labels); rerun it to resume")
        want = fmt.expected_tensors(header)
        have = {k: v for k, v in raw.items() if k != "__metadata__"}
        missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
        if missing or extra:
            raise LabelStoreError(f"{path}: header and arrays disagree: missing {missing}, unexpected {extra}"
                                  + (" (the header's mix flag decides the CutMix arrays)" if header.mix or
                                     any(m in have for m in fmt.MIX) else ""))
        tensors = {}
        for name, (dtype, shape) in want.items():
            info = have[name]
            if info["dtype"] != dtype or list(info["shape"]) != shape:
                raise LabelStoreError(f"{path}: header and arrays disagree: {name} is {info['dtype']} "
                                      f"{info['shape']}, the header implies {dtype} {shape}")
            tensors[name] = _map_tensor(path, 8 + header_len + info["data_offsets"][0], dtype, shape)
        store = cls(path, header, tensors, size)
        if validate:
            _check_arrays(header, tensors, path)
        if images is not None:
            store.check_images(images)
        return store

    @classmethod
    def create(cls, path, header: Header, boxes, flips, topk_ids, codes, codebook=None, mix: MixRecord | None = None,
               ) -> "LabelStore":
        """Validate and write a store atomically (temp file + rename), then open it. A full-width
        header (k == C) takes `topk_ids=None`; the fp16 quantizer takes float16 `codes` and no codebook."""
        path = os.fspath(path)
        if codebook is None:
            codebook = header.quantizer.codebook()
        tensors = {"boxes": boxes, "flips": flips, "topk_ids": topk_ids, "codes": codes, "codebook": codebook}
        if (mix is not None) != header.mix:
            raise LabelStoreError(f"{path}: header.mix = {header.mix} but a mix record was "
                                  f"{'given' if mix is not None else 'not given'}")
        if mix is not None:
            tensors.update(mix_partner=mix.partner, mix_boxes=mix.boxes, mix_lambda=mix.lam)
        want = fmt.expected_tensors(header)
        extra = sorted(n for n, t in tensors.items() if t is not None and n not in want)
        if extra:
            raise LabelStoreError(f"{path}: {extra} given but a store with this header holds none (full-width "
                                  "stores, k == C, hold no topk_ids; fp16 stores no codebook)")
        tensors = {n: tensors[n] for n in want}
        for name, (dtype, shape) in want.items():
            t = tensors[name]
            if not torch.is_tensor(t) or _DTYPE_NAMES.get(t.dtype) != dtype or list(t.shape) != shape:
                got = f"{t.dtype} {list(t.shape)}" if torch.is_tensor(t) else type(t).__name__
                raise LabelStoreError(f"{path}: {name} must be {_TORCH_DTYPES[dtype]} {shape} for this header, "
                                      f"got {got}")
            tensors[name] = t.detach().cpu().contiguous()
        _check_arrays(header, tensors, path)
        write_tensors(path, header, tensors)
        return cls.open(path, validate=False, allow_partial=header.progress is not None)

    # ------------------------------------------------------------------ header
    @property
    def num_images(self) -> int:
        return self._t["boxes"].shape[0]

    @property
    def sli(self) -> int:
        """Stored crops (labels) per image."""
        return self.header.sli

    @property
    def slots(self) -> int:
        """SLI under its earlier name."""
        return self.header.sli

    @property
    def num_labels(self) -> int:
        return self.num_images * self.sli

    @property
    def num_classes(self) -> int:
        return self.header.num_classes

    @property
    def k(self) -> int:
        return self.header.k

    @property
    def temperature(self) -> float:
        return self.header.temperature

    @property
    def quantizer(self):
        return self.header.quantizer

    @property
    def default_decode(self) -> str:
        return self.header.default_decode

    # ------------------------------------------------------------------ arrays
    @property
    def boxes(self) -> torch.Tensor:
        """uint16 [n, S, 4] (y, x, h, w) * 65535; hald_ext.core.boxes.dequantize_boxes gives fractions."""
        return self._t["boxes"]

    @property
    def flips(self) -> torch.Tensor:
        return self._t["flips"]

    @property
    def full_width(self) -> bool:
        return self.header.full_width

    @property
    def topk_ids(self) -> torch.Tensor | None:
        """[n, S, k] class ids, or None for a full-width store (values are in class order)."""
        return self._t.get("topk_ids")

    @property
    def codes(self) -> torch.Tensor:
        """[n, S, k] codes into `codebook`, or float16 probabilities (fp16 quantizer)."""
        return self._t["codes"]

    @property
    def codebook(self) -> torch.Tensor | None:
        """float32 [2^bits] (CPU): code -> probability, the `codebook` of soft_hard_loss (None for fp16)."""
        return self._t.get("codebook")

    def codebook_on(self, device) -> torch.Tensor | None:
        if self.codebook is None:
            return None
        device = torch.device(device)
        if device not in self._codebooks:
            self._codebooks[device] = self.codebook.to(device)
        return self._codebooks[device]

    @property
    def mix(self) -> MixRecord | None:
        if not self.header.mix:
            return None
        return MixRecord(self._t["mix_partner"], self._t["mix_boxes"], self._t["mix_lambda"])

    @property
    def bytes_per_label(self) -> float:
        """Bytes of one (image, slot) label: box, flip, ids (none when k == C), codes (and the mix
        record if any)."""
        per_image = sum(t.element_size() * t[0].numel() for name, t in self._t.items() if name != "codebook"
                        ) if self.num_images else self._bytes_per_label_from_header()
        return per_image / self.sli

    def _bytes_per_label_from_header(self) -> int:
        h = self.header
        ids = 0 if h.full_width else 2 if h.num_classes <= 65535 else 4
        return (8 + 1 + h.k * (ids + h.code_bits // 8) + (16 if h.mix else 0)) * h.sli

    @property
    def nbytes(self) -> int:
        """Size of the whole file (a shard reports the file it reads from)."""
        return self._nbytes

    # ------------------------------------------------------------------ access
    def _local(self, image_ids, slots) -> tuple[torch.Tensor, torch.Tensor]:
        image_ids = torch.as_tensor(image_ids, dtype=torch.int64, device="cpu")
        slots = torch.as_tensor(slots, dtype=torch.int64, device="cpu")
        image_ids, slots = torch.broadcast_tensors(image_ids, slots)
        local = image_ids - self.image_offset
        if local.numel():
            if int(local.min()) < 0 or int(local.max()) >= self.num_images:
                raise IndexError(f"image ids must be in [{self.image_offset}, {self.image_offset + self.num_images}) "
                                 f"here (the store has {self.header.num_images} images)")
            if int(slots.min()) < 0 or int(slots.max()) >= self.sli:
                raise IndexError(f"slots must be in [0, SLI = {self.sli})")
        return local, slots

    def labels(self, image_ids, slots, device=None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(topk_ids, codes) [B, k] of the given (image, slot) pairs, ready for soft_hard_loss with
        `codebook=store.codebook_on(device)`; (None, values [B, C]) for a full-width store. Ids and
        slots are CPU integer tensors (or sequences)."""
        local, slots = self._local(image_ids, slots)
        ids = None if self.topk_ids is None else self._on(self.topk_ids[local, slots], device)
        return ids, self._on(self.codes[local, slots], device)

    @staticmethod
    def _on(t: torch.Tensor, device) -> torch.Tensor:
        return t if device is None else to_device(t, device)

    def crops(self, image_ids, slots) -> tuple[torch.Tensor, torch.Tensor]:
        """(boxes uint16 [B, 4], flips bool [B]) of the given (image, slot) pairs."""
        local, slots = self._local(image_ids, slots)
        return self.boxes[local, slots], self.flips[local, slots]

    def iter_slots(self) -> Iterator[SlotLabels]:
        for s in range(self.sli):
            ids = None if self.topk_ids is None else self.topk_ids[:, s]
            yield SlotLabels(s, self.boxes[:, s], self.flips[:, s], ids, self.codes[:, s])

    def shard(self, rank: int, world_size: int, validate: bool = True) -> "LabelStore":
        """The contiguous block of images that `rank` of `world_size` replays (balanced split)."""
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
        n = self.num_images
        lo, hi = rank * n // world_size, (rank + 1) * n // world_size
        tensors = {name: (t if name == "codebook" else t[lo:hi]) for name, t in self._t.items()}
        if validate:
            _check_arrays(self.header, tensors, f"{self.path} (shard {rank}/{world_size})")
        return LabelStore(self.path, self.header, tensors, self._nbytes, self.image_offset + lo)

    def check_images(self, images) -> None:
        """Raise FingerprintMismatch unless `images` (an ImageSet, an ImageFiles or a fingerprint dict)
        is the set this store was made for. The fingerprint is computed in the kind the store recorded
        (hald_ext.data.fingerprint: "files" for a store made on an image folder, "pixels" for arrays and
        for stores written before folders were read as files)."""

        want = self.header.images
        if want is None:
            raise FingerprintMismatch(f"{self.path}: the store records no image-set fingerprint, so it cannot be "
                                      "checked against these images")
        kind = want.get("kind", "pixels")
        if isinstance(images, dict):
            fp = images
            if fp.get("kind", "pixels") != kind:
                raise FingerprintMismatch(f"{self.path}: the store identifies its images by {kind}, the set given "
                                          f"by {fp.get('kind', 'pixels')}: check it with the image set itself")
        else:
            try:
                fp = fingerprint(images, kind)
            except ValueError as e:
                raise FingerprintMismatch(f"{self.path}: image set mismatch: {e}") from None
        if fp.get("count") != want["count"]:
            raise FingerprintMismatch(f"{self.path}: image set mismatch: the store was made for {want['count']} "
                                      f"images, this set has {fp.get('count')}")
        if fp.get("sha256") != want["sha256"]:
            raise FingerprintMismatch(f"{self.path}: image set mismatch: same count ({want['count']}) but other "
                                      f"{'file contents' if kind == 'files' else 'pixels'} (sha256 {str(fp.get('sha256'))[:12]}... != "
                                      f"{want['sha256'][:12]}...)")

    def __repr__(self) -> str:
        return (f"LabelStore({self.path!r}, images={self.num_images}, sli={self.sli}, C={self.num_classes}, "
                f"k={self.k}, {self.quantizer.kind}/{self.quantizer.bits}, {self.bytes_per_label:.1f} B/label)")


def write_tensors(path: str, header: Header, tensors: dict) -> None:
    """safetensors file with the store's metadata, written atomically."""

    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=header.metadata())
