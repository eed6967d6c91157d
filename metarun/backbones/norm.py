"""Batch norm variants for meta-learning backbones."""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from metarun.errors import MetarunError

_PLAIN_OPS = contextvars.ContextVar("metarun_plain_op_batch_norm", default=False)


@contextlib.contextmanager
def plain_op_batch_norm() -> Iterator[None]:
    """Within this block :class:`TransductiveBatchNorm2d` uses plain tensor ops.

    ``torch.func.vmap`` through ``F.batch_norm(training=True)`` yields a *wrong* second-order
    gradient (PyTorch 2.13; tests/test_maml.py keeps a float64 check of this); the plain ops
    are right under vmap. Outside vmap the fused ``F.batch_norm`` is right and faster.
    """
    token = _PLAIN_OPS.set(True)
    try:
        yield
    finally:
        _PLAIN_OPS.reset(token)


class TransductiveBatchNorm2d(nn.Module):
    """Batch norm that always uses the current batch's statistics and keeps no running ones."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _PLAIN_OPS.get():
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
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
