"""Loads the compiled library `hald_ext._C` once, with one clear error when it is missing or stale."""
from __future__ import annotations

import torch

_ABI_VERSION = 4  # 2: C++ autograd for the loss, _soft_hard_loss_scale_, ops registered per backend;
#                  3: crop_and_lookup's image_offsets, label_store_check; 4: its max_image_size
_error: Exception | None = None

try:
    from hald_ext import _C  # noqa: F401  (loading it registers torch.ops.hald.*)
except ImportError as e:  # pragma: no cover - exercised only by broken installs
    _C = None
    _error = e

if _C is not None and getattr(_C, "ABI_VERSION", None) != _ABI_VERSION:  # pragma: no cover
    _error = ImportError(
        f"hald_ext._C was built from other sources (ABI {getattr(_C, 'ABI_VERSION', None)}, "
        f"expected {_ABI_VERSION}); rebuild with `pip install --no-build-isolation -e .`"
    )
    _C = None


def require() -> None:
    """Raise the load error, if any, naming the fix."""
    if _C is None:
        raise ImportError(
            "hald_ext's compiled kernels (hald_ext._C) could not be loaded: "
            f"{_error}. Build them with `pip install --no-build-isolation -e .` "
            "(or `make build`) against the torch you run with."
        ) from _error


def loaded() -> bool:
    return _C is not None


def build_info() -> dict:
    """Which backends this build carries and which can run here."""
    cuda_built = bool(_C is not None and _C.WITH_CUDA)
    return {
        "loaded": _C is not None,
        "cpu": _C is not None,
        "cuda_built": cuda_built,
        "cuda_available": cuda_built and torch.cuda.is_available(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
    }


def schema_names(op) -> list:
    """An op's argument names in schema order (each C++ front file writes its list once)."""
    return [a.name for a in op._schema.arguments]
