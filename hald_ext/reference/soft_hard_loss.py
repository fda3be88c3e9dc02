"""Reference of the fused soft-KL / hard-CE loss (dense decode, log_softmax, KL / cross-entropy)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from hald_ext.ops.soft_hard_loss import SoftHardSpec


def dequantize(topk_values: torch.Tensor, codebook: torch.Tensor | None, dtype=torch.float32) -> torch.Tensor:
    """Stored values -> probabilities: integer codes index `codebook`, floats pass through."""
    if codebook is not None:
        idx = topk_values.long()
        if topk_values.dtype == torch.int16:
            idx = idx & 0xFFFF  # int16 codes are read as unsigned
        return codebook.to(dtype)[idx]
    return topk_values.to(dtype)


def decode_dense(topk_ids, topk_values, num_classes: int, decode: str = "marginal", codebook=None,
                 dtype=torch.float32) -> torch.Tensor:
    """The C-wide target q (docs/method.md, "Stored labels") (what the fused kernel never builds). With
    `topk_ids=None`, `topk_values` is a dense target [B, C] (a stored label with k = C)."""
    p = dequantize(topk_values, codebook, dtype)
    if topk_ids is None:
        topk_ids = torch.arange(num_classes, device=p.device).expand(p.shape[0], num_classes)
    ids = topk_ids.long()
    if topk_ids.dtype == torch.int16:
        ids = ids & 0xFFFF
    B, k = ids.shape
    q = torch.zeros(B, num_classes, dtype=dtype, device=p.device).scatter(1, ids, p)
    sp = p.sum(1, keepdim=True)
    if decode == "marginal":
        if num_classes > k:
            u = (1 - sp).clamp_min(0) / (num_classes - k)
            stored = torch.zeros_like(q).scatter(1, ids, torch.ones_like(p))
            q = q + u * (1 - stored)
    elif decode == "renorm":
        q = torch.where(sp > 0, q / sp.clamp_min(torch.finfo(dtype).tiny), torch.zeros_like(q))
    elif decode != "truncate":
        raise ValueError(f"unknown decode {decode!r}")
    return q


def soft_hard_loss_reference(logits, *args, **kw):
    """Dense soft-KL / hard-CE loss with the semantics of `hald_ext.ops.soft_hard_loss`; takes the same
    arguments (`inplace` excepted), or one `SoftHardSpec`: `soft_hard_loss_reference(logits, spec)`."""
    spec = args[0] if len(args) == 1 and not kw and isinstance(args[0], SoftHardSpec) else SoftHardSpec(*args, **kw)
    return reference_from_spec(logits, spec)


def reference_from_spec(logits, spec: SoftHardSpec):
    """The reference's body: the C-wide target, log_softmax, KL / cross-entropy, the reduction."""
    s = spec
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    z = logits.to(acc)
    B, C = z.shape
    zero = z.new_zeros(B)
    soft_rows, hard_rows = zero, zero
    if (s.topk_values is not None or s.teacher_logits is not None) and s.soft_weight != 0:
        if s.teacher_logits is not None:
            Tt = s.temperature if s.teacher_temperature is None else s.teacher_temperature
            q = torch.softmax(s.teacher_logits.to(acc) / Tt, dim=1)
        else:
            q = decode_dense(s.topk_ids, s.topk_values, C, s.decode, s.codebook, acc)
        logp = F.log_softmax(z / s.temperature, dim=1)
        soft_rows = -(q * logp).sum(1)
        if s.soft_loss == "kl":
            soft_rows = soft_rows + torch.special.xlogy(q, q).sum(1)
        soft_rows = soft_rows * (s.soft_weight * (s.temperature**2 if s.hinton else 1.0))
    count = torch.tensor(B)
    if s.hard_target is not None and s.hard_weight != 0:
        valid = s.hard_target != s.ignore_index
        ya = torch.where(valid, s.hard_target, torch.zeros_like(s.hard_target)).long()
        t = F.one_hot(ya, C).to(acc)
        if s.target_b is not None:
            lam = s.mix_lambda if torch.is_tensor(s.mix_lambda) else torch.full((B,), float(s.mix_lambda))
            lam = lam.to(device=z.device, dtype=acc)[:, None]
            t = lam * t + (1 - lam) * F.one_hot(s.target_b.long(), C).to(acc)
        t = (1 - s.label_smoothing) * t + s.label_smoothing / C
        hard_rows = -(t * F.log_softmax(z, dim=1)).sum(1) * valid.to(acc) * s.hard_weight
        count = valid.sum()
    if s.reduction == "none":
        return soft_rows + hard_rows
    if s.reduction == "sum":
        return (soft_rows + hard_rows).sum()
    if s.reduction == "batchmean":
        return (soft_rows + hard_rows).sum() / B
    if s.reduction == "mean":  # hard term: mean over rows that are not ignored (0 if all are)
        return soft_rows.sum() / B + hard_rows.sum() / count.clamp_min(1)
    raise ValueError(f"unknown reduction {s.reduction!r}")
