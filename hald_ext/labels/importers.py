"""Importers of public soft-label files (docs/importers.md) into a label store, reading them as the
public writers write them:

  FKD (FKD_SLG/generate_soft_label.py)   one file per image, <class>/<name>.tar:
      torch.save([coords.numpy() float32 (N, 4) (y, x, h, w) fractions, flip.numpy() bool (N,),
                  labels float32 numpy (N, 2, k): row 0 class ids (as floats), row 1 probabilities])
  SRe2L (relabel/generate_soft_label.py), LPLD (generate_soft_label_pruning.py)
      epoch_<e>/batch_<b>.tar: [coords float32 (B, 4), flip bool (B,), mix_index int64 (B,) | None,
      mix_lambda (a float from np.random.beta) | None, mix_bbox [4 numpy.int64 from rand_bbox] | None,
      logits (B, C) float32 or float16]; LPLD adds sampler_indices_epoch.json {epoch: image ids}
  HALD (relabel/relabel_slc.py)
      epoch_<e>.tar: a list over batches of the same six items, coords float16 and labels
      softmax(logits / T).half() (T = 20); sampler_indices_dict.pt {str(epoch): image ids in order}

These are pickles, and unpickling runs code. They are read with torch.load(weights_only=True) plus an
explicit allow-list that admits plain numpy arrays and scalars (numeric dtypes, no object arrays) and
nothing else: a file whose loading would call anything other (a `__reduce__` payload such as
os.system) is refused before the call, and the error says which callable it asked for.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import warnings

import numpy as np
import torch

from hald_ext.core.boxes import quantize_boxes
from hald_ext.data import fingerprint, image_sizes
from hald_ext.labels.format import Header
from hald_ext.labels.quality import kl_to_full, uniform_kl
from hald_ext.labels.quantizer import Quantizer, encode_rows
from hald_ext.labels.store import LabelStore, MixRecord

SAMPLER_FILES = ("sampler_indices_dict.pt", "sampler_indices_epoch.json")


class LabelImportError(ValueError):
    """An input file that is unsafe (would run code), malformed, or inconsistent with the others."""


class ImportOrderWarning(UserWarning):
    """Rows were matched to images by file order, not by a record of which images formed each batch."""


@dataclasses.dataclass
class ImportReport:
    store: LabelStore
    files: int
    bytes_before: int
    bytes_after: int
    notes: list = dataclasses.field(default_factory=list)  # what the import chose or filled, to print

    def summary(self) -> str:
        h = self.store.header
        line = (f"imported {self.files} files, {self.bytes_before} bytes -> {self.store.path}: {self.bytes_after} "
                f"bytes ({self.bytes_before / max(self.bytes_after, 1):.1f}x smaller), "
                f"{self.store.num_images} images x SLI {self.store.sli}, "
                f"{self.store.bytes_per_label:.1f} bytes/label; "
                f"T = {h.temperature:g}, crop size {h.crops.get('crop_size') or 'not recorded'}, "
                f"decode {h.default_decode}, values {h.quantizer.kind}")
        return "\n".join([line] + [f"note: {n}" for n in self.notes])


# ---------------------------------------------------------------------------------------- safe loading
def _plain_dtype(*args):
    """numpy.dtype for unpickling: numeric and bool dtypes only (an object dtype would let the
    array's state carry arbitrary pickled objects), held in a _DtypeState until its pickled state
    has been checked."""
    dt = np.dtype(*args)
    if dt.hasobject or dt.kind not in "biufc?" or dt.fields is not None:
        raise pickle.UnpicklingError(f"refused numpy dtype {dt} (only numeric arrays are read)")
    return _DtypeState(dt)


class _DtypeState:
    """A dtype being unpickled. numpy writes a builtin dtype's state (pickle's BUILD) as
    (3, byte order, None, None, None, -1, -1, 0); any other state (fields, a sub-array, flags) would
    reach numpy's dtype.__setstate__ after the kind was checked, so only that one is accepted, and
    numpy's dtype object is never handed a state at all."""

    def __init__(self, dtype):
        self.dtype = dtype

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 8 and state[0] == 3 and state[1] in ("<", ">", "|", "=")
                and state[2:] == (None, None, None, -1, -1, 0)):
            raise pickle.UnpicklingError(f"refused numpy dtype state {str(state)[:80]} (only plain numeric dtypes "
                                         "are read)")
        if state[1] in "<>" and self.dtype.itemsize > 1:
            self.dtype = self.dtype.newbyteorder(state[1])


def _real_dtype(d):
    if not isinstance(d, _DtypeState):
        raise pickle.UnpicklingError("refused numpy array / scalar whose dtype is not a plain pickled dtype")
    return d.dtype


class _ArrayState:
    """An array being unpickled: its state (shape, dtype, bytes) is checked and given to numpy with
    the real dtype; `_unwrap` swaps in the array once loading is done."""

    def __init__(self):
        self.array = None

    def __setstate__(self, state):
        from numpy._core import multiarray

        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[1], tuple)
                and isinstance(state[3], bool) and isinstance(state[4], (bytes, bytearray))):
            raise pickle.UnpicklingError("refused numpy array state other than (version, shape, dtype, order, bytes)")
        a = multiarray._reconstruct(np.ndarray, (0,), b"b")
        a.__setstate__((state[0], state[1], _real_dtype(state[2]), state[3], bytes(state[4])))
        self.array = a


def _scalar(dtype, data):
    from numpy._core import multiarray

    if not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError("refused numpy scalar whose data is not bytes")
    return multiarray.scalar(_real_dtype(dtype), bytes(data))


def _unwrap(obj):
    """The loaded structure with every _ArrayState replaced by its array."""
    if isinstance(obj, _ArrayState):
        if obj.array is None:
            raise pickle.UnpicklingError("refused numpy array without its data")
        return obj.array
    if isinstance(obj, list):
        return [_unwrap(x) for x in obj]
    if isinstance(obj, tuple):
        return tuple(_unwrap(x) for x in obj)
    if isinstance(obj, dict):
        return {k: _unwrap(v) for k, v in obj.items()}
    return obj


def _check_extents(obj, path: str) -> None:
    """Refuse tensors that claim more elements than their storage holds (stride-0 views: a few bytes
    on disk that become gigabytes in the first whole-tensor check)."""
    if torch.is_tensor(obj):
        need = obj.numel() * obj.element_size()
        repeats = any(st == 0 and n > 1 for n, st in zip(obj.shape, obj.stride()))
        if obj.numel() and (need > obj.untyped_storage().nbytes() or repeats):
            raise LabelImportError(f"{path}: refused: a tensor of shape {list(obj.shape)} is a view that repeats "
                                   f"{obj.untyped_storage().nbytes()} stored bytes (overlapping or zero strides); "
                                   "label files hold dense tensors")
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            _check_extents(x, path)
    elif isinstance(obj, dict):
        for x in obj.values():
            _check_extents(x, path)


