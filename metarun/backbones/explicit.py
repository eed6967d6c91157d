"""Inner-loop gradients written out as tensor operations, for ``train.compile`` of MAML.

MAML's meta-gradient differentiates through the inner loop's gradient. Taken with
``torch.autograd.grad(create_graph=True)`` that is a double backward, which ``torch.compile``
cannot trace. Here the support loss's gradient is computed instead by the chain rule written by
hand, layer by layer (:func:`grads`): a forward that keeps what each layer's backward needs,
then each layer's backward as ordinary differentiable ops (a convolution's through
``aten.convolution_backward``, whose own derivative autograd knows). A whole task step, inner
loop and query loss, is then one plain function that compiles, and the outer backward is that
function's single backward. Float64 tests check the meta-gradient against autograd's.

Layers covered: ``Conv2d`` (zero padding, no dilation), :class:`TransductiveBatchNorm2d`,
``MaxPool2d(2)``, ``ReLU``, ``Tanh``, ``Flatten`` and ``Linear``: Conv4 (max-pool or stride)
and the MLP. :func:`supports` says whether a backbone is made of them only.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from metarun.backbones.norm import TransductiveBatchNorm2d

Params = dict[str, torch.Tensor]
#: A layer's backward: ``(grad_out, want_input_grad) -> (grad_in, {param suffix: grad})``.
Backward = Callable[[torch.Tensor, bool], tuple[torch.Tensor | None, Params]]


def _is_pool2(m: nn.Module) -> bool:
    pairs = (m.kernel_size, m.stride, m.padding, m.dilation)
    return all(v in (p, (p, p)) for v, p in zip(pairs, (2, 2, 0, 1))) and not m.ceil_mode


def _known(m: nn.Module) -> bool:
    if isinstance(m, nn.Conv2d):
        return m.padding_mode == "zeros" and m.dilation == (1, 1) and not isinstance(m.padding, str)
    if isinstance(m, TransductiveBatchNorm2d):
        return m.step_mean is None  # MAML++'s per-step running statistics stay eager
    if isinstance(m, nn.MaxPool2d):
        return _is_pool2(m) and not m.return_indices
    return isinstance(m, (nn.ReLU, nn.Tanh, nn.Flatten, nn.Linear))


def supports(backbone: nn.Module) -> bool:
    """Whether :func:`grads` can differentiate ``backbone`` (it lists its layers and each is
    one of the layers above)."""
    layers = getattr(backbone, "explicit_layers", None)
    return layers is not None and all(_known(m) for _, m in layers())


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def _conv(m: nn.Conv2d, p: Params, key: str, h: torch.Tensor) -> tuple:
    weight, bias = p[key + "weight"], p.get(key + "bias")
    out = F.conv2d(h, weight, bias, m.stride, m.padding, 1, m.groups)

    def backward(g: torch.Tensor, need_input: bool) -> tuple:
        like = out.dtype  # under autocast (bf16) the forward's dtype, which autograd would use
        gi, gw, gb = torch.ops.aten.convolution_backward(
            g.to(like), h.to(like), weight.to(like), None if bias is None else [bias.shape[0]],
            list(m.stride), list(m.padding), [1, 1], False, [0, 0], m.groups,
            [need_input, True, bias is not None],
        )  # fmt: skip
        return gi, {"weight": gw, **({"bias": gb} if bias is not None else {})}

    return out, backward


def _batch_norm(m: TransductiveBatchNorm2d, p: Params, key: str, h: torch.Tensor) -> tuple:
    dims = (0, 2, 3)
    h = _at_least_fp32(h)  # statistics in fp32 under autocast, as the fused batch norm's
    mean = h.mean(dims, keepdim=True)
    rstd = torch.rsqrt(h.var(dims, unbiased=False, keepdim=True) + m.eps)
    n = (h - mean) * rstd
    weight = p[key + "weight"]
    out = n * weight.view(1, -1, 1, 1) + p[key + "bias"].view(1, -1, 1, 1)

    def backward(g: torch.Tensor, need_input: bool) -> tuple:
        gn = g * weight.view(1, -1, 1, 1)
        gi = rstd * (gn - gn.mean(dims, keepdim=True) - n * (gn * n).mean(dims, keepdim=True))
        return gi, {"weight": (g * n).sum(dims), "bias": g.sum(dims)}

    return out, backward


def _max_pool(h: torch.Tensor) -> tuple:
    """2x2 max-pool; its gradient goes to the first maximum of each window, as autograd's does
    (ties are common: a blank stretch of an image gives equal activations)."""
    height, width = h.shape[-2:]
    oh, ow = height // 2, width // 2
    corners = [h[:, :, i : 2 * oh : 2, j : 2 * ow : 2] for i in (0, 1) for j in (0, 1)]
    out = torch.maximum(torch.maximum(corners[0], corners[1]), torch.maximum(*corners[2:]))
    firsts, taken = [], torch.zeros_like(out, dtype=torch.bool)
    for corner in corners:  # row-major window order, the first maximum wins
        first = (corner == out) & ~taken
        firsts.append(first)
        taken = taken | first

    def backward(g: torch.Tensor, need_input: bool) -> tuple:
        parts = [torch.where(first, g, 0) for first in firsts]  # [B, C, oh, ow] each
        rows = [torch.stack(parts[2 * i : 2 * i + 2], -1).flatten(-2) for i in (0, 1)]
        gi = torch.stack(rows, -2).flatten(-3, -2)  # [B, C, 2 oh, 2 ow]
        return F.pad(gi, (0, width - 2 * ow, 0, height - 2 * oh)), {}

    return out, backward


def _linear(p: Params, key: str, h: torch.Tensor) -> tuple:
    shape = h.shape
    h = h.flatten(1)
    weight, bias = p[key + "weight"], p.get(key + "bias")
    out = F.linear(h, weight, bias)

    def backward(g: torch.Tensor, need_input: bool) -> tuple:
        grads = {"weight": g.t() @ h, **({"bias": g.sum(0)} if bias is not None else {})}
        return ((g @ weight).view(shape) if need_input else None), grads

    return out, backward


def _layer(m: nn.Module, p: Params, key: str, h: torch.Tensor) -> tuple[torch.Tensor, Backward]:
    if isinstance(m, nn.Conv2d):
        return _conv(m, p, key, h)
    if isinstance(m, TransductiveBatchNorm2d):
        return _batch_norm(m, p, key, h)
    if isinstance(m, nn.MaxPool2d):
        return _max_pool(h)
    if isinstance(m, nn.Linear):
        return _linear(p, key, h)
    if isinstance(m, nn.Flatten):
        shape = h.shape
        return h.flatten(1), lambda g, _: (g.view(shape), {})
    out = torch.relu(h) if isinstance(m, nn.ReLU) else torch.tanh(h)
    slope = (out > 0).to(h.dtype) if isinstance(m, nn.ReLU) else 1 - out * out
    return out, lambda g, _: (g * slope, {})


def loss_grad(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The gradient of :func:`~metarun.algorithms.losses.task_loss` with respect to ``pred``
    ``[M, out]``: cross-entropy (mean over examples) for labels, mean squared error for floats."""
    pred = _at_least_fp32(pred)  # under autocast, as cross-entropy and mse run in fp32
    if target.is_floating_point():
        return 2 * (pred - target) / pred.numel()
    onehot = F.one_hot(target, pred.shape[-1]).to(pred.dtype)
    return (torch.softmax(pred, -1) - onehot) / pred.shape[0]


