"""Fixed evaluation episodes and mean ± 95% confidence intervals over tasks."""

from __future__ import annotations

import math
from typing import Iterator

import torch

from metarun.algorithms.base import MetaLearner
from metarun.data.batch import TaskBatch, TaskShape
from metarun.data.episodes import protocol_options
from metarun.distributed.world import SINGLE, World

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
    part: slice = slice(None),
    protocol: str = "random",
    views=None,
) -> Iterator[TaskBatch]:
    """The same ``episodes`` tasks on every call (and in every run) with the same ``seed``, in
    chunks of ``batch_size`` tasks (the last one smaller).

    ``shuffle`` mixes the order of each task's examples (for sequence learners); the tasks drawn
    are the same as without it. ``part`` (a range of the ``episodes``, a data-parallel rank's
    share) yields only those tasks: all are drawn, only these are kept. ``protocol``: how each
    episode's classes are drawn (the dataset's ``sample``); ``views``
    (:class:`~metarun.views.Views`): each chunk with its warped views, episode by episode."""
    draw = protocol_options(protocol)
    generator = torch.Generator().manual_seed(seed)
    order = torch.Generator().manual_seed(seed + 1)
    first, stop, _ = part.indices(episodes)
    pending: list[TaskBatch] = []
    index = first  # the episode number of the next task yielded

    def out(batch: TaskBatch) -> TaskBatch:
        nonlocal index
        index += batch.num_tasks
        return batch if views is None else views.batch(batch, index - batch.num_tasks)

    for start in range(0, episodes, DRAW_BLOCK):
        size = min(DRAW_BLOCK, episodes - start)
        block = dataset.sample(split, size, shape, generator, device, **draw)
        block = block.shuffled(order) if shuffle else block
        lo, hi = max(first - start, 0), max(min(stop - start, block.num_tasks), 0)
        if lo >= hi:
            continue
        pending.append(_take(block, lo, hi) if (lo, hi) != (0, block.num_tasks) else block)
        buffered = _cat(pending)
        while buffered.num_tasks >= batch_size:
            yield out(_take(buffered, 0, batch_size))
            buffered = _take(buffered, batch_size, buffered.num_tasks)
        pending = [buffered] if buffered.num_tasks else []
    if pending:
        yield out(pending[0])


def _cat(batches: list[TaskBatch]) -> TaskBatch:
    """Batches of one type put together (tensors concatenated, other fields kept)."""
    if len(batches) == 1:
        return batches[0]
    join = lambda parts: torch.cat(parts) if torch.is_tensor(parts[0]) else parts[0]  # noqa
    return type(batches[0])(*(join(parts) for parts in zip(*batches)))


def _take(batch: TaskBatch, start: int, stop: int) -> TaskBatch:
    """Tasks ``start:stop`` of ``batch`` (a ``TaskBatch`` or an RL ``EnvBatch``)."""
    return type(batch)(*(t[start:stop] if torch.is_tensor(t) else t for t in batch))


def chunk_size(
    batch_size, eval_shape: TaskShape, train_shape: TaskShape, meta_batch: int, views: int = 1
) -> int:
    """Tasks evaluated at once. ``auto``: as many as keep an evaluation chunk's examples (each
    task's ``views`` times) within a training step's (``meta_batch`` tasks of ``train_shape``), so
    that evaluating never needs more memory than training did; at least one task."""
    if batch_size != "auto":
        return int(batch_size)
    return max(1, meta_batch * train_shape.examples // (eval_shape.examples * views))


def mean_ci95(values: torch.Tensor) -> tuple[float, float]:
    """Mean and half-width of the normal 95% interval, ``1.96 * std / sqrt(n)`` (sample std)."""
    values = values.double()
    n = values.numel()
    std = values.std(unbiased=True).item() if n > 1 else float("nan")
    return values.mean().item(), 1.96 * std / math.sqrt(n)


def evaluate(
    learner: MetaLearner, batches, prefix: str, world: World = SINGLE, views=None
) -> dict[str, float]:
    """Evaluate on every task of ``batches``; returns ``{prefix/metric, prefix/metric_ci95}``.
    With ``views`` the batches hold each task's views (:func:`fixed_episodes`' ``views``).

    In a data-parallel run each rank evaluates its share of the episodes (in episode order) and
    the per-task values of all ranks are put together before the means: every rank returns the
    numbers one process computes."""
    was_training = learner.training
    learner.eval()
    per_task: dict[str, list[torch.Tensor]] = {}
    for batch in batches:
        scores = learner.evaluate(batch) if views is None else views.evaluate(learner, batch)
        for key, values in scores.items():
            per_task.setdefault(key, []).append(values.detach().cpu())
    learner.train(was_training)
    if world.active:
        shares = world.gather({k: torch.cat(v) for k, v in per_task.items()})
        keys = next((share for share in shares if share), {})  # a rank may have no episodes
        per_task = {k: [share[k] for share in shares if k in share] for k in keys}
    out: dict[str, float] = {}
    for key, chunks in per_task.items():
        mean, ci = mean_ci95(torch.cat(chunks))
        out[f"{prefix}/{key}"] = mean
        out[f"{prefix}/{key}_ci95"] = ci
    return out
