"""The optional dependencies (pip extras) and the one message a missing one gives.

The library (fused loss, ops, label store, data readers) needs torch, numpy, safetensors and Pillow
only. The `hald` commands need the [train] extra; figures need [plots]; the DALI loader [dali]."""
from __future__ import annotations

import importlib.util

# top-level module -> (pip package, extra)
EXTRA_OF = {
    "torchvision": ("torchvision", "train"),
    "timm": ("timm", "train"),
    "yaml": ("PyYAML", "train"),
    "tqdm": ("tqdm", "train"),
    "matplotlib": ("matplotlib", "plots"),
    "nvidia": ("nvidia-dali-cuda130", "dali"),
}


def install_hint(module: str) -> str | None:
    """"pip install 'hald_ext[EXTRA]'" with what is missing, for an optional module; None otherwise."""
    root = (module or "").split(".")[0]
    if root not in EXTRA_OF:
        return None
    package, extra = EXTRA_OF[root]
    return f"{package} is not installed; it comes with the [{extra}] extra: pip install 'hald_ext[{extra}]'"


def available(module: str) -> bool:
    """Whether an optional module can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
