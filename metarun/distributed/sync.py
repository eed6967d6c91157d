"""What the processes of a data-parallel run exchange so that they compute what one process does.

Each rank adapts its ``meta_batch / N`` tasks and backpropagates their mean loss; the mean over
ranks of those gradients is the meta-batch's gradient (:func:`average_gradients`: one
all-reduce of every gradient, flattened, after the meta-backward). That is an explicit
all-reduce, not ``DistributedDataParallel``: MAML calls the backbone functionally, backpropagates
chunk by chunk, and Reptile writes ``.grad`` itself; an all-reduce of ``.grad`` once the
algorithm is done is right for all of them, learned inner step sizes and per-step batch-norm
weights included (they are parameters).

Running batch-norm statistics are buffers, not gradients. Where one forward normalises a whole
batch (ProtoNet, MANN: :attr:`MetaLearner.batch_norm_across_tasks`) the ranks normalise with
statistics of the whole meta-batch (:mod:`metarun.distributed.batch_norm`); where
every task is its own forward (MAML with ``batch_norm=running``, MAML++'s per-step statistics)
each rank's running averages are merged after the step into what the one-process sequence of
updates (rank 0's tasks, then rank 1's, ...) gives (:func:`merge_running_stats`).
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn

from metarun.backbones.norm import TransductiveBatchNorm2d
from metarun.distributed.world import World


def broadcast_state(world: World, module: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (the seeds already agree; this makes sure)."""
    if not world.active:
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


def average_gradients(world: World, params: Iterable[nn.Parameter], stop: bool = False) -> bool:
    """Replace every ``.grad`` with its mean over the ranks; return whether any rank asked to
    stop (``stop``: a signal arrived). A gradient that no rank has stays ``None`` (an optimizer
    skips it, as it would in one process); one that some ranks lack counts as zeros there."""
    if not world.active:
        return stop
    params = list(params)
    flags = torch.tensor([p.grad is not None for p in params] + [stop], dtype=torch.int32)
    dist.all_reduce(flags, group=world.control)  # CPU: no device sync
    present = [p for p, f in zip(params, flags[:-1].tolist()) if f]
    groups: dict[tuple, list[nn.Parameter]] = {}
    for p in present:
        groups.setdefault((p.dtype, p.device), []).append(p)
    for group in groups.values():
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in group]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= world.size
        for p, g in zip(group, flat.split([q.numel() for q in group])):
            p.grad = g.view_as(p)
    return bool(flags[-1])


def mean_over_ranks(world: World, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each (scalar) value averaged over the ranks, in one all-reduce."""
    if not world.active or not values:
        return values
    keys = sorted(values)
    flat = torch.stack([values[k].reshape(()) for k in keys])
    dist.all_reduce(flat)
    return dict(zip(keys, flat / world.size))


# -- running batch-norm statistics -------------------------------------------------------------
def _running_modules(module: nn.Module) -> list[nn.Module]:
    found = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            found.append(m)
        elif isinstance(m, TransductiveBatchNorm2d) and m.step_mean is not None:
            found.append(m)
    return found


def _stats(m: nn.Module) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The running averages of ``m`` and how many updates each row (or all) has had."""
    if isinstance(m, TransductiveBatchNorm2d):
        return [m.step_mean, m.step_var], m.step_updates
    return [m.running_mean, m.running_var], m.num_batches_tracked.reshape(1)


class RunningStats:
    """The running statistics of a learner at the start of a step, merged after it."""

    def __init__(self, world: World, learner: nn.Module) -> None:
        self.world = world
        # Learners whose batch statistics span the meta-batch update theirs alike on every
        # rank (synchronised batch norm): nothing to merge.
        merged = world.active and not getattr(learner, "batch_norm_across_tasks", False)
        self.modules = _running_modules(learner) if merged else []
        self.start: list[tuple[list[torch.Tensor], torch.Tensor]] = []

    def snapshot(self) -> None:
        self.start = [tuple(t.clone() for t in (*_stats(m)[0], _stats(m)[1])) for m in self.modules]

    def merge(self) -> None:
        """Each module's averages as if one process had run every rank's updates in rank order.

        With momentum ``m`` (``a = 1 - m``) a rank that made ``n`` updates from ``r0`` holds
        ``a^n r0 + c`` (``c``: its batches' share), so the sequence gives
        ``acc <- a^n_k acc + (r_k - a^n_k r0)`` over the ranks; with ``momentum=None``
        (cumulative average) the batch sums add up."""
        if not self.modules:
            return
        local = [
            torch.cat([t.reshape(-1).double() for t in (*_stats(m)[0], _stats(m)[1])])
            for m in self.modules
        ]
        flat = torch.cat(local)
        every = [torch.empty_like(flat) for _ in range(self.world.size)]
        dist.all_gather(every, flat)
        offset = 0
        for m, start, size in zip(self.modules, self.start, [t.numel() for t in local]):
            parts = [e[offset : offset + size] for e in every]
            offset += size
            self._merge_one(m, start, parts)

    @staticmethod
    def _merge_one(m: nn.Module, start: tuple, parts: list[torch.Tensor]) -> None:
        """``m``'s statistics from every rank's (``parts``: mean, var, counts, flattened)."""
        (averages, count), (mean0, var0, count0) = _stats(m), start
        rows = count0.numel()  # one (all of nn.BatchNorm) or one per inner step (MAML++)
        r0 = [mean0.double().view(rows, -1), var0.double().view(rows, -1)]
        width = r0[0].shape[1]
        c0 = count0.double().reshape(rows, 1)
        accs, total = [r.clone() for r in r0], c0.clone()
        for part in parts:
            ranks_stats = part[: 2 * rows * width].view(2, rows, width)
            n = part[2 * rows * width :].reshape(rows, 1) - c0  # this rank's updates
            for i in range(2):
                r_k, start_i = ranks_stats[i], r0[i]
                if m.momentum is None:  # cumulative average: add the batch sums
                    batch_sums = r_k * (c0 + n) - start_i * c0
                    accs[i] = (accs[i] * total + batch_sums) / (total + n).clamp(min=1)
                else:
                    decay = (1 - m.momentum) ** n
                    accs[i] = decay * accs[i] + (r_k - decay * start_i)
            total = total + n
        with torch.no_grad():
            for t, acc in zip(averages, accs):
                t.copy_(acc.view_as(t).to(t.dtype))
            count.copy_(total.view_as(count).to(count.dtype))
