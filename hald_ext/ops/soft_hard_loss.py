"""`hald::soft_hard_loss`: fake kernels, autograd and the wrapper."""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from hald_ext import _ext

_DECODES = ("marginal", "renorm", "truncate")
_REDUCTIONS = ("batchmean", "mean", "sum", "none")


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------------
# Registration (only when the compiled library loaded: a fake kernel for an op that does not exist
# would turn a build problem into a confusing "operator does not exist" at import).
if _ext.loaded():

    def _arg_names(op) -> tuple[str, ...]:
        """The op's argument names after `logits`, read from its registered schema (written once, in C++)."""
        return tuple(_ext.schema_names(op.default)[1:])

    _ARGS = _arg_names(torch.ops.hald.soft_hard_loss)  # (..., "ignore_index", "compute_grad")
    _INPLACE_ARGS = _arg_names(torch.ops.hald.soft_hard_loss_)  # the same without compute_grad

    @torch.library.register_fake("hald::soft_hard_loss")
    def _soft_hard_loss_fake(logits, *args):
        kw = dict(zip(_ARGS, args))
        torch._check(logits.dim() == 2, lambda: "soft_hard_loss: logits must be 2-D")
        B, C = logits.shape
        for name in ("topk_ids", "topk_values", "teacher_logits", "hard_target"):
            if kw[name] is not None:
                torch._check(kw[name].shape[0] == B, lambda: f"soft_hard_loss: {name} batch mismatch")
        rows = logits.new_empty((B,), dtype=_acc_dtype(logits.dtype))
        grad = logits.new_empty((B, C)) if kw["compute_grad"] else logits.new_empty((0,))
        return rows, grad

    @torch.library.register_fake("hald::soft_hard_loss_")
    def _soft_hard_loss_inplace_fake(logits, *args):
        return logits.new_empty((logits.shape[0],), dtype=_acc_dtype(logits.dtype))

    def _is_plain_cpu(t) -> bool:
        """A real CPU tensor, not one being traced (compile, fake or functional tensors, dispatch modes)."""
        return (type(t) is torch.Tensor and t.device.type == "cpu" and not torch.compiler.is_compiling()
                and _get_current_dispatch_mode() is None)

    def _setup_context(ctx, inputs, output):
        _, grad = output
        ctx.save_for_backward(grad)
        # The second output (the gradient) normally gets no gradient of its own; autograd would then
        # pass backward a zero-filled [B, C] tensor for it, a second logits-sized buffer allocated
        # and zeroed on every step only to be ignored. Unmaterialised, it arrives as None.
        ctx.set_materialize_grads(False)

    _NO_GRADS = (None,) * len(_ARGS)

    def _backward(ctx, grad_rows, _grad_grad):
        (grad,) = ctx.saved_tensors
        if grad_rows is None:  # only the gradient output was used downstream: nothing flows to logits
            return (None,) + _NO_GRADS
        # Out of place, so retain_graph / gradcheck / double use stay correct; `inplace=True` is the
        # mode that keeps no second logits-sized buffer.
        if _is_plain_cpu(grad_rows) and bool((grad_rows == 1).all()):
            # The usual case (a reduced loss at the end of the graph): the forward's gradient is the
            # answer. Checking costs nothing on CPU (no device to sync with); autograd copies it if
            # the graph is retained, so the saved buffer is never changed.
            return (grad,) + _NO_GRADS
        # The product is formed in fp32 and rounded once into the logits dtype.
        out = torch.mul(grad, grad_rows.unsqueeze(1), out=torch.empty_like(grad))
        return (out,) + _NO_GRADS

    torch.library.register_autograd("hald::soft_hard_loss", _backward, setup_context=_setup_context)


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
        return (buf.mul_(grad_rows.unsqueeze(1)),) + (None,) * ctx.n_args


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
            per row; None with `topk_values` [B, C] for a dense target; None for no soft term.
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
            buffer; the logits values are lost, and backward can run once).
        teacher_logits: [B, C] the teacher's logits (any float dtype) as the soft target:
            `softmax(teacher_logits / teacher_temperature)`, fused (never materialised). Not with
            `topk_values`.
        teacher_temperature: temperature of the teacher's softmax (default: `temperature`).

    Returns:
        The reduced loss (float32; float64 for float64 logits), or per-row losses for "none".
        Its backward scales the gradient computed in the forward pass.

    On CPU, out-of-range ids / targets, repeated ids, negative or non-finite stored values or teacher
    logits, and dense rows that do not sum to one under "marginal" raise. On CUDA such rows get a NaN
    loss and a NaN gradient row instead (raising would need a host sync); validate labels once when
    loading them.
    """
    _ext.require()
    if decode not in _DECODES:
        raise ValueError(f"soft_hard_loss: decode must be one of {_DECODES}, got {decode!r}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"soft_hard_loss: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if mix_lambda is not None and not torch.is_tensor(mix_lambda):
        mix_lambda = torch.full((logits.shape[0],), float(mix_lambda), device=logits.device,
                                dtype=_acc_dtype(logits.dtype))
    kw = dict(topk_ids=topk_ids, topk_values=topk_values, hard_target=hard_target, target_b=target_b,
              mix_lambda=mix_lambda, codebook=codebook, teacher_logits=teacher_logits,
              temperature=float(temperature),
              teacher_temperature=float(temperature if teacher_temperature is None else teacher_temperature),
              soft_weight=float(soft_weight), hard_weight=float(hard_weight), label_smoothing=float(label_smoothing),
              decode=decode, soft_loss=soft_loss, hinton=bool(hinton), reduction=reduction,
              ignore_index=int(ignore_index))
    args = tuple(kw[name] for name in _INPLACE_ARGS)
    if inplace:
        rows = _InplaceSoftHard.apply(logits, *args)
    else:
        compute_grad = logits.requires_grad and torch.is_grad_enabled()
        rows, _ = torch.ops.hald.soft_hard_loss.default(logits, *args, compute_grad)
    return rows if reduction == "none" else rows.sum()
