"""Batch norm whose batch statistics span every process's share of a meta-batch.

Learners whose one training forward normalises a whole batch of tasks (ProtoNet, MANN with a
conv encoder: :attr:`MetaLearner.batch_norm_across_tasks`) would otherwise normalise each
process's share with its own statistics, and N processes would not compute what one does.
``torch.nn.SyncBatchNorm`` does this on GPUs only; :class:`SyncedBatchNorm2d` does it on any
backend, with the same state as ``nn.BatchNorm2d`` (the two swap in place, checkpoints alike).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

# Set while a data-parallel run trains a learner whose forward normalises a whole batch.
_SYNC = contextvars.ContextVar("metarun_synchronised_batch_norm", default=False)
_DIMS = (0, 2, 3)


@contextlib.contextmanager
def synchronised_batch_norm(on: bool = True) -> Iterator[None]:
    """Within this block (when ``on``), :class:`SyncedBatchNorm2d` layers in training take their
    batch statistics over every process."""
    token = _SYNC.set(on)
    try:
        yield
    finally:
        _SYNC.reset(token)


def _channels(t: torch.Tensor) -> torch.Tensor:
    return t.view(1, -1, 1, 1)


class _SyncedNormalise(torch.autograd.Function):
    """``(x - mean) / sqrt(var + eps) * weight + bias`` with ``mean`` and ``var`` over every
    process's ``x``. Forward: two small all-reduces (sums, then squared deviations) and one
    fused normalisation. Backward: the exact gradient of the processes' summed losses, which
    needs the all-reduced sums of ``g`` and ``g * xhat``; the weight and bias get this
    process's own share (the run's gradient all-reduce adds the shares)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        channels = x.shape[1]
        sums = torch.cat([x.sum(_DIMS), x.new_tensor([x.numel() // channels])])
        dist.all_reduce(sums)
        n = sums[-1]
        mean = sums[:-1] / n
        squares = (x - _channels(mean)).pow_(2).sum(_DIMS)
        dist.all_reduce(squares)
        var = squares / n
        out = F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)
        ctx.save_for_backward(x, weight, mean, torch.rsqrt(var + eps))
        ctx.n = n
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var * n / (n - 1).clamp(min=1)  # unbiased variance for running stats

    @staticmethod
    @once_differentiable
    def backward(ctx, grad, _mean, _var):
        x, weight, mean, invstd = ctx.saved_tensors
        channels = x.shape[1]
        xhat = (x - _channels(mean)).mul_(_channels(invstd))
        grad_bias = grad.sum(_DIMS)
        grad_weight = (grad * xhat).sum(_DIMS)
        totals = torch.cat([grad_bias, grad_weight])
        dist.all_reduce(totals)
        mean_g, mean_gx = totals[:channels] / ctx.n, totals[channels:] / ctx.n
        scale = invstd * weight if weight is not None else invstd
        grad_x = (grad - _channels(mean_g)).sub_(xhat.mul_(_channels(mean_gx)))
        grad_x.mul_(_channels(scale))
        affine = weight is not None
        return grad_x, grad_weight if affine else None, grad_bias if affine else None, None


class SyncedBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that, in training inside :func:`synchronised_batch_norm`, normalises
    with the statistics of every process's batch and updates its running statistics with them
    (alike on every process). Elsewhere it is ``nn.BatchNorm2d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _SYNC.get()):
            return super().forward(x)
        out, mean, var = _SyncedNormalise.apply(x, self.weight, self.bias, self.eps)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1 / self.num_batches_tracked
                self.running_mean.mul_(1 - m).add_(mean, alpha=m)
                self.running_var.mul_(1 - m).add_(var, alpha=m)
        return out


def synchronise(module: nn.Module) -> int:
    """Make every plain ``nn.BatchNorm2d`` of ``module`` a :class:`SyncedBatchNorm2d` (same
    parameters and buffers); returns how many."""
    swapped = 0
    for m in module.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = SyncedBatchNorm2d
            swapped += 1
    return swapped
