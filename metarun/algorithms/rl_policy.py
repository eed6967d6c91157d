"""A Gaussian MLP policy whose weights fold a task axis, for meta-RL learners: its action
distribution, batched rollouts, the REINFORCE support loss of MAML's inner loop and
adaptation off the meta-graph (rollout, advantages, inner step, again).

:class:`FoldedGaussianPolicy` is a mixin; it needs on ``self``: ``backbone`` (an MLP with
``forward_tasks``), ``log_std``, ``gamma``, ``gae_lambda``, ``_timing`` and InnerLoop's
``_detached_step``.
"""

from __future__ import annotations

import torch

from metarun.algorithms import policy_gradient as pg
from metarun.algorithms.inner_loop import Params

#: Rollout ``r`` of a task resets its environments with ``seed + r * ROLLOUT_SEED_STRIDE``.
ROLLOUT_SEED_STRIDE = 104729


class FoldedGaussianPolicy:
    """Each task's copy of the policy's weights in one batched forward (module docstring)."""

    def folded(self, tasks: int) -> Params:
        """The meta policy's weights with a task axis (a view per task, one graph)."""
        own = {**dict(self.backbone.named_parameters()), "log_std": self.log_std}
        return {k: p.expand(tasks, *p.shape) for k, p in own.items()}

    def distribution(self, params: Params, obs: torch.Tensor):
        """Each task's action means ``[B, N, act]`` and log std ``[B, 1, act]`` at ``obs``."""
        weights = {k: v for k, v in params.items() if k != "log_std"}
        return self.backbone.forward_tasks(weights, obs), params["log_std"].unsqueeze(1)

    def _rollout(self, batch, params: Params, trajectories: int, index: int, generators):
        envs = batch.source.envs(batch.tasks, trajectories)
        seeds = [int(s) + index * ROLLOUT_SEED_STRIDE for s in batch.seeds]
        policy = lambda obs: self.distribution(params, obs)  # noqa: E731
        out = pg.rollout(envs, policy, batch.source.horizon, generators, seeds)
        start, seconds, steps = self._timing
        self._timing = (start, seconds + out.seconds, steps + out.steps)
        return out

    def _support_loss(self, data):
        """``loss(params, step)``: REINFORCE on step ``step``'s trajectories, summed over tasks
        (each task's copy of the weights gets its own task's gradient)."""

        def loss(params: Params, step: int) -> torch.Tensor:
            trajectories, adv = data[step]
            obs, actions, mask = trajectories.flat()
            mean, log_std = self.distribution(params, obs)
            logp = pg.gaussian_log_prob(actions, mean, log_std)
            return -pg.masked_mean(logp * adv, mask).sum()

        return loss

    def _advantages(self, trajectories) -> torch.Tensor:
        return pg.advantages(trajectories, self.gamma, self.gae_lambda)

    def _generators(self, batch) -> list[torch.Generator]:
        """Each task's action noise, from its seed."""
        return [torch.Generator().manual_seed(int(s)) for s in batch.seeds]

    def _adapt(self, batch, steps: int, count, visit=None):
        """Off the graph: roll out ``count(k)`` trajectories per task with the weights after
        ``k`` inner steps, for ``k = 0 .. steps``, stepping on each rollout but the last
        (``visit(k, trajectories)`` sees each). Returns the last weights, the inner steps'
        data (trajectories, advantages) and the last rollout."""
        generators = self._generators(batch)
        params = {k: p.detach() for k, p in self.folded(batch.num_tasks).items()}
        data = []
        for k in range(steps + 1):
            trajectories = self._rollout(batch, params, count(k), k, generators)
            if visit is not None:
                visit(k, trajectories)
            if k < steps:
                data.append((trajectories, self._advantages(trajectories)))
                params = self._detached_step(self._support_loss(data), params, k)
        return params, data, trajectories
