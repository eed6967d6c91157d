"""ANIL, Meta-SGD and Reptile: each update rule against a hand computation on a tiny model."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from metarun.algorithms import MAML, Reptile
from metarun.algorithms.maml_options import adapted_names
from metarun.backbones import MLP, Conv4
from metarun.data import Sinusoid, TaskBatch, TaskShape
from metarun.errors import MetarunError
from tests.test_maml import by_hand

LR = 0.3


@pytest.fixture
def batch() -> TaskBatch:
    b = Sinusoid().sample("train", 3, TaskShape(1, 5, 6), torch.Generator().manual_seed(1))
    return TaskBatch(*(t.double() for t in b))


def maml(batching="loop", **kwargs) -> MAML:
    torch.manual_seed(0)
    net = MLP((1,), 1, hidden=(4, 4)).double()
    sgd = functools.partial(torch.optim.SGD, lr=0.1)
    return MAML(net, sgd, inner_lr=LR, inner_steps=1, task_batching=batching, **kwargs)


def meta_grads(learner, batch) -> dict[str, torch.Tensor]:
    learner.zero_grad()
    learner.meta_backward(batch)
    return {k: p.grad.clone() for k, p in learner.named_parameters() if p.grad is not None}


def test_anil_adapts_the_last_layer_only():
    assert adapted_names(MLP((1,), 1, hidden=(4, 4)), "head") == {"net.4.weight", "net.4.bias"}
    conv = Conv4((1, 28, 28), 5, hidden=8, batch_norm="transductive")
    assert adapted_names(conv, "head") == {"head.weight", "head.bias"}
    assert len(adapted_names(conv, "all")) == len(list(conv.parameters()))
    with pytest.raises(MetarunError, match="algo.adapt='body' is unknown"):
        maml(adapt="body")


@pytest.mark.parametrize("batching", ["loop", "vmap", "fold"])
def test_anil_meta_gradient_matches_the_unrolled_rule(batch, batching):
    learner = maml(batching, adapt="head")
    params = list(learner.backbone.parameters())
    total = 0.0
    for sx, sy, qx, qy in zip(*batch):  # only w3, b3 take the inner step
        head = params[4:]
        grads = torch.autograd.grad(F.mse_loss(by_hand(params, sx), sy), head, create_graph=True)
        fast = params[:4] + [p - LR * g for p, g in zip(head, grads)]
        total = total + F.mse_loss(by_hand(fast, qx), qy)
    expected = torch.autograd.grad(total / batch.num_tasks, params)
    got = meta_grads(learner, batch)
    for (name, g), e in zip(got.items(), expected):
        assert torch.allclose(g, e, atol=1e-10, rtol=1e-8), name


@pytest.mark.parametrize("batching", ["loop", "vmap", "fold"])
def test_meta_sgd_learns_a_step_size_per_weight_by_the_hand_computed_gradient(batch, batching):
    learner = maml(batching, learn_inner_lr=True)
    lrs = dict(learner.inner_lrs.items())
    assert set(lrs) == {n.replace(".", "/") for n, _ in learner.backbone.named_parameters()}
    with torch.no_grad():  # distinct step sizes, so a mix-up between weights would show
        for i, lr in enumerate(lrs.values()):
            lr.uniform_(0.05 + 0.1 * i, 0.1 + 0.1 * i)
    names = [n for n, _ in learner.backbone.named_parameters()]
    params = list(learner.backbone.parameters())
    alphas = [learner.inner_lrs[n.replace(".", "/")] for n in names]
    total = 0.0
    for sx, sy, qx, qy in zip(*batch):
        grads = torch.autograd.grad(F.mse_loss(by_hand(params, sx), sy), params, create_graph=True)
        fast = [p - a * g for p, a, g in zip(params, alphas, grads)]
        total = total + F.mse_loss(by_hand(fast, qx), qy)
    expected = torch.autograd.grad(total / batch.num_tasks, params + alphas)
    got = meta_grads(learner, batch)
    order = [f"backbone.{n}" for n in names] + [f"inner_lrs.{n.replace('.', '/')}" for n in names]
    for name, e in zip(order, expected):
        assert torch.allclose(got[name], e, atol=1e-10, rtol=1e-8), name
    # Evaluation steps with the learned sizes: zeroing them leaves the weights unadapted.
    learner.eval_inner_steps = 1
    adapted = learner.evaluate(batch)["mse"]
    with torch.no_grad():
        for lr in alphas:
            lr.zero_()
    unadapted = learner.evaluate(batch)["mse"]
    learner.eval_inner_steps = 0
    assert torch.allclose(unadapted, learner.evaluate(batch)["mse"])
    assert not torch.allclose(adapted, unadapted)


def reptile(inner="sgd", steps=1, outer_lr=0.5) -> Reptile:
    torch.manual_seed(0)
    net = MLP((1,), 1, hidden=(4, 4)).double()
    outer = functools.partial(torch.optim.SGD, lr=outer_lr)
    return Reptile(net, outer, inner_lr=LR, inner_steps=steps, inner_optimizer=inner)


@pytest.mark.parametrize("inner, steps", [("sgd", 1), ("sgd", 3), ("adam", 2)])
def test_reptile_moves_the_weights_toward_each_tasks_adapted_weights(batch, inner, steps):
    learner = reptile(inner, steps, outer_lr=0.5)
    theta = [p.detach().clone() for p in learner.parameters()]
    adapted = []
    for sx, sy, qx, qy in zip(*batch):  # each task's data: support and query together
        x, y = torch.cat([sx, qx]), torch.cat([sy, qy])
        phi = [p.clone() for p in theta]
        m = [torch.zeros_like(p) for p in phi]
        v = [torch.zeros_like(p) for p in phi]
        for step in range(1, steps + 1):
            grads = torch.autograd.grad(
                F.mse_loss(by_hand([p.requires_grad_() for p in phi], x), y), phi
            )
            with torch.no_grad():
                if inner == "sgd":
                    phi = [p - LR * g for p, g in zip(phi, grads)]
                else:  # Adam with beta1 = 0: m is the gradient itself
                    m = list(grads)
                    v = [0.999 * vi + 0.001 * g * g for vi, g in zip(v, grads)]
                    vhat = [vi / (1 - 0.999**step) for vi in v]
                    phi = [p - LR * mi / (vh.sqrt() + 1e-8) for p, mi, vh in zip(phi, m, vhat)]
        adapted.append(phi)
    optimizer, _ = learner.configure_optimizers()
    optimizer.zero_grad()
    learner.meta_backward(batch)
    optimizer.step()
    for i, p in enumerate(learner.parameters()):
        mean_phi = torch.stack([a[i] for a in adapted]).mean(0)
        expected = theta[i] + 0.5 * (mean_phi - theta[i])  # theta + eps * mean(phi - theta)
        assert torch.allclose(p.detach(), expected, atol=1e-10, rtol=1e-8)


def test_reptile_evaluates_by_fine_tuning_on_the_support_set(batch):
    learner = reptile("sgd", 1)
    learner.eval_inner_steps = 0
    before = learner.evaluate(batch)["mse"]
    learner.eval_inner_steps = 20
    after = learner.evaluate(batch)["mse"]
    assert before.shape == after.shape == (3,) and after.mean() < before.mean()
    support_x, support_y, query_x, _ = (t[0] for t in batch)
    pred = learner.predict(support_x, support_y, query_x)
    assert pred.shape == (6, 1)
    with pytest.raises(MetarunError, match="algo.inner_optimizer='rmsprop' is unknown"):
        Reptile(learner.backbone, learner._optimizer_factory, inner_optimizer="rmsprop")


def mamlpp(batching="loop", **kwargs) -> MAML:
    torch.manual_seed(0)
    net = MLP((1,), 1, hidden=(4, 4)).double()
    sgd = functools.partial(torch.optim.SGD, lr=0.1)
    return MAML(net, sgd, inner_lr=LR, inner_steps=2, task_batching=batching, **kwargs)


@pytest.mark.parametrize("batching", ["loop", "vmap", "fold"])
def test_mamlpp_lslr_and_multi_step_loss_match_the_unrolled_rule(batch, batching):
    learner = mamlpp(batching, per_step_inner_lr=True, multi_step_loss=10)
    names = [n for n, _ in learner.backbone.named_parameters()]
    lrs = [learner.step_lrs[n.replace(".", "/")] for n in names]
    with torch.no_grad():
        for i, lr in enumerate(lrs):  # a step size per layer and step, all different
            lr.copy_(torch.tensor([0.1 + 0.05 * i, 0.2 + 0.03 * i]))
    learner.meta_step = 4  # 40% through the annealing: last-step weight 0.5 + 0.5 * 0.4
    weights = torch.tensor([0.3, 0.7], dtype=torch.float64)
    assert torch.allclose(learner.step_weights().double(), weights)
    params = list(learner.backbone.parameters())
    total = 0.0
    for sx, sy, qx, qy in zip(*batch):
        fast = params
        for step in range(2):
            loss = F.mse_loss(by_hand(fast, sx), sy)
            grads = torch.autograd.grad(loss, fast, create_graph=True)
            fast = [p - lr[step] * g for p, lr, g in zip(fast, lrs, grads)]
            total = total + weights[step] * F.mse_loss(by_hand(fast, qx), qy)
    expected = torch.autograd.grad(total / batch.num_tasks, params + lrs)
    got = meta_grads(learner, batch)
    order = [f"backbone.{n}" for n in names] + [f"step_lrs.{n.replace('.', '/')}" for n in names]
    for name, e in zip(order, expected):
        assert torch.allclose(got[name], e, atol=1e-10, rtol=1e-8), name
    learner.meta_step = 10  # annealing over: the last step's loss alone, as in MAML
    assert learner.step_weights() is None


def test_mamlpp_derivative_order_annealing_switches_to_second_order(batch):
    annealed = mamlpp(first_order_until=5)
    first, second = mamlpp(first_order=True), mamlpp()
    annealed.meta_step = 4
    assert torch.equal(
        torch.cat([g.flatten() for g in meta_grads(annealed, batch).values()]),
        torch.cat([g.flatten() for g in meta_grads(first, batch).values()]),
    )
    annealed.meta_step = 5
    assert torch.equal(
        torch.cat([g.flatten() for g in meta_grads(annealed, batch).values()]),
        torch.cat([g.flatten() for g in meta_grads(second, batch).values()]),
    )
    with pytest.raises(MetarunError, match="both learn the inner step size; choose one"):
        mamlpp(learn_inner_lr=True, per_step_inner_lr=True)


def test_the_trainer_tells_the_learner_its_meta_iteration(run_inprocess, monkeypatch):
    seen = []
    real = MAML.meta_backward

    def spy(self, batch):
        seen.append(self.meta_step)
        return real(self, batch)

    monkeypatch.setattr(MAML, "meta_backward", spy)
    quiet = ["logger=none", "train.steps=4", "val.every=2", "test.episodes=4", "algo=mamlpp"]
    run_inprocess([*quiet, "train.log_every=2", "algo.multi_step_loss=3"])
    assert seen == [0, 1, 2, 3]


def conv_batch() -> TaskBatch:
    g = torch.Generator().manual_seed(0)
    return TaskBatch(
        torch.rand(2, 6, 1, 8, 8, generator=g).double(),
        torch.tensor([[0, 0, 1, 1, 2, 2]] * 2),
        torch.rand(2, 9, 1, 8, 8, generator=g).double(),
        torch.tensor([[0, 1, 2] * 3] * 2),
    )


def conv_maml(batching="loop", **kwargs) -> MAML:
    torch.manual_seed(1)
    net = Conv4((1, 8, 8), out_features=3, hidden=3, blocks=2).double()
    sgd = functools.partial(torch.optim.SGD, lr=0.1)
    return MAML(net, sgd, inner_lr=0.5, inner_steps=2, task_batching=batching, **kwargs)


def all_grads(learner, batch) -> torch.Tensor:
    grads = meta_grads(learner, batch)
    return torch.cat([g.flatten() for g in grads.values()])


def test_mamlpp_per_step_batch_norm_is_the_same_on_every_path_and_uses_each_row():
    batch = conv_batch()
    loop, vmapped, folded = (conv_maml(b, per_step_bn=True) for b in ("loop", "vmap", "fold"))
    assert not loop.adapt_names & loop.bn_names and len(loop.bn_names) == 4  # 2 blocks: w, b
    with torch.no_grad():  # rows that differ per step and from the module's own values
        for lrn in (loop, vmapped, folded):
            for i, row in enumerate(lrn.step_bn.values()):
                row.add_(torch.arange(2, dtype=row.dtype)[:, None] * 0.2 + 0.1 * i)
    reference = all_grads(loop, batch)
    assert torch.allclose(reference, all_grads(vmapped, batch), atol=1e-10)
    assert torch.allclose(reference, all_grads(folded, batch), atol=1e-10)
    for name, row in loop.step_bn.items():  # both steps' rows take part
        assert (row.grad.abs().sum(dim=1) > 0).all(), name
    for name in loop.bn_names:  # the module's own values are replaced, so never used
        assert dict(loop.backbone.named_parameters())[name].grad is None
    ev_loop, ev_fold = loop.evaluate(batch), folded.evaluate(batch)
    assert torch.allclose(ev_loop["loss"], ev_fold["loss"], atol=1e-10)


def test_per_step_batch_norm_with_equal_rows_is_maml_that_leaves_batch_norm_out_of_the_inner_loop():
    batch = conv_batch()
    per_step = conv_maml(per_step_bn=True)
    plain = conv_maml()
    plain.adapt_names = plain.adapt_names - plain.bn_names
    loss_a, _ = per_step.meta_loss(batch)
    loss_b, _ = plain.meta_loss(batch)
    assert torch.allclose(loss_a, loss_b, atol=1e-12)
    grads_a, grads_b = meta_grads(per_step, batch), meta_grads(plain, batch)
    for name, g in grads_b.items():
        if name.removeprefix("backbone.") in plain.bn_names:  # moved into the per-step rows
            rows = grads_a[f"step_bn.{name.removeprefix('backbone.').replace('.', '/')}"]
            assert torch.allclose(rows.sum(0), g, atol=1e-10)
        else:
            assert torch.allclose(grads_a[name], g, atol=1e-10), name
    assert maml(per_step_bn=True).step_bn is None  # an MLP has no batch norm: nothing to do


def test_mamlpp_per_step_running_statistics_are_recorded_per_step_and_make_tests_inductive():
    batch = conv_batch()
    learner = conv_maml(per_step_bn=True, per_step_bn_stats=True)
    assert learner.batching_for(torch.device("cpu")).name == "loop"
    bn = learner.backbone.features[1]
    learner.meta_backward(TaskBatch(*(t[:1] for t in batch)))  # one task, 2 inner steps
    # Row 0 saw one forward: the support set at step 0 (momentum 0.1 from zero).
    with torch.no_grad():
        conv1 = learner.backbone.features[0](batch.support_x[0])
    assert torch.allclose(bn.step_mean[0], 0.1 * conv1.mean(dim=(0, 2, 3)), atol=1e-12)
    assert not torch.allclose(bn.step_mean[1], bn.step_mean[0])  # step 1 has its own
    assert {"step_mean", "step_var"} <= {k.split(".")[-1] for k in learner.state_dict()}
    # At test time a query's logits no longer depend on the other queries (they do with batch
    # statistics, the transductive default).
    sx, sy, qx, _ = (t[0] for t in batch)
    other = qx.clone()
    other[1:] = torch.rand_like(other[1:])
    for per_step, inductive in ((True, True), (False, False)):
        lrn = conv_maml(per_step_bn=True, per_step_bn_stats=per_step)
        lrn.eval_inner_steps = 2
        lrn.meta_backward(batch)
        same = torch.allclose(lrn.predict(sx, sy, qx)[0], lrn.predict(sx, sy, other)[0])
        assert same == inductive
    with pytest.raises(MetarunError, match="algo.task_batching=fold cannot; use loop or auto"):
        conv_maml("fold", per_step_bn_stats=True)
