"""How the tasks of a meta-batch go through MAML's inner loop: three strategies, one interface.

- :class:`Loop`: one task at a time through ``torch.func.functional_call``, each backpropagated
  at once (what learn2learn and ``higher`` do);
- :class:`VMap`: ``torch.func.vmap`` over the tasks (memory-hungry; kept for small MLPs);
- :class:`Fold`: the tasks folded into one network call with per-task weights (grouped
  convolutions, batched matmuls; :mod:`metarun.backbones.folded`), ``task_chunk`` tasks at a
  time, each chunk backpropagated as soon as its loss is known so its graph is freed.

:func:`choose` maps ``algo.task_batching`` to one of them once per device: ``auto`` folds where
the backbone can (:class:`~metarun.backbones.folded.FoldsTasks`) and says folding wins on that
device (MLPs everywhere; conv nets on CUDA, where a per-task loop is launch-bound; on CPU a
conv's cost is its arithmetic, which folding does not cut: docs/performance.md), else loops.
Each strategy runs the learner's one inner loop (:meth:`MAML.train_task`, :meth:`MAML.eval_task`)
with the forward and losses of its layout.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch
from torch.func import vmap

from metarun.algorithms.inner_loop import SupportLoss
from metarun.algorithms.losses import batched_task_metrics, task_loss, task_losses, task_metrics
from metarun.algorithms.maml_options import stack
from metarun.backbones.folded import folds
from metarun.backbones.norm import plain_op_batch_norm
from metarun.data.batch import TaskBatch

if TYPE_CHECKING:
    from metarun.algorithms.maml import MAML, Params

#: ``task_chunk=0`` folds as many tasks into one call as keep its input (support + query values)
#: under this many elements: every task of a sinusoid batch, 16 Omniglot 5-way 15-query tasks.
#: Peak memory grows with the chunk; ``algo.task_chunk`` sets it by hand.
FOLD_ELEMENTS = 2**20


class TaskBatching:
    """A way of running a meta-batch's tasks through the inner loop."""

    name = ""

    def chunk(self, batch: TaskBatch) -> int:
        """Tasks per forward and backward when ``algo.task_chunk`` is 0."""
        return 1

    def train(self, learner: MAML, params: Params, batch: TaskBatch) -> tuple:
        """Per-task query losses ``[B]`` (differentiable) and detached per-task metrics."""
        return stack([self.train_one(learner, params, *task) for task in zip(*batch)])

    def train_one(
        self, learner: MAML, params: Params, sx, sy, qx, qy, grads=None, forward=None
    ) -> tuple:
        """One task: adapt on ``(sx, sy)``, score on ``(qx, qy)`` (the query through
        ``forward(params, x, step)``, by default ``learner.forward_one``)."""
        forward = forward or learner.forward_one

        def query(ps: Params, step: int) -> tuple:
            pred = forward(ps, qx, step)
            loss = task_loss(pred, qy)
            return loss, task_metrics(pred.detach(), qy, loss.detach())

        grads = grads or learner.autograd_grads
        return learner.train_task(params, SupportLoss(learner, sx, sy), query, grads)

    def evaluate(self, learner: MAML, params: Params, batch: TaskBatch) -> dict:
        """Per-task metrics ``[B]`` after adaptation, task by task."""
        sx, sy, qx, qy = batch

        def forward(ps: Params, x: torch.Tensor, step: int) -> torch.Tensor:
            return learner.forward_one(ps, x[0], step).unsqueeze(0)  # one task, a batch of 1

        per_task = []
        for t in range(batch.num_tasks):
            support = lambda ps, k, t=t: learner.support_loss(ps, sx[t], sy[t], k)  # noqa: E731
            one = slice(t, t + 1)
            per_task.append(learner.eval_task(params, support, forward, qx[one], qy[one]))
        return {k: torch.cat([s[k] for s in per_task]) for k in per_task[0]}


class Loop(TaskBatching):
    name = "loop"


class Compiled(Loop):
    """``train.compile``: the per-task loop, each task's step (inner loop with its gradients
    written out, :meth:`~metarun.algorithms.inner_loop.InnerLoop.explicit_grads`, then the
    query loss) one compiled function, :attr:`MAML.compiled_task`. Evaluation loops eagerly."""

    name = "compiled"

    def train_one(self, learner: MAML, params: Params, *task, **_) -> tuple:
        return learner.compiled_task(params, *task)


class VMap(TaskBatching):
    name = "vmap"

    def chunk(self, batch: TaskBatch) -> int:
        return batch.num_tasks

    def train(self, learner: MAML, params: Params, batch: TaskBatch) -> tuple:
        task_fn = functools.partial(self.train_one, learner, grads=learner.func_grads)
        with plain_op_batch_norm():
            return vmap(task_fn, in_dims=(None, 0, 0, 0, 0))(params, *batch)


class Fold(TaskBatching):
    name = "fold"

    def chunk(self, batch: TaskBatch) -> int:
        elements = (batch.support_x[0].numel() + batch.query_x[0].numel()) or 1
        return max(1, FOLD_ELEMENTS // elements)

    @staticmethod
    def _folded(learner: MAML, params: Params, batch: TaskBatch) -> tuple:
        """Each weight with a task axis, and the support loss summed over the folded tasks."""
        sx, sy = batch.support_x, batch.support_y
        support = lambda ps, k: task_losses(learner.forward_tasks(ps, sx, k), sy).sum()  # noqa: E731
        return {k: p.expand(batch.num_tasks, *p.shape) for k, p in params.items()}, support

    def train(self, learner: MAML, params: Params, batch: TaskBatch) -> tuple:
        qx, qy = batch.query_x, batch.query_y

        def query(ps: Params, step: int) -> tuple:
            pred = learner.forward_tasks(ps, qx, step)
            losses = task_losses(pred, qy)
            return losses, batched_task_metrics(pred.detach(), qy, losses.detach())

        tasks, support = self._folded(learner, params, batch)
        return learner.train_task(tasks, support, query, learner.autograd_grads)

    def evaluate(self, learner: MAML, params: Params, batch: TaskBatch) -> dict:
        tasks, support = self._folded(learner, params, batch)
        return learner.eval_task(
            tasks, support, learner.forward_tasks, batch.query_x, batch.query_y
        )


STRATEGIES = {s.name: s for s in (Loop(), VMap(), Fold())}
COMPILED = Compiled()  # set by MAML.compile_with, not an algo.task_batching choice


def choose(learner: MAML, device: torch.device) -> TaskBatching:
    """The strategy ``learner.task_batching`` asks for on ``device`` (``auto``: see above)."""
    if learner.task_batching != "auto":
        return STRATEGIES[learner.task_batching]
    backbone = learner.backbone
    if not learner.bn_stats and folds(backbone) and device.type in backbone.fold_devices:
        return STRATEGIES["fold"]
    return STRATEGIES["loop"]
