"""Backbones: plain ``nn.Module`` s that meta-learners adapt or embed with."""

from metarun.backbones.conv4 import Conv4
from metarun.backbones.mlp import MLP
from metarun.backbones.resnet12 import ResNet12
from metarun.backbones.timm_model import TimmBackbone

__all__ = ["Conv4", "MLP", "ResNet12", "TimmBackbone"]
