"""Task sources: datasets that produce batched episodes (:class:`TaskBatch`)."""

from metarun.data.batch import TaskBatch, TaskShape
from metarun.data.cifar import CIFARFS, FC100
from metarun.data.episodes import EpisodicImages
from metarun.data.glyphs import Glyphs
from metarun.data.locomotion import AntDir, AntVel, HalfCheetahDir, HalfCheetahVel
from metarun.data.miniimagenet import MiniImageNet
from metarun.data.navigation import Navigation2D
from metarun.data.omniglot import Omniglot
from metarun.data.sinusoid import Sinusoid

__all__ = [
    "TaskBatch",
    "TaskShape",
    "EpisodicImages",
    "Glyphs",
    "Omniglot",
    "MiniImageNet",
    "CIFARFS",
    "FC100",
    "Sinusoid",
    "Navigation2D",
    "HalfCheetahVel",
    "HalfCheetahDir",
    "AntVel",
    "AntDir",
]
