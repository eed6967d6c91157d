"""Batch norm variants for meta-learning backbones."""

from __future__ import annotations

import torch
from torch import nn

from metarun.errors import MetarunError


class TransductiveBatchNorm2d(nn.Module):
    """Batch norm that always uses the current batch's statistics and keeps no running ones.

    Written in plain tensor ops on purpose: ``torch.func.vmap`` through
    ``F.batch_norm(training=True)`` yields a wrong second-order gradient, these ops do not.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        x = (x - mean) * torch.rsqrt(var + self.eps)
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def make_batch_norm(kind: str, channels: int) -> nn.Module:
    if kind == "transductive":
        return TransductiveBatchNorm2d(channels)
    if kind == "running":
        return nn.BatchNorm2d(channels)
    raise MetarunError(f"backbone.batch_norm={kind!r} is unknown; use transductive or running")