class _NdarrayName:
    """What the pickle name numpy.ndarray resolves to: only a marker for _reconstruct, so a pickle
    cannot call numpy.ndarray(shape) itself (an uninitialised array of any size)."""

    def __new__(cls, *args, **kwargs):
        raise pickle.UnpicklingError("refused numpy.ndarray(...) called directly (it would allocate an array of "
                                     "any size); only pickled arrays are read")


def _reconstruct(subtype, shape, dtype):
    """numpy's pickle entry point for arrays, restricted to the empty plain ndarray it always starts
    from; the data then comes from the file (ndarray.__setstate__ checks its length)."""
    if subtype is not _NdarrayName or tuple(shape) != (0,):
        raise pickle.UnpicklingError("refused numpy array reconstruction other than a plain ndarray")
    return _ArrayState()


def _numpy_allow_list() -> list:
    allowed = [(_NdarrayName, "numpy.ndarray"), (_plain_dtype, "numpy.dtype")]
    # Files written under numpy 1.x name the functions numpy.core.multiarray.*.
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        allowed += [(_reconstruct, f"{module}._reconstruct"), (_scalar, f"{module}.scalar")]
    # Arrays and dtypes are built through __setstate__, which torch allows for allow-listed types only:
    # our two checked state holders, never numpy's own types. A name with a newline cannot be written
    # in a pickle's GLOBAL, so these are never callable from a file.
    for t in (_DtypeState, _ArrayState):
        allowed.append((t, f"numpy\n(build only).{t.__name__}"))
    return allowed


_ALLOWED = None


def safe_load(path: str):
    """torch.load restricted to tensors, plain containers and plain numpy arrays / scalars; a file
    that would call anything else while loading is refused without calling it."""
    global _ALLOWED
    if _ALLOWED is None:
        _ALLOWED = _numpy_allow_list()
    try:
        with torch.serialization.safe_globals(_ALLOWED):
            obj = _unwrap(torch.load(path, map_location="cpu", weights_only=True))
    except pickle.UnpicklingError as e:
        msg = str(e)
        m = re.search(r"GLOBAL ([\w.]+)", msg) or re.search(r"[Uu]nsupported global: (?:GLOBAL )?([\w.]+)", msg)
        if m:
            raise LabelImportError(f"{path}: refused: loading it would call {m.group(1)} (a pickled object that runs "
                                   "code when loaded); only tensors, plain containers and numeric numpy arrays / "
                                   "scalars are read, and nothing in the file was run") from None
        refused = re.search(r"refused numpy[^\n]*", msg)
        if refused:
            raise LabelImportError(f"{path}: refused: {refused.group(0)}") from None
        line = next((ln.strip() for ln in msg.splitlines() if ln.strip() and "Weights only load failed" not in ln
                     and "weights_only" not in ln), "")
        raise LabelImportError(f"{path}: not a readable torch file (corrupt pickle: {line[:200] or 'unreadable'})"
                               ) from None
    except Exception as e:  # truncated zip, garbage bytes, bad storage records, ...
        first = str(e).splitlines()[0][:200] if str(e) else ""
        raise LabelImportError(f"{path}: not a readable torch file ({e.__class__.__name__}: {first})") from None
    _check_extents(obj, path)
    return obj


# ---------------------------------------------------------------------------------------- field checks
def _tensor(x, path: str, what: str) -> torch.Tensor:
    if torch.is_tensor(x):
        return x
    if isinstance(x, (np.ndarray, np.generic, list, tuple, int, float, bool)):
        try:
            a = np.asarray(x)
            if a.dtype.kind in "biufc":
                return torch.as_tensor(a)
        except (TypeError, ValueError):
            pass
    raise LabelImportError(f"{path}: {what} must be a tensor or numeric array, got {type(x).__name__}")


def _check_probs(p: torch.Tensor, path: str, full_rows: bool) -> None:
    if torch.isnan(p).any():
        raise LabelImportError(f"{path}: soft labels contain NaN")
    if (p < 0).any():
        hint = "; are these logits? (SRe2L / LPLD files hold logits)" if full_rows else ""
        raise LabelImportError(f"{path}: soft labels contain negative probabilities{hint}")
    if not torch.isfinite(p).all() or (p > 1).any():
        raise LabelImportError(f"{path}: soft labels above 1 or infinite; are these logits?")
    sums = p.double().sum(-1)
    if full_rows and ((sums - 1).abs() > 0.02).any():
        raise LabelImportError(f"{path}: probability rows must sum to 1 (found {float(sums.min()):.4f}.."
                               f"{float(sums.max()):.4f}); are these logits?")
    if not full_rows and (sums > 1.02).any():
        raise LabelImportError(f"{path}: top-k probabilities sum to more than 1 ({float(sums.max()):.4f})")


def _boxes(coords: torch.Tensor, path: str) -> torch.Tensor:
    c = coords.double()
    if not torch.isfinite(c).all() or (c < -1e-3).any() or (c > 1 + 1e-3).any():
        raise LabelImportError(f"{path}: crop coords must be (y, x, h, w) fractions in [0, 1]")
    c = c.clamp(0, 1)
    # HALD stores coords as float16: y + h may round past the edge by a few 1e-4.
    c[..., 2:] = torch.minimum(c[..., 2:], 1 - c[..., :2])
    if ((c[..., 2] <= 0) | (c[..., 3] <= 0)).any():
        raise LabelImportError(f"{path}: a crop box has zero height or width")
    return quantize_boxes(c)


class _KLMeter:
    """Mean KL(full || stored label) and of a uniform label, over every label an import keeps from
    a source that holds full labels (0 for a lossless import)."""

    def __init__(self, decode: str = "marginal"):
        self.decode, self.kl, self.uniform, self.n = decode, 0.0, 0.0, 0

    def add(self, full: torch.Tensor, ids, values, q: Quantizer) -> None:
        self.kl += float(kl_to_full(full, ids, values, q.codebook(), self.decode).sum())
        self.uniform += float(uniform_kl(full).sum())
        self.n += full.shape[0]

    def stats(self) -> dict:
        if not self.n:
            return {}
        return {"kl_to_teacher": self.kl / self.n, "kl_uniform": self.uniform / self.n}


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _list_files(root: str) -> list:
    if os.path.isfile(root):
        return [root]
    out = []
    for d, _, names in os.walk(root):
        out += [os.path.join(d, n) for n in names if not n.startswith(".")]
    return sorted(out, key=_natural_key)


