"""The root config and its sections that every run has (task, train, val, test, ...)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, List, Optional

from omegaconf import MISSING

from metarun.checks import AUTO_OR_POSITIVE, POSITIVE, Range
from metarun.schemas.data import WarpConfig
from metarun.schemas.registry import schema

# How an episode's classes are drawn (metarun/data/episodes.py): any of the split's, or all from
# one alphabet with support and query by different drawers (Lake et al.'s one-shot protocol).
PROTOCOLS = ("random", "within_alphabet")
VIEWS = Range(1, 256, why="each image and its warped views (1: no test-time augmentation)")


def _view_warp() -> WarpConfig:
    """Test-time views' warps: milder than training's (a view should stay the same character)."""
    return WarpConfig(rotate=8.0, shear=0.1, scale=0.08, translate=0.04)


class DeviceName(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class WandbMode(str, Enum):
    auto = "auto"  # online when W&B credentials exist, else offline
    online = "online"
    offline = "offline"
    disabled = "disabled"


@dataclass
class TaskConfig:
    """Episode shape shared by every dataset. ``train_*: null`` means "same as evaluation"."""

    BOUNDS: ClassVar = {
        k: POSITIVE for k in ("way", "shot", "meta_batch", "train_way", "train_shot")
    }

    way: int = 5  # classes per task (regression ignores it)
    shot: int = 10  # K support examples per class (support points for regression)
    query: int = 10  # Q query examples per class
    meta_batch: int = 25  # tasks per meta-update
    train_way: Optional[int] = None  # null: same as way
    train_shot: Optional[int] = None  # null: same as shot
    train_query: Optional[int] = None  # null: same as query


@dataclass
class TrainConfig:
    BOUNDS: ClassVar = {"log_every": POSITIVE}
    CHOICES: ClassVar = {"precision": ("fp32", "bf16", "fp16"), "protocol": PROTOCOLS}
    steps: int = 8000  # meta-iterations
    protocol: str = "random"  # random | within_alphabet: how training episodes draw classes
    log_every: int = 50  # train metrics are averaged over this many steps
    # fp32, or bf16 / fp16 autocast of every training step (inner loops included) and evaluation;
    # weights and optimizer stay fp32, fp16 adds a gradient scaler (metarun/precision.py).
    precision: str = "fp32"
    # torch.compile of the training step where the algorithm's path compiles (ProtoNet, MANN,
    # MAML and its variants on Conv4 / MLP): true | false | auto (fp32 runs of at least 5,000
    # steps; metarun/compiling.py: the rule).
    compile: Any = "auto"
    # A checkpoint (.pt) or run folder (its best.pt) whose weights start the run; optimizer,
    # schedule and step start afresh (ignored when resuming).
    init_from: Optional[str] = None


@dataclass
class ValConfig:
    BOUNDS: ClassVar = {
        "every": POSITIVE,
        "episodes": POSITIVE,
        "batch_size": AUTO_OR_POSITIVE,
        "views": VIEWS,
    }
    CHOICES: ClassVar = {"protocol": PROTOCOLS}
    every: int = 1000  # meta-iterations between validations
    episodes: int = 100  # fixed validation tasks
    batch_size: Any = "auto"  # tasks evaluated at once; auto: a training step's examples
    seed: int = 1001  # fixed, so every run validates on the same tasks
    protocol: str = "random"  # random | within_alphabet (as test.protocol)
    views: int = 1  # test-time augmentation, as test.views
    view_warp: WarpConfig = field(default_factory=_view_warp)


@dataclass
class TestConfig:
    BOUNDS: ClassVar = {
        "episodes": Range(2, why="a 95% confidence interval needs two episodes"),
        "batch_size": AUTO_OR_POSITIVE,
        "views": VIEWS,
    }
    CHOICES: ClassVar = {"protocol": PROTOCOLS}
    episodes: int = 600  # fixed test tasks (mean and 95% CI)
    batch_size: Any = "auto"  # as val.batch_size
    seed: int = 2002  # fixed, so every run is tested on the same tasks
    # random: any `way` classes of the test split; within_alphabet: all from one alphabet, support
    # and query by different drawers (Lake et al. 2015; dataset=omniglot)
    protocol: str = "random"
    # test-time augmentation: each support and query image plus views-1 random warps of it
    # (view_warp); support views are extra shots, a query's score is the mean over its views
    # (metarun/views.py)
    views: int = 1
    view_warp: WarpConfig = field(default_factory=_view_warp)


@dataclass
class CheckpointConfig:
    save: bool = True
    every: int = 0  # also write last.pt every this many steps; 0: only best.pt and last.pt


@dataclass
class DeviceConfig:
    BOUNDS: ClassVar = {"threads": AUTO_OR_POSITIVE}
    name: DeviceName = DeviceName.auto
    # CPU threads of a job (torch intra-op). auto: the cores this process may use, divided by
    # the jobs a joblib sweep runs at once here (hydra.launcher.n_jobs) or the torchrun processes
    # on this machine, so that jobs side by side do not oversubscribe the cores.
    threads: Any = "auto"


class Backend(str, Enum):
    auto = "auto"  # nccl on CUDA, gloo on CPU
    nccl = "nccl"
    gloo = "gloo"


@dataclass
class DistributedConfig:
    """Data-parallel runs (``torchrun --nproc_per_node=N -m metarun ...`` or SLURM with several
    tasks): every option here may change on resume; one process ignores them all."""

    BOUNDS: ClassVar = {"timeout_s": POSITIVE}
    backend: Backend = Backend.auto  # torch.distributed backend
    # How long a process waits for the others (start-up and every exchange) before it stops.
    timeout_s: int = 600


@dataclass
class ProfileConfig:
    """``debug=profile``: torch.profiler over a few training steps (steps wait+1 ... are warmed
    up, then ``active`` steps recorded); a trace to open in Perfetto or chrome://tracing and the
    operators' table land in <run>/profile/."""

    BOUNDS: ClassVar = {"active": POSITIVE}
    wait: int = 1  # steps left out first (start-up, allocator and autotuning caches)
    warmup: int = 1  # steps traced and discarded (the profiler's own start-up)
    active: int = 3  # steps recorded
    record_shapes: bool = True  # operator input shapes in the table and the trace
    memory: bool = False  # tensor allocations too (slower)


