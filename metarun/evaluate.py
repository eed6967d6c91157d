"""Fixed evaluation episodes and mean ± 95% confidence intervals over tasks."""

from __future__ import annotations

import math
from typing import Iterator

import torch

from metarun.algorithms.base import MetaLearner
from metarun.data.batch import TaskBatch, TaskShape


def fixed_episodes(
    dataset,
    split: str,
    shape: TaskShape,
    episodes: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    shuffle: bool = False,
) -> Iterator[TaskBatch]:
    """The same ``episodes`` tasks on every call (and in every run) with the same ``seed``.

    ``shuffle`` mixes the order of each task's examples (for sequence learners); the tasks drawn
    are the same as without it."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.Generator().manual_seed(seed + 1)
    for start in range(0, episodes, batch_size):
        n = min(batch_size, episodes - start)
        batch = dataset.sample(split, n, shape, generator, device)
        yield batch.shuffled(order) if shuffle else batch


def mean_ci95(values: torch.Tensor) -> tuple[float, float]:
    """Mean and half-width of the normal 95% interval, ``1.96 * std / sqrt(n)`` (sample std)."""
    values = values.double()
    n = values.numel()
    std = values.std(unbiased=True).item() if n > 1 else float("nan")
    return values.mean().item(), 1.96 * std / math.sqrt(n)


def evaluate(learner: MetaLearner, batches, prefix: str) -> dict[str, float]:
    """Evaluate on every task of ``batches``; returns ``{prefix/metric, prefix/metric_ci95}``."""
    was_training = learner.training
    learner.eval()
    per_task: dict[str, list[torch.Tensor]] = {}
    for batch in batches:
        for key, values in learner.evaluate(batch).items():
            per_task.setdefault(key, []).append(values.detach().cpu())
    learner.train(was_training)
    out: dict[str, float] = {}
    for key, chunks in per_task.items():
        mean, ci = mean_ci95(torch.cat(chunks))
        out[f"{prefix}/{key}"] = mean
        out[f"{prefix}/{key}_ci95"] = ci
    return out
