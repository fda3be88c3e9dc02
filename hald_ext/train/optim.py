"""One AdamW for the whole run (all phases, no reset), without weight decay on norm / bias.

The LR schedules live in hald_ext.train.lr_schedule; `half_cosine` and `HalfCosineLR` are re-exported
here, where they were first defined.
"""
from __future__ import annotations

import torch

from hald_ext.train.lr_schedule import HalfCosineLR, half_cosine  # noqa: F401  (re-exported)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list:
    """Weight decay on weight matrices / kernels only: none on biases, norm scales or any other 1-D
    parameter (decaying a norm gain towards 0 only fights the normalisation)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def create_optimizer(model: torch.nn.Module, lr: float = 1e-3, weight_decay: float = 0.01,
                     betas=(0.9, 0.999)) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=tuple(betas))
