"""What image backbones share: a feature extractor and an optional linear head."""

from __future__ import annotations

import torch
from torch import nn


class ImageBackbone(nn.Module):
    """``features`` maps ``[n, ch, H, W]`` images to flat vectors; ``head`` (or None) to logits.

    ``forward`` accepts any leading dims (``[B, M, ch, H, W]`` for a task batch) and keeps them.
    """

    features: nn.Module
    head: nn.Module | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-3]
        z = self.features(x.reshape(-1, *x.shape[-3:]))
        if self.head is not None:
            z = self.head(z)
        return z.reshape(*lead, -1)
