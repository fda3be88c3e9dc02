"""Does a command use a label store the way its labels were made? `check_store_use` compares what a
command is told (crop size, temperature, decode rule) with what the store's header records."""
from __future__ import annotations

import warnings

from hald_ext.labels.format import LabelStoreError


class StoreUseError(LabelStoreError):
    """A command told to use a store differently from how its labels were made (strict checks)."""


class StoreUseWarning(UserWarning):
    """The same, reported instead of refused."""


def store_crop_size(header) -> int | None:
    """The crop size (pixels) the store's labels were made on: `hald relabel` records crops.size [S, S],
    the importers crops.crop_size; None when the store does not say."""
    crops = getattr(header, "crops", None) or {}
    size = crops.get("crop_size")
    if size is None and isinstance(crops.get("size"), (list, tuple)) and crops["size"]:
        size = crops["size"][0]
    return int(size) if isinstance(size, (int, float)) and not isinstance(size, bool) else None


def check_store_use(store, *, img_size: int | None = None, temperature: float | None = None,
                    decode: str | None = None, where: str = "hald train", strict: bool = True,
                    warn: bool = True) -> list:
    """The ways `where` is told to use `store` (a LabelStore or its Header) that differ from how its
    labels were made; None arguments are not checked.

    - img_size vs the crop size the labels were made on (a label describes a crop at that size);
    - temperature vs the store's T (its values are softmax(logits / T): another T trains the student
      against a distribution made at a different temperature);
    - decode vs the rule the store was written for (LPQLD's MR / MS / MRS imports, relabel's default).

    strict: raise StoreUseError naming every difference. Otherwise each is issued as a StoreUseWarning
    (when `warn`) and the messages are returned for the caller to print."""
    h = getattr(store, "header", store)  # a LabelStore, its Header, or any label source with a temperature
    problems = []
    crop = store_crop_size(h)
    if img_size is not None and crop is not None and int(img_size) != crop:
        problems.append(f"{where}: crop size {int(img_size)} px differs from the label store's {crop} px (its labels "
                        f"were made on {crop}-px crops; the imported CutMix boxes are fractions of those): pass "
                        f"--img-size {crop}, or relabel at {int(img_size)} px")
    if temperature is not None and abs(float(temperature) - h.temperature) > 1e-9:
        problems.append(f"{where}: training temperature T={float(temperature):g} differs from the label store's "
                        f"T={h.temperature:g} (its labels are softmax(logits / {h.temperature:g}))")
    default_decode = getattr(h, "default_decode", None)
    if decode is not None and default_decode is not None and decode != default_decode:
        rule = (getattr(h, "crops", None) or {}).get("lpqld_decode")
        made = f" (LPQLD's {rule} rule)" if rule else ""
        problems.append(f"{where}: decode {decode!r} differs from the label store's {default_decode!r}{made}, the "
                        "rule its labels were written for")
    if problems and strict:
        raise StoreUseError("; ".join(problems))
    if warn:
        for p in problems:
            warnings.warn(p, StoreUseWarning, stacklevel=2)
    return problems