# ---------------------------------------------------------------------------------------- FKD
def _match_fkd_files(root: str, files: list, images) -> list:
    """FKD names a label file after its image (<class>/<stem>.tar): files in the image set's order."""
    # an image folder's files (ImageFiles) or decoded images that kept their names (ImageSet)
    names = images.relative_names() if hasattr(images, "relative_names") else getattr(images, "names", None)
    if names is None or any(str(n).startswith("array:") for n in names):
        return files
    by_key = {}
    for f in files:
        rel = os.path.splitext(os.path.relpath(f, root) if os.path.isdir(root) else os.path.basename(f))[0]
        by_key[tuple(rel.replace(os.sep, "/").split("/"))] = f
    out = []
    for n in names:
        want = tuple(os.path.splitext(str(n))[0].replace(os.sep, "/").split("/"))
        # FKD cuts the file name at its first dot (`a.b.png` -> `a.tar`): try that name too
        cut = want[:-1] + (os.path.basename(str(n)).split(".")[0],)
        hits, exact = [], []
        for w in dict.fromkeys((want, cut)):
            hits += [f for key, f in by_key.items() if (key[-len(w):] == w or key[-1:] == w[-1:]) and f not in hits]
            exact += [f for key, f in by_key.items() if key[-len(w):] == w and f not in exact]
        hits = exact or hits
        if len(hits) != 1:
            raise LabelImportError(f"{root}: {'no' if not hits else len(hits)} FKD label file(s) for image {n!r} "
                                   "(FKD names each file <class>/<image name>.tar)")
        out.append(hits[0])
    return out


def import_fkd(root: str, out: str, num_classes: int, *, bits: int | None = None, quantizer: str = "fp16",
               temperature: float | None = None, images=None, teacher: dict | None = None,
               crop_size: int | None = None) -> ImportReport:
    """FKD per-image files -> store at `out`. With `images` (an ImageSet with file names) each image
    takes the file named after it; otherwise image i is the i-th file in natural path order.

    FKD's generator writes softmax(logits) (T = 1, the default here, printed) as float32; they are
    stored as float16 by default (the store's most precise values); `quantizer="power"` etc. code
    them in 8 / 16 bits. `crop_size`: its --input-size (224), recorded for `check_store_use`."""
    notes = []
    if temperature is None:
        temperature = 1.0
        notes.append("temperature T = 1: FKD_SLG/generate_soft_label.py writes softmax(logits) (no temperature)")

    files = _list_files(root)
    if not files:
        raise LabelImportError(f"{root}: no files to import")
    if images is not None:
        if len(images) != len(files):
            raise LabelImportError(f"{root}: {len(files)} FKD files but the image set has {len(images)} images")
        files = _match_fkd_files(root, files, images)
    q = Quantizer(quantizer, bits)
    boxes, flips, ids, codes = [], [], [], []
    shape = None
    for path in files:
        obj = safe_load(path)
        if not isinstance(obj, (list, tuple)) or len(obj) != 3:
            raise LabelImportError(f"{path}: an FKD file holds [coords, flip, labels], got {type(obj).__name__}"
                                   f"{' of length ' + str(len(obj)) if isinstance(obj, (list, tuple)) else ''}")
        coords, flip, lab = (_tensor(x, path, w) for x, w in zip(obj, ("coords", "flip", "labels")))
        if lab.dim() != 3 or lab.shape[1] != 2 or coords.shape != (lab.shape[0], 4) or flip.shape != (lab.shape[0],):
            raise LabelImportError(f"{path}: expected coords [N, 4], flip [N], labels [N, 2, k] (FKD's marginal_* "
                                   f"label types); got {list(coords.shape)}, {list(flip.shape)}, {list(lab.shape)}")
        if shape is None:
            shape = tuple(lab.shape)
        elif tuple(lab.shape) != shape:
            raise LabelImportError(f"{path}: labels {list(lab.shape)} differ from the first file's {list(shape)}")
        if lab.dtype == torch.float16 and num_classes > 2049:
            # FKD stacks the ids with the probabilities: a half-precision teacher writes both as float16,
            # which holds whole numbers exactly only up to 2048 (2049 -> 2048, 2051 -> 2052)
            raise LabelImportError(f"{path}: labels are float16, so class ids above 2048 were rounded when written "
                                   f"(C = {num_classes}); relabel with a float32 teacher output")
        raw_ids, p = lab[:, 0].double(), lab[:, 1].double()
        if not torch.isfinite(raw_ids).all() or (raw_ids != raw_ids.round()).any():
            raise LabelImportError(f"{path}: class ids must be whole numbers")
        if (raw_ids < 0).any() or (raw_ids >= num_classes).any():
            bad = raw_ids.max() if raw_ids.max() >= num_classes else raw_ids.min()
            raise LabelImportError(f"{path}: class id {int(bad)} is out of range for C = {num_classes}")
        if lab.shape[2] > 1 and (raw_ids.sort(1).values.diff(dim=1) == 0).any():
            raise LabelImportError(f"{path}: a label lists the same class id twice")
        _check_probs(p, path, full_rows=False)
        order = torch.sort(-p, dim=1, stable=True).indices  # the store keeps decreasing probability
        p, raw_ids = p.gather(1, order), raw_ids.gather(1, order)
        boxes.append(_boxes(coords, path))
        flips.append(flip.bool())
        ids.append(raw_ids.long())
        codes.append(q.encode(p))
    n_slots, k = shape[0], shape[2]
    if k > num_classes:
        raise LabelImportError(f"{root}: k = {k} exceeds C = {num_classes}")
    header = Header(num_images=len(files), sli=n_slots, num_classes=num_classes, k=k,
                    temperature=float(temperature), quantizer=q, teacher=teacher or {},
                    images=fingerprint(images) if images is not None else None,
                    crops={"rule": "imported from FKD", "crop_size": crop_size}, source="import-fkd")
    ids_t = torch.stack(ids).to(torch.int32)
    if k == num_classes:  # full width: values into class order
        codes = [torch.zeros_like(c).scatter_(1, i, c) for c, i in zip(codes, ids)]
        ids_t = None
    elif num_classes <= 65535:
        ids_t = ids_t.to(torch.uint16)
    store = LabelStore.create(out, header, torch.stack(boxes), torch.stack(flips), ids_t, torch.stack(codes))
    return ImportReport(store, len(files), sum(os.path.getsize(f) for f in files), store.nbytes, notes)


