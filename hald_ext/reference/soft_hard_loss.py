"""Reference of the fused soft-KL / hard-CE loss (dense decode, log_softmax, KL / cross-entropy)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


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
    """The C-wide target q of METHOD.md section 3 (what the fused kernel never builds). With
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


def soft_hard_loss_reference(logits, topk_ids=None, topk_values=None, hard_target=None, *, codebook=None,
                             temperature=1.0, soft_weight=1.0, hard_weight=0.0, label_smoothing=0.0,
                             decode="marginal", reduction="batchmean", target_b=None, mix_lambda=None,
                             ignore_index=-100, soft_loss="kl", hinton=False, teacher_logits=None,
                             teacher_temperature=None):
    """Dense soft-KL / hard-CE loss with the semantics of `hald_ext.ops.soft_hard_loss`."""
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    z = logits.to(acc)
    B, C = z.shape
    zero = z.new_zeros(B)
    soft_rows, hard_rows = zero, zero
    if (topk_values is not None or teacher_logits is not None) and soft_weight != 0:
        if teacher_logits is not None:
            Tt = temperature if teacher_temperature is None else teacher_temperature
            q = torch.softmax(teacher_logits.to(acc) / Tt, dim=1)
        else:
            q = decode_dense(topk_ids, topk_values, C, decode, codebook, acc)
        logp = F.log_softmax(z / temperature, dim=1)
        soft_rows = -(q * logp).sum(1)
        if soft_loss == "kl":
            soft_rows = soft_rows + torch.special.xlogy(q, q).sum(1)
        soft_rows = soft_rows * (soft_weight * (temperature**2 if hinton else 1.0))
    count = torch.tensor(B)
    if hard_target is not None and hard_weight != 0:
        valid = hard_target != ignore_index
        ya = torch.where(valid, hard_target, torch.zeros_like(hard_target)).long()
        t = F.one_hot(ya, C).to(acc)
        if target_b is not None:
            lam = mix_lambda if torch.is_tensor(mix_lambda) else torch.full((B,), float(mix_lambda))
            lam = lam.to(device=z.device, dtype=acc)[:, None]
            t = lam * t + (1 - lam) * F.one_hot(target_b.long(), C).to(acc)
        t = (1 - label_smoothing) * t + label_smoothing / C
        hard_rows = -(t * F.log_softmax(z, dim=1)).sum(1) * valid.to(acc) * hard_weight
        count = valid.sum()
    if reduction == "none":
        return soft_rows + hard_rows
    if reduction == "sum":
        return (soft_rows + hard_rows).sum()
    if reduction == "batchmean":
        return (soft_rows + hard_rows).sum() / B
    if reduction == "mean":  # hard term: mean over rows that are not ignored (0 if all are)
        return soft_rows.sum() / B + hard_rows.sum() / count.clamp_min(1)
    raise ValueError(f"unknown reduction {reduction!r}")
