"""Model construction by name (timm's registry, which also holds convnet3) and checkpoint loading."""
from __future__ import annotations

import timm
import torch

import hald_ext.models.convnet  # noqa: F401  (registers convnet3 with timm)


def create_model(name: str, num_classes: int, img_size: int | None = None, checkpoint: str | None = None,
                 **kwargs) -> torch.nn.Module:
    """A timm model by name; `checkpoint` is a state dict saved by this package (or a bare state dict),
    loaded with weights_only=True (no pickled code)."""
    if not timm.is_model(name):
        raise ValueError(f"unknown model {name!r}: not in timm's registry (e.g. resnet18, convnet3)")
    if name.startswith("convnet") and img_size is not None:
        kwargs["img_size"] = img_size
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    if checkpoint is not None:
        load_checkpoint_state(model, torch.load(checkpoint, map_location="cpu", weights_only=True))
    return model


def load_checkpoint_state(model: torch.nn.Module, state: dict) -> torch.nn.Module:
    """Weights from a checkpoint this package wrote ({"model": state_dict, ...}) or a bare state dict;
    the normalisation the weights were trained with, when recorded (`hald teacher` / `hald train`),
    is kept as `model.hald_normalization` (read by hald_ext.data.normalize.normalization_of)."""
    if isinstance(state, dict) and "model" in state:
        if state.get("mean") is not None and state.get("std") is not None:
            model.hald_normalization = (tuple(state["mean"]), tuple(state["std"]))
        state = state["model"]
    model.load_state_dict(state)
    return model