# ---------------------------------------------------------------------------------------- SRe2L / LPLD / LPQLD / HALD
FLAVORS = ("sre2l", "lpld", "lpqld", "hald")
# The temperature each flavor's published training recipe uses: SRe2L's README (train_FKD.py -T 20), LPLD's
# cfg/reproduce/*.yaml (validate: temperature: 20), train_FKD_LPQLD.py's default (-T 20.0), HALD's
# relabel_slc.py / train_fkd.py (softmax(output / 20)).
RECIPE_TEMPERATURE = {"sre2l": 20.0, "lpld": 20.0, "lpqld": 20.0, "hald": 20.0}
# LPQLD's --label_quantization rules (train_FKD_LPQLD.py) -> the store's decode of what the import stores:
#   MR-k  softmax(top-k logits / T), zero elsewhere       -> those probabilities, "renorm"
#   MS-k  the stored values (post-softmax), zero elsewhere -> the values as stored, "truncate"
#   MRS-k softmax over all C with every other logit = the row's minimum logit (sample_min)
#         -> the top-k probabilities of that softmax, "marginal" (the rest spread evenly: exactly the
#            min-logit classes' equal share)
LPQLD_DECODES = {"MR": "renorm", "MS": "truncate", "MRS": "marginal"}
LPQLD_SAMPLER = "sampler_indices_batch.json"


def resolve_temperature(flavor: str, values: str, temperature, where: str = "") -> tuple[float, str | None]:
    """(T, a note to print) for an import. Files holding logits (SRe2L, LPLD, LPQLD) need T stated,
    or "recipe" for the flavor's published recipe default; HALD files hold softmax(logits / 20)."""
    if isinstance(temperature, str):
        if temperature != "recipe":
            raise ValueError(f"temperature must be a number or 'recipe', got {temperature!r}")
        T = RECIPE_TEMPERATURE[flavor]
        return T, (f"temperature T = {T:g}: the {flavor} recipe's default (the labels are stored as "
                   f"softmax(logits / {T:g}); give -T to use another)")
    if temperature is None:
        if values == "logits" or flavor == "lpqld":
            raise LabelImportError(
                f"{where + ': ' if where else ''}{flavor} files hold the teacher's logits, and the store keeps "
                f"softmax(logits / T): give the "
                f"temperature the student will train at (-T / temperature=; the published {flavor} recipe "
                f"trains at T = {RECIPE_TEMPERATURE[flavor]:g}: --recipe-temperature / temperature='recipe' uses it)")
        T = RECIPE_TEMPERATURE[flavor]
        return T, f"temperature T = {T:g}: HALD's relabel_slc.py writes softmax(logits / {T:g})"
    T = float(temperature)
    if not (T > 0 and np.isfinite(T)):
        raise ValueError(f"temperature must be finite and > 0, got {temperature!r}")
    return T, None


def _epoch_number(path: str, position: int) -> int:
    m = re.search(r"epoch_(\d+)", os.path.basename(path.rstrip(os.sep)))
    return int(m.group(1)) if m else position


def _read_epochs(root: str) -> tuple[list, list]:
    """([(epoch number, batches)], input files), `batches()` yielding (where, batch item) and loading
    one file at a time. HALD: epoch_<e>.tar files, each a list over batches; SRe2L / LPLD:
    epoch_<e>/ folders of batch_<b>.tar (or files directly in root)."""
    if not os.path.isdir(root):
        raise LabelImportError(f"{root}: not a directory of label epochs")
    names = sorted(os.listdir(root), key=_natural_key)
    epoch_files = [n for n in names if re.fullmatch(r"epoch_\d+\.tar", n)]
    epochs, files = [], []
    if epoch_files:  # HALD
        for n in epoch_files:
            path = os.path.join(root, n)
            files.append(path)
            epochs.append((_epoch_number(n, len(epochs)), lambda path=path: _hald_batches(path)))
        return epochs, files
    dirs = [os.path.join(root, n) for n in names if os.path.isdir(os.path.join(root, n))]
    for pos, d in enumerate(dirs or [root]):
        batch_files = [f for f in _list_files(d) if os.path.basename(f) not in SAMPLER_FILES + (LPQLD_SAMPLER,)]
        if not batch_files:
            continue
        files += batch_files
        epochs.append((_epoch_number(d, pos) if dirs else 0,
                       lambda batch_files=batch_files: ((f, safe_load(f)) for f in batch_files)))
    if not epochs:
        raise LabelImportError(f"{root}: no batch files to import (expected epoch_<e>/batch_<b>.tar or epoch_<e>.tar)")
    return epochs, files


def _read_lpqld(root: str) -> tuple[list, list, list]:
    """LPQLD's flat layout: batch_<n>.tar (n counting over all label epochs) and sampler_indices_batch.json
    {n: image ids of batch n}. Batches are grouped into label epochs in order, a new epoch starting at
    the first batch that labels an image the current one already labels (each epoch draws a permutation).
    Returns ([(epoch, batches)], files, [image ids of each epoch's rows])."""
    path = os.path.join(root, LPQLD_SAMPLER)
    if not os.path.isfile(path):
        raise LabelImportError(f"{root}: no {LPQLD_SAMPLER} (LPQLD writes which images each batch labels there; "
                               "without it the rows cannot be matched to images)")
    try:
        with open(path) as f:
            table = json.load(f)
        table = {int(k): [int(i) for i in v] for k, v in table.items()}
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise LabelImportError(f"{path}: not a readable map of batch number -> image ids ({e.__class__.__name__})"
                               ) from None
    files = {}
    for n in os.listdir(root):
        m = re.fullmatch(r"batch_(\d+)\.tar", n)
        if m:
            files[int(m.group(1))] = os.path.join(root, n)
    if not files:
        raise LabelImportError(f"{root}: no batch_<n>.tar files")
    missing = sorted(set(files) - set(table))
    if missing:
        raise LabelImportError(f"{path}: no image ids for batch file(s) {missing[:5]}")
    groups, seen = [], set()
    for b in sorted(files):
        ids = table[b]
        if not groups or seen.intersection(ids):
            groups.append([])
            seen = set()
        groups[-1].append(b)
        seen.update(ids)
    epochs = [(e, lambda bs=bs: ((files[b], safe_load(files[b])) for b in bs)) for e, bs in enumerate(groups)]
    orders = [torch.tensor([i for b in bs for i in table[b]], dtype=torch.long) for bs in groups]
    return epochs, [files[b] for b in sorted(files)], orders


def _hald_batches(path: str):
    obj = safe_load(path)
    if not isinstance(obj, list) or not obj or not all(isinstance(b, (list, tuple)) for b in obj):
        raise LabelImportError(f"{path}: a HALD epoch file holds a list over batches of [coords, flip, "
                               f"mix_index, mix_lambda, mix_bbox, soft_labels], got {type(obj).__name__}")
    return [(f"{path} (batch {b})", item) for b, item in enumerate(obj)]


def read_epoch_count(root: str) -> int:
    """How many label epochs `root` holds (epoch_<e>.tar files or epoch_<e>/ folders), without loading them."""
    if not os.path.isdir(root):
        raise LabelImportError(f"{root}: not a directory of label epochs")
    return sum(1 for n in os.listdir(root) if re.fullmatch(r"epoch_\d+(\.tar)?", n))


