"""Sinusoid regression tasks of Finn et al. 2017, section 5.1.

Each task is ``y = A sin(x - phi)`` with amplitude ``A ~ U[0.1, 5.0]``, phase ``phi ~ U[0, pi]``
and inputs ``x ~ U[-5, 5]``; K support and Q query points per task. Tasks are generated directly
as batched tensors on the target device, so sampling costs microseconds.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from metarun.data.batch import TaskBatch, TaskShape
from metarun.errors import MetarunError


def _check_range(name: str, value: Sequence[float]) -> tuple[float, float]:
    if len(value) != 2 or not value[0] <= value[1]:
        raise MetarunError(
            f"dataset.{name}={list(value)} is not a [low, high] range with low <= high; "
            f"pass two numbers, e.g. dataset.{name}=[0.1,5.0]"
        )
    return float(value[0]), float(value[1])


class Sinusoid:
    """An endless source of sinusoid regression tasks (the same distribution for every split)."""

    problem = "regression"
    input_shape = (1,)
    target_size = 1

    def __init__(
        self,
        amplitude: Sequence[float] = (0.1, 5.0),
        phase: Sequence[float] = (0.0, math.pi),
        x_range: Sequence[float] = (-5.0, 5.0),
    ) -> None:
        self.amplitude = _check_range("amplitude", amplitude)
        self.phase = _check_range("phase", phase)
        self.x_range = _check_range("x_range", x_range)

    def output_size(self, way: int) -> int:
        """Size of the model output a learner needs (``way`` is meaningless for regression)."""
        return self.target_size

    def sample(
        self,
        split: str,
        num_tasks: int,
        shape: TaskShape,
        generator: torch.Generator,
        device: torch.device | str = "cpu",
    ) -> TaskBatch:
        """Draw ``num_tasks`` tasks; ``split`` is accepted for interface parity and ignored."""
        device = torch.device(device)

        def uniform(size: tuple[int, ...], bounds: tuple[float, float]) -> torch.Tensor:
            u = torch.rand(size, generator=generator, device=generator.device)
            return (bounds[0] + (bounds[1] - bounds[0]) * u).to(device)

        amp = uniform((num_tasks, 1, 1), self.amplitude)
        phase = uniform((num_tasks, 1, 1), self.phase)
        x = uniform((num_tasks, shape.shot + shape.query, 1), self.x_range)
        y = amp * torch.sin(x - phase)
        k = shape.shot
        return TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:])
