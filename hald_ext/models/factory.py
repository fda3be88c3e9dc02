"""Model construction by name (timm's registry, which also holds convnet3; torchvision's as tv:NAME)
and checkpoint loading."""
from __future__ import annotations

import timm
import torch

import hald_ext.models.convnet  # noqa: F401  (registers convnet3 with timm)
from hald_ext.models.pretrained import is_torchvision, pretrained_model, torchvision_model


def create_model(name: str, num_classes: int, img_size: int | None = None, checkpoint: str | None = None,
                 pretrained: bool = False, pretrained_file: str | None = None, **kwargs) -> torch.nn.Module:
    """A timm model by name (or torchvision's, named tv:NAME) of `num_classes` outputs; `checkpoint` is
    a state dict saved by this package (or a bare state dict), loaded with weights_only=True (no pickled
    code). `pretrained` / `pretrained_file`: start from pretrained weights (the hub's, or a local file's;
    hald_ext.models.pretrained), with a fresh classifier when their class count is not `num_classes`."""
    if not is_torchvision(name) and not timm.is_model(name):
        raise ValueError(f"unknown model {name!r}: not in timm's registry (e.g. resnet18, convnet3); a torchvision "
                         "model is named tv:NAME (e.g. tv:resnet18)")
    if name.startswith("convnet") and img_size is not None:
        kwargs["img_size"] = img_size
    if pretrained or pretrained_file is not None:
        model = pretrained_model(name, pretrained_file, num_classes=num_classes, **kwargs)
    elif is_torchvision(name):
        model = torchvision_model(name, num_classes)
    else:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    if checkpoint is not None:
        load_checkpoint_state(model, torch.load(checkpoint, map_location="cpu", weights_only=True))
    return model


def load_checkpoint_state(model: torch.nn.Module, state: dict) -> torch.nn.Module:
    """Weights from a checkpoint this package wrote ({"model": state_dict, ...}) or a bare state dict;
    the normalisation the weights were trained with, when recorded (`hald teacher` / `hald train`),
    is kept as `model.hald_normalization` (read by hald_ext.core.normalize.normalization_of)."""
    if isinstance(state, dict) and "model" in state:
        if state.get("mean") is not None and state.get("std") is not None:
            model.hald_normalization = (tuple(state["mean"]), tuple(state["std"]))
        state = state["model"]
    model.load_state_dict(state)
    return model