def read_sampler(path: str) -> dict:
    """{epoch: [image ids in the order the relabel drew them]} from HALD's sampler_indices_dict.pt
    or LPLD's sampler_indices_epoch.json."""
    if path.endswith(".json"):
        try:
            with open(path) as f:
                obj = json.load(f)
        except (OSError, ValueError, UnicodeDecodeError) as e:
            raise LabelImportError(f"{path}: not a readable JSON sampler file ({e.__class__.__name__})") from None
    else:
        obj = safe_load(path)
    if not isinstance(obj, dict):
        raise LabelImportError(f"{path}: a sampler file maps each epoch to its image ids, got {type(obj).__name__}")
    out = {}
    for key, v in obj.items():
        try:
            e = int(key)
            ids = _tensor(v, path, f"epoch {key!r}'s image ids").reshape(-1)
            if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
                raise ValueError
        except (ValueError, TypeError, LabelImportError):
            raise LabelImportError(f"{path}: sampler entry {key!r} must map an epoch number to integer image ids") from None
        out[e] = ids.long()
    return out


def sre2l_order(num_images: int, epochs: int, seed: int = 42) -> torch.Tensor:
    """[epochs, N]: the images of each label epoch in the order SRe2L's relabel (and LPLD's) drew
    them: one torch RandomSampler with a generator seeded `--fkd-seed` (42), iterated once per epoch.
    Reproduces the file only under a torch whose RandomSampler draws like the writer's did."""
    g = torch.Generator()
    g.manual_seed(seed)
    sampler = torch.utils.data.RandomSampler(range(num_images), generator=g)
    return torch.tensor([list(sampler) for _ in range(epochs)], dtype=torch.long)


@dataclasses.dataclass
class _Batch:
    coords: torch.Tensor
    flip: torch.Tensor
    ids: torch.Tensor | None  # [B, k] for top-k files (LPQLD), None for C-wide ones
    probs: torch.Tensor  # [B, C] or [B, k] probabilities
    mix: tuple
    box_max: float | None  # the largest CutMix box corner (pixels), None without a box


def import_batches(root: str, out: str, num_classes: int, *, values: str | None = None, temperature=None,
                   k: int | None = None, bits: int | None = None, quantizer: str = "fp16",
                   crop_size: int | None = None, order=None, sampler: str | None = None, images=None,
                   teacher: dict | None = None, flavor: str = "sre2l", file_order: bool = False,
                   fill_missing: str | None = None, lpqld_decode: str | None = None,
                   order_name: str = "--order") -> ImportReport:
    """SRe2L / LPLD / LPQLD / HALD label epochs -> store (slot e = label epoch e). Exact or refused:

    - temperature: required where the files hold logits (SRe2L, LPLD, LPQLD): the store keeps
      softmax(logits / T); "recipe" takes the flavor's published recipe default (RECIPE_TEMPERATURE,
      printed in the report's notes). HALD files hold softmax(logits / 20) (the default there).
    - crop_size: the writer's --input-size, which the CutMix boxes are pixels of; required when the
      files hold CutMix records, and refused when the boxes cannot come from crops of that size (all
      corners within half of it) or when the images are far smaller.
    - which image each row labels: `order` ([E, N] or [N] image ids of the rows, in file order), else
      the sampler file (`sampler`, or sampler_indices_dict.pt / sampler_indices_epoch.json /
      sampler_indices_batch.json in `root`); `order_name` is how errors name where `order` came from.
      Without either, CutMix files are refused (their partners
      would point at the wrong images) unless `file_order=True`; other files warn (ImportOrderWarning).
    - epochs that label only some images (LPLD / LPQLD with --prune_ratio > 0 drop each epoch's last
      batch) are refused unless `fill_missing="repeat"`: each missing (image, epoch) gets a copy of the
      same image's label from the nearest epoch that has one (counted in Header.stats; a copied
      CutMix label pastes its partner's crop of the copy's own slot). A last epoch with fewer rows
      than the others (the writer stopped mid-epoch) is left out, with a warning.
    - LPQLD (top-k logits, int16 class ids): `lpqld_decode` is the training rule the labels are for
      (MR, MS or MRS, LPQLD_DECODES); the store keeps the top-k probabilities that rule yields and
      its decode.

    `k` = C (the default) keeps every class; with the fp16 quantizer (the default) a HALD file's
    float16 probabilities are stored bit for bit. When the store keeps less than the full label,
    Header.stats records the mean KL it loses (and a uniform label's, for comparison)."""

    if flavor not in FLAVORS:
        raise ValueError(f"flavor must be one of {FLAVORS}, got {flavor!r}")
    values = values or ("probs" if flavor == "hald" else "logits")
    if values not in ("logits", "probs"):
        raise ValueError(f"values must be 'logits' or 'probs', got {values!r}")
    if fill_missing not in (None, "repeat"):
        raise ValueError(f"fill_missing must be None or 'repeat', got {fill_missing!r}")
    notes = []
    lpqld = flavor == "lpqld"
    if lpqld:
        if lpqld_decode not in LPQLD_DECODES:
            raise LabelImportError(f"{root}: LPQLD files need the decode rule the labels are trained with "
                                   f"(train_FKD_LPQLD.py "
                                   f"--label_quantization MR-k / MS-k / MRS-k): lpqld_decode must be one of "
                                   f"{tuple(LPQLD_DECODES)} (MR is LPQLD's recommended rule), got {lpqld_decode!r}")
        if k is not None:
            raise ValueError("k: an LPQLD import keeps the files' own top-k")
        if order is not None or sampler is not None:
            raise ValueError(f"{order_name} / sampler: an LPQLD import reads which images each batch labels from "
                             f"{LPQLD_SAMPLER}")
    T, note = resolve_temperature(flavor, "probs" if lpqld and lpqld_decode == "MS" else values, temperature, root)
    if note:
        notes.append(note)
    k = num_classes if k is None else k
    if not 1 <= k <= num_classes:
        raise ValueError(f"k must be in [1, C = {num_classes}], got {k}")
    if crop_size is not None and crop_size < 1:
        raise ValueError(f"crop_size must be >= 1, got {crop_size}")
    q = Quantizer(quantizer, bits)
    if lpqld:
        epochs, all_files, lpqld_orders = _read_lpqld(root)
    else:
        epochs, all_files = _read_epochs(root)
        lpqld_orders = None
    meter = _KLMeter()
    per_epoch, box_max, n_boxes, file_k = [], 0.0, 0, None
    for _, batches in epochs:
        rows = {"boxes": [], "flips": [], "ids": [], "codes": [], "partner": [], "mix_boxes": [], "lam": []}
        for where, obj in batches():
            b = _lpqld_fields(where, obj, num_classes, crop_size, lpqld_decode, T) if lpqld else \
                _batch_fields(where, obj, num_classes, values, crop_size, T)
            if b.ids is not None:  # a stored top-k: its own k, by decreasing probability
                file_k = file_k or b.ids.shape[1]
                if b.ids.shape[1] != file_k:
                    raise LabelImportError(f"{where}: top-{b.ids.shape[1]} labels, the first file has top-{file_k}")
                srt = torch.sort(-b.probs, dim=1, stable=True).indices
                bi = b.ids.gather(1, srt).to(torch.int32)
                bi = bi.to(torch.uint16) if num_classes <= 65535 else bi
                bc = q.encode(b.probs.gather(1, srt))
            else:
                p = b.probs
                bi, bc = encode_rows(p if q.is_float and k == num_classes else p.double(), k, q)
                meter.add(p, bi, bc, q)
            if b.box_max is not None:
                box_max, n_boxes = max(box_max, b.box_max), n_boxes + 1
            rows["boxes"].append(_boxes(b.coords, where))
            rows["flips"].append(b.flip.bool())
            rows["ids"].append(bi)
            rows["codes"].append(bc)
            partner, mbox, mlam = b.mix
            offset = sum(len(r) for r in rows["partner"])  # batch rows -> rows of the epoch
            rows["partner"].append(torch.where(partner >= 0, partner + offset, partner))
            rows["mix_boxes"].append(mbox)
            rows["lam"].append(mlam)
        per_epoch.append({key: (torch.cat(v) if v[0] is not None else None) for key, v in rows.items()})
    if lpqld:
        k = file_k
    _check_crop_size(root, crop_size, box_max, n_boxes, images)
    has_mix = any(bool((e["partner"] >= 0).any()) for e in per_epoch)
    row_images, per_epoch, n = _row_order(root, epochs, per_epoch, order, sampler, images, lpqld_orders,
                                          file_order, has_mix, order_name)
    out_t, fills = _assemble(root, per_epoch, row_images, n, fill_missing)
    stats = meter.stats()
    if fills[0]:
        stats.update(filled_labels=fills[0], filled_mixed_labels=fills[1])
        notes.append(f"{fills[0]} missing (image, epoch) labels filled with a copy of the image's label from the "
                     f"nearest epoch ({fills[1]} of them CutMix-ed: they paste the partner's crop of their own slot)")
    crops = {"rule": f"imported from {flavor}", "crop_size": crop_size}
    if lpqld:
        crops["lpqld_decode"] = lpqld_decode
    header = Header(num_images=n, sli=len(per_epoch), num_classes=num_classes, k=k, temperature=T, quantizer=q,
                    default_decode=LPQLD_DECODES[lpqld_decode] if lpqld else "marginal", teacher=teacher or {},
                    images=fingerprint(images) if images is not None else None, crops=crops,
                    mix=bool((out_t["partner"] >= 0).any()), source=f"import-{flavor}", stats=stats)
    mix = MixRecord(out_t["partner"].to(torch.int32), out_t["mix_boxes"], out_t["lam"]) if header.mix else None
    ids = out_t["ids"] if not header.full_width else None
    store = LabelStore.create(out, header, out_t["boxes"], out_t["flips"], ids, out_t["codes"], mix=mix)
    return ImportReport(store, len(all_files), sum(os.path.getsize(f) for f in all_files), store.nbytes, notes)


