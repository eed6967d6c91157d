"""Task sources: datasets that produce batched episodes (:class:`TaskBatch`)."""

from metarun.data.batch import TaskBatch, TaskShape
from metarun.data.sinusoid import Sinusoid

__all__ = ["TaskBatch", "TaskShape", "Sinusoid"]