def forward(backbone: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    """``backbone`` on one task's inputs ``x`` ``[N, ...]`` with weights ``params``, in the ops
    :func:`grads` uses (no module calls: a compiled graph has no break here)."""
    for key, m in backbone.explicit_layers():
        if isinstance(m, TransductiveBatchNorm2d):
            w, b = params[key + "weight"], params[key + "bias"]
            x = F.batch_norm(x, None, None, w, b, True, 0.0, m.eps)
        elif isinstance(m, nn.MaxPool2d):
            x = F.max_pool2d(x, 2)
        else:
            x, _ = _layer(m, params, key, x)
    return x


def grads(backbone: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor, names) -> Params:
    """The gradient of one task's support loss (``x`` ``[N, ...]``, targets ``y``) with respect
    to the parameters ``names``, as differentiable operations on ``params``."""
    layers = backbone.explicit_layers()
    keys = [key for key, _ in layers]
    # the first layer whose parameters are adapted: no gradient is carried below it
    first = min(i for i, key in enumerate(keys) if any(n.startswith(key) for n in names))
    h, backwards = x, []
    for key, m in layers:
        h, backward = _layer(m, params, key, h)
        backwards.append(backward)
    g, out = loss_grad(h, y), {}
    for i in range(len(layers) - 1, first - 1, -1):
        g, layer_grads = backwards[i](g, i > first)
        out.update({keys[i] + k: v for k, v in layer_grads.items() if keys[i] + k in names})
    return out