def _check_crop_size(root: str, crop_size, box_max: float, n_boxes: int, images) -> None:
    """CutMix boxes are pixels of the writer's crop (rand_bbox clips them to [0, input_size]): over a
    few boxes the largest corner comes close to the crop size (all corners of n boxes stay within its
    first half with probability about 24^-n)."""
    if n_boxes >= 3 and 2 * box_max <= crop_size:
        raise LabelImportError(f"{root}: the {n_boxes} CutMix boxes reach at most {box_max:g} px, so they were "
                               f"drawn in "
                               f"crops of about {box_max:g} px, not --crop-size {crop_size} (give the writer's "
                               "--input-size)")
    if images is not None and crop_size is not None and len(images):
        sizes = {tuple(hw) for hw in image_sizes(images).tolist()}
        if len(sizes) == 1:
            (h, w), = sizes
            if crop_size > 2 * max(h, w):
                raise LabelImportError(f"{root}: --crop-size {crop_size} but the images are {h}x{w} px: crops of "
                                       f"{crop_size} px would enlarge them {crop_size / max(h, w):.1f}x; give the "
                                       "writer's --input-size (the size its crops were resized to)")


def _batch_fields(where: str, obj, num_classes: int, values: str, crop_size, T: float) -> _Batch:
    if not isinstance(obj, (list, tuple)) or len(obj) != 6:
        hint = ("; 7 or 8 items are LPQLD's layout (top-k logits + class ids): --flavor lpqld"
                if isinstance(obj, (list, tuple)) and len(obj) in (7, 8) else "")
        raise LabelImportError(f"{where}: a batch holds [coords, flip, mix_index, mix_lambda, mix_bbox, "
                               f"soft_labels], got {type(obj).__name__}"
                               f"{' of length ' + str(len(obj)) if isinstance(obj, (list, tuple)) else ''}{hint}")
    coords, flip, mix_index, lam, bbox, soft = obj
    soft = _tensor(soft, where, "soft labels")
    coords, flip = _coords_flip(where, coords, flip, soft.shape[0] if soft.dim() else 0)
    if soft.dim() != 2 or soft.shape[1] != num_classes:
        raise LabelImportError(f"{where}: soft labels must be [B, C = {num_classes}], got {list(soft.shape)}")
    if not soft.is_floating_point():
        raise LabelImportError(f"{where}: soft labels must be floating point, got {soft.dtype}")
    if values == "probs":
        _check_probs(soft.float(), where, full_rows=True)
        p = soft
    else:
        if not torch.isfinite(soft).all():
            raise LabelImportError(f"{where}: logits contain NaN or inf")
        p = torch.softmax(soft.float() / T, 1)
    mix, box_max = _mix_rows(where, mix_index, lam, bbox, soft.shape[0], crop_size)
    return _Batch(coords, flip, None, p, mix, box_max)


def _coords_flip(where: str, coords, flip, B: int):
    coords, flip = _tensor(coords, where, "coords"), _tensor(flip, where, "flip")
    if B == 0 or coords.shape != (B, 4) or flip.shape != (B,):
        extra = ("; a [B, 7] second item is ImageNet-21K's Cutout record, which a store cannot replay"
                 if flip.dim() == 2 else "")
        raise LabelImportError(f"{where}: coords {list(coords.shape)} / flip {list(flip.shape)} do not match "
                               f"{B} labels{extra}")
    return coords, flip


