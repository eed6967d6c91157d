"""Task sources: datasets that produce batched episodes (:class:`TaskBatch`)."""

from metarun.data.batch import TaskBatch, TaskShape
from metarun.data.episodes import EpisodicImages
from metarun.data.glyphs import Glyphs
from metarun.data.omniglot import Omniglot
from metarun.data.sinusoid import Sinusoid

__all__ = ["TaskBatch", "TaskShape", "EpisodicImages", "Glyphs", "Omniglot", "Sinusoid"]
