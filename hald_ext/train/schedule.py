"""Schedules: the phase order of a run, an ordered list of whole-epoch phases, each of a registered
phase kind (hald_ext.train.phases: `soft` replays stored crop labels, `hard` trains on fresh crops +
CutMix + class labels). "Schedule" means only this order; the learning rate over the run is the LR
schedule (hald_ext.train.lr_schedule).

HALD (docs/schedules.md) splits `E` total epochs with `E_soft` soft epochs as
    A = floor(E_soft / 2) soft, B = E - E_soft hard, C = E_soft - A soft,
and degenerates to soft-only when E <= E_soft. The ablation orders of the official code (hard->soft,
soft->hard, hard->soft->hard, periodic) use the same soft / hard epoch counts, so a preset only
changes the order. Any other order is written out: "soft:75,hard:150,soft:75".

A preset is a function registered in SCHEDULE_PRESETS: (E, E_soft, **options) -> [(kind, epochs), ...],
with E_soft already defaulted (E // 2) and clipped to E; the only option today is `period` (periodic's
block length), which the other presets ignore. A new order is one such function and a test:

    @register_schedule("soft-hard-soft-hard")
    def soft_hard_soft_hard(epochs, soft_epochs, **_):
        ...
"""
from __future__ import annotations

import dataclasses
import re

from hald_ext.train.phases import HARD, PHASE_KINDS, SOFT
from hald_ext.train.registry import Registry

SCHEDULE_PRESETS = Registry("schedule")
register_schedule = SCHEDULE_PRESETS.register
# The preset names (iterating gives them in registration order; `name in PRESETS` works).
PRESETS = SCHEDULE_PRESETS


@dataclasses.dataclass(frozen=True)
class Phase:
    kind: str  # a registered phase kind: "soft" | "hard"
    epochs: int
    start: int  # first epoch (0-based) of the phase

    @property
    def end(self) -> int:
        return self.start + self.epochs


def _kinds_text() -> str:
    return " or ".join(repr(k) for k in PHASE_KINDS)


class Schedule:
    """Phases laid end to end; zero-length phases are dropped and equal neighbours merged."""

    def __init__(self, parts):
        phases, start = [], 0
        for kind, epochs in parts:
            if kind not in PHASE_KINDS:
                raise ValueError(f"schedule phase must be {_kinds_text()}, got {kind!r}")
            if int(epochs) != epochs or epochs < 0:
                raise ValueError(f"schedule phase {kind!r} needs a whole, non-negative epoch count, got {epochs!r}")
            if epochs == 0:
                continue
            if phases and phases[-1].kind == kind:
                prev = phases.pop()
                phases.append(Phase(kind, prev.epochs + int(epochs), prev.start))
            else:
                phases.append(Phase(kind, int(epochs), start))
            start += int(epochs)
        if not phases:
            raise ValueError("schedule has no epochs")
        self.phases = tuple(phases)

    @property
    def epochs(self) -> int:
        return self.phases[-1].end

    def epochs_of(self, kind: str) -> int:
        return sum(p.epochs for p in self.phases if p.kind == kind)

    def label_epochs(self) -> int:
        """Epochs of phases whose kind reads the label store (soft): > 0 means the run needs one."""
        return sum(p.epochs for p in self.phases if PHASE_KINDS[p.kind].uses_labels)

    def label_kinds(self) -> list:
        """The phase kinds of this schedule that read the label store, in order of first appearance."""
        return [k for k in self.kinds() if PHASE_KINDS[k].uses_labels]

    def kinds(self) -> list:
        """The phase kinds this schedule uses, in order of first appearance."""
        return list(dict.fromkeys(p.kind for p in self.phases))

    def phase_at(self, epoch: int) -> Phase:
        for p in self.phases:
            if p.start <= epoch < p.end:
                return p
        raise IndexError(f"epoch {epoch} is outside the schedule's {self.epochs} epochs")

    def kind_at(self, epoch: int) -> str:
        return self.phase_at(epoch).kind

    def boundaries(self) -> list:
        """Epochs at which a new phase starts (for plots), excluding 0."""
        return [p.start for p in self.phases[1:]]

    def as_list(self) -> list:
        return [[p.kind, p.epochs] for p in self.phases]

    def __str__(self) -> str:
        return ",".join(f"{p.kind}:{p.epochs}" for p in self.phases)

    def __repr__(self) -> str:
        return f"Schedule({self})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Schedule) and self.phases == other.phases


