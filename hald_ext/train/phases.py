"""Phase kinds: what one epoch of a kind asks the batch source for and how its loss is computed.

A schedule (hald_ext.train.schedule) is an order of whole-epoch phases, each of a registered kind;
the trainer looks the kind up here and has no kind-specific code. A kind answers two questions:

sample_order(trainer, epoch, gen)  the epoch's samples, in order: an int64 tensor [M, 1] of image
    ids, or [M, 2] of (image id, stored slot) rows for a kind that replays stored crop labels. The
    trainer splits it into global batches and each rank's share; `gen` is the epoch's generator.
loss_sum(trainer, image_ids, slots, step_seed)  the summed per-row loss of this rank's piece of a
    batch (`slots` None for a one-column order; `step_seed` seeds the step's random crops).

and says whether it reads the label store (`uses_labels`: the trainer then needs one, checks the
label budget over those epochs and prepares its codebook, temperature and decode; see
Schedule.label_epochs) and how plots mark its epochs (`color`).

soft  replays stored crops with their teacher labels (HALD's soft phase, SRe2L / FKD relabel).
hard  fresh random-resized crops + CutMix, trained on class labels with label smoothing.

A new kind is one class registered with `@register_phase_kind("name")` and a test; the written-out
schedule form ("soft:2,name:3") and every preset can then use it.
"""
from __future__ import annotations

import torch

from hald_ext.ops import soft_hard_loss
from hald_ext.train.evaluate import autocast
from hald_ext.train.registry import Registry

SOFT, HARD = "soft", "hard"
PHASE_KINDS = Registry("phase kind")
register_phase_kind = PHASE_KINDS.register


class PhaseKind:
    """The interface of a phase kind (see the module docstring); `trainer` is the running Trainer."""

    uses_labels = False
    color = "tab:gray"  # how plots of a run (train.metrics) mark this kind's epochs

    def sample_order(self, trainer, epoch: int, gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def loss_sum(self, trainer, image_ids: torch.Tensor, slots, step_seed: int) -> torch.Tensor:
        raise NotImplementedError


@register_phase_kind(SOFT)
class SoftPhase(PhaseKind):
    uses_labels = True
    color = "tab:blue"

    def sample_order(self, trainer, epoch, gen):
        # Which stored crops this soft epoch replays: consecutive soft epochs walk through the
        # slots, so with slots_per_epoch < SLI every stored crop is used before any repeats.
        # The default (1) is HALD's soft epoch: each image once, cycling through its SLI crops.
        n = trainer.source.num_images
        soft_before = sum(1 for e in range(epoch) if trainer.schedule.kind_at(e) == SOFT)
        s, sli = trainer.slots_per_epoch, trainer.source.labels.sli
        slots = (torch.arange(s) + soft_before * s) % sli
        pairs = torch.stack(torch.meshgrid(torch.arange(n), slots, indexing="ij"), -1).view(-1, 2)
        return pairs[torch.randperm(len(pairs), generator=gen)]

    def loss_sum(self, trainer, image_ids, slots, step_seed):
        cfg = trainer.cfg
        b = trainer.source.soft_batch(image_ids, slots)
        with autocast(trainer.device, cfg.amp):
            logits = trainer.net(b.x)
        return soft_hard_loss(logits, b.topk_ids, b.topk_codes, codebook=trainer.codebook,
                              temperature=trainer.temperature, decode=trainer.decode, soft_loss=cfg.soft_loss,
                              hinton=cfg.hinton, reduction="sum")


@register_phase_kind(HARD)
class HardPhase(PhaseKind):
    color = "tab:orange"

    def sample_order(self, trainer, epoch, gen):
        return torch.randperm(trainer.source.num_images, generator=gen)[:, None]

    def loss_sum(self, trainer, image_ids, slots, step_seed):
        cfg = trainer.cfg
        b = trainer.source.hard_batch(image_ids, step_seed)
        with autocast(trainer.device, cfg.amp):
            logits = trainer.net(b.x)
        return soft_hard_loss(logits, hard_target=b.y_a, target_b=b.y_b, mix_lambda=b.lam, soft_weight=0.0,
                              hard_weight=1.0, label_smoothing=cfg.label_smoothing, reduction="sum")


def phase_kind(name: str) -> PhaseKind:
    """An instance of the registered kind `name`."""
    return PHASE_KINDS[name]()
