"""Policy-gradient pieces of meta-RL: rollouts, a Gaussian policy's densities, returns, the
linear feature baseline and generalised advantage estimation.

Tensors keep the task axis first: ``[B, K, T, ...]`` for B tasks, K trajectories each, T steps.
``mask`` is 1 on the steps an episode took (before it ended) and 0 after.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from metarun.errors import MetarunError

#: ``policy(obs [B, K, obs]) -> (mean [B, K, act], log_std [B, 1, act])``
Policy = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Trajectories:
    """K trajectories of each of B tasks (``[B, K, T, ...]``)."""

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    mask: torch.Tensor
    seconds: float = 0.0  # wall time of the rollout (stepping and acting)

    @property
    def returns(self) -> torch.Tensor:
        """Each task's average undiscounted return over its trajectories, ``[B]``."""
        return (self.rewards * self.mask).sum(-1).mean(-1)

    @property
    def steps(self) -> int:
        """Environment steps taken."""
        return int(self.mask.sum().item())

    def flat(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Observations ``[B, K*T, obs]``, actions ``[B, K*T, act]``, mask ``[B, K*T]``."""
        b = self.mask.shape[0]
        return (
            self.observations.reshape(b, -1, self.observations.shape[-1]),
            self.actions.reshape(b, -1, self.actions.shape[-1]),
            self.mask.reshape(b, -1),
        )


def rollout(
    envs, policy: Policy, horizon: int, generators: list[torch.Generator], seeds
) -> Trajectories:
    """``horizon`` steps of every environment of ``envs`` under ``policy`` (no gradient); task
    ``b``'s action noise comes from ``generators[b]``, its resets from ``seeds[b]``."""
    start = time.perf_counter()
    obs = envs.reset([int(s) for s in seeds])
    alive = torch.ones(obs.shape[:2], device=obs.device)
    observations, actions, rewards, masks = [], [], [], []
    with torch.no_grad():
        for _ in range(horizon):
            mean, log_std = policy(obs)
            noise = torch.stack(
                [torch.randn(mean.shape[1:], generator=g, dtype=mean.dtype) for g in generators]
            ).to(mean.device)
            action = mean + log_std.exp() * noise
            if not bool(torch.isfinite(action).all()):
                raise MetarunError(
                    "the policy's actions became NaN or inf; the policy's weights diverged "
                    "(lower algo.inner_lr or algo.optimizer.max_kl) or a loaded checkpoint "
                    "holds NaN weights"
                )
            next_obs, reward, done = envs.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(reward)
            masks.append(alive)
            alive = alive * (~done.bool()).float()
            obs = next_obs
    stack = lambda xs: torch.stack(xs, dim=2)  # noqa: E731  [B, K, T, ...]
    return Trajectories(
        stack(observations), stack(actions), stack(rewards), stack(masks),
        time.perf_counter() - start,
    )  # fmt: skip


def gaussian_log_prob(actions, mean, log_std) -> torch.Tensor:
    """log N(actions; mean, exp(log_std)^2), summed over the action dimensions."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_kl(mean0, log_std0, mean1, log_std1) -> torch.Tensor:
    """KL(N0 || N1) of diagonal Gaussians, summed over the action dimensions."""
    var0, var1 = torch.exp(2 * log_std0), torch.exp(2 * log_std1)
    kl = log_std1 - log_std0 + (var0 + (mean0 - mean1).square()) / (2 * var1) - 0.5
    return kl.sum(-1)


def discounted_returns(rewards, mask, gamma: float) -> torch.Tensor:
    """Discounted rewards-to-go ``sum_{s>=t} gamma^(s-t) r_s`` on the steps taken."""
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = (rewards[..., t] + gamma * running) * mask[..., t]
        out[..., t] = running
    return out


def baseline_features(observations, mask) -> torch.Tensor:
    """rllab's linear feature baseline features: ``obs, obs^2, t, t^2, t^3, 1`` (``t`` = step
    / 100, observations clipped to [-10, 10]), zero on steps not taken."""
    obs = observations.clamp(-10, 10)
    steps = observations.shape[-2]
    t = torch.arange(steps, device=obs.device, dtype=obs.dtype) / 100.0
    t = t.reshape(*([1] * (obs.dim() - 2)), steps, 1).expand(*obs.shape[:-1], 1)
    features = torch.cat([obs, obs.square(), t, t.square(), t**3, torch.ones_like(t)], -1)
    return features * mask.unsqueeze(-1)


def fit_linear_baseline(features, targets, mask, reg: float = 1e-5) -> torch.Tensor:
    """Per task (leading axis), the ridge-regression weights of ``targets`` on ``features``
    over the steps taken: ``(X'X + reg I)^-1 X'y`` in float64, the regulariser grown tenfold
    (up to 5 times) while the solution is not finite, as rllab's ``LinearFeatureBaseline``."""
    b, f = features.shape[0], features.shape[-1]
    x = features.reshape(b, -1, f).double()
    y = (targets * mask).reshape(b, -1).double()
    gram = x.transpose(1, 2) @ x
    rhs = (x.transpose(1, 2) @ y.unsqueeze(-1)).squeeze(-1)
    eye = torch.eye(f, dtype=torch.float64, device=x.device)
    for _ in range(5):
        weights = torch.linalg.solve(gram + reg * eye, rhs)
        if bool(torch.isfinite(weights).all()):
            break
        reg *= 10
    return weights.to(features.dtype)  # [B, F]


def linear_baseline(trajectories: Trajectories, gamma: float) -> torch.Tensor:
    """The baseline's values ``[B, K, T]``: fitted per task on its own trajectories' returns."""
    mask = trajectories.mask
    features = baseline_features(trajectories.observations, mask)
    targets = discounted_returns(trajectories.rewards, mask, gamma)
    weights = fit_linear_baseline(features, targets, mask)
    b = weights.shape[0]
    values = features.reshape(b, -1, weights.shape[1]) @ weights.unsqueeze(-1)
    return values.reshape(mask.shape) * mask


def gae(rewards, values, mask, gamma: float, lam: float) -> torch.Tensor:
    """Generalised advantage estimates (Schulman et al. 2016); ``lam=1``: returns - values."""
    values = values * mask
    next_values = torch.cat([values[..., 1:], torch.zeros_like(values[..., :1])], -1)
    deltas = (rewards + gamma * next_values - values) * mask
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = (deltas[..., t] + gamma * lam * running) * mask[..., t]
        out[..., t] = running
    return out


def normalise(values, mask, eps: float = 1e-8) -> torch.Tensor:
    """Per task (leading axis), zero mean and unit variance over the steps taken."""
    dims = tuple(range(1, values.dim()))
    count = mask.sum(dims, keepdim=True).clamp_min(1)
    mean = (values * mask).sum(dims, keepdim=True) / count
    var = ((values - mean).square() * mask).sum(dims, keepdim=True) / count
    return (values - mean) / (var.sqrt() + eps) * mask


def advantages(trajectories: Trajectories, gamma: float, lam: float) -> torch.Tensor:
    """Normalised GAE advantages ``[B, K*T]`` of each task's trajectories, with its own linear
    baseline."""
    values = linear_baseline(trajectories, gamma)
    adv = gae(trajectories.rewards, values, trajectories.mask, gamma, lam)
    b = adv.shape[0]
    return normalise(adv.reshape(b, -1), trajectories.mask.reshape(b, -1))


def masked_mean(values, mask) -> torch.Tensor:
    """Per task, the mean over the steps taken: ``[B, N] -> [B]``."""
    return (values * mask).sum(-1) / mask.sum(-1).clamp_min(1)
