"""Models not in timm, registered with timm so `timm.create_model(name)` builds them; model creation by
name (timm's, or torchvision's as tv:NAME) with checkpoints or pretrained weights."""
from hald_ext.models.convnet import ConvNet, convnet3
from hald_ext.models.factory import create_model
from hald_ext.models.pretrained import ClassSubset, for_classes, pretrained_model

__all__ = ["ClassSubset", "ConvNet", "convnet3", "create_model", "for_classes", "pretrained_model"]
