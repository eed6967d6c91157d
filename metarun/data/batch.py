"""The batch types algorithms consume: task batches (episodes), and labelled images for learners
that train on mini-batches of images (``algo=pretrain``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch


class TaskBatch(NamedTuple):
    """A meta-batch of B tasks, each with a support and a query set.

    Shapes: ``support_x [B, N*K, ...]``, ``support_y [B, N*K]``, ``query_x [B, N*Q, ...]``,
    ``query_y [B, N*Q]``. Classification targets are int64 labels in ``[0, N)``; regression
    targets are floats with the same trailing shape as the model output (``[B, K, 1]`` for
    sinusoid). A NamedTuple so that ``torch.func.vmap`` can map over it directly.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    @property
    def num_tasks(self) -> int:
        return self.support_x.shape[0]

    @property
    def is_regression(self) -> bool:
        return self.query_y.is_floating_point()

    def shuffled(
        self, generator: torch.Generator, of: int | None = None, part: slice = slice(None)
    ) -> "TaskBatch":
        """Each task's support set and query set in a random order (drawn from ``generator``).

        Samplers emit support sets grouped by class; sequence learners (MANN) need them mixed.
        A batch that is the ``part`` of a meta-batch of ``of`` tasks (a data-parallel rank's
        share) draws the orders of all ``of`` and uses its own.
        """

        def permute(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            shape = (of or y.shape[0], y.shape[1])
            order = torch.rand(shape, generator=generator)[part].argsort(dim=1).to(y.device)
            rows = torch.arange(y.shape[0], device=y.device).unsqueeze(1)
            return x[rows, order], y[rows, order]

        return TaskBatch(
            *permute(self.support_x, self.support_y), *permute(self.query_x, self.query_y)
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "TaskBatch":
        return TaskBatch(*(t.to(device, non_blocking=non_blocking) for t in self))


class LabelledImages(NamedTuple):
    """A mini-batch of images of one label space: ``x [n, ch, H, W]``, ``y [n]`` int64 classes
    of the whole split (``[0, num_classes(split))``), for supervised pre-training."""

    x: torch.Tensor
    y: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "LabelledImages":
        return LabelledImages(*(t.to(device, non_blocking=non_blocking) for t in self))


@dataclass(frozen=True)
class TaskShape:
    """The shape of an episode: N-way (ignored by regression), K-shot, Q-query."""

    way: int
    shot: int
    query: int

    @property
    def examples(self) -> int:
        """Examples in one task: support and query of every class."""
        return self.way * (self.shot + self.query)