def _lpqld_fields(where: str, obj, num_classes: int, crop_size, rule: str, T: float) -> _Batch:
    """generate_soft_label_pruning_batch.py: [coords fp16, flip, mix_index uint8 | None, mix_lam | None,
    mix_bbox (4 uint8 tensors) | None, top-k logits (fp16 with --use-fp16), class ids int16], plus the
    row minimum logit [B, 1] (sample_min) for the MRS rule."""
    if not isinstance(obj, (list, tuple)) or len(obj) not in (7, 8):
        raise LabelImportError(f"{where}: an LPQLD batch holds [coords, flip, mix_index, mix_lambda, mix_bbox, "
                               f"top-k logits, class ids(, sample_min)], got {type(obj).__name__}"
                               f"{' of length ' + str(len(obj)) if isinstance(obj, (list, tuple)) else ''}")
    if isinstance(obj[2], (list, tuple)):
        raise LabelImportError(f"{where}: the batch carries RandAugment parameters (--use_rand_aug), which a label "
                               "store cannot replay")
    coords, flip, mix_index, lam, bbox, z, ids = obj[:7]
    sample_min = obj[7] if len(obj) == 8 else None
    z, ids = _tensor(z, where, "top-k logits"), _tensor(ids, where, "class ids")
    if z.dim() != 2 or ids.shape != z.shape or z.shape[1] > num_classes:
        raise LabelImportError(f"{where}: top-k logits {list(z.shape)} and class ids {list(ids.shape)} must both be "
                               f"[B, k] with k <= C = {num_classes}")
    coords, flip = _coords_flip(where, coords, flip, z.shape[0])
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise LabelImportError(f"{where}: class ids must be integers, got {ids.dtype}")
    ids = ids.long()
    if (ids < 0).any() or (ids >= num_classes).any():
        raise LabelImportError(f"{where}: a class id is out of range for C = {num_classes} (LPQLD writes them as "
                               "int16: C must be below 32768)")
    if ids.shape[1] > 1 and (ids.sort(1).values.diff(dim=1) == 0).any():
        raise LabelImportError(f"{where}: a label lists the same class id twice")
    if not z.is_floating_point() or not torch.isfinite(z).all():
        raise LabelImportError(f"{where}: top-k values must be finite floating-point numbers")
    zz = z.double()
    if rule == "MS":  # the values are read as probabilities (train_FKD_LPQLD.py scatters them as they are)
        if (zz < 0).any() or (zz.sum(1) > 1.02).any():
            raise LabelImportError(f"{where}: the MS rule reads the stored values as probabilities, but these are not "
                                   "(negative, or rows summing above 1): they are logits, as the published "
                                   "generator writes them; import with lpqld_decode MR or MRS")
        p = z
    elif rule == "MR":
        p = torch.softmax(zz / T, 1)
    else:
        if sample_min is None:
            raise LabelImportError(f"{where}: the MRS rule fills every other class with the row's minimum logit "
                                   "(sample_min), and this file does not hold it (7 items; the published generator "
                                   "computes sample_min but does not save it): use MR, or files with sample_min")
        m = _tensor(sample_min, where, "sample_min").double().reshape(-1)
        if m.shape != (z.shape[0],) or not torch.isfinite(m).all():
            raise LabelImportError(f"{where}: sample_min must hold one finite number per row")
        rest = num_classes - z.shape[1]
        # softmax over [top-k logits, (C - k) copies of the minimum], kept for the top-k
        log_z = torch.logsumexp(torch.cat([zz / T, (m / T + np.log(rest))[:, None]], 1) if rest else zz / T, 1)
        p = torch.exp(zz / T - log_z[:, None])
    if isinstance(bbox, (list, tuple)) and bbox and all(torch.is_tensor(v) for v in bbox):
        if any(v.dtype == torch.uint8 for v in bbox) and crop_size is not None and crop_size > 255:
            raise LabelImportError(f"{where}: LPQLD writes CutMix boxes as uint8, so corners above 255 wrapped "
                                   f"around: boxes in {crop_size}-px crops cannot be recovered")
        bbox = [int(v) for v in bbox]
    mix, box_max = _mix_rows(where, mix_index, lam, bbox, z.shape[0], crop_size)
    return _Batch(coords, flip, ids, p, mix, box_max)


def _row_order(root: str, epochs: list, per_epoch: list, order, sampler: str | None, images, lpqld_orders,
               file_order: bool, has_mix: bool, order_name: str = "--order"):
    """([image id of each row] per kept epoch, the epochs kept, N). A last epoch with fewer rows than
    the others (the writer stopped after its last step) is left out."""
    rows = [e["boxes"].shape[0] for e in per_epoch]
    numbers = [num for num, _ in epochs]
    if lpqld_orders is not None:
        order, source = lpqld_orders, LPQLD_SAMPLER
    elif order is not None:
        order = torch.as_tensor(np.asarray(order)).long()
        order = order.expand(len(per_epoch), -1) if order.dim() == 1 else order
        if order.dim() != 2 or order.shape[0] != len(per_epoch):
            raise LabelImportError(f"{root}: {order_name} gives {order.shape[0] if order.dim() == 2 else 'no'} image "
                                   f"order(s) for {len(per_epoch)} label epoch(s): give one order for all epochs "
                                   "(1-D) or one row per epoch (2-D)")
        order, source = list(order), order_name
    else:
        path = sampler or next((os.path.join(root, f) for f in SAMPLER_FILES if os.path.isfile(os.path.join(root, f))),
                               None)
        if path is not None:
            table = read_sampler(path)
            missing = [num for num in numbers if num not in table]
            if missing:
                raise LabelImportError(f"{path}: no image order for label epoch(s) {missing[:5]}")
            order, source = [table[num] for num in numbers], path
        else:
            n = len(images) if images is not None else max(rows)
            msg = (f"{root}: no sampler file ({' / '.join(SAMPLER_FILES)}) and no --order: row r of every label epoch "
                   "would be taken to label image r (file order). SRe2L / LPLD shuffle images with a seeded sampler "
                   "(pass --order, or --sampler-seed 42 to rebuild SRe2L's)")
            if has_mix and not file_order:
                raise LabelImportError(msg + "; with CutMix records that would also pair each crop with the wrong "
                                       "partner, so the import is refused (--file-order imports by file order anyway)")
            warnings.warn(msg, ImportOrderWarning, stacklevel=3)
            order, source = [torch.arange(n)] * len(per_epoch), "file order"
    order = [torch.as_tensor(o).long().reshape(-1) for o in order]
    if images is not None:
        n = len(images)
    else:
        n = max(int(o.max()) + 1 if o.numel() else 0 for o in order)
    keep = []
    full = max(rows)
    for e, (o, r) in enumerate(zip(order, rows)):
        if r < full and e == len(rows) - 1 and e > 0:  # LPLD / LPQLD stop mid-epoch after their last step
            warnings.warn(f"{root}: label epoch {numbers[e]} holds {r} rows, the others {full} (an unfinished last "
                          "epoch); it is left out", ImportOrderWarning, stacklevel=3)
            continue
        if o.numel() != r:
            raise LabelImportError(f"{root}: label epoch {numbers[e]} holds {r} rows and its order ({source}) lists "
                                   f"{o.numel()} images")
        if r and (int(o.min()) < 0 or int(o.max()) >= n):
            raise LabelImportError(f"{root}: the image order of label epoch {numbers[e]} ({source}) names image "
                                   f"{int(o.max()) if int(o.max()) >= n else int(o.min())}, outside the {n} images")
        if o.unique().numel() != r:
            raise LabelImportError(f"{root}: the image order of label epoch {numbers[e]} ({source}) is not a "
                                   f"permutation: it lists an image twice")
        keep.append(e)
    return [order[e] for e in keep], [per_epoch[e] for e in keep], n


