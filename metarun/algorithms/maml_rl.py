"""MAML for reinforcement learning (Finn et al. 2017, section 5.3): a Gaussian policy adapted
to each task by policy-gradient steps, meta-trained by TRPO on the adapted policies' returns.

Each task rolls out ``task.shot`` trajectories with the meta policy; its inner step is REINFORCE
on them (per-task linear baseline, GAE, normalised advantages), by MAML's one inner loop
(:class:`~.inner_loop.InnerLoop`) on the weights folded with a task axis (all tasks in one
forward); the adapted policies roll out ``task.query`` trajectories; the outer update is a TRPO
step (:class:`~.trpo.TRPO`) on their surrogate loss and KL, both through the inner step (second
order unless ``first_order``). Evaluation reports ``return_step{k}`` after each of
``eval_report_steps`` (fresh trajectories each step), ``gain_step{k}`` (its difference from
step 0, task by task) and ``return`` after ``eval_inner_steps`` (the validation objective).
The log standard deviation is a weight of its own (state-independent, adapted with the rest).
"""

from __future__ import annotations

import math
import time
from typing import Sequence

import torch
from torch import nn

from metarun.algorithms import policy_gradient as pg
from metarun.algorithms.base import MetaLearner, OptimizerFactory, SchedulerFactory
from metarun.algorithms.inner_loop import InnerLoop, Params
from metarun.algorithms.rl_policy import FoldedGaussianPolicy
from metarun.algorithms.trpo import TRPO
from metarun.errors import MetarunError
from metarun.series import Series


