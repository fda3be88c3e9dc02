"""The fused loss as modules, in the forms existing training loops already call (functional twins:
`hald_ext.functional`; a table of "your loop's loss -> the call": docs/loss.md).

- `KLDivLoss(reduction="mean", log_target=False)`: nn.KLDivLoss's arguments and reduction meanings;
- `DistillationLoss(temperature, ...)(student_logits, teacher_logits_or_probs, target=None)`: KD with
  the T^2 convention selectable (`hinton`);
- `SoftHardLoss(...)(logits, soft_target)` / `(logits, topk_ids, topk_values, hard_target)`: stored
  top-k or dense soft labels plus a hard cross-entropy term.
"""
from __future__ import annotations

import torch
from torch import nn

from hald_ext import functional as HF


class KLDivLoss(nn.Module):
    """`torch.nn.KLDivLoss`, fused (same constructor, same reductions; see `hald_ext.functional.kl_div`).

        crit = KLDivLoss(reduction="batchmean")          # was: nn.KLDivLoss(reduction="batchmean")
        loss = crit(F.log_softmax(z / T, 1), F.softmax(t / T, 1))     # or crit(z / T, F.softmax(t / T, 1))

    `input` may be log-probabilities or the logits themselves (same loss, same gradient upstream of the
    log_softmax); "mean" is torch's: the sum over all B x C elements divided by B * C.
    """

    def __init__(self, size_average=None, reduce=None, reduction: str = "mean", log_target: bool = False):
        super().__init__()
        self.reduction = HF._legacy_reduction(size_average, reduce, reduction)
        HF._check_reduction(self.reduction, HF.TORCH_REDUCTIONS, "KLDivLoss")
        self.log_target = log_target

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return HF.kl_div(input, target, reduction=self.reduction, log_target=self.log_target)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, log_target={self.log_target}"


class DistillationLoss(nn.Module):
    """`soft_weight * KL(q || softmax(s / T)) * (T^2 if hinton) + hard_weight * CE(s, target)`, fused.

        kd = DistillationLoss(temperature=4.0)                           # T^2-scaled (hinton=True)
        loss = kd(student_logits, teacher_logits, target)                # target optional

    teacher: "logits" (q = softmax(teacher / teacher_temperature), default teacher_temperature = T) or
    "probs" (q = the given [B, C] probabilities). hinton: multiply the soft term by T^2 (Hinton et al.,
    timm); False for SRe2L / LPLD / HALD / Liger. reduction: "mean" (soft / B, hard / rows kept),
    "batchmean" (both / B), "sum", "none". See `hald_ext.functional.distillation_loss`.
    """

    def __init__(self, temperature: float = 1.0, *, teacher: str = "logits", hinton: bool = True,
                 soft_weight: float = 1.0, hard_weight: float = 1.0, label_smoothing: float = 0.0,
                 reduction: str = "mean", ignore_index: int = -100, soft_loss: str = "kl",
                 teacher_temperature: float | None = None):
        super().__init__()
        HF._check_reduction(reduction, HF.MODULE_REDUCTIONS, "DistillationLoss")
        if teacher not in ("logits", "probs"):
            raise ValueError(f"DistillationLoss: teacher must be 'logits' or 'probs', got {teacher!r}")
        self.temperature, self.teacher, self.hinton = temperature, teacher, hinton
        self.soft_weight, self.hard_weight, self.label_smoothing = soft_weight, hard_weight, label_smoothing
        self.reduction, self.ignore_index, self.soft_loss = reduction, ignore_index, soft_loss
        self.teacher_temperature = teacher_temperature

    def forward(self, student_logits: torch.Tensor, teacher_logits_or_probs: torch.Tensor,
                target: torch.Tensor | None = None) -> torch.Tensor:
        return HF.distillation_loss(
            student_logits, teacher_logits_or_probs, target, temperature=self.temperature, teacher_kind=self.teacher,
            hinton=self.hinton, soft_weight=self.soft_weight, hard_weight=self.hard_weight,
            label_smoothing=self.label_smoothing, reduction=self.reduction, ignore_index=self.ignore_index,
            soft_loss=self.soft_loss, teacher_temperature=self.teacher_temperature)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, teacher={self.teacher!r}, hinton={self.hinton}, "
                f"soft_weight={self.soft_weight}, hard_weight={self.hard_weight}, reduction={self.reduction!r}")


class SoftHardLoss(nn.Module):
    """Soft-KL on stored soft labels, dense targets or teacher logits, plus hard cross-entropy, fused
    (see `hald_ext.functional.soft_hard_loss` and `ops.soft_hard_loss`).

    The call of SRe2L / LPLD / HALD loops (`loss_fn(logits, soft_label)`)::

        crit = SoftHardLoss(temperature=20)                       # soft_label: [B, C] probabilities
        loss = crit(model(x), soft_label)
        crit = SoftHardLoss(temperature=20, soft_target="logits") # soft_label: the teacher's logits
        loss = crit(model(x), soft_label)

    A stored top-k label (integer ids, values or codes)::

        crit = SoftHardLoss(temperature=20, codebook=store.codebook)
        loss = crit(model(x), topk_ids, topk_codes)

    A hard phase (CutMix + label smoothing through the same kernel)::

        crit = SoftHardLoss(soft_weight=0, hard_weight=1, label_smoothing=0.1)
        loss = crit(logits, hard_target=y_a, target_b=y_b, mix_lambda=lam)

    reduction: "mean" (default: soft / B, hard / rows not ignored, as nn.CrossEntropyLoss),
    "batchmean" (both / B), "sum", "none".
    """

    def __init__(self, *, temperature: float = 1.0, soft_weight: float = 1.0, hard_weight: float = 0.0,
                 label_smoothing: float = 0.0, decode: str = "marginal", reduction: str = "mean",
                 ignore_index: int = -100, soft_loss: str = "kl", hinton: bool = False,
                 codebook: torch.Tensor | None = None, inplace: bool = False,
                 teacher_temperature: float | None = None, soft_target: str = "probs"):
        super().__init__()
        HF._check_reduction(reduction, HF.MODULE_REDUCTIONS, "SoftHardLoss")
        if soft_target not in ("probs", "logits"):
            raise ValueError(f"SoftHardLoss: soft_target must be 'probs' or 'logits', got {soft_target!r}")
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
        self.soft_target = soft_target
        # A buffer, so `.to(device)` moves it with the module.
        self.register_buffer("codebook", None if codebook is None else codebook.float(), persistent=False)

    def forward(self, logits, target=None, topk_values=None, hard_target=None, *, topk_ids=None, target_b=None,
                mix_lambda=None, codebook=None, teacher_logits=None):
        if codebook is None and topk_values is not None and not topk_values.is_floating_point():
            codebook = self.codebook
        return HF.soft_hard_loss(
            logits, target, topk_values, hard_target, soft_target=self.soft_target, topk_ids=topk_ids,
            codebook=codebook, temperature=self.temperature, soft_weight=self.soft_weight,
            hard_weight=self.hard_weight, label_smoothing=self.label_smoothing, decode=self.decode,
            reduction=self.reduction, target_b=target_b, mix_lambda=mix_lambda, ignore_index=self.ignore_index,
            soft_loss=self.soft_loss, hinton=self.hinton, inplace=self.inplace, teacher_logits=teacher_logits,
            teacher_temperature=self.teacher_temperature)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, soft_weight={self.soft_weight}, hard_weight={self.hard_weight}, "
                f"label_smoothing={self.label_smoothing}, decode={self.decode!r}, reduction={self.reduction!r}, "
                f"soft_target={self.soft_target!r}")
