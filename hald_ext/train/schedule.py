"""Training schedules: an ordered list of whole-epoch phases, each `soft` (replay stored crop labels) or
`hard` (fresh crops + CutMix + class labels).

HALD (METHOD.md section 2) splits `E` total epochs with `E_soft` soft epochs as
    A = floor(E_soft / 2) soft, B = E - E_soft hard, C = E_soft - A soft,
and degenerates to soft-only when E <= E_soft. The ablation orders of the official code (hard->soft,
soft->hard, hard->soft->hard, periodic) use the same soft / hard epoch counts, so a preset only
changes the order. Any other order is written out: "soft:75,hard:150,soft:75".
"""
from __future__ import annotations

import dataclasses
import re

SOFT, HARD = "soft", "hard"
PRESETS = ("hald", "soft-only", "hard-only", "hard-soft", "soft-hard", "hard-soft-hard", "periodic")


@dataclasses.dataclass(frozen=True)
class Phase:
    kind: str  # "soft" | "hard"
    epochs: int
    start: int  # first epoch (0-based) of the phase

    @property
    def end(self) -> int:
        return self.start + self.epochs


class Schedule:
    """Phases laid end to end; zero-length phases are dropped and equal neighbours merged."""

    def __init__(self, parts):
        phases, start = [], 0
        for kind, epochs in parts:
            if kind not in (SOFT, HARD):
                raise ValueError(f"schedule phase must be 'soft' or 'hard', got {kind!r}")
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
    """"soft:75,hard:150,soft:75" -> Schedule."""
    parts = []
    for item in text.split(","):
        m = re.fullmatch(r"\s*(soft|hard)\s*:\s*(\d+)\s*", item)
        if not m:
            raise ValueError(f"cannot read schedule item {item!r}: expected 'soft:N' or 'hard:N'")
        parts.append((m.group(1), int(m.group(2))))
    return Schedule(parts)


def build_schedule(name: str, epochs: int, soft_epochs: int | None = None, period: int = 1) -> Schedule:
    """A preset (see PRESETS) over `epochs` total epochs, or an explicit "soft:N,hard:M,..." list.

    `soft_epochs` (E_soft) defaults to half of `epochs`, the released ImageNet ratio (150 of 300).
    `period` is the phase length of `periodic` (soft, hard, soft, ... of `period` epochs each).
    """
    if ":" in name:
        sched = parse_explicit(name)
        if epochs and sched.epochs != epochs:
            raise ValueError(f"explicit schedule {name!r} has {sched.epochs} epochs but epochs={epochs}")
        return sched
    if name not in PRESETS:
        raise ValueError(f"unknown schedule {name!r}: use one of {', '.join(PRESETS)} or 'soft:N,hard:M,...'")
    if epochs <= 0:
        raise ValueError(f"epochs must be positive, got {epochs}")
    e_soft = epochs // 2 if soft_epochs is None else int(soft_epochs)
    if e_soft < 0:
        raise ValueError(f"soft_epochs must be non-negative, got {soft_epochs}")
    e_soft = min(e_soft, epochs)  # E <= E_soft: HALD degenerates to soft-only
    e_hard = epochs - e_soft
    if name == "soft-only":
        return Schedule([(SOFT, epochs)])
    if name == "hard-only":
        return Schedule([(HARD, epochs)])
    if name == "hald":
        a = e_soft // 2
        return Schedule([(SOFT, a), (HARD, e_hard), (SOFT, e_soft - a)])
    if name == "hard-soft":
        return Schedule([(HARD, e_hard), (SOFT, e_soft)])
    if name == "soft-hard":
        return Schedule([(SOFT, e_soft), (HARD, e_hard)])
    if name == "hard-soft-hard":
        a = e_hard // 2
        return Schedule([(HARD, a), (SOFT, e_soft), (HARD, e_hard - a)])
    # periodic: alternate `period`-epoch blocks, soft first, until the soft / hard budgets run out.
    if period <= 0:
        raise ValueError(f"period must be positive, got {period}")
    parts, left = [], {SOFT: e_soft, HARD: e_hard}
    kind = SOFT
    while left[SOFT] or left[HARD]:
        n = min(period, left[kind])
        parts.append((kind, n))
        left[kind] -= n
        kind = HARD if kind == SOFT else SOFT
    return Schedule(parts)
