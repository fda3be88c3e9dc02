"""Functional forms of the fused loss, with the arguments and reduction meanings of the losses they
replace (modules of the same forms: `hald_ext.loss`; the op itself: `hald_ext.ops.soft_hard_loss`).

    kl_div(input, target, reduction="mean", log_target=False)          torch.nn.functional.kl_div
    distillation_loss(student_logits, teacher, target=None, *, temperature, hinton, ...)
                                                                       KD: soft term + optional hard CE
    soft_hard_loss(logits, target, topk_values=None, hard_target=None, ...)
                                                                       stored top-k / dense soft labels

Every form computes the loss and its gradient in one fused pass over the logits (float32
accumulation for 16-bit logits) and returns a float32 loss (float64 for float64 logits).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn import _reduction

from hald_ext import ops

__all__ = ["kl_div", "distillation_loss", "soft_hard_loss", "TORCH_REDUCTIONS", "MODULE_REDUCTIONS"]

# nn.KLDivLoss's reductions (torch's meanings): "mean" is the sum over B x C elements divided by B * C.
TORCH_REDUCTIONS = ("none", "sum", "mean", "batchmean")
# The soft + hard forms: "mean" = soft term / B (the per-sample KL, torch's "batchmean") + hard term /
# the rows not ignored (nn.CrossEntropyLoss's "mean"); "batchmean" divides both terms by B.
MODULE_REDUCTIONS = ("mean", "batchmean", "sum", "none")


def _legacy_reduction(size_average, reduce, reduction: str) -> str:
    if size_average is not None or reduce is not None:
        return _reduction.legacy_get_string(size_average, reduce)
    return reduction


def _check_reduction(reduction: str, allowed: tuple, where: str) -> None:
    if reduction not in allowed:
        raise ValueError(f"{where}: reduction must be one of {allowed}, got {reduction!r}")


def _two_d(x: torch.Tensor, name: str, where: str) -> None:
    if not torch.is_tensor(x) or x.dim() != 2:
        shape = list(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"{where}: {name} must be a [B, C] tensor (classes on dim 1), got {shape}")


def kl_div(input: torch.Tensor, target: torch.Tensor, size_average=None, reduce=None, reduction: str = "mean",
           log_target: bool = False) -> torch.Tensor:
    """`torch.nn.functional.kl_div` over [B, C] rows, fused: `sum target * (log target - log_softmax(input))`.

    input: the student's log-probabilities, `log_softmax(z / T)`, as torch expects -- or the logits
        `z / T` themselves: softmax(log_softmax(x)) = softmax(x), so both give the same loss, and whatever
        lies before a log_softmax gets the same gradient as through torch's kl_div. (The gradient with
        respect to `input` itself is the one for logits, `softmax(input) - target` per row; torch's is
        `-target`, which log_softmax's backward maps to the same thing.)
    target: probabilities, or log-probabilities with `log_target=True` (then read as logits at T = 1:
        `softmax(target) = exp(target)`, fused, never exponentiated in memory).
    reduction: torch's meanings: "batchmean" (sum / B: the KL per sample), "mean" (sum / (B * C),
        torch's default), "sum", "none" (the elementwise [B, C] terms, computed by torch: an
        elementwise output is logits-sized anyway).
    """
    where = "kl_div"
    reduction = _legacy_reduction(size_average, reduce, reduction)
    _check_reduction(reduction, TORCH_REDUCTIONS, where)
    _two_d(input, "input", where)
    if not torch.is_tensor(target) or target.shape != input.shape:
        raise ValueError(f"{where}: target must have input's shape {list(input.shape)}, got "
                         f"{list(target.shape) if torch.is_tensor(target) else type(target).__name__}")
    if reduction == "none":
        acc = torch.float64 if input.dtype == torch.float64 else torch.float32
        return F.kl_div(F.log_softmax(input.to(acc), dim=1), target.to(acc), reduction="none", log_target=log_target)
    if log_target:
        total = ops.soft_hard_loss(input, teacher_logits=target, temperature=1.0, reduction="sum")
    else:
        total = ops.soft_hard_loss(input, None, target, decode="truncate", temperature=1.0, reduction="sum")
    B, C = input.shape
    if reduction == "sum":
        return total
    return total / (B if reduction == "batchmean" else B * C)


def distillation_loss(student_logits: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor | None = None, *,
                      temperature: float = 1.0, teacher_kind: str = "logits", hinton: bool = True,
                      soft_weight: float = 1.0, hard_weight: float = 1.0, label_smoothing: float = 0.0,
                      reduction: str = "mean", ignore_index: int = -100, soft_loss: str = "kl",
                      teacher_temperature: float | None = None, decode: str = "truncate") -> torch.Tensor:
    """Knowledge distillation in one fused pass:

        soft_weight * KL(q || softmax(s / T)) * (T^2 if hinton) + hard_weight * CE(s, target; label_smoothing)

    with q = softmax(teacher / teacher_temperature) for `teacher_kind="logits"` (default
    teacher_temperature = T), or q = `teacher` itself for `teacher_kind="probs"` (taken as given,
    `decode="truncate"`). The hard term is there only when `target` ([B] class ids) is given; rows
    equal to `ignore_index` are skipped. The teacher gets no gradient.

    The T^2 factor (`hinton`, default True) is Hinton et al.'s convention and timm's
    LogitDistillationTask's; SRe2L, LPLD (ImageNet), HALD and Liger's distillation losses do not
    multiply by T^2: pass hinton=False to match them.
    reduction: "mean" (soft / B, hard / rows kept, as nn.CrossEntropyLoss), "batchmean" (both / B:
    timm, Liger), "sum", "none" (per-row [B]).
    """
    where = "distillation_loss"
    # The op's reductions are MODULE_REDUCTIONS, with the same meanings.
    _check_reduction(reduction, MODULE_REDUCTIONS, where)
    if teacher_kind not in ("logits", "probs"):
        raise ValueError(f"{where}: teacher_kind must be 'logits' or 'probs', got {teacher_kind!r}")
    _two_d(student_logits, "student_logits", where)
    if not torch.is_tensor(teacher) or teacher.shape != student_logits.shape:
        raise ValueError(f"{where}: the teacher's {teacher_kind} must have the student's shape "
                         f"{list(student_logits.shape)}, got "
                         f"{list(teacher.shape) if torch.is_tensor(teacher) else type(teacher).__name__}")
    teacher = teacher.detach()
    soft = dict(teacher_logits=teacher, teacher_temperature=teacher_temperature) if teacher_kind == "logits" \
        else dict(topk_values=teacher, decode=decode)
    return ops.soft_hard_loss(student_logits, hard_target=target, temperature=temperature, hinton=hinton,
                              soft_weight=soft_weight, hard_weight=hard_weight if target is not None else 0.0,
                              label_smoothing=label_smoothing, reduction=reduction,
                              ignore_index=ignore_index, soft_loss=soft_loss, **soft)


def soft_hard_loss(logits: torch.Tensor, target: torch.Tensor | None = None, topk_values: torch.Tensor | None = None,
                   hard_target: torch.Tensor | None = None, *, soft_target: str = "probs",
                   topk_ids: torch.Tensor | None = None, reduction: str = "mean", **kwargs) -> torch.Tensor:
    """`hald_ext.ops.soft_hard_loss` with the call the training loops of SRe2L / LPLD / HALD / FKD make:

        soft_hard_loss(logits, soft_target, temperature=T)          # [B, C] probabilities (or logits,
                                                                    #   with soft_target="logits")
        soft_hard_loss(logits, topk_ids, topk_values, codebook=...) # a stored top-k label (ids: integers)

    The second argument is read by its dtype: integer -> the ids of a stored top-k label (then
    `topk_values` are its values); floating point -> a dense [B, C] soft target, probabilities
    (`soft_target="probs"`, decoded by `decode`, default "marginal": rows must sum to one within
    1e-2) or the teacher's logits (`soft_target="logits"`: softmax(target / teacher_temperature),
    default teacher_temperature = temperature). Other keywords are the op's (temperature,
    soft_weight, hard_weight, label_smoothing, decode, target_b, mix_lambda, ignore_index, soft_loss,
    hinton, inplace, codebook, teacher_logits, teacher_temperature).

    reduction: "mean" (default; soft / B, hard / rows not ignored, as nn.CrossEntropyLoss),
    "batchmean" (both / B), "sum", "none".
    """
    where = "soft_hard_loss"
    _check_reduction(reduction, MODULE_REDUCTIONS, where)
    if soft_target not in ("probs", "logits"):
        raise ValueError(f"{where}: soft_target must be 'probs' or 'logits', got {soft_target!r}")
    if target is not None:
        if not torch.is_tensor(target):
            raise TypeError(f"{where}: the second argument must be a tensor (top-k ids or a [B, C] soft target), "
                            f"got {type(target).__name__}")
        if target.is_floating_point():
            if topk_values is not None or topk_ids is not None:
                raise ValueError(f"{where}: the second argument is a floating-point soft target [B, C], so "
                                 "topk_values / topk_ids cannot be given as well (top-k ids must be integers)")
            if soft_target == "logits":
                if kwargs.get("teacher_logits") is not None:
                    raise ValueError(f"{where}: give the teacher's logits once (second argument or teacher_logits=)")
                kwargs["teacher_logits"] = target.detach()
            else:
                topk_values = target
        else:
            if topk_ids is not None:
                raise ValueError(f"{where}: top-k ids given twice (second argument and topk_ids=)")
            topk_ids = target
    return ops.soft_hard_loss(logits, topk_ids, topk_values, hard_target, reduction=reduction,
                              **kwargs)
