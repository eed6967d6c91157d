"""Fixed evaluation episodes and mean ± 95% confidence intervals over tasks."""

from __future__ import annotations

import math
from typing import Iterator

import torch

from metarun.algorithms.base import MetaLearner
from metarun.data.batch import TaskBatch, TaskShape

# Fixed episodes are drawn this many at a time, whatever the evaluation chunk: the tasks (and so
# every result) do not depend on ``batch_size``, and 100 reproduces results of earlier versions.
DRAW_BLOCK = 100


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
    """The same ``episodes`` tasks on every call (and in every run) with the same ``seed``, in
    chunks of ``batch_size`` tasks (the last one smaller).

    ``shuffle`` mixes the order of each task's examples (for sequence learners); the tasks drawn
    are the same as without it."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.Generator().manual_seed(seed + 1)
    pending: list[TaskBatch] = []
    for start in range(0, episodes, DRAW_BLOCK):
        block = dataset.sample(split, min(DRAW_BLOCK, episodes - start), shape, generator, device)
        pending.append(block.shuffled(order) if shuffle else block)
        buffered = _cat(pending)
        while buffered.num_tasks >= batch_size:
            yield _take(buffered, 0, batch_size)
            buffered = _take(buffered, batch_size, buffered.num_tasks)
        pending = [buffered] if buffered.num_tasks else []
    if pending:
        yield pending[0]


def _cat(batches: list[TaskBatch]) -> TaskBatch:
    if len(batches) == 1:
        return batches[0]
    return TaskBatch(*(torch.cat(parts) for parts in zip(*batches)))


def _take(batch: TaskBatch, start: int, stop: int) -> TaskBatch:
    return TaskBatch(*(t[start:stop] for t in batch))


def chunk_size(batch_size, eval_shape: TaskShape, train_shape: TaskShape, meta_batch: int) -> int:
    """Tasks evaluated at once. ``auto``: as many as keep an evaluation chunk's examples within a
    training step's (``meta_batch`` tasks of ``train_shape``), so that evaluating never needs more
    memory than training did; at least one task."""
    if batch_size != "auto":
        return int(batch_size)
    return max(1, meta_batch * train_shape.examples // eval_shape.examples)


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
