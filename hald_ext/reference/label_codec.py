"""Reference of the label codec: top-k of softmax(z / T) (or of given probabilities), codes by the
quantiser's thresholds, and decoding through the codebook."""
from __future__ import annotations

import torch

from hald_ext.reference.soft_hard_loss import decode_dense, dequantize


def label_encode_reference(scores: torch.Tensor, k: int, thresholds: torch.Tensor, temperature: float = 1.0,
                           from_logits: bool = False) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(ids, codes, fp64 probabilities) of the k largest entries per row, ties to the lower class id.

    ids are uint16 when C <= 65535 (else int32), codes uint8 for 255 thresholds (else uint16); the
    float64 probabilities are what was coded (for distortion measurements). With k == C the label
    is full width: ids None, codes and probabilities [N, C] in class order."""
    z = scores.double()
    p = torch.softmax(z / temperature, dim=1) if from_logits else z
    C = scores.shape[1]
    code_dtype = torch.uint8 if thresholds.numel() == 255 else torch.uint16

    def code(probs):
        return torch.searchsorted(thresholds.double().contiguous(), probs.contiguous(), right=True).to(
            torch.int32).to(code_dtype)

    if k == C:
        return None, code(p), p
    # A stable sort of -p puts equal probabilities in increasing class order.
    order = torch.sort(-p, dim=1, stable=True).indices[:, :k]
    top = p.gather(1, order)
    ids = order.to(torch.int32).to(torch.uint16) if C <= 65535 else order.to(torch.int32)
    return ids, code(top), top


def label_decode_reference(codes: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    return dequantize(codes, codebook, torch.float32)


def label_decode_dense_reference(ids: torch.Tensor | None, codes: torch.Tensor, codebook: torch.Tensor,
                                 num_classes: int, decode: str = "marginal") -> torch.Tensor:
    """ids None: codes [N, num_classes] in class order (a full-width label)."""
    if ids is None:
        ids = torch.arange(num_classes, device=codes.device).expand(codes.shape[0], num_classes)
    return decode_dense(ids.to(torch.int64), codes, num_classes, decode, codebook, torch.float32)
