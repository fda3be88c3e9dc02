"""ConvNet-3 of the dataset-distillation literature (DC / DSA / MTT): 3 x [conv3x3(128), instance
norm (GroupNorm with one group per channel), ReLU, avg-pool 2], then a linear classifier."""
from __future__ import annotations

from timm.models import register_model
from torch import nn


class ConvNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: int = 128, depth: int = 3,
                 img_size: int = 32, **_):
        super().__init__()
        layers, c, s = [], in_chans, img_size
        for _ in range(depth):
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.GroupNorm(width, width, affine=True), nn.ReLU(inplace=True),
                       nn.AvgPool2d(2)]
            c, s = width, s // 2
        self.features = nn.Sequential(*layers)
        self.num_features = width * s * s
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


@register_model
def convnet3(pretrained: bool = False, **kwargs) -> ConvNet:
    """ConvNet-3 (DC/DSA). `img_size` 28 (Fashion-MNIST) or 32; default 32."""
    if pretrained:
        raise ValueError("convnet3 has no pretrained weights; train a teacher with `hald teacher`")
    kwargs.pop("pretrained_cfg", None)
    kwargs.pop("pretrained_cfg_overlay", None)
    return ConvNet(**kwargs)
