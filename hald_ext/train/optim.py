"""One AdamW and one learning-rate schedule for the whole run (all phases, no reset).

The LR follows the HALD code's half-cosine, lr0 * 0.5 * (1 + cos(pi * e / (E * eta))): with the
default eta = 2 it only decays to half of lr0 at the last epoch, which the official code uses at
small IPC. An optional linear warm-up ramps from `warmup_lr` to the cosine value over the first epochs.
"""
from __future__ import annotations

import math

import torch


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


def half_cosine(epoch: float, total_epochs: int, eta: float = 2.0) -> float:
    """The LR factor 0.5 * (1 + cos(pi * e / (E * eta)))."""
    return 0.5 * (1.0 + math.cos(math.pi * epoch / (total_epochs * eta)))


class HalfCosineLR:
    """Sets the LR of every group from a (possibly fractional) epoch position.

    Stepped with the epoch index by default (the official code), or with the fractional position
    `epoch + i / steps` when `on_updates` (smoother, and what a warm-up shorter than a few epochs needs).
    The state is just the last position, so a resumed run sets exactly the same LR.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_epochs: int, eta: float = 2.0,
                 warmup_epochs: float = 0.0, warmup_lr: float = 0.0, on_updates: bool = False):
        if total_epochs <= 0 or eta <= 0:
            raise ValueError(f"total_epochs and eta must be positive, got {total_epochs}, {eta}")
        self.optimizer = optimizer
        self.total_epochs = total_epochs
        self.eta = eta
        self.warmup_epochs = warmup_epochs
        self.warmup_lr = warmup_lr
        self.on_updates = on_updates
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        self.position = 0.0
        self.set_position(0.0)

    def lr_at(self, base_lr: float, position: float) -> float:
        if not self.on_updates:
            position = math.floor(position)
        lr = base_lr * half_cosine(position, self.total_epochs, self.eta)
        if position < self.warmup_epochs:
            t = position / self.warmup_epochs
            lr = self.warmup_lr + t * (lr - self.warmup_lr)
        return lr

    def set_position(self, position: float) -> None:
        self.position = float(position)
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr_at(g["initial_lr"], self.position)

    def last_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {"position": self.position, "total_epochs": self.total_epochs, "eta": self.eta,
                "warmup_epochs": self.warmup_epochs, "warmup_lr": self.warmup_lr, "on_updates": self.on_updates}

    def load_state_dict(self, state: dict) -> None:
        for key in ("total_epochs", "eta", "warmup_epochs", "warmup_lr", "on_updates"):
            setattr(self, key, state[key])
        self.set_position(state["position"])