def parse_explicit(text: str) -> Schedule:
    """"soft:75,hard:150,soft:75" -> Schedule (any registered phase kind may be named)."""
    parts = []
    for item in text.split(","):
        m = re.fullmatch(r"\s*([^\s:,]+)\s*:\s*(\d+)\s*", item)
        if not m or m.group(1) not in PHASE_KINDS:
            expected = " or ".join(f"'{k}:N'" for k in PHASE_KINDS)
            raise ValueError(f"cannot read schedule item {item!r}: expected {expected}")
        parts.append((m.group(1), int(m.group(2))))
    return Schedule(parts)


def build_schedule(name: str, epochs: int, soft_epochs: int | None = None, period: int = 1) -> Schedule:
    """A preset (see SCHEDULE_PRESETS) over `epochs` total epochs, or an explicit "soft:N,hard:M,..." list.

    `soft_epochs` (E_soft) defaults to half of `epochs`, the released ImageNet ratio (150 of 300).
    `period` is the phase length of `periodic` (soft, hard, soft, ... of `period` epochs each).
    """
    if ":" in name:
        sched = parse_explicit(name)
        if epochs and sched.epochs != epochs:
            raise ValueError(f"explicit schedule {name!r} has {sched.epochs} epochs but epochs={epochs}")
        return sched
    if name not in SCHEDULE_PRESETS:
        raise ValueError(f"unknown schedule {name!r}: use one of {', '.join(SCHEDULE_PRESETS)} or 'soft:N,hard:M,...'")
    if epochs <= 0:
        raise ValueError(f"epochs must be positive, got {epochs}")
    e_soft = epochs // 2 if soft_epochs is None else int(soft_epochs)
    if e_soft < 0:
        raise ValueError(f"soft_epochs must be non-negative, got {soft_epochs}")
    e_soft = min(e_soft, epochs)  # E <= E_soft: HALD degenerates to soft-only
    return Schedule(SCHEDULE_PRESETS[name](epochs, e_soft, period=period))


# --------------------------------------------------------------------------------------------------
# The presets: (E, E_soft, **options) -> [(kind, epochs), ...]; zero-length phases are dropped.
@register_schedule("hald")
def hald(epochs: int, soft_epochs: int, **_) -> list:
    """Soft -> Hard -> Soft: A = floor(E_soft / 2) soft, E - E_soft hard, the rest soft."""
    a = soft_epochs // 2
    return [(SOFT, a), (HARD, epochs - soft_epochs), (SOFT, soft_epochs - a)]


@register_schedule("soft-only")
def soft_only(epochs: int, soft_epochs: int, **_) -> list:
    return [(SOFT, epochs)]


@register_schedule("hard-only")
def hard_only(epochs: int, soft_epochs: int, **_) -> list:
    return [(HARD, epochs)]


@register_schedule("hard-soft")
def hard_soft(epochs: int, soft_epochs: int, **_) -> list:
    return [(HARD, epochs - soft_epochs), (SOFT, soft_epochs)]


@register_schedule("soft-hard")
def soft_hard(epochs: int, soft_epochs: int, **_) -> list:
    return [(SOFT, soft_epochs), (HARD, epochs - soft_epochs)]


@register_schedule("hard-soft-hard")
def hard_soft_hard(epochs: int, soft_epochs: int, **_) -> list:
    a = (epochs - soft_epochs) // 2
    return [(HARD, a), (SOFT, soft_epochs), (HARD, epochs - soft_epochs - a)]


@register_schedule("periodic")
def periodic(epochs: int, soft_epochs: int, period: int = 1, **_) -> list:
    """Alternating `period`-epoch blocks, soft first, until the soft / hard budgets run out."""
    if period <= 0:
        raise ValueError(f"period must be positive, got {period}")
    parts, left = [], {SOFT: soft_epochs, HARD: epochs - soft_epochs}
    kind = SOFT
    while left[SOFT] or left[HARD]:
        n = min(period, left[kind])
        parts.append((kind, n))
        left[kind] -= n
        kind = HARD if kind == SOFT else SOFT
    return parts
