"""Running the tasks of a meta-batch through one network call, each with its own weights.

MAML adapts a copy of the weights per task. Instead of looping over tasks (what learn2learn and
``higher`` do), the tasks are *folded* into the channel axis: images ``[B, N, C, H, W]`` become
``[N, B*C, H, W]`` and each conv runs once as a grouped convolution (``groups=B``) whose weights
are the B tasks' kernels stacked; batch norm over that layout normalises every (task, channel)
with its own statistics, exactly as per task; element-wise layers and pooling do not care; the
linear head is a batched matmul. The result equals the per-task loop (float64 tests check the
meta-gradient against it) with a few large kernel calls instead of many small ones.

``params`` maps each parameter name of the module to a tensor with a leading task axis ``B``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from metarun.backbones.norm import TransductiveBatchNorm2d

Params = dict[str, torch.Tensor]


@runtime_checkable
class FoldsTasks(Protocol):
    """What a backbone provides for MAML's folded fast path (``algo.task_batching=fold``):
    :class:`~metarun.backbones.base.ImageBackbone` and :class:`~metarun.backbones.MLP` do.

    ``can_fold_tasks`` says whether this instance's layers can be folded (a plain conv stack can;
    a residual net cannot); ``fold_devices`` lists the device types where folding beats a
    per-task loop, which is where ``task_batching=auto`` folds; ``forward_tasks`` runs every
    task of ``x`` ``[B, N, ...]`` through its own weights (``params``: each of the module's
    parameters with a leading task axis ``B``) and returns ``[B, N, out]``."""

    fold_devices: tuple[str, ...]
    can_fold_tasks: bool

    def forward_tasks(self, params: Params, x: torch.Tensor) -> torch.Tensor: ...


def folds(backbone: object) -> bool:
    """Whether ``backbone`` implements :class:`FoldsTasks` and can fold its layers."""
    return isinstance(backbone, FoldsTasks) and bool(backbone.can_fold_tasks)


#: Layers that act per channel or per element, so they run unchanged on the folded layout.
_AGNOSTIC = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.Tanh, nn.GELU, nn.MaxPool2d, nn.Identity)


def can_fold(module: nn.Module) -> bool:
    """Whether :func:`folded_sequential` can run every layer of a ``Sequential``."""
    known = (nn.Conv2d, TransductiveBatchNorm2d, nn.Flatten, *_AGNOSTIC)
    return isinstance(module, nn.Sequential) and all(
        isinstance(m, known) and getattr(m, "padding_mode", "zeros") == "zeros" for m in module
    )


def folded_sequential(seq: nn.Sequential, prefix: str, params: Params, x: torch.Tensor):
    """``seq`` (conv / transductive BN / element-wise layers, optionally a final ``Flatten``) on
    images ``x`` ``[B, N, C, H, W]`` with per-task weights; returns ``[B, N, ...]``."""
    tasks, n = x.shape[:2]
    h = x.transpose(0, 1).reshape(n, tasks * x.shape[2], *x.shape[3:])
    flatten = False
    for name, layer in seq.named_children():
        key = f"{prefix}{name}."
        if isinstance(layer, nn.Conv2d):
            weight, bias = params[key + "weight"], params.get(key + "bias")
            h = F.conv2d(
                h,
                weight.reshape(-1, *weight.shape[2:]),
                None if bias is None else bias.reshape(-1),
                layer.stride,
                layer.padding,
                layer.dilation,
                layer.groups * tasks,
            )
        elif isinstance(layer, TransductiveBatchNorm2d):
            weight, bias = params[key + "weight"].reshape(-1), params[key + "bias"].reshape(-1)
            h = F.batch_norm(h, None, None, weight, bias, True, 0.0, layer.eps)
        elif isinstance(layer, nn.Flatten):
            flatten = True
        else:
            h = layer(h)
    h = h.reshape(n, tasks, -1, *h.shape[2:]).transpose(0, 1)  # [B, N, C', H', W']
    return h.flatten(2) if flatten else h


def folded_linear(params: Params, key: str, h: torch.Tensor) -> torch.Tensor:
    """Per-task ``Linear`` on ``[B, N, in]`` with weights ``[B, out, in]`` and bias ``[B, out]``."""
    weight, bias = params[key + "weight"], params.get(key + "bias")
    out = torch.bmm(h, weight.transpose(1, 2))
    return out if bias is None else out + bias.unsqueeze(1)
