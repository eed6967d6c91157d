"""MuJoCo locomotion tasks of Finn et al. 2017, section 5.3, on gymnasium's ``HalfCheetah-v5``
(and ``Ant-v5``: ``ant_vel``, ``ant_dir``, with the reference code's ant reward terms).

``halfcheetah_vel``: each task is a target forward velocity ``v_goal ~ U[0, 2]``, reward
``-|v - v_goal| - ctrl_cost * |a|^2``. ``halfcheetah_dir``: each task is a direction (forward
or backward, each with probability 1/2), reward ``direction * v - ctrl_cost * |a|^2``. ``v`` is
gymnasium's ``x_velocity`` (the root's forward velocity; the reference code reads the torso's
centre-of-mass velocity), ``a`` the action clipped to [-1, 1], ``ctrl_cost`` 0.05 (the
reference's ``1e-1 * 0.5``: cbfinn/maml_rl, rllab/envs/mujoco/half_cheetah_env_rand.py and
half_cheetah_env_rand_direc.py); 200-step episodes. Every trajectory of every task is a
sub-environment of one ``gymnasium.vector.SyncVectorEnv``, stepped together; the vector
environment of a batch size is built once and reused.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np
import torch

from metarun.data.rl_tasks import RLTasks, VectorTasks, check_range
from metarun.errors import MetarunError, warn

INSTALL = "pip install 'metarun[rl]' (gymnasium with MuJoCo)"
#: A sub-environment's reset seed is its task's seed plus this times its trajectory number.
TRAJECTORY_SEED_STRIDE = 7919


def _gymnasium(name: str):
    """gymnasium with its MuJoCo environments, or a one-line error naming the install."""
    try:
        import gymnasium
        import mujoco  # noqa: F401
    except ImportError as e:
        raise MetarunError(
            f"dataset={name} simulates MuJoCo, which is not installed ({e.name} is missing): "
            f"{INSTALL}"
        ) from None
    return gymnasium


@contextlib.contextmanager
def _mujoco_warnings_once():
    """MuJoCo's warnings while models compile, each said once (a model of every
    sub-environment would repeat its deprecation warning hundreds of times)."""
    import mujoco

    seen: set[str] = set()

    def once(message: str) -> None:
        if message not in seen:
            seen.add(message)
            warn(f"MuJoCo: {message.strip()}")

    previous = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(once)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)


class MuJoCoTasks(VectorTasks):
    """B tasks x K trajectories of one gymnasium environment, as one vector environment."""

    def __init__(self, owner: "Locomotion", tasks: torch.Tensor, trajectories: int) -> None:
        self.owner, self.trajectories = owner, trajectories
        self.tasks = tasks.double().cpu().numpy()  # [B, P]
        self.shape = (tasks.shape[0], trajectories)
        self.device = tasks.device
        self.vector = owner.vector_env(self.shape[0] * trajectories)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(array, dtype=torch.float32).reshape(*self.shape, -1).to(self.device)

    def reset(self, seeds: list[int]) -> torch.Tensor:
        k = np.arange(self.trajectories)
        each = [int(s + TRAJECTORY_SEED_STRIDE * j) % (2**31 - 1) for s in seeds for j in k]
        observations, _ = self.vector.reset(seed=each)
        return self._tensor(observations)

    def step(self, actions: torch.Tensor):
        clipped = actions.detach().clamp(-1.0, 1.0).reshape(-1, actions.shape[-1])
        clipped = clipped.double().cpu().numpy()
        observations, _, terminated, truncated, info = self.vector.step(clipped)
        velocity = np.asarray(info["x_velocity"], dtype=np.float64).reshape(self.shape)
        control = self.owner.ctrl_cost * np.square(clipped).sum(-1).reshape(self.shape)
        reward = self.owner.reward(velocity, self.tasks) - control
        reward = reward + np.broadcast_to(self.owner.bonus(info), reward.size).reshape(self.shape)
        done = np.asarray(terminated).reshape(self.shape)
        return (
            self._tensor(observations),
            torch.as_tensor(reward, dtype=torch.float32, device=self.device),
            torch.as_tensor(done, device=self.device),
        )


class Locomotion(RLTasks):
    """A gymnasium MuJoCo environment with a task-dependent reward."""

    env_id = "HalfCheetah-v5"

    def __init__(self, horizon: int = 200, ctrl_cost: float = 0.05) -> None:
        super().__init__(horizon)
        self.gym = _gymnasium(self.name)
        self.ctrl_cost = float(ctrl_cost)
        self._vectors: dict[int, object] = {}
        probe = self.vector_env(1)  # the sizes, from the simulator itself
        self.observation_size = probe.single_observation_space.shape[0]
        self.action_size = probe.single_action_space.shape[0]

    def vector_env(self, size: int):
        """The vector environment of ``size`` sub-environments (built once per size)."""
        if size not in self._vectors:
            make = lambda: self.gym.make(self.env_id, max_episode_steps=self.horizon)  # noqa
            with _mujoco_warnings_once():
                self._vectors[size] = self.gym.vector.SyncVectorEnv([make] * size)
        return self._vectors[size]

    def envs(self, tasks: torch.Tensor, trajectories: int) -> MuJoCoTasks:
        return MuJoCoTasks(self, tasks, trajectories)

    def reward(self, velocity: np.ndarray, tasks: np.ndarray) -> np.ndarray:
        """The task part of the reward of forward ``velocity`` ``[B, K]``."""
        raise NotImplementedError

    def bonus(self, info: dict) -> np.ndarray | float:
        """Reward terms besides the task's and the control cost, per sub-environment (none by
        default)."""
        return 0.0

    def close(self) -> None:
        for vector in self._vectors.values():
            vector.close()
        self._vectors.clear()


class GoalVelocity:
    """Tasks: a target forward velocity each, uniform in ``velocity_range``; reward
    ``-|v - v_goal|``."""

    velocity_range = (0.0, 2.0)

    def draw_tasks(self, num_tasks: int, generator: torch.Generator) -> torch.Tensor:
        return RLTasks.uniform((num_tasks, 1), *self.velocity_range, generator)

    def reward(self, velocity, tasks):
        return -np.abs(velocity - tasks[:, :1])


class GoalDirection:
    """Tasks: forward (+1) or backward (-1), each with probability 1/2; reward ``direction * v``."""

    def draw_tasks(self, num_tasks: int, generator: torch.Generator) -> torch.Tensor:
        forward = torch.rand((num_tasks, 1), generator=generator, dtype=torch.float64) >= 0.5
        return forward.double() * 2 - 1

    def reward(self, velocity, tasks):
        return tasks[:, :1] * velocity


class HalfCheetahVel(GoalVelocity, Locomotion):
    """``dataset=halfcheetah_vel``: target velocities in [0, 2]."""

    name = "halfcheetah_vel"

    def __init__(
        self, horizon: int = 200, ctrl_cost: float = 0.05, velocity_range: Sequence[float] = (0, 2)
    ) -> None:
        super().__init__(horizon, ctrl_cost)
        self.velocity_range = check_range("velocity_range", velocity_range)


class HalfCheetahDir(GoalDirection, Locomotion):
    """``dataset=halfcheetah_dir``."""

    name = "halfcheetah_dir"


class AntTasks(Locomotion):
    """gymnasium's ``Ant-v5`` with the reference code's reward terms (rllab/envs/mujoco/
    ant_env_rand.py, ant_env_rand_direc.py): control cost 0.005 |a|^2, contact cost
    0.0005 |clip(contact forces, -1, 1)|^2 (gymnasium's own ``reward_contact``), 0.05 per step
    alive (``survive``); an episode ends when the torso leaves heights [0.2, 1.0] (gymnasium's
    default, as the reference's)."""

    env_id = "Ant-v5"
    survive = 0.05

    def __init__(self, horizon: int = 200, ctrl_cost: float = 0.005) -> None:
        super().__init__(horizon, ctrl_cost)

    def bonus(self, info: dict) -> np.ndarray:
        return np.asarray(info["reward_contact"], dtype=np.float64) + self.survive


class AntVel(GoalVelocity, AntTasks):
    """``dataset=ant_vel``: target velocities in [0, 3], and the reference's +1 per step (the
    paper's "positive reward bonus ... to prevent the ant from ending the episode")."""

    name = "ant_vel"
    survive = 1.05

    def __init__(
        self, horizon: int = 200, ctrl_cost: float = 0.005, velocity_range: Sequence[float] = (0, 3)
    ) -> None:
        super().__init__(horizon, ctrl_cost)
        self.velocity_range = check_range("velocity_range", velocity_range)


class AntDir(GoalDirection, AntTasks):
    """``dataset=ant_dir``."""

    name = "ant_dir"
