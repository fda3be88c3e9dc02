"""The options that give a command a pretrained teacher (hald relabel, hald lvsd, hald teacher's fine-tuning)."""
from __future__ import annotations

from hald_ext.commands.options import TEACHER
from hald_ext.models.pretrained import CLASS_MAP_HELP
from hald_ext.train.options import option


def pretrained_flag(role: str, group: str = TEACHER):
    return option(False, f"{role} the published pretrained weights (timm: the Hugging Face hub or its cache; "
                         "tv:NAME: torchvision's DEFAULT weights); needs network or a cached copy", group=group)


def pretrained_file_option(role: str, group: str = TEACHER):
    return option(None, f"{role} pretrained weights from a local file (timm: its own file mechanism, .pth / .bin / "
                        ".safetensors; tv:NAME: a torchvision state dict)", group=group, metavar="FILE")


def class_map_option(group: str = TEACHER):
    return option(None, CLASS_MAP_HELP, group=group)
