"""LR schedules: the learning rate over the run (all phases, no reset), by name.

An LR schedule is a factor function `factor(position, total_epochs, eta) -> float` registered under a
name; `LRSchedule` sets every parameter group's LR to `initial_lr * factor(position)` (after an
optional linear warm-up) from a (possibly fractional) epoch position. Both `hald train` and
`hald teacher` build theirs with `create_lr_schedule`.

half-cosine  the HALD code's lr0 * 0.5 * (1 + cos(pi * e / (E * eta))): with the default eta = 2 it
             only decays to half of lr0 at the last epoch, which the official code uses at small IPC;
             eta = 1 is the usual cosine to 0 (the teacher's).
constant     lr0 throughout (eta is not used).

A new LR schedule is one registered factor function and a test:

    @register_lr_schedule("linear")
    def linear(position, total_epochs, eta):
        return 1.0 - position / total_epochs
"""
from __future__ import annotations

import math

import torch

from hald_ext.train.registry import Registry

LR_SCHEDULES = Registry("LR schedule")
register_lr_schedule = LR_SCHEDULES.register
DEFAULT_LR_SCHEDULE = "half-cosine"


@register_lr_schedule("half-cosine")
def half_cosine(epoch: float, total_epochs: int, eta: float = 2.0) -> float:
    """The LR factor 0.5 * (1 + cos(pi * e / (E * eta)))."""
    return 0.5 * (1.0 + math.cos(math.pi * epoch / (total_epochs * eta)))


@register_lr_schedule("constant")
def constant(epoch: float, total_epochs: int, eta: float = 2.0) -> float:
    """The LR factor 1: the base LR at every step (a warm-up still applies)."""
    return 1.0


class LRSchedule:
    """Sets the LR of every group from a (possibly fractional) epoch position.

    Stepped with the epoch index by default (the official code), or with the fractional position
    `epoch + i / steps` when `on_updates` (smoother, and what a warm-up shorter than a few epochs needs).
    An optional linear warm-up ramps from `warmup_lr` to the schedule's value over the first
    `warmup_epochs`. The state is just the last position (and the settings), so a resumed run sets
    exactly the same LR.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_epochs: int, eta: float = 2.0,
                 warmup_epochs: float = 0.0, warmup_lr: float = 0.0, on_updates: bool = False,
                 name: str = DEFAULT_LR_SCHEDULE):
        if total_epochs <= 0 or eta <= 0:
            raise ValueError(f"total_epochs and eta must be positive, got {total_epochs}, {eta}")
        self.factor = LR_SCHEDULES[name]  # unknown names fail here, naming the known ones
        self.name = name
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
        lr = base_lr * self.factor(position, self.total_epochs, self.eta)
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
                "warmup_epochs": self.warmup_epochs, "warmup_lr": self.warmup_lr, "on_updates": self.on_updates,
                "name": self.name}

    def load_state_dict(self, state: dict) -> None:
        for key in ("total_epochs", "eta", "warmup_epochs", "warmup_lr", "on_updates"):
            setattr(self, key, state[key])
        # A state saved before LR schedules had names is a half-cosine one.
        self.name = state.get("name", DEFAULT_LR_SCHEDULE)
        self.factor = LR_SCHEDULES[self.name]
        self.set_position(state["position"])


class HalfCosineLR(LRSchedule):
    """The half-cosine LRSchedule (the name code written before the registry imports)."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_epochs: int, eta: float = 2.0,
                 warmup_epochs: float = 0.0, warmup_lr: float = 0.0, on_updates: bool = False):
        super().__init__(optimizer, total_epochs, eta, warmup_epochs, warmup_lr, on_updates, name="half-cosine")


def create_lr_schedule(name: str, optimizer: torch.optim.Optimizer, total_epochs: int, **kwargs) -> LRSchedule:
    """The LR schedule `name` (see LR_SCHEDULES) over `total_epochs`; kwargs: eta, warmup_epochs,
    warmup_lr, on_updates (as LRSchedule)."""
    if name not in LR_SCHEDULES:
        raise ValueError(f"unknown LR schedule {name!r}: use one of {', '.join(LR_SCHEDULES)}")
    return LRSchedule(optimizer, total_epochs, name=name, **kwargs)
