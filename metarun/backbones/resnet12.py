"""ResNet-12 as used across few-shot learning (TADAM, MetaOptNet, ProtoNet baselines)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from metarun.backbones.base import ImageBackbone
from metarun.backbones.norm import make_batch_norm
from metarun.errors import MetarunError


class _Block(nn.Module):
    """Three 3x3 conv + BN (+ LeakyReLU 0.1) with a 1x1-conv shortcut, then 2x2 max-pool and
    LeakyReLU."""

    def __init__(self, cin: int, cout: int, batch_norm: str, dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(3):
            layers += [
                nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False),
                make_batch_norm(batch_norm, cout),
            ]
            if i < 2:
                layers.append(nn.LeakyReLU(0.1))
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(
            nn.Conv2d(cin, cout, 1, bias=False), make_batch_norm(batch_norm, cout)
        )
        # Max-pool, then the (monotone) activation: the same result as the usual order, with
        # the activation on a quarter of the elements. Parameter names are unchanged.
        self.out = nn.Sequential(nn.MaxPool2d(2), nn.LeakyReLU(0.1), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x) + self.shortcut(x))


class ResNet12(ImageBackbone):
    """Four residual blocks (default 64-160-320-640 filters), global average pooling, optional
    linear head (``out_features``); the embedding is ``channels[-1]``-dimensional."""

    def __init__(
        self,
        input_shape: Sequence[int],
        out_features: int | None,
        channels: Sequence[int] = (64, 160, 320, 640),
        batch_norm: str = "running",
        dropout: float = 0.0,
        memory_format: str = "contiguous",
    ) -> None:
        super().__init__()
        if min(input_shape[1:]) < 2 ** len(channels):
            raise MetarunError(
                f"a {input_shape[1]}x{input_shape[2]} image is too small for ResNet-12's "
                f"{len(channels)} pooling stages; raise dataset.image_size to at least "
                f"{2 ** len(channels)}"
            )
        blocks, cin = [], input_shape[0]
        for cout in channels:
            blocks.append(_Block(cin, cout, batch_norm, dropout))
            cin = cout
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_size = cin
        self.head = nn.Linear(cin, out_features) if out_features else None
        self.out_features = out_features or cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
        self.lay_out(memory_format)
