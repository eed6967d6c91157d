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


# (mode, step) while MAML++'s per-step running statistics are in use: "record" normalises with
# the batch's statistics and folds them into step ``step``'s running ones; "use" normalises with
# the running statistics of step ``step`` (evaluation without looking at the other queries).
_STEP_STATS: contextvars.ContextVar[tuple[str, int] | None] = contextvars.ContextVar(
    "metarun_step_stats", default=None
)


@contextlib.contextmanager
def step_statistics(mode: str, step: int) -> Iterator[None]:
    """Within this block, batch norms that keep per-step running statistics use those of
    ``step`` (``mode``: ``record`` or ``use``; see :class:`TransductiveBatchNorm2d`)."""
    token = _STEP_STATS.set((mode, step))
    try:
        yield
    finally:
        _STEP_STATS.reset(token)


class TransductiveBatchNorm2d(nn.Module):
    """Batch norm that always uses the current batch's statistics and keeps no running ones.

    :meth:`keep_step_statistics` adds running statistics per inner step (MAML++ BNRS), read and
    written only inside :func:`step_statistics`."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.momentum = 0.1
        self.register_buffer("step_mean", None)  # none until keep_step_statistics
        self.register_buffer("step_var", None)
        # Updates each step's statistics has had (not saved: distributed runs merge by it).
        self.register_buffer("step_updates", None, persistent=False)

    def keep_step_statistics(self, steps: int) -> None:
        """Running mean and variance for each of ``steps`` inner steps (saved in checkpoints)."""
        channels = self.weight.shape[0]
        self.step_mean = self.weight.new_zeros(steps, channels)
        self.step_var = self.weight.new_ones(steps, channels)
        self.step_updates = torch.zeros(steps, dtype=torch.long, device=self.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = _STEP_STATS.get()
        if context is not None and self.step_mean is not None:
            mode, step = context
            step = min(step, self.step_mean.shape[0] - 1)
            mean, var = self.step_mean[step], self.step_var[step]
            training = mode == "record"  # batch statistics, folded into the running ones
            if training:
                self.step_updates[step] += 1
            return F.batch_norm(
                x, mean, var, self.weight, self.bias, training, self.momentum, self.eps
            )
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
