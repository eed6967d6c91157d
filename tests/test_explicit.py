"""MAML's inner gradients written out as tensor ops (metarun/backbones/explicit.py, the path
``train.compile`` compiles) give autograd's meta-gradient, in float64, for every option the
compiled path takes; backbones and options it cannot take are named, not run wrong."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from metarun.algorithms import MAML
from metarun.backbones import MLP, Conv4, ResNet12, explicit
from metarun.data import TaskBatch


def _learner(backbone: nn.Module, **options) -> MAML:
    options = {"inner_lr": 0.3, "inner_steps": 2, **options}
    return MAML(backbone, lambda ps: torch.optim.SGD(ps, lr=0.1), **options).double()


def _batch(shape, way=3, query=2, tasks=2, regression=False) -> TaskBatch:
    g = torch.Generator().manual_seed(0)
    sx = torch.randn(tasks, way, *shape, generator=g, dtype=torch.float64)
    qx = torch.randn(tasks, way * query, *shape, generator=g, dtype=torch.float64)
    if len(shape) == 3:  # a blank stretch of every image: ties in the max-pool windows
        sx[..., : shape[-1] // 2], qx[..., : shape[-1] // 2] = 0, 0
    if regression:
        return TaskBatch(sx, torch.sin(sx), qx, torch.sin(qx))
    sy = torch.arange(way).expand(tasks, -1).contiguous()
    qy = torch.arange(way).repeat_interleave(query).expand(tasks, -1).contiguous()
    return TaskBatch(sx, sy, qx, qy)


def _meta_gradients(learner: MAML, batch: TaskBatch, written: bool):
    if written:  # the task step the compiled path runs, here uncompiled
        learner.compile_with(lambda fn, eager, what: fn)
    metrics = learner.meta_backward(batch)
    return [p.grad.clone() for p in learner.parameters()], metrics


IMAGES = (1, 12, 12)
CASES = {
    "conv4 max-pool": (lambda: Conv4(IMAGES, 3, hidden=4, blocks=3), {}, False),
    "conv4 stride": (lambda: Conv4(IMAGES, 3, hidden=4, blocks=3, pool="stride"), {}, False),
    "first order": (lambda: Conv4(IMAGES, 3, hidden=4, blocks=2), {"first_order": True}, False),
    "anil": (lambda: Conv4(IMAGES, 3, hidden=4, blocks=2), {"adapt": "head"}, False),
    "meta-sgd": (lambda: Conv4(IMAGES, 3, hidden=4, blocks=2), {"learn_inner_lr": True}, False),
    "lslr": (lambda: Conv4(IMAGES, 3, hidden=4, blocks=2), {"per_step_inner_lr": True}, False),
    "mlp tanh regression": (
        lambda: MLP((1,), 1, hidden=(8, 8), activation="tanh"),
        {"task_batching": "loop"},  # auto folds MLPs
        True,
    ),
    "mlp relu": (lambda: MLP((5,), 3, hidden=(8,)), {"task_batching": "loop"}, False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_written_out_inner_gradients_give_autograds_meta_gradient(case):
    make, options, regression = CASES[case]
    torch.manual_seed(0)
    learner = _learner(make(), **options)
    assert learner.compiles, learner.uncompiled_reason
    shape = IMAGES if isinstance(learner.backbone, Conv4) else learner.backbone.input_shape
    batch = _batch(shape, regression=regression)
    reference, metrics = _meta_gradients(copy.deepcopy(learner), batch, written=False)
    grads, written_metrics = _meta_gradients(learner, batch, written=True)
    for ours, theirs in zip(grads, reference, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)
    for key, value in metrics.items():
        torch.testing.assert_close(written_metrics[key], value, rtol=1e-10, atol=1e-12)


def test_the_written_forward_is_the_modules_forward():
    torch.manual_seed(0)
    net = Conv4(IMAGES, 3, hidden=4, blocks=3).double()
    x = _batch(IMAGES).support_x[0]
    params = dict(net.named_parameters())
    torch.testing.assert_close(explicit.forward(net, params, x), net(x), rtol=1e-12, atol=1e-12)


def test_what_the_compiled_path_cannot_take_is_named():
    def reason(backbone, **options):
        return MAML(backbone, lambda ps: torch.optim.SGD(ps, lr=0.1), **options).uncompiled_reason

    conv = lambda **kw: Conv4(IMAGES, 3, hidden=4, blocks=2, **kw)  # noqa: E731
    assert "ResNet12 is not written out" in reason(
        ResNet12((1, 16, 16), 3, (4, 4, 4, 4), "transductive")
    )
    assert "MLP is not written out" in reason(MLP((5,), 3, activation="gelu"), task_batching="loop")
    assert "MAML++" in reason(conv(), multi_step_loss=5)
    assert "MAML++" in reason(conv(), inner_steps=2, per_step_bn=True)
    assert "running statistics" in reason(conv(), per_step_bn_stats=True)
    assert "task_batching=fold" in reason(conv(), task_batching="fold")
    assert reason(conv(), task_batching="loop") is None
