"""`SoftHardLoss`: the fused loss as a module, for dropping into an existing training loop."""
from __future__ import annotations

import torch
from torch import nn

from hald_ext import ops


class SoftHardLoss(nn.Module):
    """Soft-KL on stored soft labels, dense targets or teacher logits, plus hard cross-entropy, fused
    (see `ops.soft_hard_loss`).

    Example (a soft phase of HALD, labels coded with 8 bits by the label store)::

        crit = SoftHardLoss(temperature=20, codebook=store.codebook)
        loss = crit(model(x), topk_ids, topk_codes)
        loss.backward()

    Example (a hard phase: CutMix + label smoothing through the same kernel)::

        crit = SoftHardLoss(soft_weight=0, hard_weight=1, label_smoothing=0.1)
        loss = crit(logits, hard_target=y_a, target_b=y_b, mix_lambda=lam)

    Example (dense targets, e.g. timm's Mixup output, and online distillation from a teacher)::

        crit = SoftHardLoss(soft_loss="ce", decode="truncate")
        loss = crit(logits, None, mixed_targets)                  # [B, C] probabilities
        kd = SoftHardLoss(temperature=4, hinton=True, hard_weight=0.5)
        loss = kd(logits, hard_target=y, teacher_logits=teacher(x))
    """

    def __init__(self, *, temperature: float = 1.0, soft_weight: float = 1.0, hard_weight: float = 0.0,
                 label_smoothing: float = 0.0, decode: str = "marginal", reduction: str = "batchmean",
                 ignore_index: int = -100, soft_loss: str = "kl", hinton: bool = False,
                 codebook: torch.Tensor | None = None, inplace: bool = False,
                 teacher_temperature: float | None = None):
        super().__init__()
        self.temperature = temperature
        self.soft_weight = soft_weight
        self.hard_weight = hard_weight
        self.label_smoothing = label_smoothing
        self.decode = decode
        self.reduction = reduction
        self.ignore_index = ignore_index
        self.soft_loss = soft_loss
        self.hinton = hinton
        self.inplace = inplace
        self.teacher_temperature = teacher_temperature
        # A buffer, so `.to(device)` moves it with the module.
        self.register_buffer("codebook", None if codebook is None else codebook.float(), persistent=False)

    def forward(self, logits, topk_ids=None, topk_values=None, hard_target=None, *, target_b=None,
                mix_lambda=None, codebook=None, teacher_logits=None):
        if codebook is None and topk_values is not None and not topk_values.is_floating_point():
            codebook = self.codebook
        return ops.soft_hard_loss(
            logits, topk_ids, topk_values, hard_target, codebook=codebook, temperature=self.temperature,
            soft_weight=self.soft_weight, hard_weight=self.hard_weight, label_smoothing=self.label_smoothing,
            decode=self.decode, reduction=self.reduction, target_b=target_b, mix_lambda=mix_lambda,
            ignore_index=self.ignore_index, soft_loss=self.soft_loss, hinton=self.hinton, inplace=self.inplace,
            teacher_logits=teacher_logits, teacher_temperature=self.teacher_temperature)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, soft_weight={self.soft_weight}, hard_weight={self.hard_weight}, "
                f"label_smoothing={self.label_smoothing}, decode={self.decode!r}, reduction={self.reduction!r}")
