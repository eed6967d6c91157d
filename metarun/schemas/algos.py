"""Schemas of the ``algo`` group: one per algorithm (variants extend the one they vary)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, List, Optional

from omegaconf import MISSING

from metarun.checks import POSITIVE, Range
from metarun.schemas.backbones import BATCH_NORMS
from metarun.schemas.registry import schema


class TaskBatching(str, Enum):
    auto = "auto"
    fold = "fold"
    loop = "loop"
    vmap = "vmap"


@dataclass
class OptimizerConfig:
    BOUNDS: ClassVar = {"lr": POSITIVE}
    _target_: str = "torch.optim.Adam"
    _partial_: bool = True
    lr: float = 1e-3
    weight_decay: float = 0.0


@dataclass
class LearnerConfig:
    """What every algorithm's schema has: the batch-norm mode its backbones read (their configs
    default to ``${algo.batch_norm}``), the outer optimizer and an optional LR scheduler."""

    OBJECTS: ClassVar = ("scheduler",)  # null or an object config with a _target_
    CHOICES: ClassVar = {"batch_norm": BATCH_NORMS}
    _target_: str = MISSING  # the algorithm's class (each schema sets it; first in the config)
    batch_norm: str = "transductive"  # transductive (batch statistics) | running
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: Optional[Any] = None  # a torch.optim.lr_scheduler class, _partial_: true


@dataclass
class FineTuningConfig(LearnerConfig):
    """Algorithms that adapt the weights to each task with gradient steps (MAML, Reptile)."""

    BOUNDS: ClassVar = {"inner_lr": POSITIVE, "inner_steps": POSITIVE}
    inner_lr: float = 0.01  # inner step size
    inner_steps: int = 1  # inner steps per task in meta-training
    eval_inner_steps: int = 10  # inner steps at validation and test


@schema("algo", "maml")
@dataclass
class MAMLConfig(FineTuningConfig):
    CHOICES: ClassVar = {**LearnerConfig.CHOICES, "adapt": ("all", "head")}
    _target_: str = "metarun.algorithms.MAML"
    eval_report_steps: List[int] = field(default_factory=list)
    first_order: bool = False
    task_batching: TaskBatching = TaskBatching.auto
    task_chunk: int = 0  # tasks per forward + backward; 0: automatic (fold: ~1M input values)
    adapt: str = "all"  # all (MAML) | head (ANIL: the inner loop adapts the last layer only)
    learn_inner_lr: bool = False  # Meta-SGD: a learned inner step size per weight
    # MAML++ (Antoniou et al. 2019):
    per_step_inner_lr: bool = False  # LSLR: a learned step size per layer and inner step
    multi_step_loss: int = 0  # MSL over the first N meta-iterations (0: off)
    first_order_until: int = 0  # derivative-order annealing: first order before this step
    per_step_bn: bool = False  # BNWB: batch-norm weights and biases per inner step (if any)
    per_step_bn_stats: bool = False  # BNRS: running statistics per step, used at evaluation


@schema("algo", "fomaml")
@dataclass
class FOMAMLConfig(MAMLConfig):
    _target_: str = "metarun.algorithms.FOMAML"
    first_order: bool = True


@schema("algo", "anil")
@dataclass
class ANILConfig(MAMLConfig):
    _target_: str = "metarun.algorithms.ANIL"
    adapt: str = "head"


@schema("algo", "metasgd")
@dataclass
class MetaSGDConfig(MAMLConfig):
    _target_: str = "metarun.algorithms.MetaSGD"
    learn_inner_lr: bool = True


def _cosine_to_1e5() -> dict:
    """MAML++'s meta learning rate: cosine-annealed to 1e-5 over the run."""
    return {
        "_target_": "torch.optim.lr_scheduler.CosineAnnealingLR",
        "_partial_": True,
        "T_max": "${train.steps}",
        "eta_min": 1e-5,
    }


@schema("algo", "mamlpp")
@dataclass
class MAMLPPConfig(MAMLConfig):
    """The paper's settings: 5 inner steps, MSL over 10 epochs of 500 iterations, first order
    for the first 50 epochs, per-step batch-norm weights, a cosine meta learning rate."""

    _target_: str = "metarun.algorithms.MAMLPlusPlus"
    inner_steps: int = 5
    eval_inner_steps: int = 5
    per_step_inner_lr: bool = True
    multi_step_loss: int = 5000
    first_order_until: int = 25000
    per_step_bn: bool = True
    scheduler: Optional[Any] = field(default_factory=_cosine_to_1e5)


@dataclass
class SGDConfig(OptimizerConfig):
    _target_: str = "torch.optim.SGD"
    lr: float = 1.0


def _linear_to_zero() -> dict:
    return {
        "_target_": "torch.optim.lr_scheduler.LinearLR",
        "_partial_": True,
        "start_factor": 1.0,
        "end_factor": 0.0,
        "total_iters": "${train.steps}",
    }


@schema("algo", "reptile")
@dataclass
class ReptileConfig(FineTuningConfig):
    CHOICES: ClassVar = {**LearnerConfig.CHOICES, "inner_optimizer": ("adam", "sgd")}
    _target_: str = "metarun.algorithms.Reptile"
    inner_lr: float = 0.001
    inner_steps: int = 5
    eval_inner_steps: int = 50
    inner_optimizer: str = "adam"  # adam (beta1 = 0, the paper's) | sgd
    optimizer: OptimizerConfig = field(default_factory=SGDConfig)  # lr: the outer step size
    # The outer step size annealed linearly to 0 over train.steps, as in the paper.
    scheduler: Optional[Any] = field(default_factory=_linear_to_zero)


@schema("algo", "protonet")
@dataclass
class ProtoNetConfig(LearnerConfig):
    CHOICES: ClassVar = {**LearnerConfig.CHOICES, "distance": ("euclidean", "cosine")}
    BOUNDS: ClassVar = {"scale": POSITIVE}
    _target_: str = "metarun.algorithms.ProtoNet"
    batch_norm: str = "running"  # running statistics for evaluation
    distance: str = "euclidean"  # euclidean (squared) | cosine (normalised embeddings)
    scale: Optional[float] = None  # a learned factor on the scores, starting here (cosine: 10)
    # evaluation only, transductive: soft k-means updates of the prototypes with the queries
    refine_steps: int = 0
    # evaluation only, transductive: every class takes an equal share of the queries (Sinkhorn)
    balanced: bool = False


class MemoryKind(str, Enum):
    lrua = "lrua"
    none = "none"


@schema("algo", "mann")
@dataclass
class MANNConfig(LearnerConfig):
    BOUNDS: ClassVar = {
        **{k: POSITIVE for k in ("way", "controller_size", "memory_slots", "memory_width")},
        **{"read_heads": POSITIVE, "report_instances": POSITIVE, "gamma": Range(0, 1)},
    }
    CHOICES: ClassVar = {
        **LearnerConfig.CHOICES,
        "write": ("key", "add"),
        "read_order": ("after_write", "before_write", None),  # None: by write kind
    }
    _target_: str = "metarun.algorithms.MANN"
    way: int = 5
    memory: MemoryKind = MemoryKind.lrua
    controller_size: int = 200
    memory_slots: int = 128
    memory_width: int = 40
    read_heads: int = 4
    gamma: float = 0.99
    key_strength: bool = False
    write: str = "key"  # key (paper) | add
    read_order: Optional[str] = None  # after_write | before_write; None: by write kind
    report_instances: List[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 10])
    batch_norm: str = "running"  # read by a conv encoder only (backbone=conv4)
