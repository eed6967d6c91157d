"""Schemas of the ``dataset`` group."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional

from metarun.checks import POSITIVE, SIGNED, Range
from metarun.schemas.registry import schema

IMAGE_SIZE = Range(1, 1024, why="pixels per side the images are resized to")


@dataclass
class WarpConfig:
    """Random warps (metarun/data/warps.py); each number is a half-width, 0 turns it off."""

    BOUNDS: ClassVar = {
        "elastic_grid": Range(2, 64, why="control points per side"),
        "scale": Range(0, 0.9, why="a relative change: 0.2 scales by 0.8-1.2"),
        "rotate": Range(0, 180, why="degrees either way"),
    }
    rotate: float = 0.0  # degrees
    shear: float = 0.0  # shear factor
    scale: float = 0.0  # relative, 0.2: 0.8-1.2
    translate: float = 0.0  # fraction of the image side
    elastic: float = 0.0  # smooth displacement, fraction of the side
    elastic_grid: int = 4


@schema("dataset", "sinusoid")
@dataclass
class SinusoidConfig:
    BOUNDS: ClassVar = {"amplitude": SIGNED, "phase": SIGNED, "x_range": SIGNED}
    _target_: str = "metarun.data.Sinusoid"
    amplitude: List[float] = field(default_factory=lambda: [0.1, 5.0])
    phase: List[float] = field(default_factory=lambda: [0.0, math.pi])
    x_range: List[float] = field(default_factory=lambda: [-5.0, 5.0])


@schema("dataset", "omniglot")
@dataclass
class OmniglotConfig:
    BOUNDS: ClassVar = {
        "image_size": IMAGE_SIZE,
        "split_sizes": POSITIVE,
        "val_alphabets": POSITIVE,
    }
    CHOICES: ClassVar = {
        "background": ("full", "small1", "small2", "small1+small2"),
        "evaluation": ("evaluation", "small1", "small2", "small1+small2"),
        "split": ("lake", "random"),
    }
    _target_: str = "metarun.data.Omniglot"
    root: Optional[str] = None  # null: metarun's cache dir ($METARUN_CACHE_DIR, ~/.cache/metarun)
    background: str = "full"  # full | small1 | small2 | small1+small2
    split: str = "lake"  # lake | random
    image_size: int = 28
    rotations: bool = False
    shift: int = 0  # random translation of meta-training images, up to this many pixels
    # random affine / elastic warps of meta-training images (Lake et al., Koch et al.)
    warp: WarpConfig = field(default_factory=WarpConfig)
    download: bool = True
    # split=lake: the archive(s) whose alphabets meta-test (those also in background dropped):
    # evaluation (the official 20), or small2 beside background=small1 (its 3 new alphabets)
    evaluation: str = "evaluation"
    split_sizes: List[int] = field(default_factory=lambda: [1100, 100, 423])
    val_alphabets: int = 5
    split_seed: int = 0


@schema("dataset", "glyphs")
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
    warp: WarpConfig = field(default_factory=WarpConfig)  # as omniglot's
    seed: int = 0


@schema("dataset", "miniimagenet")
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


@schema("dataset", "cifar")
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
