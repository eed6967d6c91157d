"""Structured-config schemas: a misspelt key or a wrong type fails at compose time.

The schemas are registered in Hydra's ConfigStore under ``schema/``; the YAML files under
``configs/`` extend them (``defaults: [/schema/<group>/<name>@_here_, _self_]``), so the YAML
holds values and these classes hold types. Dataset configs are ``@package _global_`` (they also
set ``task`` and pick a backbone) and name their schema with ``@dataset``.

Values are checked from these classes too (:mod:`metarun.checks`): every number must be finite
and ``>= 0`` unless a class's ``BOUNDS`` says otherwise, and string fields in ``CHOICES`` take one
of the listed values.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from metarun.checks import AUTO_OR_POSITIVE, POSITIVE, SIGNED, Range

BATCH_NORMS = ("transductive", "running")
IMAGE_SIZE = Range(1, 1024, why="pixels per side the images are resized to")


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


class TaskBatching(str, Enum):
    auto = "auto"
    fold = "fold"
    loop = "loop"
    vmap = "vmap"


@dataclass
class TaskConfig:
    """Episode shape shared by every dataset. ``train_*: null`` means "same as evaluation"."""

    BOUNDS: ClassVar = {
        k: POSITIVE for k in ("way", "shot", "meta_batch", "train_way", "train_shot")
    }

    way: int = 5
    shot: int = 10
    query: int = 10
    meta_batch: int = 25
    train_way: Optional[int] = None
    train_shot: Optional[int] = None


@dataclass
class TrainConfig:
    BOUNDS: ClassVar = {"log_every": POSITIVE}
    steps: int = 8000
    log_every: int = 50
    init_from: Optional[str] = None  # a checkpoint or run folder whose weights start the run


@dataclass
class ValConfig:
    BOUNDS: ClassVar = {"every": POSITIVE, "episodes": POSITIVE, "batch_size": AUTO_OR_POSITIVE}
    every: int = 1000
    episodes: int = 100
    batch_size: Any = "auto"  # tasks evaluated at once; auto: a training step's examples
    seed: int = 1001  # fixed, so every run validates on the same tasks


@dataclass
class TestConfig:
    BOUNDS: ClassVar = {
        "episodes": Range(2, why="a 95% confidence interval needs two episodes"),
        "batch_size": AUTO_OR_POSITIVE,
    }
    episodes: int = 600
    batch_size: Any = "auto"  # as val.batch_size
    seed: int = 2002


@dataclass
class CheckpointConfig:
    save: bool = True
    every: int = 0  # 0: only best (by validation) and last


@dataclass
class DeviceConfig:
    name: DeviceName = DeviceName.auto


@dataclass
class WandbConfig:
    project: str = "metarun"
    entity: Optional[str] = None
    mode: WandbMode = WandbMode.auto
    group: Optional[str] = None  # default: the sweep's name in multirun, none otherwise
    name: Optional[str] = None  # default: the job's overrides
    notes: Optional[str] = None


@dataclass
class OptimizerConfig:
    BOUNDS: ClassVar = {"lr": POSITIVE}
    _target_: str = "torch.optim.Adam"
    _partial_: bool = True
    lr: float = 1e-3
    weight_decay: float = 0.0


@dataclass
class MAMLConfig:
    OBJECTS: ClassVar = ("scheduler",)  # null or an object config with a _target_
    BOUNDS: ClassVar = {"inner_lr": POSITIVE, "inner_steps": POSITIVE}
    CHOICES: ClassVar = {"batch_norm": BATCH_NORMS, "adapt": ("all", "head")}
    _target_: str = "metarun.algorithms.MAML"
    inner_lr: float = 0.01
    inner_steps: int = 1
    eval_inner_steps: int = 10
    eval_report_steps: List[int] = field(default_factory=list)
    first_order: bool = False
    task_batching: TaskBatching = TaskBatching.auto
    task_chunk: int = 0  # tasks per forward + backward; 0: automatic (fold: ~1M input values)
    batch_norm: str = "transductive"  # read by backbones with batch norm; MAML needs this one
    adapt: str = "all"  # all (MAML) | head (ANIL: the inner loop adapts the last layer only)
    learn_inner_lr: bool = False  # Meta-SGD: a learned inner step size per weight
    # MAML++ (Antoniou et al. 2019):
    per_step_inner_lr: bool = False  # LSLR: a learned step size per layer and inner step
    multi_step_loss: int = 0  # MSL over the first N meta-iterations (0: off)
    first_order_until: int = 0  # derivative-order annealing: first order before this step
    per_step_bn: bool = False  # BNWB: batch-norm weights and biases per inner step (if any)
    per_step_bn_stats: bool = False  # BNRS: running statistics per step, used at evaluation
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: Optional[Any] = None  # a torch.optim.lr_scheduler class, _partial_: true


@dataclass
class SGDConfig(OptimizerConfig):
    _target_: str = "torch.optim.SGD"
    lr: float = 1.0


@dataclass
class ReptileConfig:
    OBJECTS: ClassVar = ("scheduler",)  # null or an object config with a _target_
    BOUNDS: ClassVar = {"inner_lr": POSITIVE, "inner_steps": POSITIVE}
    CHOICES: ClassVar = {"batch_norm": BATCH_NORMS, "inner_optimizer": ("adam", "sgd")}
    _target_: str = "metarun.algorithms.Reptile"
    inner_lr: float = 0.001
    inner_steps: int = 5
    eval_inner_steps: int = 50
    inner_optimizer: str = "adam"  # adam (beta1 = 0, the paper's) | sgd
    batch_norm: str = "transductive"
    optimizer: OptimizerConfig = field(default_factory=SGDConfig)  # lr: the outer step size
    scheduler: Optional[Any] = None  # a torch.optim.lr_scheduler class, _partial_: true


@dataclass
class ProtoNetConfig:
    OBJECTS: ClassVar = ("scheduler",)  # null or an object config with a _target_
    CHOICES: ClassVar = {"batch_norm": BATCH_NORMS}
    _target_: str = "metarun.algorithms.ProtoNet"
    batch_norm: str = "running"  # read by backbones with batch norm
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: Optional[Any] = None  # a torch.optim.lr_scheduler class, _partial_: true


class MemoryKind(str, Enum):
    lrua = "lrua"
    none = "none"


@dataclass
class MANNConfig:
    OBJECTS: ClassVar = ("scheduler",)  # null or an object config with a _target_
    BOUNDS: ClassVar = {
        **{k: POSITIVE for k in ("way", "controller_size", "memory_slots", "memory_width")},
        **{"read_heads": POSITIVE, "report_instances": POSITIVE, "gamma": Range(0, 1)},
    }
    CHOICES: ClassVar = {
        "batch_norm": BATCH_NORMS,
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
    batch_norm: str = "running"
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: Optional[Any] = None  # a torch.optim.lr_scheduler class, _partial_: true


@dataclass
class SinusoidConfig:
    BOUNDS: ClassVar = {"amplitude": SIGNED, "phase": SIGNED, "x_range": SIGNED}
    _target_: str = "metarun.data.Sinusoid"
    amplitude: List[float] = field(default_factory=lambda: [0.1, 5.0])
    phase: List[float] = field(default_factory=lambda: [0.0, math.pi])
    x_range: List[float] = field(default_factory=lambda: [-5.0, 5.0])


@dataclass
class OmniglotConfig:
    BOUNDS: ClassVar = {
        "image_size": IMAGE_SIZE,
        "split_sizes": POSITIVE,
        "val_alphabets": POSITIVE,
    }
    CHOICES: ClassVar = {
        "background": ("full", "small1", "small2", "small1+small2"),
        "split": ("lake", "random"),
    }
    _target_: str = "metarun.data.Omniglot"
    root: Optional[str] = None  # null: metarun's cache dir ($METARUN_CACHE_DIR, ~/.cache/metarun)
    background: str = "full"  # full | small1 | small2 | small1+small2
    split: str = "lake"  # lake | random
    image_size: int = 28
    rotations: bool = False
    shift: int = 0  # random translation of meta-training images, up to this many pixels
    download: bool = True
    split_sizes: List[int] = field(default_factory=lambda: [1100, 100, 423])
    val_alphabets: int = 5
    split_seed: int = 0


@dataclass
class GlyphsConfig:
    BOUNDS: ClassVar = {
        "classes": Range(1, 100_000),
        "samples_per_class": Range(2, 10_000),
        "image_size": IMAGE_SIZE,
    }
    _target_: str = "metarun.data.Glyphs"
    classes: List[int] = field(default_factory=lambda: [1000, 200, 400])
    samples_per_class: int = 20
    image_size: int = 28
    rotations: bool = False
    shift: int = 0  # random translation of meta-training images, up to this many pixels
    seed: int = 0


@dataclass
class MiniImageNetConfig:
    BOUNDS: ClassVar = {"image_size": IMAGE_SIZE}
    _target_: str = "metarun.data.MiniImageNet"
    root: Optional[str] = None  # null: <metarun's cache dir>/miniimagenet
    image_size: int = 84
    download: bool = False  # true: fetch dataset.files (there is no official download)
    files: Dict[str, Any] = field(default_factory=dict)  # name -> {url: ..., md5: ...}
    rotations: bool = False
    shift: int = 0


@dataclass
class CIFARConfig:
    _target_: str = "metarun.data.CIFARFS"
    root: Optional[str] = None  # null: <metarun's cache dir>/cifar100
    download: bool = True
    url: str = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    md5: str = "eb9058c3a382ffc7106e4002c42a8d85"
    PATTERNS: ClassVar = {"md5": "[0-9a-f]{32}"}
    ALSO_FOR: ClassVar = ("metarun.data.FC100",)
    rotations: bool = False
    shift: int = 0


@dataclass
class Conv4Config:
    BOUNDS: ClassVar = {"hidden": POSITIVE, "blocks": POSITIVE}
    CHOICES: ClassVar = {"pool": ("max", "stride"), "batch_norm": BATCH_NORMS}
    _target_: str = "metarun.backbones.Conv4"
    hidden: int = 64
    blocks: int = 4
    pool: str = "max"  # max | stride
    batch_norm: str = "${algo.batch_norm}"  # transductive | running; default: the algorithm's


@dataclass
class ResNet12Config:
    BOUNDS: ClassVar = {"channels": POSITIVE, "dropout": Range(0, 1, open_high=True)}
    CHOICES: ClassVar = {"batch_norm": BATCH_NORMS}
    _target_: str = "metarun.backbones.ResNet12"
    channels: List[int] = field(default_factory=lambda: [64, 160, 320, 640])
    batch_norm: str = "${algo.batch_norm}"
    dropout: float = 0.0


@dataclass
class MLPConfig:
    BOUNDS: ClassVar = {"hidden": POSITIVE}
    CHOICES: ClassVar = {"activation": ("elu", "gelu", "relu", "tanh")}
    _target_: str = "metarun.backbones.MLP"
    hidden: List[int] = field(default_factory=lambda: [40, 40])
    activation: str = "relu"


@dataclass
class MetarunConfig:
    """The root config. ``algo``, ``dataset`` and ``backbone`` get their schema from the group."""

    algo: Any = MISSING
    dataset: Any = MISSING
    backbone: Any = MISSING
    device: DeviceConfig = field(default_factory=DeviceConfig)
    logger: Optional[WandbConfig] = None
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


def close_names(key: str, schema: type) -> str:
    """``; did you mean ...?`` with the options of ``schema`` (a dataclass) close to ``key``."""
    names = [f.name for f in dataclasses.fields(schema) if not f.name.startswith("_")]
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def added_keys(node: DictConfig, prefix: str = "") -> list[tuple[str, type]]:
    """Keys that no schema declares, dotted, with their parent's schema. Hydra's ``+key=value``
    adds a key even to a structured config; nothing in metarun would read it."""
    schema = OmegaConf.get_type(node)
    known = None
    if dataclasses.is_dataclass(schema):
        known = {f.name for f in dataclasses.fields(schema)}
    found = []
    for key in node:
        if known is not None and key not in known:
            found.append((f"{prefix}{key}", schema))
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            found += added_keys(child, f"{prefix}{key}.")
    return found


# Each group's schemas by option name: where the YAML defaults lists look for them.
SCHEMAS = {
    "algo": {"maml": MAMLConfig, "protonet": ProtoNetConfig, "mann": MANNConfig,
             "reptile": ReptileConfig},
    "dataset": {"sinusoid": SinusoidConfig, "omniglot": OmniglotConfig, "glyphs": GlyphsConfig,
                "miniimagenet": MiniImageNetConfig, "cifar": CIFARConfig},
    "backbone": {"mlp": MLPConfig, "conv4": Conv4Config, "resnet12": ResNet12Config},
    "logger": {"wandb": WandbConfig},
}  # fmt: skip


def register_configs() -> None:
    """Put the schemas where the YAML defaults lists look for them."""
    cs = ConfigStore.instance()
    cs.store(group="schema", name="metarun", node=MetarunConfig)
    for group, schemas in SCHEMAS.items():
        for name, schema in schemas.items():
            cs.store(group=f"schema/{group}", name=name, node=schema)


def schema_for(group: str, target: str) -> type | None:
    """The schema of ``group`` whose objects have class ``target`` (its ``_target_`` default or
    one of its ``ALSO_FOR``), or None."""
    for schema in SCHEMAS[group].values():
        default = next(f.default for f in dataclasses.fields(schema) if f.name == "_target_")
        if target == default or target in getattr(schema, "ALSO_FOR", ()):
            return schema
    return None
