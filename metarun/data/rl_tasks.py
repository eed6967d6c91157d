"""Task distributions for meta-reinforcement learning: what a batch of RL tasks is.

An RL "dataset" draws tasks (a goal, a target velocity, a direction: a few numbers each) and
builds environments for them. Its batch, :class:`EnvBatch`, holds each task's parameters and a
seed; everything random in a task's rollouts (environment resets, the policy's action noise)
comes from that seed, so a batch is reproduced exactly from the sampler's state (resume) and the
fixed validation and test tasks are the same in every run with the same ``val.seed`` /
``test.seed``, as the image datasets' episodes are.

Environments (:class:`VectorTasks`) step every trajectory of every task of a batch together:
``[B, K, ...]`` tensors in, ``[B, K, ...]`` out. ``task.shot`` is the number of trajectories a
task's adaptation step uses (the MAML paper's K), ``task.query`` the number sampled with the
adapted policy; ``task.way`` is unused.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from metarun.data.batch import TaskShape
from metarun.errors import MetarunError

#: Seeds are drawn below this (they seed torch generators and gymnasium resets).
SEED_BOUND = 2**31 - 1


class EnvBatch(NamedTuple):
    """B tasks: ``tasks [B, P]`` (each task's parameters), ``seeds [B]`` (int64), the
    distribution that builds their environments (``source``), and the trajectories per task
    before (``shot``) and after (``query``) adaptation. Slicing a batch slices its tensors."""

    tasks: torch.Tensor
    seeds: torch.Tensor
    source: "RLTasks"
    shot: int
    query: int

    @property
    def num_tasks(self) -> int:
        return self.tasks.shape[0]

    def to(self, device, non_blocking: bool = False) -> "EnvBatch":
        return self._replace(tasks=self.tasks.to(device))


class VectorTasks:
    """The environments of B tasks with K trajectories each, stepped together.

    ``reset(seeds)`` (one int per task) returns observations ``[B, K, obs]``; ``step(actions)``
    (``[B, K, act]``, the policy's raw samples) returns ``(obs, reward [B, K], done [B, K])``.
    """

    def reset(self, seeds: list[int]) -> torch.Tensor:
        raise NotImplementedError

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def close(self) -> None:
        """Free what the environments hold (simulators); nothing by default."""


class RLTasks:
    """What every RL task distribution shares: the batch it draws and the checks of a run.

    Subclasses set ``name``, ``observation_size``, ``action_size``, ``task_size`` and implement
    :meth:`draw_tasks` and :meth:`envs`."""

    problem = "reinforcement"
    name = "rl"
    observation_size = 1
    action_size = 1
    task_size = 1

    def __init__(self, horizon: int) -> None:
        if horizon < 1:
            raise MetarunError(f"dataset.horizon={horizon}: an episode needs at least 1 step")
        self.horizon = int(horizon)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.observation_size,)

    def output_size(self, way: int) -> int:
        """Only the RL algorithms build a policy for these tasks (:meth:`policy_size`)."""
        raise MetarunError(
            f"dataset={self.name} is a reinforcement-learning task distribution; this algorithm "
            "learns from labelled examples: use algo=maml_rl, fomaml_rl or pretrained_rl"
        )

    def policy_size(self) -> int:
        """The size of the policy network's output: one mean per action dimension."""
        return self.action_size

    def check_shape(self, split: str, shape: TaskShape, what: str = "task") -> None:
        """Each task needs trajectories to adapt on and to score the adapted policy on."""
        for key, value in (("shot", shape.shot), ("query", shape.query)):
            if value < 1:
                raise MetarunError(
                    f"{what}: task.{key}={value} trajectories per task; RL tasks need at least "
                    "1 (task.shot: trajectories per adaptation step, task.query: after it)"
                )

    def sample(
        self,
        split: str,
        num_tasks: int,
        shape: TaskShape,
        generator: torch.Generator,
        device: torch.device | str = "cpu",
        part: slice = slice(None),
    ) -> EnvBatch:
        """``num_tasks`` tasks and their seeds from ``generator`` (every split draws from the
        same distribution, as the MAML paper's; the fixed val/test sets come from their own
        seeds). ``part``: keep only those tasks."""
        tasks = self.draw_tasks(num_tasks, generator)
        seeds = torch.randint(SEED_BOUND, (num_tasks,), generator=generator, dtype=torch.int64)
        tasks = tasks[part].to(device, torch.float32)
        return EnvBatch(tasks, seeds[part], self, shape.shot, shape.query)

    def close(self) -> None:
        """Free the simulators the distribution keeps (nothing by default)."""

    def draw_tasks(self, num_tasks: int, generator: torch.Generator) -> torch.Tensor:
        """Task parameters ``[num_tasks, task_size]``."""
        raise NotImplementedError

    def envs(self, tasks: torch.Tensor, trajectories: int) -> VectorTasks:
        """The environments of ``tasks`` with ``trajectories`` copies each."""
        raise NotImplementedError

    @staticmethod
    def uniform(size, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
        return low + (high - low) * torch.rand(size, generator=generator, dtype=torch.float64)

    def describe(self, shape: TaskShape) -> str:
        """An episode in words (``metarun-eval``'s header)."""
        return (
            f"{shape.shot} trajectories per adaptation step, {shape.query} after the last, "
            f"horizon {self.horizon}"
        )


def check_range(name: str, value, low_limit: float | None = None) -> tuple[float, float]:
    """``dataset.<name>`` as a ``(low, high)`` pair, or a one-line error."""
    value = list(value)
    if len(value) != 2 or not value[0] <= value[1]:
        raise MetarunError(
            f"dataset.{name}={value} is not a [low, high] range with low <= high; pass two "
            f"numbers, e.g. dataset.{name}=[0.0,2.0]"
        )
    if low_limit is not None and value[0] < low_limit:
        raise MetarunError(f"dataset.{name}={value}: the low end must be at least {low_limit}")
    return float(value[0]), float(value[1])
