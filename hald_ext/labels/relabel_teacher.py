"""The teacher side of `hald relabel`: an ensemble's logits, its BatchNorm mode, and label quality.

Ensemble (HALD `relabel/relabel_slc.py`, `save()`): the label is softmax(sum_i w_i * logits_i / T).
Without weights every teacher gets w_i = 1 / n (the plain mean of the logits); with weights given,
HALD turns them into w = softmax(weights / 10) (its fixed temperature of 10), and so do we.

BatchNorm: HALD's relabel puts its teachers in train mode (`model.train()`) unless the images are
RDED's ("batch-specific soft labelling": the teacher normalises each batch with that batch's own
statistics, which suits synthetic / few images whose statistics differ from the teacher's training
data). `teacher_mode(models, "train")` does that for BatchNorm layers only (dropout and the rest
stay in eval mode, so labels stay deterministic) and restores every BatchNorm running statistic
(running_mean, running_var, num_batches_tracked) on exit: the teacher is unchanged afterwards.

Weights (docs/teachers.md): each --model is followed by --checkpoint FILE (a state dict this package
wrote), --pretrained (timm's hub / torchvision's DEFAULT weights) or --pretrained-file FILE (timm's
local-file mechanism, or a torchvision state dict for tv:NAME); the argparse actions below keep them in
command-line order so the i-th belongs to the i-th model. Pretrained weights of another class count
need --class-map (hald_ext.models.pretrained.for_classes).
"""
from __future__ import annotations

import argparse
import contextlib
import os

import torch
from torch import nn

from hald_ext.labels.quality import kl_to_full, uniform_kl
from hald_ext.labels.quantizer import encode_rows
from hald_ext.models import create_model, for_classes, pretrained_model
from hald_ext.ops import label_encode

BN_MODES = ("train", "eval")
HALD_WEIGHT_TEMPERATURE = 10.0


def ensemble_weights(n: int, weights=None) -> torch.Tensor:
    """float64 [n]: 1 / n each, or HALD's softmax(weights / 10) of the given raw weights."""
    if weights is None:
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    w = torch.as_tensor([float(v) for v in weights], dtype=torch.float64)
    if w.numel() != n:
        raise ValueError(f"--teacher-weights: {w.numel()} weights for {n} teachers")
    if not torch.isfinite(w).all():
        raise ValueError("--teacher-weights must be finite numbers")
    return torch.softmax(w / HALD_WEIGHT_TEMPERATURE, 0)


