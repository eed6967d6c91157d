"""Schemas of the ``backbone`` group."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, List

from metarun.checks import POSITIVE, Range
from metarun.schemas.registry import schema

BATCH_NORMS = ("transductive", "running")
MEMORY_FORMATS = ("contiguous", "channels_last")


@schema("backbone", "conv4")
@dataclass
class Conv4Config:
    BOUNDS: ClassVar = {"hidden": POSITIVE, "blocks": POSITIVE}
    CHOICES: ClassVar = {
        "pool": ("max", "stride"),
        "batch_norm": BATCH_NORMS,
        "memory_format": MEMORY_FORMATS,
    }
    _target_: str = "metarun.backbones.Conv4"
    hidden: int = 64
    blocks: int = 4
    pool: str = "max"  # max | stride
    batch_norm: str = "${algo.batch_norm}"  # transductive | running; default: the algorithm's
    memory_format: str = "contiguous"  # contiguous (NCHW) | channels_last (NHWC), same values


@schema("backbone", "resnet12")
@dataclass
class ResNet12Config:
    BOUNDS: ClassVar = {"channels": POSITIVE, "dropout": Range(0, 1, open_high=True)}
    CHOICES: ClassVar = {"batch_norm": BATCH_NORMS, "memory_format": MEMORY_FORMATS}
    _target_: str = "metarun.backbones.ResNet12"
    channels: List[int] = field(default_factory=lambda: [64, 160, 320, 640])
    batch_norm: str = "${algo.batch_norm}"
    dropout: float = 0.0
    memory_format: str = "contiguous"  # contiguous (NCHW) | channels_last (NHWC), same values


@schema("backbone", "mlp")
@dataclass
class MLPConfig:
    BOUNDS: ClassVar = {"hidden": POSITIVE}
    CHOICES: ClassVar = {"activation": ("elu", "gelu", "relu", "tanh")}
    _target_: str = "metarun.backbones.MLP"
    hidden: List[int] = field(default_factory=lambda: [40, 40])
    activation: str = "relu"