def _assemble(root: str, per_epoch: list, row_images: list, n: int, fill_missing):
    """Per-epoch rows -> [N, E, ...] tensors in image order, filling (image, epoch) pairs that no row
    labels when asked to. Returns (tensors, (fills, CutMix-ed fills))."""
    E = len(per_epoch)
    row_of = torch.full((n, E), -1, dtype=torch.long)
    for e, img in enumerate(row_images):
        row_of[img, e] = torch.arange(img.numel())
    present = row_of >= 0
    fills = mixed_fills = 0
    src_epoch = torch.arange(E).expand(n, E).clone()
    if not present.all():
        counts = present.sum(0)
        worst = int(counts.argmin())
        if fill_missing != "repeat":
            raise LabelImportError(
                f"{root}: label epoch {worst} labels {int(counts[worst])} of {n} images (LPLD / LPQLD with "
                "--prune_ratio > 0 drop each epoch's last batch): a store holds a label for every (image, slot). "
                f"{int((~present).sum())} are missing; --fill-missing repeat (fill_missing='repeat') gives each a "
                "copy of the same image's label from the nearest epoch that has one")
        never = (~present).all(1)
        if never.any():
            raise LabelImportError(f"{root}: image {int(never.nonzero()[0])} of {n} has no label in any kept epoch "
                                   f"({int(never.sum())} such images), so there is no label of its own to repeat")
        idx = torch.arange(E).expand(n, E)
        prev = torch.where(present, idx, torch.full_like(idx, -1)).cummax(1).values
        nxt = torch.where(present, idx, torch.full_like(idx, E)).flip(1).cummin(1).values.flip(1)
        use_prev = (prev >= 0) & ((nxt >= E) | (idx - prev <= nxt - idx))
        src_epoch = torch.where(present, idx, torch.where(use_prev, prev, nxt))
        fills = int((~present).sum())
    offsets = torch.tensor([0] + [img.numel() for img in row_images]).cumsum(0)
    rows_all = row_of.gather(1, src_epoch)
    global_row = offsets[src_epoch] + rows_all
    out = {}
    for key in per_epoch[0]:
        if per_epoch[0][key] is None:
            out[key] = None
            continue
        if key == "partner":  # rows of the epoch -> image ids
            cat = torch.cat([torch.where(e["partner"] >= 0, img[e["partner"].clamp_min(0)], e["partner"])
                             for e, img in zip(per_epoch, row_images)])
        else:
            cat = torch.cat([e[key] for e in per_epoch])
        out[key] = cat[global_row]
    if fills:
        mixed_fills = int(((out["partner"] >= 0) & ~present).sum())
    return out, (fills, mixed_fills)


def _mix_rows(path, mix_index, lam, bbox, B: int, crop_size):
    """(per-row (partner row in the batch or -1, pasted box uint16 (y, x, h, w), own-crop weight), the
    box's largest corner in pixels or None)."""
    none = (torch.full((B,), -1, dtype=torch.long), torch.zeros(B, 4, dtype=torch.uint16), torch.ones(B))
    if mix_index is None and lam is None and bbox is None:
        return none, None
    if mix_index is not None and lam is not None and bbox is None:
        raise LabelImportError(f"{path}: a mixup record (mix_index and mix_lambda without a box): a blended crop "
                               "cannot be replayed from a store, which keeps CutMix boxes only")
    if mix_index is None or lam is None or bbox is None:
        raise LabelImportError(f"{path}: mix_index, mix_lambda and mix_bbox must all be given or all be None")
    idx = _tensor(mix_index, path, "mix_index")
    lam_t = _tensor(lam, path, "mix_lambda")
    box = _tensor(bbox, path, "mix_bbox").double().reshape(-1)
    if idx.is_floating_point() or idx.shape != (B,) or box.shape != (4,) or lam_t.numel() != 1:
        raise LabelImportError(f"{path}: mix_index must be [B] integers, mix_lambda one number and mix_bbox 4 numbers")
    idx = idx.long()
    lam_v = float(lam_t.double().reshape(-1)[0])
    if (idx < 0).any() or (idx >= B).any():
        raise LabelImportError(f"{path}: mix_index points outside the batch")
    if not (0 <= lam_v <= 1):
        raise LabelImportError(f"{path}: mix_lambda {lam_v} is not in [0, 1]")
    if crop_size is None:
        raise LabelImportError(f"{path}: the batch holds a CutMix box in pixels of the writer's crops: give the crop "
                               "size (--crop-size, the writer's --input-size; SRe2L / LPLD / LPQLD on ImageNet: 224)")
    if lam_v == 1:
        return none, float(box.max())
    # SRe2L's rand_bbox returns (bbx1, bby1, bbx2, bby2) and pastes images[:, :, bbx1:bbx2, bby1:bby2]:
    # the first pair indexes rows (y), the second columns (x).
    x1, y1, x2, y2 = box.tolist()
    frac = torch.tensor([x1, y1, x2 - x1, y2 - y1], dtype=torch.float64) / crop_size
    if not torch.isfinite(frac).all() or (frac < 0).any() or (frac > 1).any() or frac[0] + frac[2] > 1 \
            or frac[1] + frac[3] > 1:
        raise LabelImportError(f"{path}: mix_bbox {box.tolist()} lies outside a {crop_size}-pixel crop (--crop-size)")
    if frac[2] == 0 or frac[3] == 0:
        # An empty box (rand_bbox clips it to nothing when lambda is near 1, or the centre sits on an edge):
        # nothing was pasted, whatever lambda the writer drew, so the row is its own crop with weight 1.
        return none, float(box.max())
    return (idx, quantize_boxes(frac).expand(B, 4).clone(), torch.full((B,), lam_v)), float(box.max())
