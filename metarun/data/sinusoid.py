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

    def check_shape(self, split: str, shape: TaskShape, what: str = "task") -> None:
        """Any K and Q can be drawn: sinusoid tasks are endless."""

    def sample(
        self,
        split: str,
        num_tasks: int,
        shape: TaskShape,
        generator: torch.Generator,
        device: torch.device | str = "cpu",
        part: slice = slice(None),
    ) -> TaskBatch:
        """Draw ``num_tasks`` tasks; ``split`` is accepted for interface parity and ignored.
        ``part``: keep only those of the ``num_tasks`` (a data-parallel rank's share)."""
        amp, phase = self.task_parameters(num_tasks, generator)
        x = self._uniform((num_tasks, shape.shot + shape.query, 1), self.x_range, generator)
        amp, phase, x = amp[part], phase[part], x[part]
        y = amp[:, None, None] * torch.sin(x - phase[:, None, None])
        x, y = x.to(device), y.to(device)
        k = shape.shot
        return TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:])

    def task_parameters(
        self, num_tasks: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Amplitudes and phases of the next ``num_tasks`` tasks (drawn before their inputs)."""
        amp = self._uniform((num_tasks,), self.amplitude, generator)
        phase = self._uniform((num_tasks,), self.phase, generator)
        return amp, phase

    @staticmethod
    def _uniform(
        size: tuple[int, ...], bounds: tuple[float, float], generator: torch.Generator
    ) -> torch.Tensor:
        u = torch.rand(size, generator=generator, device=generator.device)
        return bounds[0] + (bounds[1] - bounds[0]) * u
