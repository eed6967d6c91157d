"""Schemas of meta-reinforcement learning: the RL task distributions (``dataset``) and the
algorithms that learn policies for them (``algo``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, List, Optional

from omegaconf import MISSING

from metarun.checks import POSITIVE, SIGNED, Range
from metarun.schemas.algos import LearnerConfig
from metarun.schemas.registry import schema

HORIZON = Range(1, 100_000, why="environment steps per episode")


@schema("dataset", "navigation2d")
@dataclass
class Navigation2DConfig:
    BOUNDS: ClassVar = {"horizon": HORIZON, "goal_range": SIGNED, "action_scale": POSITIVE}
    _target_: str = "metarun.data.Navigation2D"
    horizon: int = 100  # steps per episode (it also ends within 0.01 of the goal)
    goal_range: List[float] = field(default_factory=lambda: [-0.5, 0.5])  # per axis
    action_scale: float = 0.1  # a move is clip(action, -1, 1) * this


@dataclass
class LocomotionConfig:
    """What the MuJoCo tasks share (metarun/data/locomotion.py)."""

    BOUNDS: ClassVar = {"horizon": HORIZON, "velocity_range": SIGNED}
    _target_: str = MISSING
    horizon: int = 200
    ctrl_cost: float = 0.05  # times |action|^2 in the reward (the action clipped to [-1, 1])


@schema("dataset", "halfcheetah_vel")
@dataclass
class HalfCheetahVelConfig(LocomotionConfig):
    _target_: str = "metarun.data.HalfCheetahVel"
    velocity_range: List[float] = field(default_factory=lambda: [0.0, 2.0])  # target velocities


@schema("dataset", "halfcheetah_dir")
@dataclass
class HalfCheetahDirConfig(LocomotionConfig):
    _target_: str = "metarun.data.HalfCheetahDir"


@schema("dataset", "ant_vel")
@dataclass
class AntVelConfig(LocomotionConfig):
    _target_: str = "metarun.data.AntVel"
    ctrl_cost: float = 0.005
    velocity_range: List[float] = field(default_factory=lambda: [0.0, 3.0])


@schema("dataset", "ant_dir")
@dataclass
class AntDirConfig(LocomotionConfig):
    _target_: str = "metarun.data.AntDir"
    ctrl_cost: float = 0.005


@dataclass
class TRPOConfig:
    """The outer update (metarun/algorithms/trpo.py); the MAML paper's and its code's values."""

    BOUNDS: ClassVar = {
        "max_kl": POSITIVE,
        "cg_iters": POSITIVE,
        "backtrack_ratio": Range(0, 1, open_low=True, open_high=True),
    }
    _target_: str = "metarun.algorithms.TRPO"
    _partial_: bool = True
    max_kl: float = 0.01  # the trust region: mean KL of the adapted policies per step
    damping: float = 1e-5  # added to the KL's Hessian in conjugate gradient
    cg_iters: int = 10
    backtrack_ratio: float = 0.8  # line search: the step shrinks by this per try
    max_backtracks: int = 15


@schema("algo", "maml_rl")
@dataclass
class MAMLRLConfig(LearnerConfig):
    BOUNDS: ClassVar = {
        "inner_lr": POSITIVE,
        "later_inner_lr": POSITIVE,
        "gamma": Range(0, 1),
        "gae_lambda": Range(0, 1),
        "init_std": POSITIVE,
    }
    _target_: str = "metarun.algorithms.MAMLRL"
    optimizer: TRPOConfig = field(default_factory=TRPOConfig)
    inner_lr: float = 0.1  # the paper's alpha (appendix A.2)
    later_inner_lr: Optional[float] = None  # inner steps after the first; null: inner_lr
    inner_steps: int = 1  # policy-gradient steps per task in meta-training (0: joint training)
    eval_inner_steps: int = 1  # steps at validation / test; `return` is read after them
    eval_report_steps: List[int] = field(default_factory=lambda: [0, 1])  # return_step{k}
    first_order: bool = False
    gamma: float = 0.99  # discount
    gae_lambda: float = 1.0  # GAE's lambda (1: returns minus the baseline)
    init_std: float = 1.0  # the Gaussian policy's initial standard deviation


@schema("algo", "fomaml_rl")
@dataclass
class FOMAMLRLConfig(MAMLRLConfig):
    _target_: str = "metarun.algorithms.FOMAMLRL"
    first_order: bool = True


@schema("algo", "pretrained_rl")
@dataclass
class PretrainedRLConfig(MAMLRLConfig):
    """The paper's "pretrained" baseline: one policy trained on all training tasks jointly
    (TRPO on the returns of the unadapted policy), fine-tuned at test time as MAML's is."""

    _target_: str = "metarun.algorithms.PretrainedRL"
    inner_steps: int = 0
