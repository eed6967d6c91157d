"""Conv4: the four-block CNN of Vinyals et al., MAML and Prototypical Networks."""

from __future__ import annotations

from typing import Sequence

from torch import nn

from metarun.backbones.base import ImageBackbone
from metarun.backbones.norm import make_batch_norm
from metarun.errors import MetarunError


class Conv4(ImageBackbone):
    """``blocks`` x [3x3 conv, batch norm, 2x2 max-pool, ReLU] (or a stride-2 conv, MAML's
    Omniglot variant), then flatten and an optional linear head.

    ``out_features=None`` returns the flattened features (ProtoNet's embedding); their size is
    computed from the input shape, not hard-coded. ``batch_norm``: ``transductive`` normalises
    with the statistics of the current batch in training and evaluation alike (MAML; written in
    plain tensor ops so it is also correct under ``torch.func.vmap``), ``running`` is
    ``nn.BatchNorm2d`` with running statistics for evaluation (ProtoNet).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        out_features: int | None,
        hidden: int = 64,
        blocks: int = 4,
        pool: str = "max",
        batch_norm: str = "transductive",
        memory_format: str = "contiguous",
    ) -> None:
        super().__init__()
        if pool not in ("max", "stride"):
            raise MetarunError(f"backbone.pool={pool!r} is unknown; use max or stride")
        channels, height, width = input_shape
        layers: list[nn.Module] = []
        for i in range(blocks):
            stride = 2 if pool == "stride" else 1
            layers += [
                nn.Conv2d(channels if i == 0 else hidden, hidden, 3, stride=stride, padding=1),
                make_batch_norm(batch_norm, hidden),
            ]
            # Pooling before the ReLU computes the same values and gradients (max and ReLU
            # commute; they differ only on exact ties of positive values) with the ReLU and its
            # backward on a quarter of the elements.
            if pool == "max":
                layers.append(nn.MaxPool2d(2))
            layers.append(nn.ReLU())
            # max-pool floors, a stride-2 conv (padding 1) rounds up
            height, width = (
                (height // 2, width // 2)
                if pool == "max"
                else ((height + 1) // 2, (width + 1) // 2)
            )
            if min(height, width) < 1:
                raise MetarunError(
                    f"a {input_shape[1]}x{input_shape[2]} image is too small for {blocks} "
                    "downsampling blocks; raise dataset.image_size or lower backbone.blocks"
                )
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.feature_size = hidden * height * width
        self.head = nn.Linear(self.feature_size, out_features) if out_features else None
        self.out_features = out_features or self.feature_size
        self.lay_out(memory_format)
