"""The normalisation constants (ImageNet's mean / std, the timm and torchvision default) and the one
uint8 -> normalised float conversion outside the crop op. Everything in the package imports them from
here."""
from __future__ import annotations

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def checked(mean, std, where: str = "--mean / --std") -> tuple:
    """(mean, std) as two 3-tuples of floats; std entries must be positive."""
    try:
        m, s = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: mean and std must be 3 numbers each, got {mean!r} and {std!r}") from None
    if len(m) != 3 or len(s) != 3 or not all(v > 0 for v in s):
        raise ValueError(f"{where}: mean and std must be 3 numbers each (std > 0), got {mean!r} and {std!r}")
    return m, s


def normalization_of(models, names=None, mean=None, std=None) -> tuple:
    """The (mean, std) crops are normalised with before these models see them: the given ones, else what
    the models' checkpoints record (`hald teacher` and `hald train` save theirs; `create_model` keeps it
    as `model.hald_normalization`), else a timm `pretrained_cfg`'s, else ImageNet's. Models that expect
    different normalisations cannot share one batch of crops: an error naming them."""
    if mean is not None or std is not None:
        return checked(mean if mean is not None else IMAGENET_MEAN, std if std is not None else IMAGENET_STD)
    names = list(names) if names is not None else [type(m).__name__ for m in models]
    found = {}
    for i, (model, name) in enumerate(zip(models, names)):
        name = f"teacher {i + 1} ({name})" if len(names) > 1 else name
        rec = getattr(model, "hald_normalization", None)
        cfg = getattr(model, "pretrained_cfg", None) or {}
        if rec is not None:
            found[name] = checked(*rec, where=f"{name}: recorded normalisation")
        elif cfg.get("mean") is not None and cfg.get("std") is not None:
            found[name] = checked(cfg["mean"], cfg["std"], where=f"{name}: pretrained_cfg")
    if len(set(found.values())) > 1:
        raise ValueError("the teachers expect different input normalisations (" + "; ".join(
            f"{n}: mean {m}, std {s}" for n, (m, s) in found.items()) + "): give --mean / --std, or label with "
            "teachers trained alike")
    return next(iter(found.values())) if found else (IMAGENET_MEAN, IMAGENET_STD)


def normalize(x_uint8: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float32 (x / 255 - mean) / std."""
    m = torch.tensor(mean, device=x_uint8.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x_uint8.device).view(1, 3, 1, 1)
    return (x_uint8.float().div_(255) - m) / s
