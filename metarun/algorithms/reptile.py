"""Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms").

For each task of a meta-batch, a copy of the weights is trained for ``inner_steps`` steps of an
ordinary optimizer (Adam with beta1 = 0, as in the paper, or SGD) on the task's data; the outer
update moves the weights toward the adapted ones:

    theta <- theta + epsilon * mean_tasks(phi_task - theta)

This is written as a gradient, ``theta.grad = mean(theta - phi)``, so the outer optimizer is the
config's ``algo.optimizer`` (SGD with ``lr`` = epsilon reproduces the paper's update exactly) and
the paper's linear annealing of epsilon is a scheduler (``LinearLR`` to 0 over ``train.steps``,
the default of ``algo=reptile``). Evaluation fine-tunes a copy on the support set with the same
inner optimizer for ``eval_inner_steps`` and scores the queries.

Differences from the paper, stated: the inner loop takes full-batch steps on the task's data
(support and query together in meta-training; the paper draws mini-batches of 10), and batch
norm uses batch statistics throughout (the paper's "transductive" setting).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.func import functional_call

from metarun.algorithms.base import MetaLearner, OptimizerFactory, SchedulerFactory
from metarun.algorithms.losses import batched_task_metrics, task_loss, task_losses
from metarun.data.batch import TaskBatch
from metarun.errors import MetarunError

Params = dict[str, torch.Tensor]
INNER_OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr, betas=(0.0, 0.999)),
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr),
}


class Reptile(MetaLearner):
    """Reptile with an Adam (beta1 = 0) or SGD inner loop.

    Args:
        inner_lr: the inner optimizer's step size.
        inner_steps: inner steps per task in meta-training.
        eval_inner_steps: fine-tuning steps on the support set at validation and test.
        inner_optimizer: ``adam`` (the paper's) or ``sgd``.
    """

    uncompiled_reason = "its inner loop runs an optimizer"

    step_size_options = ("optimizer.lr", "inner_lr")

    def __init__(
        self,
        backbone: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        inner_lr: float = 0.001,
        inner_steps: int = 5,
        eval_inner_steps: int = 50,
        inner_optimizer: str = "adam",
        batch_norm: str = "transductive",
    ) -> None:
        super().__init__(backbone, optimizer, scheduler, batch_norm)
        if inner_optimizer not in INNER_OPTIMIZERS:
            raise MetarunError(
                f"algo.inner_optimizer={inner_optimizer!r} is unknown; use {list(INNER_OPTIMIZERS)}"
            )
        if inner_steps < 1 or eval_inner_steps < 0:
            raise MetarunError(
                f"algo.inner_steps={inner_steps} must be >= 1 and algo.eval_inner_steps="
                f"{eval_inner_steps} >= 0"
            )
        running = any(getattr(m, "track_running_stats", False) for m in backbone.modules())
        if running:
            raise MetarunError(
                "Reptile adapts copies of the weights and cannot update running batch-norm "
                "statistics; set algo.batch_norm=transductive"
            )
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.eval_inner_steps = eval_inner_steps
        self.inner_optimizer = inner_optimizer

    def _fine_tune(
        self, x: torch.Tensor, y: torch.Tensor, steps: int
    ) -> tuple[Params, torch.Tensor | None]:
        """A detached copy of the weights after ``steps`` inner-optimizer steps on ``(x, y)``,
        and the first step's predictions (those of the weights before adaptation; None if
        ``steps`` is 0)."""
        fast = {k: p.detach().clone().requires_grad_() for k, p in self.backbone.named_parameters()}
        opt = INNER_OPTIMIZERS[self.inner_optimizer](list(fast.values()), self.inner_lr)
        first = None
        with torch.enable_grad():
            for step in range(steps):
                opt.zero_grad(set_to_none=True)
                pred = functional_call(self.backbone, fast, (x,))
                task_loss(pred, y).backward()
                opt.step()
                if step == 0:
                    first = pred.detach()
        return {k: p.detach() for k, p in fast.items()}, first

    def _task_data(self, batch: TaskBatch, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Meta-training trains on all of a task's examples: support and query together."""
        return (
            torch.cat([batch.support_x[t], batch.query_x[t]]),
            torch.cat([batch.support_y[t], batch.query_y[t]]),
        )

    def meta_backward(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        """``theta.grad`` += mean over tasks of ``theta - phi_task``; metrics are the tasks'
        losses and accuracies on their data before adaptation (what the outer step improves)."""
        params = dict(self.backbone.named_parameters())
        delta = {k: torch.zeros_like(p) for k, p in params.items()}
        losses, metrics = [], []
        for t in range(batch.num_tasks):
            x, y = self._task_data(batch, t)
            adapted, pred = self._fine_tune(x, y, self.inner_steps)  # inner_steps >= 1
            losses.append(task_loss(pred, y))
            metrics.append(batched_task_metrics(pred[None], y[None], losses[-1][None]))
            for k in params:
                delta[k] += (params[k].detach() - adapted[k]) / batch.num_tasks
        for k, p in params.items():
            if self.loss_scale is not None:  # train.precision=fp16: the scaler unscales it
                delta[k] = delta[k] * self.loss_scale
            p.grad = delta[k] if p.grad is None else p.grad + delta[k]
        out = {"loss": torch.stack(losses).mean()}
        for key in metrics[0]:
            out[key] = torch.cat([m[key] for m in metrics]).mean()
        return out

    def meta_loss(self, batch: TaskBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The tasks' mean loss before adaptation (Reptile's update is no gradient of a loss:
        training goes through :meth:`meta_backward`)."""
        losses = []
        for t in range(batch.num_tasks):
            x, y = self._task_data(batch, t)
            losses.append(task_loss(self.backbone(x), y))
        loss = torch.stack(losses).mean()
        return loss, {"loss": loss.detach()}

    def evaluate(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        per_task = []
        for sx, sy, qx, qy in zip(*batch):
            fast, _ = self._fine_tune(sx, sy, self.eval_inner_steps)
            with torch.no_grad():
                pred = functional_call(self.backbone, fast, (qx,))[None]
                per_task.append(batched_task_metrics(pred, qy[None], task_losses(pred, qy[None])))
        return {k: torch.cat([s[k] for s in per_task]) for k in per_task[0]}

    def predict(self, support_x, support_y, query_x) -> torch.Tensor:
        fast, _ = self._fine_tune(support_x, support_y, self.eval_inner_steps)
        with torch.no_grad():
            return functional_call(self.backbone, fast, (query_x,))

    def extra_repr(self) -> str:
        return (
            f"inner {self.inner_optimizer} lr={self.inner_lr}, inner_steps={self.inner_steps}, "
            f"eval_inner_steps={self.eval_inner_steps}"
        )
