"""How much of the teacher's full label a stored label keeps: KL(full || decoded stored label).

The decoded label is what the loss trains towards (METHOD.md section 3), built here by the plain
reference decoder, so this measures the store, not a kernel."""
from __future__ import annotations

import math

import torch

from hald_ext.labels.format import DECODES
from hald_ext.reference.soft_hard_loss import decode_dense

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
    dense_ids = torch.arange(C, device=full_probs.device).expand(min(chunk_rows, N), C) if ids is None else None
    for lo in range(0, N, chunk_rows):
        hi = min(lo + chunk_rows, N)
        p = full_probs[lo:hi].to(torch.float64)
        row_ids = ids[lo:hi] if ids is not None else dense_ids[: hi - lo]
        q = decode_dense(row_ids, values[lo:hi], C, decode, codebook, torch.float64)
        out[lo:hi] = (torch.xlogy(p, p) - torch.xlogy(p, q.clamp_min(Q_FLOOR)) - p + q).sum(1)
    return out


def uniform_kl(full_probs: torch.Tensor, chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """float64 [N]: KL(full || uniform) = log C - H(full), the reference a stored label should beat."""
    N, C = full_probs.shape
    out = torch.empty(N, dtype=torch.float64, device=full_probs.device)
    for lo in range(0, N, chunk_rows):
        p = full_probs[lo:lo + chunk_rows].to(torch.float64)
        out[lo:lo + chunk_rows] = torch.xlogy(p, p).sum(1) + math.log(C)
    return out
