"""Model-Agnostic Meta-Learning (Finn et al. 2017): the core its variants share.

The backbone is any ``nn.Module``. Adaptation runs on "fast weights" (a dict of tensors) in one
inner loop, :meth:`MAML.inner_loop`, which meta-training, evaluation and prediction all use:
inner gradients come from ``torch.autograd.grad``, with ``create_graph`` for second order, so
the outer backward runs through them and gives the exact second-order meta-gradient; first order
builds no graph of the inner gradients, which drops exactly the Hessian-vector terms (FOMAML) and
their cost. How the tasks of a meta-batch go through that loop (one by one, ``vmap``-ed, or
folded into one network call) is a :mod:`~metarun.algorithms.task_batching` strategy, chosen
once per device; all give the same meta-gradient (float64 tests).

The variants are this class with other switches, each in a module of its own: FOMAML
(:mod:`~metarun.algorithms.fomaml`), ANIL (:mod:`~metarun.algorithms.anil`), Meta-SGD
(:mod:`~metarun.algorithms.metasgd`) and MAML++ (:mod:`~metarun.algorithms.mamlpp`). The
switches combine (Meta-SGD with MAML++'s multi-step loss, say), so they live here; what each one
adds to the inner loop is built by :mod:`~metarun.algorithms.maml_options`.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad

from metarun.algorithms.base import MetaLearner, OptimizerFactory, SchedulerFactory
from metarun.algorithms.losses import batched_task_metrics, task_loss, task_losses
from metarun.algorithms.maml_options import (
    adapted_names,
    batch_norm_names,
    check_options,
    multi_step_weights,
    parameter_key,
    per_parameter,
    trainable,
)
from metarun.algorithms.task_batching import FOLD_ELEMENTS, TaskBatching, choose
from metarun.backbones.norm import TransductiveBatchNorm2d, step_statistics
from metarun.data.batch import TaskBatch

__all__ = ["MAML", "FOLD_ELEMENTS"]

Params = dict[str, torch.Tensor]
#: ``loss_fn(params, step)``: the support loss of inner step ``step``.
LossFn = Callable[[Params, int], torch.Tensor]


class MAML(MetaLearner):
    """MAML with an SGD inner loop, and the switches of its variants.

    Args:
        inner_lr: step size of the inner SGD updates.
        inner_steps: inner updates per task during meta-training.
        eval_inner_steps: inner updates per task at validation and test time.
        eval_report_steps: extra step counts at which evaluation also reports query metrics
            (keys ``<metric>_step<k>``), all read off one adaptation trajectory.
        first_order: drop second-order terms (FOMAML).
        task_batching: ``fold``, ``loop``, ``vmap`` or ``auto`` (:mod:`.task_batching`).
        task_chunk: tasks per forward and backward; 0 picks it (``fold``: inputs of about
            ``FOLD_ELEMENTS`` values per call; ``loop``: 1; ``vmap``: the whole meta-batch).
        adapt: ``all`` parameters in the inner loop (MAML) or only the ``head`` (ANIL).
        learn_inner_lr: Meta-SGD: a learned inner step size per adapted parameter element.
        per_step_inner_lr: MAML++ LSLR: a learned step size per adapted tensor and inner step
            (evaluation beyond ``inner_steps`` reuses the last one).
        multi_step_loss: MAML++ MSL: over the first this-many meta-iterations the meta-loss is
            a weighted sum of the query losses after every inner step (0: off).
        first_order_until: MAML++ derivative-order annealing: first order before this
            meta-iteration, second order from it on (0: ``first_order`` decides throughout).
        per_step_bn: MAML++ BNWB: batch-norm weights and biases of their own for each inner
            step, meta-learned and not adapted in the inner loop; ignored without batch norm.
        per_step_bn_stats: MAML++ BNRS: batch-norm running statistics per inner step, recorded
            in meta-training and used at evaluation; per-task loop path only.
    """

    metric_series = {"{metric}_step{i}": "inner steps at test"}

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
        task_chunk: int = 0,
        batch_norm: str = "transductive",
        adapt: str = "all",
        learn_inner_lr: bool = False,
        per_step_inner_lr: bool = False,
        multi_step_loss: int = 0,
        first_order_until: int = 0,
        per_step_bn: bool = False,
        per_step_bn_stats: bool = False,
    ) -> None:
        super().__init__(backbone, optimizer, scheduler, batch_norm)
        self.inner_lr, self.inner_steps, self.first_order = inner_lr, inner_steps, first_order
        self.eval_inner_steps = eval_inner_steps
        self.eval_report_steps = tuple(sorted(set(eval_report_steps)))
        self.task_batching, self.task_chunk, self.adapt_mode = task_batching, task_chunk, adapt
        self.multi_step_loss, self.first_order_until = multi_step_loss, first_order_until
        self.bn_names = batch_norm_names(backbone)
        check_options(self, learn_inner_lr, per_step_inner_lr, per_step_bn_stats)
        self._key = {name: parameter_key(name) for name, _ in backbone.named_parameters()}
        self.bn_stats = per_step_bn_stats and bool(self.bn_names)
        if self.bn_stats:
            for module in backbone.modules():
                if isinstance(module, TransductiveBatchNorm2d):
                    module.keep_step_statistics(inner_steps)
        self._bn_mode = "record"  # "use" while evaluating (per-step running statistics)
        per_step_bn = per_step_bn and bool(self.bn_names)  # nothing to do without batch norm
        # With per-step batch norm the inner loop leaves the batch-norm parameters alone.
        excluded = self.bn_names if per_step_bn else frozenset()
        self.adapt_names = adapted_names(backbone, adapt) - excluded
        # The learned parts (under these names in checkpoints): MAML++ BNWB's batch-norm rows,
        # Meta-SGD's step size per element, MAML++ LSLR's step size per tensor and step.
        rows = lambda p: p.unsqueeze(0).repeat(inner_steps, 1)  # noqa: E731
        self.step_bn = per_parameter(backbone, self.bn_names, rows) if per_step_bn else None
        element = lambda p: torch.full_like(p, inner_lr)  # noqa: E731
        self.inner_lrs = per_parameter(backbone, self.adapt_names, element) if learn_inner_lr else None
        step = lambda p: p.new_full((inner_steps,), inner_lr)  # noqa: E731
        self.step_lrs = per_parameter(backbone, self.adapt_names, step) if per_step_inner_lr else None
        self._batching: dict[str, TaskBatching] = {}

    def batching_for(self, device: torch.device) -> TaskBatching:
        """The task-batching strategy on ``device``, chosen once per device type."""
        if device.type not in self._batching:
            self._batching[device.type] = choose(self, device)
        return self._batching[device.type]

    # -- the pieces of one inner step ----------------------------------------------------------
    def _with_step_bn(self, params: Params, step: int) -> Params:
        """``params`` with the batch-norm entries of inner step ``step`` (MAML++ BNWB)."""
        if self.step_bn is None:
            return params
        out = dict(params)
        for name in self.bn_names:
            row = self.step_bn[self._key[name]][min(step, self.inner_steps - 1)]
            out[name] = row.expand_as(params[name])  # folded weights carry a task axis
        return out

    def forward_one(self, params: Params, x: torch.Tensor, step: int = 0) -> torch.Tensor:
        """One task's inputs through the backbone with weights ``params`` at inner step ``step``."""
        stats = step_statistics(self._bn_mode, step) if self.bn_stats else contextlib.nullcontext()
        with stats:
            return functional_call(self.backbone, self._with_step_bn(params, step), (x,))

    def forward_tasks(self, params: Params, x: torch.Tensor, step: int = 0) -> torch.Tensor:
        """Folded tasks ``[B, N, ...]`` through per-task weights (each with a task axis)."""
        return self.backbone.forward_tasks(self._with_step_bn(params, step), x)

    def first_order_now(self) -> bool:
        """First order by choice, or (MAML++ annealing) before ``first_order_until``."""
        return self.first_order or self.meta_step < self.first_order_until

    def step_weights(self) -> torch.Tensor | None:
        """MAML++ multi-step loss: weights of the query losses after each inner step, or None
        when only the last counts."""
        return multi_step_weights(self.inner_steps, self.meta_step, self.multi_step_loss)

    def _lr(self, name: str, step: int) -> torch.Tensor | float:
        """The step size of parameter ``name`` at inner step ``step``: learned per element
        (Meta-SGD), per tensor and step (MAML++ LSLR), or ``inner_lr``."""
        key = self._key[name]
        if self.inner_lrs is not None:
            return self.inner_lrs[key]
        if self.step_lrs is not None:
            lrs = self.step_lrs[key]
            return lrs[min(step, len(lrs) - 1)]
        return self.inner_lr

    def _step(self, params: Params, grads: Params, step: int) -> Params:
        """Inner update number ``step`` of the adapted weights; the others pass unchanged."""
        return {k: p - self._lr(k, step) * grads[k] if k in grads else p for k, p in params.items()}

    def autograd_grads(self, loss_fn: LossFn, params: Params, step: int) -> Params:
        """Inner gradients by ``torch.autograd``; differentiable only in second order."""
        names = [k for k in params if k in self.adapt_names]
        grads = torch.autograd.grad(
            loss_fn(params, step), [params[k] for k in names], create_graph=not self.first_order_now()
        )
        return dict(zip(names, grads))

    def func_grads(self, loss_fn: LossFn, params: Params, step: int) -> Params:
        """Inner gradients by ``torch.func.grad`` (inside ``vmap``); detached in first order."""
        grads = grad(lambda ps: loss_fn(ps, step))(params)
        grads = {k: g for k, g in grads.items() if k in self.adapt_names}
        return {k: g.detach() for k, g in grads.items()} if self.first_order_now() else grads

    def _detached_step(self, loss_fn: LossFn, params: Params, step: int) -> Params:
        """Inner step ``step`` off the meta-graph (evaluation): detached in, detached out."""
        with torch.enable_grad():
            params = {k: p.detach().requires_grad_(k in self.adapt_names) for k, p in params.items()}
            names = [k for k in params if k in self.adapt_names]
            grads = torch.autograd.grad(loss_fn(params, step), [params[k] for k in names])
        with torch.no_grad():
            return {k: p.detach() for k, p in self._step(params, dict(zip(names, grads)), step).items()}

    # -- the inner loop, written once ----------------------------------------------------------
    def inner_loop(
        self,
        params: Params,
        loss_fn: LossFn,
        steps: int,
        grads: Callable[[LossFn, Params, int], Params] | None = None,
        visit: Callable[[int, Params], None] | None = None,
    ) -> Params:
        """``steps`` SGD updates of ``params`` on ``loss_fn``; ``visit(k, params)`` sees the
        weights after ``k`` updates, for ``k = 0 .. steps``. ``grads`` (``autograd_grads``,
        ``func_grads``) keeps the meta-graph; without it each step is detached (evaluation)."""
        if grads is not None:
            params = trainable(params)
        for k in range(steps + 1):
            if visit is not None:
                visit(k, params)
            if k < steps:
                params = (
                    self._step(params, grads(loss_fn, params, k), k)
                    if grads is not None
                    else self._detached_step(loss_fn, params, k)
                )
        return params

    def adapt(self, params: Params, x: torch.Tensor, y: torch.Tensor, steps: int) -> Params:
        """``steps`` differentiable SGD updates of ``params`` on one task's support set."""
        support = lambda ps, k: self.support_loss(ps, x, y, k)  # noqa: E731
        return self.inner_loop(params, support, steps, self.autograd_grads)

    def support_loss(self, params: Params, x, y, step: int = 0) -> torch.Tensor:
        return task_loss(self.forward_one(params, x, step), y)

    def train_task(self, params: Params, loss_fn: LossFn, query: Callable, grads) -> tuple:
        """Meta-training on one task (or on folded tasks): adapt on the support set, then the
        query loss after the last step (``query(params, step) -> (loss, metrics)``), or under
        the multi-step loss the weighted sum of the query losses after every step."""
        weights = self.step_weights()
        earlier: list[torch.Tensor] = []

        def visit(k: int, ps: Params) -> None:
            if weights is not None and 0 < k < self.inner_steps:
                earlier.append(weights[k - 1] * query(ps, k - 1)[0])

        params = self.inner_loop(params, loss_fn, self.inner_steps, grads, visit)
        loss, metrics = query(params, self.inner_steps - 1)
        return (loss if weights is None else sum(earlier) + weights[-1] * loss), metrics

    def eval_task(self, params: Params, loss_fn: LossFn, forward: Callable, qx, qy) -> dict:
        """Query metrics after ``eval_inner_steps`` updates and at each ``eval_report_steps``,
        read off one adaptation trajectory (``forward(params, x, step)`` gives ``[B, M, out]``)."""
        out: dict[str, torch.Tensor] = {}

        def visit(k: int, ps: Params) -> None:
            if k != self.eval_inner_steps and k not in self.eval_report_steps:
                return
            with torch.no_grad():  # the batch norm of the last step taken (MAML++ BNWB)
                pred = forward(ps, qx, max(k - 1, 0))
                scores = batched_task_metrics(pred, qy, task_losses(pred, qy))
            if k == self.eval_inner_steps:
                out.update(scores)
            if k in self.eval_report_steps:
                out.update({f"{m}_step{k}": v for m, v in scores.items()})

        self.inner_loop(params, loss_fn, max((self.eval_inner_steps, *self.eval_report_steps)), visit=visit)
        return out

    # -- the MetaLearner interface -------------------------------------------------------------
    def chunk_size(self, batch: TaskBatch, batching: TaskBatching | None = None) -> int:
        """Tasks per forward/backward in :meth:`meta_backward` (``algo.task_chunk`` or the
        strategy's own choice)."""
        return self.task_chunk or (batching or self.batching_for(batch.support_x.device)).chunk(batch)

    def meta_loss(self, batch: TaskBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        params = dict(self.backbone.named_parameters())
        losses, metrics = self.batching_for(batch.support_x.device).train(self, params, batch)
        loss = losses.mean()
        return loss, {"loss": loss.detach(), **{k: v.mean() for k, v in metrics.items()}}

    def meta_backward(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        """The meta-gradient, ``chunk_size`` tasks at a time: each chunk's graph is freed by its
        own backward, so peak memory follows the chunk, not the meta-batch."""
        params = dict(self.backbone.named_parameters())
        batching = self.batching_for(batch.support_x.device)
        size, tasks = self.chunk_size(batch, batching), batch.num_tasks
        sums: dict[str, torch.Tensor] = {}
        for start in range(0, tasks, size):
            chunk = TaskBatch(*(t[start : start + size] for t in batch))
            losses, metrics = batching.train(self, params, chunk)
            (losses.sum() / tasks).backward()
            for k, v in {"loss": losses.detach(), **metrics}.items():
                sums[k] = sums[k] + v.sum() if k in sums else v.sum()
        return {k: v / tasks for k, v in sums.items()}

    @contextlib.contextmanager
    def _using_running_stats(self):
        """Evaluation normalises with the per-step running statistics (when kept)."""
        self._bn_mode = "use"
        try:
            yield
        finally:
            self._bn_mode = "record"

    def evaluate(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        params = {k: p.detach() for k, p in self.backbone.named_parameters()}
        with self._using_running_stats():
            return self.batching_for(batch.support_x.device).evaluate(self, params, batch)

    def predict(self, support_x, support_y, query_x) -> torch.Tensor:
        params = {k: p.detach() for k, p in self.backbone.named_parameters()}
        support = lambda ps, k: self.support_loss(ps, support_x, support_y, k)  # noqa: E731
        with self._using_running_stats():
            params = self.inner_loop(params, support, self.eval_inner_steps)
            with torch.no_grad():
                return self.forward_one(params, query_x, max(self.eval_inner_steps - 1, 0))

    def extra_repr(self) -> str:
        order = "first" if self.first_order else "second"
        if self.first_order_until and not self.first_order:
            order = f"first-order until step {self.first_order_until}, then second"
        lr = "learned (Meta-SGD), from " if self.inner_lrs is not None else ""
        lr = "learned per step (LSLR), from " if self.step_lrs is not None else lr
        return (
            f"inner_lr={lr}{self.inner_lr}, inner_steps={self.inner_steps}, "
            f"eval_inner_steps={self.eval_inner_steps}, {order}-order, adapt={self.adapt_mode}, "
            f"task_batching={getattr(self.task_batching, 'value', self.task_batching)}"
            + (f", multi_step_loss={self.multi_step_loss}" if self.multi_step_loss else "")
            + (", per-step batch norm" if self.step_bn is not None else "")
            + (" and running statistics" if self.bn_stats else "")
        )
