"""Models not in timm, registered with timm so `timm.create_model(name)` builds them."""
from hald_ext.models.convnet import ConvNet, convnet3
from hald_ext.models.factory import create_model

__all__ = ["ConvNet", "convnet3", "create_model"]
