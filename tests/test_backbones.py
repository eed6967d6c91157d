"""Backbones: the pool-then-activation order, and the folded (per-task weights) forward."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from metarun.backbones import MLP, Conv4, ResNet12


def _conventional(module: nn.Sequential) -> nn.Sequential:
    """The same layers with every [pool, activation] pair written the usual way round."""
    layers = list(module)
    for i in range(len(layers) - 1):
        if isinstance(layers[i], nn.MaxPool2d) and isinstance(
            layers[i + 1], (nn.ReLU, nn.LeakyReLU)
        ):
            layers[i], layers[i + 1] = layers[i + 1], layers[i]
    return nn.Sequential(*layers)


def _values_and_grads(fn, params, x):
    out = fn(x)
    grads = torch.autograd.grad(out.pow(2).sum(), [x, *params])
    return out, grads


@pytest.mark.parametrize("batch_norm", ["transductive", "running"])
def test_conv4_pools_before_the_relu_with_the_usual_values_and_gradients(batch_norm):
    torch.manual_seed(0)
    net = Conv4((1, 15, 15), 4, hidden=5, blocks=3, batch_norm=batch_norm).double()
    kinds = [type(m) for m in net.features]
    assert kinds[:4] == [nn.Conv2d, kinds[1], nn.MaxPool2d, nn.ReLU]
    usual = nn.Sequential(_conventional(net.features), net.head)
    assert [type(m) for m in usual[0]][2:4] == [nn.ReLU, nn.MaxPool2d]
    x = torch.randn(6, 1, 15, 15, dtype=torch.float64, requires_grad=True)
    params = list(net.parameters())
    ours, g_ours = _values_and_grads(net, params, x)
    theirs, g_theirs = _values_and_grads(usual, params, x)
    assert torch.allclose(ours, theirs, atol=1e-12)
    for a, b in zip(g_ours, g_theirs):
        assert torch.allclose(a, b, atol=1e-10)


def test_resnet12_block_order_matches_the_usual_one():
    torch.manual_seed(0)
    net = ResNet12((3, 16, 16), 3, channels=(4, 5, 6, 7), batch_norm="transductive").double()
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    params = list(net.parameters())
    ours, g_ours = _values_and_grads(net, params, x)
    for block in net.features[:4]:
        block.out = _conventional(block.out)
    theirs, g_theirs = _values_and_grads(net, params, x)
    assert torch.allclose(ours, theirs, atol=1e-12)
    for a, b in zip(g_ours, g_theirs):
        assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize(
    "shape, make",
    [
        ((1, 11, 11), lambda s: Conv4(s, 3, hidden=4, blocks=3)),  # odd sizes: max-pool floors
        ((3, 9, 9), lambda s: Conv4(s, 3, hidden=4, blocks=2, pool="stride")),
        ((1, 8, 8), lambda s: Conv4(s, None, hidden=4, blocks=2)),  # embedding, no head
        ((2, 3), lambda s: MLP(s, 2, hidden=(5, 4))),
    ],
    ids=["conv4-max", "conv4-stride", "conv4-embedding", "mlp"],
)
def test_folded_forward_equals_each_task_through_its_own_weights(shape, make):
    torch.manual_seed(0)
    net = make(shape).double()
    tasks = 3
    x = torch.randn(tasks, 5, *shape, dtype=torch.float64)
    params = {
        k: p.detach() + 0.1 * torch.randn(tasks, *p.shape, dtype=torch.float64)
        for k, p in net.named_parameters()
    }
    assert net.can_fold_tasks
    folded = net.forward_tasks(params, x)
    for t in range(tasks):
        one = functional_call(net, {k: v[t] for k, v in params.items()}, (x[t],))
        assert torch.allclose(folded[t], one, atol=1e-12)


def test_resnet12_does_not_fold():
    net = ResNet12((3, 16, 16), 3, channels=(4, 4, 4, 4))
    assert not net.can_fold_tasks


@pytest.mark.parametrize("name", ["conv4", "resnet12"])
@pytest.mark.parametrize("batch_norm", ["transductive", "running"])
def test_channels_last_computes_the_same_values_and_gradients(name, batch_norm):
    """``backbone.memory_format=channels_last`` lays weights and activations out NHWC; the
    outputs and every weight's gradient equal the NCHW ones (float64: to rounding)."""
    cls = {"conv4": Conv4, "resnet12": ResNet12}[name]
    kwargs = {"hidden": 8} if name == "conv4" else {"channels": [4, 6, 8, 8]}
    torch.manual_seed(0)
    plain = cls((3, 20, 20), 5, batch_norm=batch_norm, **kwargs).double()
    nhwc = cls((3, 20, 20), 5, batch_norm=batch_norm, memory_format="channels_last", **kwargs)
    nhwc = nhwc.double()
    nhwc.load_state_dict(plain.state_dict())
    conv = next(m for m in nhwc.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 6, 3, 20, 20, dtype=torch.float64)  # a task axis, as a batch has
    outs = [model(x) for model in (plain, nhwc)]
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-10, atol=1e-10)
    for out in outs:
        out.square().sum().backward()
    for (key, a), (_, b) in zip(plain.named_parameters(), nhwc.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-9, atol=1e-10, msg=key)