@schema("logger", "wandb")
@dataclass
class WandbConfig:
    _target_: str = "metarun.logging.wandb_sink.WandbSink"
    project: str = "metarun"
    entity: Optional[str] = None
    mode: WandbMode = WandbMode.auto
    group: Optional[str] = None  # default: the sweep's name in multirun, none otherwise
    name: Optional[str] = None  # default: the job's overrides
    notes: Optional[str] = None


@schema("root", "metarun")
@dataclass
class MetarunConfig:
    """The root config. ``algo``, ``dataset`` and ``backbone`` get their schema from the group."""

    algo: Any = MISSING
    dataset: Any = MISSING
    backbone: Any = MISSING
    device: DeviceConfig = field(default_factory=DeviceConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    logger: Optional[Any] = None  # a Sink's config (logger=wandb | none | your own)
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    val: ValConfig = field(default_factory=ValConfig)
    test: TestConfig = field(default_factory=TestConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    seed: int = 0
    resume: bool = False  # continue from <resume_dir>/checkpoints/last.pt
    resume_dir: Optional[str] = None  # the run folder to continue (resume=true)
    # Top level, not under `logger`, so that a preset's tags never re-create a disabled logger.
    tags: List[str] = field(default_factory=list)
    # Output piped to a file (nohup, tee, SLURM): a progress line at most this often (0: none).
    progress_every_s: float = 30.0
    profile: Optional[ProfileConfig] = None  # debug=profile sets it
