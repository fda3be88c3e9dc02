"""How much of the teacher's full label a stored label keeps: KL(full || decoded stored label).

The decoded label is what the loss trains towards (docs/method.md): q_c is the stored value for the
k stored classes and, with the marginal decode, the left-over mass (1 - sum of stored) spread evenly
over the other C - k classes. The KL is computed from the k stored entries and that one shared rest
value in float64, so no [N, C] label is ever built and no kernel is involved: this measures the store."""
from __future__ import annotations

import math

import torch

from hald_ext.labels.format import DECODES

# A decoded probability below this counts as this much: a label that drops mass the teacher put on a
# class (renorm / truncate top-k, or a float16 probability that underflowed to 0) then gets a large
# finite KL, p * log(p / Q_FLOOR), instead of inf, so means over many labels stay readable.
Q_FLOOR = 1e-12
CHUNK_ROWS = 4096


def kl_to_full(full_probs: torch.Tensor, ids: torch.Tensor | None, values: torch.Tensor,
               codebook: torch.Tensor | None, decode: str, chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """float64 [N]: KL(full_probs[i] || q[i]) in nats, q[i] the stored label i decoded with `decode`.

    A decoded label need not sum to 1 (truncate, or rounded codes / float16 values), so this is the
    generalised KL, sum p log(p / q) - sum p + sum q: >= 0 always, the plain KL when q sums to 1.

    full_probs: [N, C] the teacher's full probabilities (rows summing to 1).
    ids: [N, k] stored class ids, or None for a full-width label (k == C, values in class order).
    values: [N, k] (or [N, C] with ids None): float probabilities (codebook None) or integer codes
    into `codebook`. Computed `chunk_rows` rows at a time, so N x C is never decoded at once."""
    if decode not in DECODES:
        raise ValueError(f"decode must be one of {DECODES}, got {decode!r}")
    if full_probs.dim() != 2:
        raise ValueError(f"full_probs must be [N, C], got shape {list(full_probs.shape)}")
    N, C = full_probs.shape
    if values.dim() != 2 or values.shape[0] != N:
        raise ValueError(f"values must be [N={N}, k], got shape {list(values.shape)}")
    if ids is None:
        if values.shape[1] != C:
            raise ValueError(f"without ids, values must be full-width [N, C={C}], got {list(values.shape)}")
    elif ids.shape != values.shape:
        raise ValueError(f"ids {list(ids.shape)} and values {list(values.shape)} must have the same shape")
    if codebook is None and not values.is_floating_point():
        raise ValueError(f"integer values ({values.dtype}) need the codebook they index")
    out = torch.empty(N, dtype=torch.float64, device=full_probs.device)  # on the labels' device
    all_ids = torch.arange(C, device=full_probs.device).expand(min(chunk_rows, N), C) if ids is None else None
    for lo in range(0, N, chunk_rows):
        hi = min(lo + chunk_rows, N)
        p = full_probs[lo:hi].to(torch.float64)
        row_ids = (ids[lo:hi].long() & 0xFFFF) if ids is not None else all_ids[: hi - lo]
        out[lo:hi] = _kl_rows(p, row_ids, _probabilities(values[lo:hi], codebook), decode)
    return out


def _probabilities(values: torch.Tensor, codebook: torch.Tensor | None) -> torch.Tensor:
    """Stored values as float64 probabilities: codes index the codebook (int16 codes read unsigned)."""
    if codebook is None:
        return values.to(torch.float64)
    return codebook.to(torch.float64)[values.long() & 0xFFFF]


def _kl_rows(p: torch.Tensor, ids: torch.Tensor, v: torch.Tensor, decode: str) -> torch.Tensor:
    """Generalised KL(p || q) per row, q the decoded label: v on the stored ids and one shared value
    `rest` on the other C - k classes (the marginal's spread mass, or 0 for renorm / truncate)."""
    C, k = p.shape[1], ids.shape[1]
    stored_sum = v.sum(1)
    if decode == "renorm":
        v = torch.where(stored_sum[:, None] > 0, v / stored_sum.clamp_min(torch.finfo(torch.float64).tiny)[:, None],
                        torch.zeros_like(v))
        stored_sum = v.sum(1)
    if decode == "marginal" and C > k:
        rest = (1 - stored_sum).clamp_min(0) / (C - k)
    else:
        rest = torch.zeros_like(stored_sum)
    p_stored = p.gather(1, ids)
    p_rest = (p.sum(1) - p_stored.sum(1)).clamp_min(0)
    cross = torch.xlogy(p_stored, v.clamp_min(Q_FLOOR)).sum(1) + p_rest * torch.log(rest.clamp_min(Q_FLOOR))
    q_sum = stored_sum + (C - k) * rest
    return torch.xlogy(p, p).sum(1) - cross - p.sum(1) + q_sum


def uniform_kl(full_probs: torch.Tensor, chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """float64 [N]: KL(full || uniform) = log C - H(full), the reference a stored label should beat."""
    N, C = full_probs.shape
    out = torch.empty(N, dtype=torch.float64, device=full_probs.device)
    for lo in range(0, N, chunk_rows):
        p = full_probs[lo:lo + chunk_rows].to(torch.float64)
        out[lo:lo + chunk_rows] = torch.xlogy(p, p).sum(1) + math.log(C)
    return out