class MAMLRL(FoldedGaussianPolicy, InnerLoop, MetaLearner):
    """MAML-TRPO on a Gaussian MLP policy (``backbone`` gives the mean of each action). The
    options are :class:`~metarun.schemas.rl.MAMLRLConfig`'s, a comment each; ``later_inner_lr``
    is the step size of inner steps after the first (None: ``inner_lr``; the paper halves it)."""

    metric_series = (Series("{metric}_step{i}", "step"),)
    step_size_options = ("optimizer.max_kl", "inner_lr")
    uncompiled_reason = "its training step steps environments between forwards"
    data_parallel = False
    # InnerLoop's switches that this learner does not have (Meta-SGD, MAML++)
    inner_lrs = step_lrs = None
    multi_step_loss = first_order_until = 0

    def __init__(
        self,
        backbone: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        inner_lr: float = 0.1,
        later_inner_lr: float | None = None,
        inner_steps: int = 1,
        eval_inner_steps: int = 1,
        eval_report_steps: Sequence[int] = (0, 1),
        first_order: bool = False,
        gamma: float = 0.99,
        gae_lambda: float = 1.0,
        init_std: float = 1.0,
        batch_norm: str = "transductive",
    ) -> None:
        super().__init__(backbone, optimizer, scheduler, batch_norm)
        if not getattr(backbone, "can_fold_tasks", False):
            name = type(backbone).__name__
            raise MetarunError(f"backbone {name} cannot be a policy here; use backbone=mlp")
        self.inner_lr, self.later_inner_lr = inner_lr, later_inner_lr
        self.inner_steps, self.eval_inner_steps = inner_steps, eval_inner_steps
        self.eval_report_steps = tuple(sorted(set(eval_report_steps)))
        self.first_order, self.gamma, self.gae_lambda = first_order, gamma, gae_lambda
        self.log_std = nn.Parameter(torch.full((backbone.out_features,), math.log(init_std)))
        self.adapt_names = {*dict(backbone.named_parameters()), "log_std"}
        self._key = {name: name for name in self.adapt_names}
        self._closure = None  # the TRPO closure of the batch meta_backward sampled
        self._timing = (0.0, 0.0, 0)  # start of the meta-iteration, rollout seconds, env steps

    # -- what a run checks ------------------------------------------------------------------
    @classmethod
    def output_size(cls, dataset, way: int) -> int:
        if getattr(dataset, "problem", None) != "reinforcement":
            raise MetarunError(
                f"{cls.__name__} learns policies for reinforcement-learning tasks; "
                f"{type(dataset).__name__} is a {dataset.problem} dataset: use "
                "dataset=navigation2d, halfcheetah_vel, halfcheetah_dir, ant_vel or ant_dir"
            )
        return dataset.policy_size()

    @classmethod
    def check_task(cls, shape, what: str, algo_cfg) -> None:
        """The task distribution checks the trajectory counts (``check_shape``)."""

    @classmethod
    def check_run(cls, cfg, world) -> None:
        super().check_run(cfg, world)
        if cfg.train.precision != "fp32":
            raise MetarunError(
                f"train.precision={cfg.train.precision}: meta-RL runs in fp32 only (TRPO's "
                "conjugate gradient and the baseline's least squares need it); set fp32"
            )

    # -- meta-training -------------------------------------------------------------------------
    def _lr(self, name: str, step: int) -> float:
        return self.inner_lr if step == 0 or self.later_inner_lr is None else self.later_inner_lr

    def _sample(self, batch):
        """Roll out, adapt and roll out again; returns the TRPO closure and the returns before
        and after adaptation."""
        count = lambda k: batch.shot if k < self.inner_steps else batch.query  # noqa: E731
        params, data, post = self._adapt(batch, self.inner_steps, count)
        closure = self.objective(data, post, self._advantages(post), params)
        before = data[0][0].returns.mean() if data else post.returns.mean()
        return closure, before, post.returns.mean()

    def objective(self, data, post, post_adv, sampled_with: Params):
        """TRPO's closure: ``closure(differentiable) -> (loss, kl)`` at the meta policy's
        current weights, adapting on ``data`` (per inner step: trajectories, advantages) and
        scoring the ``post`` trajectories (sampled with ``sampled_with``) by the surrogate
        ``-E[ratio * advantage]`` and the mean KL from the policies that sampled them."""
        obs, actions, mask = post.flat()
        weight = mask / mask.sum(-1, keepdim=True).clamp_min(1) / mask.shape[0]  # of each step
        support = self._support_loss(data)
        with torch.no_grad():
            old_mean, old_log_std = self.distribution(sampled_with, obs)
            old_logp = pg.gaussian_log_prob(actions, old_mean, old_log_std)
        # the mean KL's Fisher diagonal in (mean, log_std): 1/var per step, 2 per task
        fisher = (weight.unsqueeze(-1) * torch.exp(-2 * old_log_std), 2 * weight.sum(-1))
        fisher = (fisher[0], fisher[1][:, None, None].expand_as(old_log_std))

        def closure(differentiable: bool = True):
            grads = self.autograd_grads if differentiable else None
            params = self.folded(obs.shape[0])
            adapted = self.inner_loop(params, support, self.inner_steps, grads)
            mean, log_std = self.distribution(adapted, obs)
            ratio = torch.exp(pg.gaussian_log_prob(actions, mean, log_std) - old_logp)
            loss = -pg.masked_mean(ratio * post_adv, mask).mean()
            kl = pg.masked_mean(pg.gaussian_kl(old_mean, old_log_std, mean, log_std), mask)
            return loss, kl.mean(), ((mean, log_std), fisher)

        return closure

    def meta_loss(self, batch):
        """The surrogate loss of the adapted policies (with the graph to the meta policy)."""
        closure, before, after = self._sample(batch)
        loss = closure(True)[0]
        return loss, {"loss": loss.detach(), "return_pre": before, "return_post": after}

    def meta_backward(self, batch) -> dict[str, torch.Tensor]:
        """Samples the batch's trajectories; :meth:`outer_step` takes the TRPO step on them."""
        self._timing = (time.perf_counter(), 0.0, 0)
        self._closure, before, after = self._sample(batch)
        metrics = {"return_pre": before}
        if self.inner_steps:
            metrics["return_post"] = after
        return metrics

    def outer_step(self, optimizer, precision) -> dict[str, torch.Tensor]:
        if not isinstance(optimizer, TRPO):
            raise MetarunError(
                f"algo.optimizer: {type(optimizer).__name__} cannot take the outer step of "
                f"{type(self).__name__}; use algo.optimizer._target_=metarun.algorithms.TRPO"
            )
        loss = optimizer.step(self._closure)
        self._closure = None
        start, seconds, steps = self._timing
        total = time.perf_counter() - start
        out = {"loss": loss, **{k: torch.tensor(float(v)) for k, v in optimizer.last.items()}}
        out["env_steps"] = torch.tensor(float(steps))
        out["env_steps_per_s"] = torch.tensor(steps / max(seconds, 1e-9))
        out["sim_share"] = torch.tensor(seconds / max(total, 1e-9))
        return out

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate(self, batch) -> dict[str, torch.Tensor]:
        """Per task: the average return after each adaptation step (fresh trajectories)."""
        out: dict[str, torch.Tensor] = {}
        unadapted: list[torch.Tensor] = []

        def record(k: int, trajectories) -> None:
            returns = trajectories.returns
            if k == 0:
                unadapted.append(returns)
            if k in self.eval_report_steps:
                out[f"return_step{k}"] = returns
                if k:  # paired per task: its CI says whether adapting helped
                    out[f"gain_step{k}"] = returns - unadapted[0]
            if k == self.eval_inner_steps:
                out["return"] = returns

        count = lambda k: batch.query if k == self.eval_inner_steps else batch.shot  # noqa
        self._adapt(batch, max((self.eval_inner_steps, *self.eval_report_steps)), count, record)
        return out

    def extra_repr(self) -> str:
        later = "" if self.later_inner_lr is None else f" then {self.later_inner_lr}"
        order = "first" if self.first_order else "second"
        return (
            f"inner_lr={self.inner_lr}{later}, inner_steps={self.inner_steps}, "
            f"eval_inner_steps={self.eval_inner_steps}, {order}-order, gamma={self.gamma}, "
            f"gae_lambda={self.gae_lambda}, policy std from {math.exp(self.log_std[0].item()):.3g}"
        )
