"""Drop-in replacements for timm 1.0's soft-target losses, on the fused kernel.

Same constructor arguments, call signatures and values as the timm objects they replace (tested equal
on the same inputs, values and gradients):

    from hald_ext.timm import SoftTargetCrossEntropy      # was: from timm.loss import SoftTargetCrossEntropy
    train_loss_fn = SoftTargetCrossEntropy()               # Mixup / CutMix targets [B, C]

- `SoftTargetCrossEntropy`: `sum(-target * log_softmax(x), -1).mean()`, a dense soft target;
- `LabelSmoothingCrossEntropy(smoothing)`: cross-entropy with `(1 - eps) * onehot + eps / C`;
- `LogitDistillationTask`: `timm.task.LogitDistillationTask` whose distillation term
  `kl_div(log_softmax(s / T), log_softmax(t / T), log_target=True, "batchmean") * T^2` is one fused
  pass over the student's and the teacher's logits (the teacher's softmax is never materialised);
- `distillation_loss(student_logits, teacher_logits, temperature)`: that term alone;
- `LogitDistillationLoss`: task cross-entropy (integer targets, optional smoothing) plus the
  distillation term in a single pass (what the task computes, as one loss).

Differences from timm, all on input timm would not accept either: negative or non-finite targets raise
(on CUDA the row's loss and gradient are NaN); `LabelSmoothingCrossEntropy` skips targets equal to
-100 instead of failing in `gather`. The loss is float32 for 16-bit logits (timm's is too under AMP,
where log_softmax runs in float32).
"""
from __future__ import annotations

import torch
from torch import nn

from hald_ext.ops import soft_hard_loss

try:  # the task subclass needs timm; the losses do not
    from timm.task import LogitDistillationTask as _TimmLogitDistillationTask
except ImportError:  # pragma: no cover - timm is optional
    _TimmLogitDistillationTask = None

__all__ = ["SoftTargetCrossEntropy", "LabelSmoothingCrossEntropy", "LogitDistillationLoss", "LogitDistillationTask",
           "distillation_loss"]


def _rows(x: torch.Tensor) -> torch.Tensor:
    """[..., C] -> [N, C] (timm's losses reduce over every leading dimension alike)."""
    return x.reshape(-1, x.shape[-1])


class SoftTargetCrossEntropy(nn.Module):
    """`timm.loss.SoftTargetCrossEntropy`, fused: targets are dense [..., C] probabilities."""

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return soft_hard_loss(_rows(x), None, _rows(target), soft_loss="ce", decode="truncate",
                              reduction="batchmean")


class LabelSmoothingCrossEntropy(nn.Module):
    """`timm.loss.LabelSmoothingCrossEntropy`, fused."""

    def __init__(self, smoothing: float = 0.1):
        super().__init__()
        assert smoothing < 1.0
        self.smoothing = smoothing
        self.confidence = 1.0 - smoothing

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return soft_hard_loss(_rows(x), hard_target=target.reshape(-1), soft_weight=0.0, hard_weight=1.0,
                              label_smoothing=self.smoothing, reduction="batchmean")


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                      weight: float = 1.0) -> torch.Tensor:
    """`weight * kl_div(log_softmax(s / T), log_softmax(t / T), log_target=True, reduction="batchmean") * T^2`
    (timm's `LogitDistillationTask` term), fused."""
    return soft_hard_loss(_rows(student_logits), teacher_logits=_rows(teacher_logits).detach(),
                          temperature=temperature, hinton=True, soft_weight=weight)


class LogitDistillationLoss(nn.Module):
    """`task_loss_weight * CE(s, y; smoothing) + distill_loss_weight * KD(s, t; T)` in one pass.

    The value `LogitDistillationTask` computes with an integer target and a cross-entropy criterion
    (`nn.CrossEntropyLoss(label_smoothing=eps)` or `LabelSmoothingCrossEntropy(eps)`).
    """

    def __init__(self, temperature: float = 1.0, task_loss_weight: float = 1.0, distill_loss_weight: float = 1.0,
                 smoothing: float = 0.0):
        super().__init__()
        self.temperature = temperature
        self.task_loss_weight = task_loss_weight
        self.distill_loss_weight = distill_loss_weight
        self.smoothing = smoothing

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                target: torch.Tensor) -> torch.Tensor:
        return soft_hard_loss(_rows(student_logits), hard_target=target.reshape(-1),
                              teacher_logits=_rows(teacher_logits).detach(), temperature=self.temperature,
                              hinton=True, soft_weight=self.distill_loss_weight, hard_weight=self.task_loss_weight,
                              label_smoothing=self.smoothing, reduction="batchmean")


if _TimmLogitDistillationTask is not None:

    class LogitDistillationTask(_TimmLogitDistillationTask):
        """`timm.task.LogitDistillationTask` (same constructor, same returned dict) with the
        distillation term computed by the fused kernel. The task loss stays `self.criterion` (pass
        this module's `SoftTargetCrossEntropy` / `LabelSmoothingCrossEntropy` to fuse it as well)."""

        def forward(self, input: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
            student_logits = self.trainable_module(input)
            task_loss = self.criterion(student_logits, target)
            with torch.no_grad():
                input_kd = self.teacher.normalize_input(input, self.student_mean, self.student_std)
                teacher_logits = self.teacher(input_kd.detach(), return_features=False)
            kd_loss = distillation_loss(student_logits, teacher_logits, self.temperature)
            total_loss = self.task_loss_weight * task_loss + self.distill_loss_weight * kd_loss
            return {"loss": total_loss, "output": student_logits, "task_loss": task_loss, "kd_loss": kd_loss}
else:  # pragma: no cover
    LogitDistillationTask = None
