"""MAML's meta-gradient against independent computations, in float64."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from metarun.algorithms import MAML
from metarun.backbones import MLP
from metarun.data import Sinusoid, TaskBatch, TaskShape
from metarun.errors import MetarunError

LR = 0.3


def make(first_order=False, steps=1, batching="loop", seed=0) -> MAML:
    torch.manual_seed(seed)
    net = MLP((1,), 1, hidden=(4, 4)).double()
    sgd = functools.partial(torch.optim.SGD, lr=0.1)
    return MAML(
        net,
        sgd,
        inner_lr=LR,
        inner_steps=steps,
        eval_inner_steps=steps,
        first_order=first_order,
        task_batching=batching,
    )


@pytest.fixture
def batch() -> TaskBatch:
    b = Sinusoid().sample("train", 3, TaskShape(1, 5, 6), torch.Generator().manual_seed(1))
    return TaskBatch(*(t.double() for t in b))


def meta_grad(learner: MAML, batch: TaskBatch) -> torch.Tensor:
    learner.zero_grad()
    loss, _ = learner.meta_loss(batch)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in learner.parameters()])


def by_hand(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The 1-4-4-1 ReLU MLP written out, independent of nn.Module and torch.func."""
    w1, b1, w2, b2, w3, b3 = params
    h = F.relu(x @ w1.T + b1)
    h = F.relu(h @ w2.T + b2)
    return h @ w3.T + b3


def unrolled_meta_grad(learner: MAML, batch: TaskBatch, steps: int) -> torch.Tensor:
    """Second-order MAML by explicit unrolling with torch.autograd.grad(create_graph=True)."""
    params = list(learner.parameters())
    total = 0.0
    for sx, sy, qx, qy in zip(*batch):
        fast = params
        for _ in range(steps):
            loss = F.mse_loss(by_hand(fast, sx), sy)
            grads = torch.autograd.grad(loss, fast, create_graph=True)
            fast = [p - LR * g for p, g in zip(fast, grads)]
        total = total + F.mse_loss(by_hand(fast, qx), qy)
    grads = torch.autograd.grad(total / batch.num_tasks, params)
    return torch.cat([g.flatten() for g in grads])


@pytest.mark.parametrize("steps", [1, 3])
def test_second_order_matches_unrolled_autograd(batch, steps):
    learner = make(steps=steps)
    assert torch.allclose(
        meta_grad(learner, batch), unrolled_meta_grad(learner, batch, steps), atol=1e-10, rtol=1e-8
    )


def test_second_order_matches_finite_differences(batch):
    learner = make(steps=2)
    analytic = meta_grad(learner, batch)
    flat = torch.nn.utils.parameters_to_vector(learner.parameters()).detach()
    eps, numeric = 1e-6, torch.empty_like(flat)
    for i in range(flat.numel()):
        values = []
        for sign in (1, -1):
            shifted = flat.clone()
            shifted[i] += sign * eps
            torch.nn.utils.vector_to_parameters(shifted, learner.parameters())
            values.append(learner.meta_loss(batch)[0].item())
        numeric[i] = (values[0] - values[1]) / (2 * eps)
    torch.nn.utils.vector_to_parameters(flat, learner.parameters())
    assert torch.allclose(analytic, numeric, atol=1e-7, rtol=1e-5)


