"""Meta-RL: the policy-gradient step, its meta-gradient, TRPO, the baseline, rollouts, runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from metarun.algorithms import policy_gradient as pg
from metarun.algorithms.maml_rl import MAMLRL
from metarun.algorithms.trpo import TRPO, conjugate_gradient
from metarun.backbones.mlp import MLP
from metarun.checkpoint import load_checkpoint
from metarun.data import Navigation2D
from metarun.data.batch import TaskShape
from metarun.data.rl_tasks import EnvBatch

RL = ["dataset=navigation2d", "algo=maml_rl", "logger=none", "task.meta_batch=3",
      "task.shot=3", "task.query=3", "dataset.horizon=12", "train.steps=4", "train.log_every=2",
      "val.every=2", "val.episodes=3", "test.episodes=4", "algo.eval_report_steps=[0,1,2]",
      "algo.eval_inner_steps=2"]  # fmt: skip


def learner(hidden=(), obs=2, act=2, dtype=torch.float64, **options) -> MAMLRL:
    torch.manual_seed(0)
    policy = MLP((obs,), act, hidden=hidden, activation="tanh").to(dtype)
    out = MAMLRL(policy, optimizer=TRPO, **options).to(dtype)
    with torch.no_grad():
        out.log_std.copy_(torch.linspace(-0.3, 0.2, act, dtype=dtype))
    return out


def trajectories(b=2, k=3, t=4, obs=2, act=2, seed=0, ended=True) -> pg.Trajectories:
    g = torch.Generator().manual_seed(seed)
    d = torch.float64
    mask = torch.ones(b, k, t, dtype=d)
    if ended:
        mask[0, 1, 2:] = 0  # an episode that ended early
    return pg.Trajectories(
        torch.randn(b, k, t, obs, generator=g, dtype=d),
        torch.randn(b, k, t, act, generator=g, dtype=d),
        torch.randn(b, k, t, generator=g, dtype=d),
        mask,
    )


def test_the_inner_step_is_reinforce_by_hand_on_a_linear_gaussian_policy():
    ln = learner(inner_lr=0.3)
    data = trajectories()
    adv = torch.randn(2, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    params = {k: p.detach() for k, p in ln.folded(2).items()}
    adapted = ln._detached_step(ln._support_loss([(data, adv)]), params, 0)
    w, bias, log_std = ln.backbone.net[0].weight, ln.backbone.net[0].bias, ln.log_std
    obs, actions, mask = data.flat()
    for task in range(2):  # d/dtheta of -(1/N) sum_t A_t log pi(a_t | s_t), N = steps taken
        s, a, m, A = obs[task], actions[task], mask[task], adv[task]
        z = (a - (s @ w.T + bias)) / log_std.exp() ** 2  # d log pi / d mean
        n = m.sum()
        g_w = -((A * m)[:, None, None] * z[:, :, None] * s[:, None, :]).sum(0) / n
        g_b = -((A * m)[:, None] * z).sum(0) / n
        g_s = (
            -((A * m)[:, None] * ((a - (s @ w.T + bias)) ** 2 / log_std.exp() ** 2 - 1)).sum(0) / n
        )
        torch.testing.assert_close(adapted["net.0.weight"][task], w - 0.3 * g_w)
        torch.testing.assert_close(adapted["net.0.bias"][task], bias - 0.3 * g_b)
        torch.testing.assert_close(adapted["log_std"][task], log_std - 0.3 * g_s)


def _objective(ln: MAMLRL, steps=1):
    data = [(trajectories(seed=s), torch.randn(2, 12, dtype=torch.float64)) for s in range(steps)]
    post = trajectories(seed=9)
    post_adv = torch.randn(2, 12, dtype=torch.float64)
    sampled = {k: p.detach() for k, p in ln.folded(2).items()}  # the adapted policy samples
    for k in range(ln.inner_steps):
        sampled = ln._detached_step(ln._support_loss(data), sampled, k)
    return ln.objective(data, post, post_adv, sampled)


@pytest.mark.parametrize("steps", [1, 2])
def test_the_meta_gradient_through_the_inner_steps_matches_finite_differences(steps):
    torch.manual_seed(3)
    ln = learner(hidden=(5,), inner_lr=0.2, inner_steps=steps)
    closure = _objective(ln, steps)
    params = list(ln.parameters())
    loss = closure(True)[0]
    exact = parameters_to_vector(torch.autograd.grad(loss, params))
    theta = parameters_to_vector(params).detach()
    numeric = torch.zeros_like(theta)
    for i in range(theta.numel()):
        for sign in (1, -1):
            shifted = theta.clone()
            shifted[i] += sign * 1e-6
            vector_to_parameters(shifted, params)
            numeric[i] += sign * closure(False)[0].item() / 2e-6
    vector_to_parameters(theta, params)
    torch.testing.assert_close(exact, numeric, rtol=1e-5, atol=1e-8)
    # first order drops a term that matters here: its gradient differs
    ln.first_order = True
    first = parameters_to_vector(torch.autograd.grad(closure(True)[0], params))
    assert (first - exact).abs().max() > 1e-4


def test_a_trpo_step_keeps_the_kl_within_the_trust_region_and_lowers_the_loss():
    ln = learner(hidden=(5,), inner_lr=0.2)
    closure = _objective(ln)
    before = closure(False)[0].item()
    optimizer = TRPO(ln.parameters(), max_kl=1e-3)
    optimizer.step(closure)
    loss, kl, _ = closure(False)
    assert 0 < kl.item() <= 1e-3 and optimizer.last["kl"] == pytest.approx(kl.item())
    assert loss.item() < before
    # the full step's quadratic KL estimate is max_kl: with a tiny region, the first try passes
    tiny = learner(hidden=(5,), inner_lr=0.2)
    closure = _objective(tiny)
    TRPO(tiny.parameters(), max_kl=1e-7).step(closure)
    assert closure(False)[1].item() == pytest.approx(1e-7, rel=0.05)


def test_the_fisher_vector_product_gives_the_exact_hessians_step():
    ln = learner(hidden=(5,), inner_lr=0.2, inner_steps=2)
    closure = _objective(ln, steps=2)
    params, group = list(ln.parameters()), TRPO(ln.parameters()).param_groups[0]
    loss, kl, fisher = closure(True)
    exact = TRPO._full_step(loss, kl, params, group)
    loss, kl, fisher = closure(True)
    torch.testing.assert_close(TRPO._full_step(loss, kl, params, group, fisher), exact)


def test_conjugate_gradient_solves_a_positive_definite_system():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    h, b = m @ m.T + 6 * torch.eye(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    torch.testing.assert_close(conjugate_gradient(lambda v: h @ v, b, 6), torch.linalg.solve(h, b))


def test_the_linear_baseline_is_ridge_regression_on_the_steps_taken():
    data = trajectories(b=2, k=3, t=5, ended=True)
    features = pg.baseline_features(data.observations, data.mask)
    targets = pg.discounted_returns(data.rewards, data.mask, 0.9)
    weights = pg.fit_linear_baseline(features, targets, data.mask, reg=1e-5)
    for task in range(2):
        keep = data.mask[task].reshape(-1).bool().numpy()
        x = features[task].reshape(-1, features.shape[-1]).numpy()[keep]
        y = targets[task].reshape(-1).numpy()[keep]
        closed = np.linalg.solve(x.T @ x + 1e-5 * np.eye(x.shape[1]), x.T @ y)
        np.testing.assert_allclose(weights[task].numpy(), closed, rtol=1e-6, atol=1e-9)
    # features: obs, obs^2, t/100, (t/100)^2, (t/100)^3, 1 and zero after an episode ended
    assert features.shape[-1] == 2 * 2 + 4
    assert features[0, 1, 3].abs().sum() == 0
    torch.testing.assert_close(
        features[1, 0, 3, 4:], torch.tensor([0.03, 0.0009, 2.7e-5, 1], dtype=torch.float64)
    )


def test_returns_and_gae_by_hand():
    rewards = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)  # ended after two steps
    torch.testing.assert_close(
        pg.discounted_returns(rewards, mask, 0.5),
        torch.tensor([[2.0, 2.0, 0.0]], dtype=torch.float64),
    )
    values = torch.tensor([[0.5, 1.0, 7.0]], dtype=torch.float64)
    # lambda = 1: returns minus values; lambda = 0: one-step TD errors
    torch.testing.assert_close(
        pg.gae(rewards, values, mask, 0.5, 1.0),
        torch.tensor([[1.5, 1.0, 0.0]], dtype=torch.float64),
    )
    torch.testing.assert_close(
        pg.gae(rewards, values, mask, 0.5, 0.0),
        torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64),
    )


def test_gaussian_density_and_kl_against_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m0, m1, a = (torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(3))
    s0, s1 = (
        torch.rand(4, 3, generator=g, dtype=torch.float64) - 0.5,
        torch.zeros(4, 3, dtype=torch.float64),
    )
    p, q = torch.distributions.Normal(m0, s0.exp()), torch.distributions.Normal(m1, s1.exp())
    torch.testing.assert_close(pg.gaussian_log_prob(a, m0, s0), p.log_prob(a).sum(-1))
    torch.testing.assert_close(
        pg.gaussian_kl(m0, s0, m1, s1), torch.distributions.kl_divergence(p, q).sum(-1)
    )


def test_the_point_robot_moves_by_clipped_scaled_actions_and_stops_at_its_goal():
    envs = Navigation2D().envs(torch.tensor([[0.05, 0.0], [0.3, -0.2]]), 2)
    assert torch.equal(envs.reset([0, 1]), torch.zeros(2, 2, 2))
    action = torch.tensor([[[0.5, 0.0], [5.0, -5.0]], [[1.0, 1.0], [0.0, 0.0]]])
    obs, reward, done = envs.step(action)
    torch.testing.assert_close(obs[0, 1], torch.tensor([0.1, -0.1]))  # clipped to +-1, x 0.1
    torch.testing.assert_close(reward[1, 0], -torch.tensor([0.2, 0.3]).norm())
    assert done.tolist() == [[True, False], [False, False]]  # within 0.01 of (0.05, 0)


def _batch(dataset, seed=0, tasks=3, shot=2, query=2):
    return dataset.sample(
        "train", tasks, TaskShape(1, shot, query), torch.Generator().manual_seed(seed)
    )


def test_seeded_rollouts_reproduce_and_differ_by_seed():
    dataset, ln = Navigation2D(horizon=15), learner(dtype=torch.float32)

    def run(seed):
        batch = _batch(dataset, seed)
        gens = [torch.Generator().manual_seed(int(s)) for s in batch.seeds]
        return ln._rollout(batch, ln.folded(3), 2, 0, gens)

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a.actions, b.actions) and torch.equal(a.rewards, b.rewards)
    assert not torch.equal(a.actions, c.actions)


def test_an_rl_batch_slices_and_joins_like_image_batches():
    from metarun.evaluate import _cat, _take

    batch = _batch(Navigation2D(), tasks=5)
    part = _take(batch, 1, 3)
    assert isinstance(part, EnvBatch) and part.num_tasks == 2 and part.source is batch.source
    assert torch.equal(_cat([_take(batch, 0, 1), part]).tasks, batch.tasks[:3])


def test_a_run_logs_returns_before_and_after_adaptation_and_resumes_exactly(run_inprocess):
    full, _ = run_inprocess([*RL, "checkpoint.every=2"], name="full")
    part, _ = run_inprocess([*RL, "train.steps=2", "checkpoint.every=2"], name="part")
    run_inprocess([*RL, "checkpoint.every=2", "resume=true", f"resume_dir={part}"], name="resumer")
    timing = ("train/env_steps_per_s", "train/sim_share")  # wall-clock: differ run to run

    def logged(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in timing} for r in rows]

    assert logged(part) == logged(full)  # every return, loss and KL, to the last bit
    weights = [load_checkpoint(r / "checkpoints" / "last.pt")["model"] for r in (part, full)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    summary = json.loads((full / "summary.json").read_text())
    rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    train = next(r for r in rows if "train/return_post" in r)
    assert {"train/return_pre", "train/kl", "train/env_steps", "train/sim_share"} <= set(train)
    assert train["train/env_steps"] <= 3 * 6 * 12  # 3 tasks, 3 + 3 trajectories of 12 steps
    for k in (0, 1, 2):
        assert (
            math.isfinite(summary[f"test/return_step{k}"])
            and summary[f"test/return_step{k}_ci95"] > 0
        )
    assert summary["test/return"] == summary["test/return_step2"]
    gain = summary["test/return_step1"] - summary["test/return_step0"]
    assert summary["test/gain_step1"] == pytest.approx(gain) and "test/gain_step0" not in summary
    assert summary["best_val/return"] is not None


def test_metarun_eval_reports_returns_after_each_adaptation_step(run_inprocess, capsys):
    from metarun.trained import evaluate_checkpoint

    run, _ = run_inprocess(RL, name="run")
    scores = evaluate_checkpoint(
        [f"checkpoint={run}", "test.episodes=3", "algo.eval_report_steps=[0,1,3]"]
    )
    assert {"test/return_step0", "test/return_step1", "test/return_step3", "test/return"} <= set(
        scores
    )
    out = capsys.readouterr().out
    assert "3 test episodes, 3 trajectories per adaptation step" in out


def test_the_baselines_run_on_the_same_test_tasks_and_the_report_ranks_returns(
    run_inprocess, tmp_path, capsys
):
    from metarun import report, report_plot

    maml, _ = run_inprocess(RL, name="maml")
    pre, _ = run_inprocess([*RL, "algo=pretrained_rl"], name="pre")
    rand, _ = run_inprocess([*RL, "algo=pretrained_rl", "train.steps=0"], name="rand")
    rows = [json.loads(line) for line in (pre / "metrics.jsonl").read_text().splitlines()]
    assert any("train/return_pre" in r for r in rows)
    assert not any("train/return_post" in r for r in rows)  # joint training: no inner step
    summaries = [json.loads((r / "summary.json").read_text()) for r in (maml, pre, rand)]
    assert all("test/return_step1" in s for s in summaries)
    assert summaries[2]["train/steps"] == 0
    capsys.readouterr()
    report.main([str(maml), str(pre), str(rand), "--out", str(tmp_path / "report")])
    assert "3 runs, 3 configurations, sorted by test/return" in capsys.readouterr().out
    fig = report_plot.figure(report.group(report.find_runs([str(maml), str(pre)])), ["algo"])
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:3] == ["meta-train loss", "meta-train return after adaptation",
                          "meta-validation return"]  # fmt: skip


@pytest.mark.slow
def test_halfcheetah_rewards_follow_the_task_and_rollouts_reproduce():
    pytest.importorskip("mujoco", reason="needs MuJoCo: pip install 'metarun[rl]'")
    from metarun.data import AntVel, HalfCheetahDir, HalfCheetahVel

    vel = HalfCheetahVel(horizon=5)
    batch = _batch(vel, tasks=2, shot=2)
    envs = vel.envs(batch.tasks, 2)
    obs = envs.reset([int(s) for s in batch.seeds])
    assert obs.shape == (2, 2, 17)
    action = torch.full((2, 2, 6), 2.0)  # clipped to 1 in the simulator and the control cost
    _, reward, _ = envs.step(action)
    envs.reset([int(s) for s in batch.seeds])  # the same states again: read the velocity
    info = envs.vector.step(np.ones((4, 6)))[4]
    v = torch.tensor(np.asarray(info["x_velocity"]).reshape(2, 2), dtype=torch.float32)
    torch.testing.assert_close(reward, -(v - batch.tasks[:, :1]).abs() - 0.05 * 6)
    ant = AntVel(horizon=5)  # the reference's terms: +1 + 0.05 alive, contact, 0.005 |a|^2
    ants = _batch(ant, tasks=2, shot=2)
    envs = ant.envs(ants.tasks, 2)
    assert envs.reset([int(s) for s in ants.seeds]).shape == (2, 2, 105)
    _, reward, _ = envs.step(torch.full((2, 2, 8), 0.5))
    envs.reset([int(s) for s in ants.seeds])
    info = envs.vector.step(np.full((4, 8), 0.5))[4]
    v, contact = (
        torch.tensor(np.asarray(info[k]).reshape(2, 2)) for k in ("x_velocity", "reward_contact")
    )
    expected = -(v - ants.tasks[:, :1].double()).abs() + 1.05 + contact - 0.005 * 8 * 0.25
    torch.testing.assert_close(reward, expected.float())
    ant.close(), vel.close()
    direction = HalfCheetahDir(horizon=5)
    assert set(direction.draw_tasks(50, torch.Generator().manual_seed(0)).flatten().tolist()) == {
        -1.0,
        1.0,
    }
    ln = learner(obs=17, act=6, dtype=torch.float32)
    gens = lambda: [torch.Generator().manual_seed(int(s)) for s in batch.seeds]  # noqa: E731
    a = ln._rollout(batch, ln.folded(2), 2, 0, gens())
    b = ln._rollout(batch, ln.folded(2), 2, 0, gens())
    assert torch.equal(a.observations, b.observations) and torch.equal(a.rewards, b.rewards)


def test_meta_rl_refuses_data_parallel_runs_in_one_line(compose_cfg):
    from types import SimpleNamespace

    from metarun.errors import MetarunError

    cfg = compose_cfg(["algo=maml_rl", "dataset=navigation2d"])
    MAMLRL.check_run(cfg, SimpleNamespace(active=False, size=1))
    with pytest.raises(MetarunError, match="MAMLRL runs in one process \\(2 were launched\\)"):
        MAMLRL.check_run(cfg, SimpleNamespace(active=True, size=2))
