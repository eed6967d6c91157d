"""2D navigation of Finn et al. 2017, section 5.3: a point robot moves to a goal.

Each task is a goal drawn uniformly in ``[-0.5, 0.5]^2``; the robot starts at the origin, its
observation is its position, an action moves it by ``clip(a, -1, 1) * action_scale`` (0.1: the
reference code's ``normalize`` wrapper maps the policy's [-1, 1] onto the action bounds
[-0.1, 0.1]), the reward is minus the distance to the goal after the move, and an episode ends
after ``horizon`` (100) steps or once the robot is within 0.01 of the goal on both axes (as the
authors' ``PointEnvRandGoal``: cbfinn/maml_rl, maml_examples/point_env_randgoal.py). Pure torch,
every trajectory of every task stepped at once.
"""

from __future__ import annotations

from typing import Sequence

import torch

from metarun.data.rl_tasks import RLTasks, VectorTasks, check_range

#: An episode ends within this distance of the goal on both axes (the reference environment).
GOAL_TOLERANCE = 0.01


class PointRobots(VectorTasks):
    """Point robots of B tasks, K each: positions ``[B, K, 2]``."""

    def __init__(self, goals: torch.Tensor, trajectories: int, action_scale: float) -> None:
        self.goals = goals[:, None, :].float()  # [B, 1, 2]
        self.shape = (goals.shape[0], trajectories, 2)
        self.action_scale = action_scale
        self.position = torch.zeros(self.shape, device=goals.device)

    def reset(self, seeds: list[int]) -> torch.Tensor:
        """Every robot at the origin (the environment itself is deterministic)."""
        self.position = torch.zeros(self.shape, device=self.goals.device)
        return self.position.clone()

    def step(self, actions: torch.Tensor):
        self.position = self.position + actions.clamp(-1.0, 1.0) * self.action_scale
        offset = self.position - self.goals
        reward = -offset.norm(dim=-1)
        done = (offset.abs() < GOAL_TOLERANCE).all(dim=-1)
        return self.position.clone(), reward, done


class Navigation2D(RLTasks):
    """Goals uniform in ``goal_range``^2 (``dataset=navigation2d``)."""

    name = "navigation2d"
    observation_size = 2
    action_size = 2
    task_size = 2

    def __init__(
        self,
        horizon: int = 100,
        goal_range: Sequence[float] = (-0.5, 0.5),
        action_scale: float = 0.1,
    ) -> None:
        super().__init__(horizon)
        self.goal_range = check_range("goal_range", goal_range)
        self.action_scale = float(action_scale)

    def draw_tasks(self, num_tasks: int, generator: torch.Generator) -> torch.Tensor:
        return self.uniform((num_tasks, 2), *self.goal_range, generator)

    def envs(self, tasks: torch.Tensor, trajectories: int) -> PointRobots:
        return PointRobots(tasks, trajectories, self.action_scale)
