"""Model-Agnostic Meta-Learning (Finn et al. 2017) and its first-order variant.

The backbone is any ``nn.Module``: adaptation runs on a dict of "fast weights" through
``torch.func.functional_call``, and inner gradients come from ``torch.func.grad``. The outer
autograd graph runs through those inner gradients, which gives the exact second-order
meta-gradient; ``first_order=True`` detaches them, which drops exactly the Hessian-vector terms
(FOMAML). The tasks of a meta-batch run either in a Python loop or mapped with ``torch.func.vmap``
(``task_batching``); ``auto`` asks the backbone (``prefers_vmap``), since vmap wins for small
pure-op models and loses, or is unsafe, for others.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from metarun.algorithms.base import MetaLearner, OptimizerFactory, SchedulerFactory
from metarun.algorithms.losses import task_loss, task_metrics
from metarun.data.batch import TaskBatch
from metarun.errors import MetarunError

Params = dict[str, torch.Tensor]
_BATCHING = ("auto", "loop", "vmap")


class MAML(MetaLearner):
    """MAML / FOMAML with SGD inner loop.

    Args:
        inner_lr: step size of the inner SGD updates.
        inner_steps: inner updates per task during meta-training.
        eval_inner_steps: inner updates per task at validation and test time.
        eval_report_steps: extra step counts at which evaluation also reports query metrics
            (keys ``<metric>_step<k>``), all read off one adaptation trajectory.
        first_order: drop second-order terms (FOMAML).
        task_batching: ``loop``, ``vmap`` or ``auto`` (the backbone's ``prefers_vmap``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        eval_inner_steps: int = 10,
        eval_report_steps: Sequence[int] = (),
        first_order: bool = False,
        task_batching: str = "auto",
        batch_norm: str = "transductive",
    ) -> None:
        super().__init__(backbone, optimizer, scheduler, batch_norm)
        if task_batching not in _BATCHING:
            raise MetarunError(
                f"algo.task_batching={task_batching!r} is unknown; use one of {list(_BATCHING)}"
            )
        if inner_steps < 1 or eval_inner_steps < 0 or any(s < 0 for s in eval_report_steps):
            raise MetarunError(
                "algo.inner_steps must be >= 1 and algo.eval_inner_steps / eval_report_steps >= 0"
            )
        running = any(getattr(m, "track_running_stats", False) for m in backbone.modules())
        if running or batch_norm != "transductive":
            raise MetarunError(
                "MAML adapts with batch statistics and cannot update running batch-norm "
                "statistics inside its inner loop; set algo.batch_norm=transductive and "
                "backbone.batch_norm=transductive"
            )
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.eval_inner_steps = eval_inner_steps
        self.eval_report_steps = tuple(sorted(set(eval_report_steps)))
        self.first_order = first_order
        if task_batching == "auto":
            task_batching = "vmap" if getattr(backbone, "prefers_vmap", False) else "loop"
        self.task_batching = task_batching

    # -- functional pieces -------------------------------------------------------------------
    def _forward(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.backbone, params, (x,))

    def _support_loss(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return task_loss(self._forward(params, x), y)

    def adapt(self, params: Params, x: torch.Tensor, y: torch.Tensor, steps: int) -> Params:
        """``steps`` SGD updates of ``params`` on one task's support set ``(x, y)``."""
        grad_fn = grad(self._support_loss)
        for _ in range(steps):
            params = self._sgd_step(params, grad_fn(params, x, y))
        return params

    def _sgd_step(self, params: Params, grads: Params) -> Params:
        if self.first_order:
            # Detaching the inner gradient is all FOMAML is: the outer gradient then flows only
            # through the identity path of each update.
            return {k: p - self.inner_lr * grads[k].detach() for k, p in params.items()}
        return {k: p - self.inner_lr * grads[k] for k, p in params.items()}

    def _train_task(self, params: Params, sx, sy, qx, qy) -> tuple[torch.Tensor, dict]:
        adapted = self.adapt(params, sx, sy, self.inner_steps)
        pred = self._forward(adapted, qx)
        loss = task_loss(pred, qy)
        return loss, task_metrics(pred.detach(), qy, loss.detach())

    def _eval_task(self, params: Params, sx, sy, qx, qy) -> dict[str, torch.Tensor]:
        grad_fn = grad(self._support_loss)
        last = max((self.eval_inner_steps, *self.eval_report_steps))
        out: dict[str, torch.Tensor] = {}
        for step in range(last + 1):
            if step == self.eval_inner_steps or step in self.eval_report_steps:
                scores = task_metrics(self._forward(params, qx), qy)
                if step == self.eval_inner_steps:
                    out.update(scores)
                if step in self.eval_report_steps:
                    out.update({f"{k}_step{step}": v for k, v in scores.items()})
            if step < last:
                params = self._sgd_step(params, grad_fn(params, sx, sy))
        return out

    def _map_tasks(self, fn: Callable, params: Params, batch: TaskBatch):
        """Apply ``fn(params, sx, sy, qx, qy)`` to every task, stacking outputs along dim 0."""
        if self.task_batching == "vmap":
            return vmap(fn, in_dims=(None, 0, 0, 0, 0))(params, *batch)
        return _stack([fn(params, *task) for task in zip(*batch)])

    # -- MetaLearner interface ---------------------------------------------------------------
    def meta_loss(self, batch: TaskBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        params = dict(self.backbone.named_parameters())
        losses, metrics = self._map_tasks(self._train_task, params, batch)
        loss = losses.mean()
        return loss, {"loss": loss.detach(), **{k: v.mean() for k, v in metrics.items()}}

    def evaluate(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        params = {k: p.detach() for k, p in self.backbone.named_parameters()}
        with torch.no_grad():  # torch.func.grad still computes the inner gradients
            return self._map_tasks(self._eval_task, params, batch)

    def predict(self, support_x, support_y, query_x) -> torch.Tensor:
        params = {k: p.detach() for k, p in self.backbone.named_parameters()}
        with torch.no_grad():  # torch.func.grad still computes the inner gradients
            adapted = self.adapt(params, support_x, support_y, self.eval_inner_steps)
            return self._forward(adapted, query_x)

    def extra_repr(self) -> str:
        order = "first" if self.first_order else "second"
        return (
            f"inner_lr={self.inner_lr}, inner_steps={self.inner_steps}, "
            f"eval_inner_steps={self.eval_inner_steps}, {order}-order, "
            f"task_batching={self.task_batching}"
        )


def _stack(outs: list):
    """Stack per-task outputs (tensors, or tuples / dicts of them) along a new dim 0."""
    first = outs[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(outs)
    if isinstance(first, dict):
        return {k: _stack([o[k] for o in outs]) for k in first}
    return type(first)(_stack(list(xs)) for xs in zip(*outs))
