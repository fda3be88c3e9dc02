"""`hald::soft_hard_loss`: its argument spec, fake kernels and the Python entry points.

The argument list lives once per language: `HALD_SOFT_HARD_ARGS` in C++ (csrc/ops/soft_hard_loss.h,
the schema) and `SoftHardSpec` here (checked against the registered schema at import). The wrapper,
the fake kernel, the reference (`hald_ext.reference.soft_hard_loss_reference`) and the tests all build
one `SoftHardSpec`. Autograd is registered in C++ (the Autograd dispatch key), so a training step
runs no Python between the forward and the gradient.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from hald_ext import _ext

DECODES = ("marginal", "renorm", "truncate")
REDUCTIONS = ("batchmean", "mean", "sum", "none")


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class SoftHardSpec(NamedTuple):
    """Everything the fused loss takes besides the logits, in the op's schema order (see
    `soft_hard_loss` for each field's meaning). Build one and call `soft_hard_loss_spec(logits, spec)`,
    or `spec.op_args(logits)` for the raw operator's positional arguments."""

    topk_ids: torch.Tensor | None = None
    topk_values: torch.Tensor | None = None
    hard_target: torch.Tensor | None = None
    target_b: torch.Tensor | None = None
    mix_lambda: torch.Tensor | float | None = None
    codebook: torch.Tensor | None = None
    teacher_logits: torch.Tensor | None = None
    temperature: float = 1.0
    teacher_temperature: float | None = None  # None: `temperature`
    soft_weight: float = 1.0
    hard_weight: float = 0.0
    label_smoothing: float = 0.0
    decode: str = "marginal"
    soft_loss: str = "kl"
    hinton: bool = False
    reduction: str = "batchmean"
    ignore_index: int = -100

    def resolved(self, logits: torch.Tensor) -> "SoftHardSpec":
        """The spec as the operator takes it: names checked, teacher_temperature filled in, a float
        mix_lambda as a [B] tensor, numbers as Python floats / ints / bools."""
        if self.decode not in DECODES:
            raise ValueError(f"soft_hard_loss: decode must be one of {DECODES}, got {self.decode!r}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"soft_hard_loss: reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        lam = self.mix_lambda
        if lam is not None and not torch.is_tensor(lam):
            lam = torch.full((logits.shape[0],), float(lam), device=logits.device, dtype=_acc_dtype(logits.dtype))
        t = float(self.temperature)
        return self._replace(
            mix_lambda=lam, temperature=t,
            teacher_temperature=t if self.teacher_temperature is None else float(self.teacher_temperature),
            soft_weight=float(self.soft_weight), hard_weight=float(self.hard_weight),
            label_smoothing=float(self.label_smoothing), hinton=bool(self.hinton), ignore_index=int(self.ignore_index))

    def op_args(self, logits: torch.Tensor) -> tuple:
        """Positional arguments of `torch.ops.hald.soft_hard_loss_` (add `compute_grad` for the
        out-of-place op)."""
        return (logits, *self.resolved(logits))


# --------------------------------------------------------------------------------------------------
# Registration (only when the compiled library loaded: a fake kernel for an op that does not exist
# would turn a build problem into a confusing "operator does not exist" at import).
if _ext.loaded():
    _names = tuple(_ext.schema_names(torch.ops.hald.soft_hard_loss_.default)[1:])
    if _names != SoftHardSpec._fields or not hasattr(torch.ops.hald, "_soft_hard_loss_scale_"):  # pragma: no cover
        raise ImportError(f"hald_ext._C's soft_hard_loss takes {_names}, this package expects "
                          f"{SoftHardSpec._fields}: rebuild with `pip install --no-build-isolation -e .`")
    _N_SPEC = len(SoftHardSpec._fields)

    @torch.library.register_fake("hald::soft_hard_loss")
    def _soft_hard_loss_fake(logits, *args):
        spec, compute_grad = SoftHardSpec(*args[:_N_SPEC]), args[_N_SPEC]
        torch._check(logits.dim() == 2, lambda: "soft_hard_loss: logits must be 2-D")
        B, C = logits.shape
        for name in ("topk_ids", "topk_values", "teacher_logits", "hard_target"):
            t = getattr(spec, name)
            if t is not None:
                torch._check(t.shape[0] == B, lambda: f"soft_hard_loss: {name} batch mismatch")
        rows = logits.new_empty((B,), dtype=_acc_dtype(logits.dtype))
        grad = logits.new_empty((B, C)) if compute_grad else logits.new_empty((0,))
        return rows, grad

    @torch.library.register_fake("hald::soft_hard_loss_")
    def _soft_hard_loss_inplace_fake(logits, *args):
        return logits.new_empty((logits.shape[0],), dtype=_acc_dtype(logits.dtype))

    @torch.library.register_fake("hald::_soft_hard_loss_scale_")
    def _soft_hard_loss_scale_fake(grad, grad_rows):
        return None


class _InplaceSoftHard(torch.autograd.Function):
    """Writes the gradient into the logits buffer (their values are gone afterwards)."""

    @staticmethod
    def forward(ctx, logits, *args):
        buf = logits.detach()
        rows = torch.ops.hald.soft_hard_loss_.default(buf, *args)
        ctx.buf = buf
        ctx.n_args = len(args)
        return rows

    @staticmethod
    def backward(ctx, grad_rows):
        buf, ctx.buf = ctx.buf, None
        if buf is None:
            raise RuntimeError("soft_hard_loss(inplace=True): backward can run only once")
        torch.ops.hald._soft_hard_loss_scale_.default(buf, grad_rows)  # nothing to do when it is 1
        return (buf,) + (None,) * ctx.n_args


def soft_hard_loss_spec(logits: torch.Tensor, spec: SoftHardSpec, *, inplace: bool = False) -> torch.Tensor:
    """`soft_hard_loss` with its arguments in one `SoftHardSpec`."""
    _ext.require()
    args = spec.op_args(logits)
    if inplace:
        rows = _InplaceSoftHard.apply(*args)
    else:
        rows, _ = torch.ops.hald.soft_hard_loss.default(*args, logits.requires_grad and torch.is_grad_enabled())
    return rows if spec.reduction == "none" else rows.sum()


def soft_hard_loss(logits: torch.Tensor, topk_ids: torch.Tensor | None = None,
                   topk_values: torch.Tensor | None = None, hard_target: torch.Tensor | None = None, *,
                   codebook: torch.Tensor | None = None, temperature: float = 1.0, soft_weight: float = 1.0,
                   hard_weight: float = 0.0, label_smoothing: float = 0.0, decode: str = "marginal",
                   reduction: str = "batchmean", target_b: torch.Tensor | None = None,
                   mix_lambda: torch.Tensor | float | None = None, ignore_index: int = -100,
                   soft_loss: str = "kl", hinton: bool = False, inplace: bool = False,
                   teacher_logits: torch.Tensor | None = None,
                   teacher_temperature: float | None = None) -> torch.Tensor:
    """Fused soft-KL / hard-CE loss on stored soft labels, dense targets or teacher logits; loss and
    gradient in one pass.

    Args:
        logits: [B, C] float32 / bfloat16 / float16 (float64 for gradcheck); rows may be strided.
        topk_ids: [B, k] class ids (int64 / int32 / int16 / uint16) of the stored soft label, distinct
            per row (k = 0 is an empty label); None with `topk_values` [B, C] for a dense target; None
            for no soft term.
        topk_values: [B, k] probabilities (float16 / bfloat16 / float32 / float64) or integer codes
            (uint8 with a 256-entry `codebook`, int16 / uint16 with a 65536-entry one). Without
            `topk_ids` it is a dense target [B, C] (class j in column j), e.g. timm's Mixup targets or
            a full-width label store; decoded like a stored label with k = C ("marginal": taken as a
            distribution, rows must sum to one within 1e-2; "renorm": divided by the row sum;
            "truncate": taken as given).
        hard_target: [B] class ids for the hard term (rows equal to `ignore_index` are skipped).
        codebook: fp32 table mapping codes to probabilities (the label store provides it).
        temperature: T of the soft term; the target is a distribution at temperature T and the
            student is `softmax(logits / T)`.
        soft_weight, hard_weight: weights of the two terms (the hard term is off at weight 0).
        label_smoothing: eps of the hard target `(1 - eps) * onehot + eps / C`.
        decode: how a stored label becomes a distribution: "marginal" (the rest mass spread over the
            other classes), "renorm" (renormalised), "truncate" (as stored).
        reduction: "batchmean" (sum / B), "mean" (soft: sum / B; hard: mean over rows not ignored,
            0 when every row is ignored), "sum", or "none" (per-row float32 losses).
        target_b, mix_lambda: CutMix pair: the hard target is `lam * y_a + (1 - lam) * y_b`
            (`mix_lambda` a float or a [B] tensor).
        soft_loss: "kl" (KL divergence, the default) or "ce" (soft cross-entropy; same gradient).
        hinton: multiply the soft term by T^2.
        inplace: write the gradient into `logits`' buffer instead of a new one (saves one logits-sized
            buffer; the logits values are lost, backward can run once; rows must not overlap).
        teacher_logits: [B, C] the teacher's logits (any float dtype) as the soft target:
            `softmax(teacher_logits / teacher_temperature)`, fused (never materialised; a -inf entry
            masks its class: q = 0 there). Not with `topk_values`.
        teacher_temperature: temperature of the teacher's softmax (default: `temperature`).

    Returns:
        The reduced loss (float32; float64 for float64 logits), or per-row losses for "none".
        The gradient is computed in the forward pass when `logits` requires grad (and only then);
        backward multiplies it by the upstream gradient in place, and does nothing at all when that
        is 1 (a plain `loss.backward()`), without waiting for the GPU.

    On CPU, out-of-range ids / targets, repeated ids, negative or non-finite stored values, NaN or
    +inf teacher logits, and dense rows that do not sum to one under "marginal" raise. On CUDA such
    rows get a NaN loss and a NaN gradient row instead (raising would need a host sync); validate
    labels once when loading them.
    """
    spec = SoftHardSpec(topk_ids, topk_values, hard_target, target_b=target_b, mix_lambda=mix_lambda,
                        codebook=codebook, teacher_logits=teacher_logits, temperature=temperature,
                        teacher_temperature=teacher_temperature, soft_weight=soft_weight, hard_weight=hard_weight,
                        label_smoothing=label_smoothing, decode=decode, soft_loss=soft_loss, hinton=hinton,
                        reduction=reduction, ignore_index=ignore_index)
    return soft_hard_loss_spec(logits, spec, inplace=inplace)