def test_fomaml_drops_exactly_the_second_order_term(batch):
    """With one inner step: MAML - FOMAML = -lr * mean_i H_support_i(theta) g_query_i(theta')."""
    maml, fomaml = make(), make(first_order=True)
    second, first = meta_grad(maml, batch), meta_grad(fomaml, batch)
    params = tuple(p.detach() for p in maml.parameters())
    correction = torch.zeros_like(second)
    for sx, sy, qx, qy in zip(*batch):
        p = [t.clone().requires_grad_() for t in params]
        g_s = torch.autograd.grad(F.mse_loss(by_hand(p, sx), sy), p)
        adapted = [(t - LR * g).detach().requires_grad_() for t, g in zip(params, g_s)]
        g_q = torch.autograd.grad(F.mse_loss(by_hand(adapted, qx), qy), adapted)
        _, hvp = torch.autograd.functional.hvp(
            lambda *ps: F.mse_loss(by_hand(list(ps), sx), sy), params, g_q
        )
        correction -= LR * torch.cat([h.flatten() for h in hvp]) / batch.num_tasks
    assert correction.abs().max() > 1e-3  # the term is not negligible here, so the test bites
    assert torch.allclose(second - first, correction, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("batching", ["vmap", "fold"])
@pytest.mark.parametrize("first_order", [False, True])
def test_batched_paths_agree_with_the_loop(batch, first_order, batching):
    loop, other = make(first_order, steps=2), make(first_order, steps=2, batching=batching)
    assert other.task_batching == batching and loop.task_batching == "loop"
    assert torch.allclose(meta_grad(loop, batch), meta_grad(other, batch), atol=1e-12)
    ev_loop, ev_other = loop.evaluate(batch), other.evaluate(batch)
    assert set(ev_loop) == set(ev_other) == {"mse"}
    for key in ev_loop:
        assert torch.allclose(ev_loop[key], ev_other[key], atol=1e-12)


@pytest.mark.parametrize("batching", ["loop", "vmap", "fold"])
@pytest.mark.parametrize("chunk", [1, 2, 0])
def test_chunked_backward_gives_the_whole_batch_gradient(batch, batching, chunk):
    """``meta_backward`` frees each chunk's graph early; the gradient and metrics are the same."""
    learner = make(steps=2, batching=batching)
    learner.task_chunk = chunk
    whole = meta_grad(learner, batch)
    loss, metrics = learner.meta_loss(batch)
    learner.zero_grad()
    chunked = learner.meta_backward(batch)
    got = torch.cat([p.grad.flatten() for p in learner.parameters()])
    assert torch.allclose(whole, got, atol=1e-12)
    assert set(chunked) == set(metrics) and torch.isclose(chunked["mse"], metrics["mse"])


def test_auto_batching_folds_where_folding_wins():
    from metarun.backbones import Conv4, ResNet12

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    mlp = make(batching="auto")
    assert mlp.batching_for(cpu).name == mlp.batching_for(cuda).name == "fold"
    sgd = functools.partial(torch.optim.SGD, lr=0.1)
    conv = MAML(Conv4((1, 8, 8), 3, hidden=4, blocks=2), sgd)
    assert conv.batching_for(cpu).name == "loop" and conv.batching_for(cuda).name == "fold"
    resnet = ResNet12((3, 16, 16), 3, channels=(4, 4, 4, 4), batch_norm="transductive")
    assert MAML(resnet, sgd).batching_for(cuda).name == "loop"
    assert MAML(resnet, sgd, task_batching="vmap").batching_for(cuda).name == "vmap"
    with pytest.raises(MetarunError, match="algo.task_batching=fold needs a backbone of plain"):
        MAML(resnet, sgd, task_batching="fold")


def test_automatic_chunks_bound_the_input_per_call(batch):
    from metarun.algorithms.maml import FOLD_ELEMENTS

    assert make(batching="fold").chunk_size(batch) == FOLD_ELEMENTS // 11  # 5 + 6 points
    images = TaskBatch(
        torch.zeros(32, 5, 1, 28, 28), torch.zeros(32, 5), torch.zeros(32, 75, 1, 28, 28), None
    )
    assert make(batching="fold").chunk_size(images) == FOLD_ELEMENTS // (80 * 784) == 16
    assert make(batching="loop").chunk_size(batch) == 1
    assert make(batching="vmap").chunk_size(batch) == 3
    learner = make(batching="fold")
    learner.task_chunk = 2
    assert learner.chunk_size(batch) == 2


def test_evaluate_reports_each_step_of_one_trajectory(batch):
    learner = make(steps=1)
    learner.eval_inner_steps, learner.eval_report_steps = 3, (0, 1, 3)
    before = [p.detach().clone() for p in learner.parameters()]
    scores = learner.evaluate(batch)
    assert set(scores) == {"mse", "mse_step0", "mse_step1", "mse_step3"}
    assert all(v.shape == (3,) for v in scores.values())
    assert torch.equal(scores["mse"], scores["mse_step3"])
    for i, (sx, sy, qx, qy) in enumerate(zip(*batch)):
        p = [t.clone().requires_grad_() for t in before]
        assert torch.isclose(scores["mse_step0"][i], F.mse_loss(by_hand(p, qx), qy))
        g = torch.autograd.grad(F.mse_loss(by_hand(p, sx), sy), p)
        one_step = [t - LR * gi for t, gi in zip(p, g)]
        assert torch.isclose(scores["mse_step1"][i], F.mse_loss(by_hand(one_step, qx), qy))
    # Evaluation adapts copies: the meta-parameters are untouched and get no gradient.
    assert all(torch.equal(a, b) for a, b in zip(before, learner.parameters()))
    assert all(p.grad is None for p in learner.parameters())


def test_inner_loop_fits_a_task(batch):
    """Many inner steps on one task drive its support loss down: adaptation really adapts."""
    learner = make()
    sx, sy = batch.support_x[0], batch.support_y[0]
    params = {k: v.detach() for k, v in learner.backbone.named_parameters()}
    start = F.mse_loss(learner.forward_one(params, sx), sy)
    learner.inner_lr = 0.02
    adapted = learner.adapt(params, sx, sy, steps=200)
    assert F.mse_loss(learner.forward_one(adapted, sx), sy) < 0.5 * start


@pytest.mark.parametrize("first_order", [False, True])
def test_conv4_with_batch_norm_batched_paths_match_loop_and_finite_differences(first_order):
    """Folded and vmapped tasks through conv + batch norm give the per-task meta-gradient.

    (vmap through ``F.batch_norm(training=True)`` is known to give a wrong second-order
    gradient; under vmap metarun's transductive batch norm switches to plain tensor ops.)
    """
    from metarun.backbones import Conv4

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    batch = TaskBatch(
        torch.rand(2, 6, 1, 8, 8, generator=g).double(),
        torch.tensor([[0, 0, 1, 1, 2, 2]] * 2),
        torch.rand(2, 9, 1, 8, 8, generator=g).double(),
        torch.tensor([[0, 1, 2] * 3] * 2),
    )
    learners = []
    for batching in ("loop", "vmap", "fold"):
        torch.manual_seed(1)
        net = Conv4((1, 8, 8), out_features=3, hidden=3, blocks=2).double()
        learners.append(
            MAML(
                net,
                functools.partial(torch.optim.SGD, lr=0.1),
                inner_lr=0.5,
                inner_steps=2,
                first_order=first_order,
                task_batching=batching,
            )
        )
    loop, vmapped, folded = learners
    analytic = meta_grad(loop, batch)
    assert torch.allclose(analytic, meta_grad(vmapped, batch), atol=1e-10)
    assert torch.allclose(analytic, meta_grad(folded, batch), atol=1e-10)
    ev_loop, ev_fold = loop.evaluate(batch), folded.evaluate(batch)
    for key in ("loss", "acc"):
        assert torch.allclose(ev_loop[key], ev_fold[key], atol=1e-10)
    if first_order:
        return
    flat = torch.nn.utils.parameters_to_vector(loop.parameters()).detach()
    numeric = torch.empty_like(flat)
    for i in range(flat.numel()):
        values = []
        for sign in (1, -1):
            shifted = flat.clone()
            shifted[i] += sign * 1e-6
            torch.nn.utils.vector_to_parameters(shifted, loop.parameters())
            values.append(loop.meta_loss(batch)[0].item())
        numeric[i] = (values[0] - values[1]) / 2e-6
    assert torch.allclose(analytic, numeric, atol=1e-6, rtol=1e-4)