def ensemble_logits(models, weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_i weights[i] * models[i](x), in float32."""
    out = None
    for m, w in zip(models, weights.tolist()):
        z = m(x).float() * w
        out = z if out is None else out + z
    return out


def _batchnorms(models):
    return [mod for m in models for mod in m.modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def teacher_mode(models, bn: str):
    """Eval mode, with BatchNorm layers in train mode when `bn == "train"`; running statistics and
    every module's train / eval flag are restored on exit."""
    if bn not in BN_MODES:
        raise ValueError(f"--teacher-bn must be one of {BN_MODES}, got {bn!r}")
    flags = [(mod, mod.training) for m in models for mod in m.modules()]
    bns = _batchnorms(models)
    saved = [{name: buf.detach().clone() for name, buf in mod.named_buffers(recurse=False) if buf is not None}
             for mod in bns]
    try:
        for m in models:
            m.eval()
        if bn == "train":
            for mod in bns:
                mod.train()
        yield
    finally:
        with torch.no_grad():
            for mod, state in zip(bns, saved):
                for name, value in state.items():
                    getattr(mod, name).copy_(value)
        for mod, flag in flags:
            mod.training = flag


def encode_labels(logits: torch.Tensor, k: int, temperature: float, quantizer, thresholds):
    """(ids [B, k], values [B, k]) of softmax(logits / T): the fused encoder for codes (top-k, or full
    width: k == C gives ids None and codes in class order); fp16 values are the probabilities
    themselves. Ties keep the lower class id first, as the encoder does."""

    if not quantizer.is_float:
        return label_encode(logits, k, thresholds, temperature=temperature, from_logits=True)
    if not torch.isfinite(logits).all():
        raise ValueError("relabel: the teacher returned NaN or infinite logits")
    return encode_rows(torch.softmax(logits.double() / temperature, 1), k, quantizer)


def label_kl(logits: torch.Tensor, temperature: float, ids, values: torch.Tensor, codebook, decode: str):
    """float64 [B] KL(teacher's full label || stored label decoded with `decode`) and float64 [B]
    KL(full label || uniform), for comparison (hald_ext.labels.quality), on the host. Computed on the
    logits' device: only the two [B] results cross to the host, not the [B, C] probabilities."""

    dev = logits.device
    p = torch.softmax(logits.double() / temperature, 1)
    kl = kl_to_full(p, None if ids is None else ids.to(dev), values.to(dev),
                    None if codebook is None else codebook.to(dev), decode)
    return kl.cpu(), uniform_kl(p).cpu()


# ------------------------------------------------------------------------------- teacher weights
WEIGHT_KINDS = ("checkpoint", "pretrained", "pretrained-file")
_ORDER = "_teacher_weights_in_order"  # namespace attribute (no dest): every weights option in command-line order


def _ordered(base, kind: str):
    """An argparse action that also records (kind, value) in command-line order, so the i-th weights
    option (--checkpoint / --pretrained / --pretrained-file) belongs to the i-th --model."""

    class Ordered(base):
        def __call__(self, parser, namespace, values, option_string=None):
            super().__call__(parser, namespace, values, option_string)
            setattr(namespace, _ORDER, [*(getattr(namespace, _ORDER, None) or []),
                                        (kind, None if kind == "pretrained" else values)])

    return Ordered


CheckpointAction = _ordered(argparse._AppendAction, "checkpoint")
PretrainedAction = _ordered(argparse._StoreTrueAction, "pretrained")
PretrainedFileAction = _ordered(argparse._AppendAction, "pretrained-file")


def teacher_weight_specs(args) -> list:
    """[(kind, value)] of the parsed weights options, in command-line order."""
    return list(getattr(args, _ORDER, None) or [])


def load_teacher(name: str, kind: str, value, classes: list, img_size=None, class_map=None) -> nn.Module:
    """One teacher for data of `classes`: `kind` "checkpoint" (a state dict this package wrote, of the
    data's classes), "pretrained" (timm's hub / torchvision's weights) or "pretrained-file" (a local
    file of pretrained weights); pretrained weights of another class count need `class_map`
    (hald_ext.models.pretrained.for_classes)."""

    if kind not in WEIGHT_KINDS:
        raise ValueError(f"teacher {name!r}: unknown weights kind {kind!r} (one of {WEIGHT_KINDS})")
    if kind == "checkpoint":
        if not os.path.isfile(value):
            raise FileNotFoundError(f"--checkpoint {value} (teacher {name!r}) does not exist")
        try:
            return create_model(name, len(classes), img_size=img_size, checkpoint=value)
        except (RuntimeError, KeyError, TypeError) as e:
            raise ValueError(f"--checkpoint {value} does not load into teacher {name!r} with {len(classes)} classes: "
                             f"{str(e).splitlines()[0]}") from None
    model = pretrained_model(name, value if kind == "pretrained-file" else None)
    return for_classes(model, classes, class_map, what="teacher")


def load_teachers(models: list, weights: list, num_classes: int, img_size: int, classes=None,
                  class_map=None) -> list:
    """One model per --model, each with the weights option that follows it: (kind, value) pairs of
    `relabel_teacher.teacher_weight_specs` (a plain path is a --checkpoint); a teacher without weights
    is an error naming it. Pretrained teachers of another class count need `class_map`."""
    weights = [("checkpoint", w) if isinstance(w, str) else tuple(w) for w in weights]
    classes = list(classes) if classes is not None else [str(c) for c in range(num_classes)]
    if len(weights) < len(models):
        name = models[len(weights)]
        raise ValueError(f"teacher {name!r} has no weights: give --checkpoint FILE, --pretrained or --pretrained-file "
                         f"FILE after --model {name} (relabel never labels with random weights)")
    if len(weights) > len(models):
        raise ValueError(f"{len(weights)} weights options (--checkpoint / --pretrained / --pretrained-file) for "
                         f"{len(models)} --model teachers")
    return [load_teacher(name, kind, value, classes, img_size, class_map)
            for name, (kind, value) in zip(models, weights)]
