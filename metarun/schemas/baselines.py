"""Schemas of the transfer baselines: supervised pre-training with a test-time head
(``algo=pretrain``) and timm models as backbones (``backbone=timm``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Optional

from metarun.checks import POSITIVE, Range
from metarun.schemas.algos import LearnerConfig
from metarun.schemas.backbones import BATCH_NORMS
from metarun.schemas.registry import schema

#: The test-time heads (metarun/heads.py): ``algo.head``, ``metarun-eval head=``.
HEADS = ("prototype", "logistic", "finetune", "cosine")


def _adam() -> dict:
    """Adam 1e-3 with only the keys every torch optimizer takes, so that a preset can turn it
    into another one by naming its ``_target_`` and options (RFS's SGD with momentum)."""
    return {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}


@schema("algo", "pretrain")
@dataclass
class PretrainConfig(LearnerConfig):
    BOUNDS: ClassVar = {
        **{k: POSITIVE for k in ("batch_size", "head_epochs", "head_lr", "head_batch_size")},
        **{"scale": POSITIVE, "logistic_c": POSITIVE, "label_smoothing": Range(0, 1)},
    }
    CHOICES: ClassVar = {
        **LearnerConfig.CHOICES,
        "classifier": ("linear", "cosine"),
        "head": HEADS,
    }
    _target_: str = "metarun.algorithms.Pretrain"
    batch_norm: str = "running"  # running statistics for evaluation, as supervised training
    batch_size: int = 64  # images per training step (one label space: every training class)
    classifier: str = "linear"  # pre-training classifier: linear | cosine (Baseline++)
    scale: Optional[float] = None  # cosine classifiers' factor; null: 2 up to 200 classes, 10 above
    label_smoothing: float = 0.0
    head: str = "logistic"  # test-time head: prototype | logistic (RFS) | finetune | cosine
    head_epochs: int = 100  # finetune / cosine: passes over the support set (Chen et al.)
    head_lr: float = 0.01
    head_batch_size: int = 4
    head_weight_decay: float = 1e-3
    logistic_c: float = 1.0  # logistic: inverse L2 strength (scikit-learn's C; RFS: 1)
    # any torch optimizer (a preset names its _target_ and options: SGD with momentum for RFS)
    optimizer: Any = field(default_factory=_adam)


@schema("backbone", "timm")
@dataclass
class TimmConfig:
    BOUNDS: ClassVar = {"image_size": POSITIVE}
    CHOICES: ClassVar = {"batch_norm": BATCH_NORMS}
    _target_: str = "metarun.backbones.TimmBackbone"
    name: str = "resnet18"  # any timm model (timm.list_models() lists them)
    weights: Optional[str] = None  # a local weights file of that model (offline)
    pretrained: bool = False  # timm's own pretrained weights from its hub (needs network)
    image_size: Optional[int] = None  # resize inputs to this (bilinear); null: as they come
    options: Optional[Dict[str, Any]] = None  # more timm.create_model arguments
    batch_norm: str = "${algo.batch_norm}"  # running (timm's) | transductive (batch statistics)
