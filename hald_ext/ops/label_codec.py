"""`hald::label_encode`, `hald::label_decode`, `hald::label_decode_dense`: fake kernels and wrappers.

The codec turns teacher outputs into the label store's top-k ids and codes, and back. It is not
differentiable (labels are targets), so no autograd is registered. A label with k == C is full
width: no ids, codes [N, C] in class order."""
from __future__ import annotations

import torch

from hald_ext import _ext
from hald_ext.ops.soft_hard_loss import DECODES

_DECODES = DECODES  # the decode modes, defined once (ops.soft_hard_loss)

if _ext.loaded():

    @torch.library.register_fake("hald::label_encode")
    def _label_encode_fake(scores, k, temperature, from_logits, thresholds):
        torch._check(scores.dim() == 2, lambda: "label_encode: scores must be 2-D")
        N, C = scores.shape
        ids_dtype = torch.uint16 if C <= 65535 else torch.int32
        code_dtype = torch.uint8 if thresholds.shape[0] == 255 else torch.uint16
        full = k == C
        return (scores.new_empty((N, 0 if full else k), dtype=ids_dtype),
                scores.new_empty((N, k), dtype=code_dtype))

    @torch.library.register_fake("hald::label_decode")
    def _label_decode_fake(codes, codebook):
        return codes.new_empty(codes.shape, dtype=torch.float32)

    @torch.library.register_fake("hald::label_decode_dense")
    def _label_decode_dense_fake(ids, codes, codebook, num_classes, decode):
        return codes.new_empty((codes.shape[0], num_classes), dtype=torch.float32)


def label_encode(scores: torch.Tensor, k: int, thresholds: torch.Tensor, *, temperature: float = 1.0,
                 from_logits: bool = False) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Top-k soft labels of teacher outputs, quantised.

    Args:
        scores: [N, C] teacher logits (`from_logits=True`; the label is softmax(logits / temperature))
            or probabilities (rows summing to one; coded as given, `temperature` must stay 1).
        k: entries kept per row, 1 <= k <= C; k == C keeps every class (a full-width label).
        thresholds: the quantiser's sorted decision thresholds, float32 [255] (8-bit codes) or
            [65535] (16-bit codes), on the device of `scores`
            (`hald_ext.labels.Quantizer.thresholds`).

    Returns:
        (ids, codes): [N, k] class ids (uint16 when C <= 65535, else int32) in decreasing order of
        probability (ties: lower id first), and codes (uint8 / uint16) indexing the quantiser's
        codebook. With k == C, ids is None and codes [N, C] are in class order. NaN, infinite
        logits, or negative / non-normalised probabilities raise.
    """
    _ext.require()
    ids, codes = torch.ops.hald.label_encode.default(scores, int(k), float(temperature), bool(from_logits),
                                                     thresholds)
    return (None if int(k) == scores.shape[-1] else ids), codes


def label_decode(codes: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Codes (uint8 / uint16) -> float32 probabilities through the store's codebook."""
    _ext.require()
    return torch.ops.hald.label_decode.default(codes, codebook)


def label_decode_dense(ids: torch.Tensor | None, codes: torch.Tensor, codebook: torch.Tensor, num_classes: int,
                       decode: str = "marginal") -> torch.Tensor:
    """Top-k labels -> the dense float32 [N, num_classes] target (docs/method.md, "Stored labels"), for inspection
    and evaluation; training never needs it (`soft_hard_loss` takes ids and codes directly).
    `ids=None`: `codes` [N, num_classes] are a full-width label in class order."""
    _ext.require()
    if decode not in _DECODES:
        raise ValueError(f"label_decode_dense: decode must be one of {_DECODES}, got {decode!r}")
    return torch.ops.hald.label_decode_dense.default(ids, codes, codebook, int(num_classes), decode)
