"""The label store file format, version 2: one safetensors file (no pickle, memory-mappable).

Tensors, for N images x SLI stored crops per image (S below; crop j of every image is "slot" j, and a
label epoch replays one slot):
  boxes        uint16 [N, S, 4]  crop (y, x, h, w) as fractions * 65535 (hald_ext.core.boxes)
  flips        bool   [N, S]     horizontal flip after the crop
  topk_ids     uint16 [N, S, k]  class ids by decreasing probability (int32 when C > 65535);
                                 absent when k == C (a full-width label: values in class order)
  codes        uint8  [N, S, k]  quantised probabilities (uint16 for 16-bit codes; float16
                                 probabilities themselves with the "fp16" quantizer)
  codebook     float32 [2^bits]  code -> probability (what soft_hard_loss takes); absent for fp16
  optional CutMix replay record (all three or none; the label was made on the mixed crop):
  mix_partner  int32  [N, S]     image whose crop of the same slot was pasted in (-1: no mix)
  mix_boxes    uint16 [N, S, 4]  pasted region (y, x, h, w) as fractions of the crop
  mix_lambda   float32 [N, S]    weight of the image's own crop (1 - pasted area)
The safetensors metadata holds MAGIC_KEY = MAGIC, VERSION_KEY = "2" and HEADER_KEY = the JSON
header (see `Header`). Version 1 (read, never written) differs only in the header's name for SLI,
"slots".
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import struct

from hald_ext.labels.quantizer import Quantizer
from hald_ext.ops.soft_hard_loss import DECODES  # noqa: F401  (the decode modes, defined once with the loss)

MAGIC_KEY = "hald.format"
MAGIC = "hald-label-store"
VERSION_KEY = "hald.version"
VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: SLI was the header field "slots"
HEADER_KEY = "hald.header"
# safetensors' own limit is 100 MB; a label store header is a few hundred bytes plus tensor entries.
MAX_HEADER_BYTES = 1 << 20

MIX = ("mix_partner", "mix_boxes", "mix_lambda")


class LabelStoreError(ValueError):
    """A label store file that is unreadable, corrupt, inconsistent, or made for other images."""


class FingerprintMismatch(LabelStoreError):
    pass


def ids_dtype_name(num_classes: int) -> str:
    return "U16" if num_classes <= 65535 else "I32"


@dataclasses.dataclass
class Header:
    num_images: int
    sli: int  # stored crops (labels) per image
    num_classes: int
    k: int
    temperature: float
    quantizer: Quantizer
    default_decode: str = "marginal"
    teacher: dict = dataclasses.field(default_factory=dict)  # {"name", "checkpoint_sha256"}
    images: dict | None = None  # hald_ext.data.fingerprint(): {"kind", "count", "sha256"} (no kind: pixels)
    crops: dict = dataclasses.field(default_factory=dict)  # sampling rule and parameters
    seed: int | None = None
    mix: bool = False
    source: str = "relabel"
    progress: int | None = None  # labels done, only in an unfinished relabel's partial file
    # Measured quality, JSON numbers by name, e.g. {"kl_to_teacher": mean nats, "kl_uniform": mean
    # nats of a uniform label} (hald_ext.labels.quality); `hald labels info` prints it.
    stats: dict = dataclasses.field(default_factory=dict)

    @property
    def slots(self) -> int:
        """SLI under its version-1 name."""
        return self.sli

    @property
    def code_bits(self) -> int:
        return self.quantizer.bits

    @property
    def full_width(self) -> bool:
        """k == C: every class stored, in class order, with no ids."""
        return self.k == self.num_classes

    def to_json(self) -> str:
        problem = stats_problem(self.stats)
        if problem:
            raise ValueError(f"Header.stats {problem}")
        d = dataclasses.asdict(self)
        d["quantizer"] = self.quantizer.to_header()
        d["code_bits"] = self.quantizer.bits
        d["version"] = VERSION
        return json.dumps(d, sort_keys=True)

    def metadata(self) -> dict:
        return {MAGIC_KEY: MAGIC, VERSION_KEY: str(VERSION), HEADER_KEY: self.to_json()}

    def same_recipe(self, other: "Header") -> bool:
        """Equal except for progress and stats (a partial relabel may resume into this header; stats
        are measured on the finished labels)."""
        a, b = (dataclasses.replace(h, progress=None, stats={}) for h in (self, other))
        return a.to_json() == b.to_json()

    @classmethod
    def from_metadata(cls, metadata: dict | None, where: str) -> "Header":
        if not metadata or metadata.get(MAGIC_KEY) != MAGIC:
            raise LabelStoreError(f"{where}: not a HALD label store (wrong magic: metadata key {MAGIC_KEY!r} is "
                                  f"{(metadata or {}).get(MAGIC_KEY)!r}, expected {MAGIC!r})")
        version = metadata.get(VERSION_KEY)
        if version not in {str(v) for v in READABLE_VERSIONS}:
            raise LabelStoreError(f"{where}: unsupported label store version {version!r} (this build reads "
                                  f"versions {', '.join(map(str, READABLE_VERSIONS))})")
        try:
            d = json.loads(metadata.get(HEADER_KEY, ""))
        except (json.JSONDecodeError, TypeError) as e:
            raise LabelStoreError(f"{where}: the header is not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise LabelStoreError(f"{where}: the header must be a JSON object")
        return _header_from_dict(d, where)


def stats_problem(stats) -> str | None:
    """Why `stats` is not a mapping of names to finite JSON numbers, or None when it is."""
    if not isinstance(stats, dict):
        return f"must be a mapping of names to numbers, got {type(stats).__name__}"
    for key, v in stats.items():
        if not isinstance(key, str):
            return f"keys must be strings, got {key!r}"
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return f"{key!r} = {v!r} is not a finite number"
    return None


def _field(d: dict, name: str, where: str, kind, check=None, what: str = ""):
    if name not in d:
        raise LabelStoreError(f"{where}: header field {name!r} is missing")
    v = d[name]
    ok = isinstance(v, kind) and not (kind is int and isinstance(v, bool))
    if ok and check is not None:
        ok = check(v)
    if not ok:
        raise LabelStoreError(f"{where}: header field {name!r} = {v!r} is invalid{(' (' + what + ')') if what else ''}")
    return v


def _header_from_dict(d: dict, where: str) -> Header:
    if d.get("version") not in READABLE_VERSIONS:
        raise LabelStoreError(f"{where}: header version {d.get('version')!r} is not one of {READABLE_VERSIONS}")
    n = _field(d, "num_images", where, int, lambda v: 0 <= v < 2**31, "an image count")
    s = _field(d, "sli" if d["version"] >= 2 else "slots", where, int, lambda v: 1 <= v < 2**20,
               "stored crops per image >= 1")
    c = _field(d, "num_classes", where, int, lambda v: 1 <= v < 2**31, "class count >= 1")
    k = _field(d, "k", where, int, lambda v: 1 <= v <= c, "1 <= k <= C")
    t = _field(d, "temperature", where, (int, float), lambda v: math.isfinite(v) and v > 0, "finite, > 0")
    try:
        q = Quantizer.from_header(d.get("quantizer"))
    except (ValueError, TypeError) as e:
        raise LabelStoreError(f"{where}: header field 'quantizer' is invalid ({e})") from None
    bits = _field(d, "code_bits", where, int)
    if bits != q.bits:
        raise LabelStoreError(f"{where}: header says code_bits = {bits} but its quantizer has {q.bits} bits")
    dec = _field(d, "default_decode", where, str, lambda v: v in DECODES, f"one of {DECODES}")
    teacher = _field(d, "teacher", where, dict)
    images = d.get("images")
    if images is not None and not (isinstance(images, dict) and isinstance(images.get("count"), int)
                                   and isinstance(images.get("sha256"), str)):
        raise LabelStoreError(f"{where}: header field 'images' must be a fingerprint {{count, sha256}}, got {images!r}")
    if images is not None and images.get("kind", "pixels") not in ("pixels", "files"):
        raise LabelStoreError(f"{where}: header field 'images' has an unknown fingerprint kind {images['kind']!r} "
                              "(known: pixels, files)")
    if images is not None and images["count"] != n:
        raise LabelStoreError(f"{where}: header says {n} images but its image fingerprint counts {images['count']}")
    crops = _field(d, "crops", where, dict)
    seed = d.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise LabelStoreError(f"{where}: header field 'seed' must be an integer, got {seed!r}")
    mix = _field(d, "mix", where, bool)
    source = _field(d, "source", where, str)
    progress = d.get("progress")
    if progress is not None and not (isinstance(progress, int) and 0 <= progress <= n * s):
        raise LabelStoreError(f"{where}: header field 'progress' = {progress!r} is invalid")
    stats = d.get("stats", {})  # absent in stores written before stats existed
    problem = stats_problem(stats)
    if problem:
        raise LabelStoreError(f"{where}: header field 'stats' {problem}")
    return Header(num_images=n, sli=s, num_classes=c, k=k, temperature=float(t), quantizer=q,
                  default_decode=dec, teacher=teacher, images=images, crops=crops, seed=seed, mix=mix,
                  source=source, progress=progress, stats=dict(stats))


def expected_tensors(h: Header) -> dict:
    """name -> (safetensors dtype, shape) that a store with header `h` must hold."""
    N, S, k = h.num_images, h.sli, h.k
    out = {"boxes": ("U16", [N, S, 4]), "flips": ("BOOL", [N, S])}
    if not h.full_width:
        out["topk_ids"] = (ids_dtype_name(h.num_classes), [N, S, k])
    if h.quantizer.is_float:
        out["codes"] = ("F16", [N, S, k])
    else:
        out["codes"] = ("U8" if h.code_bits == 8 else "U16", [N, S, k])
        out["codebook"] = ("F32", [1 << h.code_bits])
    if h.mix:
        out.update(mix_partner=("I32", [N, S]), mix_boxes=("U16", [N, S, 4]), mix_lambda=("F32", [N, S]))
    return out


def read_raw_header(path: str) -> tuple[dict, int, int]:
    """(parsed safetensors JSON header, its byte length, file size), checked before any allocation
    that depends on the file's contents: the length prefix must fit the file and MAX_HEADER_BYTES,
    every tensor's byte range must lie inside the data section and match its dtype and shape, and
    the ranges must tile the data section exactly."""
    where = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise LabelStoreError(f"{where}: truncated file ({size} bytes; a label store starts with an "
                                      "8-byte header length)")
            (n,) = struct.unpack("<Q", prefix)
            if n > MAX_HEADER_BYTES:
                raise LabelStoreError(f"{where}: corrupt header length {n} (over {MAX_HEADER_BYTES} bytes)")
            if 8 + n > size:
                raise LabelStoreError(f"{where}: truncated file: the header needs {n} bytes, {size - 8} are there")
            raw = f.read(n)
    except OSError as e:
        raise LabelStoreError(f"{where}: cannot read ({e.strerror or e})") from None
    try:
        hdr = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LabelStoreError(f"{where}: corrupt safetensors header ({e.__class__.__name__})") from None
    if not isinstance(hdr, dict):
        raise LabelStoreError(f"{where}: corrupt safetensors header (not a JSON object)")
    data_len = size - 8 - n
    spans = []
    for name, info in hdr.items():
        if name == "__metadata__":
            if not (isinstance(info, dict) and all(isinstance(v, str) for v in info.values())):
                raise LabelStoreError(f"{where}: corrupt safetensors metadata")
            continue
        try:
            dtype, shape, (lo, hi) = info["dtype"], info["shape"], info["data_offsets"]
            nbytes = _ITEMSIZE[dtype]
            for d in shape:
                if not isinstance(d, int) or isinstance(d, bool) or d < 0:
                    raise ValueError
                nbytes *= d
            if not (isinstance(lo, int) and isinstance(hi, int)):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise LabelStoreError(f"{where}: corrupt safetensors entry for tensor {name!r}") from None
        if not 0 <= lo <= hi <= data_len:
            raise LabelStoreError(f"{where}: truncated file: tensor {name!r} needs bytes {lo}..{hi} of a "
                                  f"{data_len}-byte data section")
        if hi - lo != nbytes:
            raise LabelStoreError(f"{where}: tensor {name!r} spans {hi - lo} bytes but dtype {dtype} x shape "
                                  f"{shape} needs {nbytes}")
        spans.append((lo, hi))
    spans.sort()
    pos = 0
    for lo, hi in spans:
        if lo != pos:
            raise LabelStoreError(f"{where}: corrupt data section (tensors overlap or leave a gap at byte {pos})")
        pos = hi
    if pos != data_len:
        raise LabelStoreError(f"{where}: the data section has {data_len} bytes but its tensors account for {pos} "
                              "(truncated or padded file)")
    return hdr, n, size


_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2, "U32": 4, "I32": 4, "F32": 4,
             "U64": 8, "I64": 8, "F64": 8}
