"""Model-Agnostic Meta-Learning (Finn et al. 2017) and its first-order variant.

The backbone is any ``nn.Module``. Adaptation runs on "fast weights" (a dict of tensors): inner
gradients come from ``torch.autograd.grad``, with ``create_graph`` for second order, so the
outer backward runs through them and gives the exact second-order meta-gradient;
``first_order=True`` builds no graph of the inner gradients at all, which drops exactly the
Hessian-vector terms (FOMAML) and their cost. The tasks of a meta-batch run in one of three ways
(``task_batching``), all giving the same meta-gradient (float64 tests):

- ``fold``: the tasks are folded into one network call with per-task weights (grouped
  convolutions, batched matmuls; see :mod:`metarun.backbones.folded`), ``task_chunk`` tasks at a
  time, each chunk backpropagated as soon as its loss is known so its graph is freed;
- ``loop``: one task at a time through ``torch.func.functional_call``, each backpropagated at
  once (what learn2learn and ``higher`` do);
- ``vmap``: ``torch.func.vmap`` over the tasks (memory-hungry; kept for small MLPs).

``auto`` (:meth:`MAML.batching_for`) folds where the backbone can and folding wins on the
device (MLPs; conv nets on CUDA) and loops otherwise.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from metarun.algorithms.base import MetaLearner, OptimizerFactory, SchedulerFactory
from metarun.algorithms.losses import batched_task_metrics, task_loss, task_losses, task_metrics
from metarun.algorithms.maml_options import (
    adapted_names,
    batch_norm_names,
    check_options,
    multi_step_weights,
    parameter_key,
    per_parameter,
    stack,
    trainable,
)
from metarun.backbones.norm import (
    TransductiveBatchNorm2d,
    plain_op_batch_norm,
    step_statistics,
)
from metarun.data.batch import TaskBatch

Params = dict[str, torch.Tensor]
#: ``task_chunk=0`` folds as many tasks into one call as keep its input (support + query values)
#: under this many elements: every task of a sinusoid batch, 16 Omniglot 5-way 15-query tasks.
#: Peak memory grows with the chunk; ``algo.task_chunk`` sets it by hand.
FOLD_ELEMENTS = 2**20


class MAML(MetaLearner):
    """MAML / FOMAML with SGD inner loop.

    Args:
        inner_lr: step size of the inner SGD updates.
        inner_steps: inner updates per task during meta-training.
        eval_inner_steps: inner updates per task at validation and test time.
        eval_report_steps: extra step counts at which evaluation also reports query metrics
            (keys ``<metric>_step<k>``), all read off one adaptation trajectory.
        first_order: drop second-order terms (FOMAML).
        task_batching: ``fold``, ``loop``, ``vmap`` or ``auto`` (see the module docstring).
        task_chunk: tasks per forward and backward; 0 picks it (``fold``: inputs of about
            ``FOLD_ELEMENTS`` values per call; ``loop``: 1; ``vmap``: the whole meta-batch).
        adapt: ``all`` parameters in the inner loop (MAML) or only the ``head`` (ANIL, Raghu
            et al. 2020: the last layer; the body gets outer updates only).
        learn_inner_lr: Meta-SGD (Li et al. 2017): a learned inner step size per adapted
            parameter element, initialised to ``inner_lr`` and meta-trained with the weights.
        per_step_inner_lr: MAML++ LSLR (Antoniou et al. 2019): a learned step size per adapted
            tensor and inner step (evaluation beyond ``inner_steps`` reuses the last one).
        multi_step_loss: MAML++ MSL: over the first this-many meta-iterations the meta-loss is
            a weighted sum of the query losses after every inner step, the weights moving
            linearly from uniform to the last step alone; 0 turns it off.
        first_order_until: MAML++ derivative-order annealing: first order before this
            meta-iteration, second order from it on (0: ``first_order`` decides throughout).
        per_step_bn: MAML++ BNWB: batch-norm weights and biases of their own for each inner
            step (the support forward of step i and the query forward after it use row i),
            meta-learned and not adapted in the inner loop; ignored without batch norm.
        per_step_bn_stats: MAML++ BNRS: batch-norm running statistics per inner step, recorded
            in meta-training and used at evaluation instead of the batch's statistics (so a
            query's prediction no longer depends on the other queries); per-task loop path only.
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
        self.bn_names = batch_norm_names(backbone)
        check_options(
            backbone,
            bn_names=self.bn_names,
            adapt=adapt,
            task_batching=task_batching,
            task_chunk=task_chunk,
            inner_steps=inner_steps,
            eval_inner_steps=eval_inner_steps,
            eval_report_steps=eval_report_steps,
            batch_norm=batch_norm,
            learn_inner_lr=learn_inner_lr,
            per_step_inner_lr=per_step_inner_lr,
            multi_step_loss=multi_step_loss,
            first_order_until=first_order_until,
            per_step_bn_stats=per_step_bn_stats,
        )
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.eval_inner_steps = eval_inner_steps
        self.eval_report_steps = tuple(sorted(set(eval_report_steps)))
        self.first_order = first_order
        self.task_batching = task_batching
        self.task_chunk = task_chunk
        self.adapt_mode = adapt
        # Each parameter's ParameterDict key, computed once.
        self._key = {name: parameter_key(name) for name, _ in backbone.named_parameters()}
        per_step_bn = per_step_bn and bool(self.bn_names)  # nothing to do without batch norm
        self.bn_stats = per_step_bn_stats and bool(self.bn_names)
        if self.bn_stats:
            for module in backbone.modules():
                if isinstance(module, TransductiveBatchNorm2d):
                    module.keep_step_statistics(inner_steps)
        self._bn_mode = "record"  # "use" while evaluating (per-step running statistics)
        # With per-step batch norm the inner loop leaves the batch-norm parameters alone.
        excluded = self.bn_names if per_step_bn else frozenset()
        self.adapt_names = adapted_names(backbone, adapt) - excluded
        # MAML++ BNWB: a row of batch-norm weights per inner step, each starting as the module's.
        self.step_bn = (
            per_parameter(backbone, self.bn_names, lambda p: p.unsqueeze(0).repeat(inner_steps, 1))
            if per_step_bn
            else None
        )
        # Meta-SGD's step sizes, one per element of each adapted tensor.
        self.inner_lrs = (
            per_parameter(backbone, self.adapt_names, lambda p: torch.full_like(p, inner_lr))
            if learn_inner_lr
            else None
        )
        # MAML++ LSLR: one step size per adapted tensor and inner step.
        self.step_lrs = (
            per_parameter(
                backbone, self.adapt_names, lambda p: p.new_full((inner_steps,), inner_lr)
            )
            if per_step_inner_lr
            else None
        )
        self.multi_step_loss = multi_step_loss
        self.first_order_until = first_order_until

    def batching_for(self, device: torch.device) -> str:
        """The path ``task_batching`` takes on ``device``: ``auto`` folds where the backbone
        says folding wins on that device (``fold_devices``: MLPs everywhere, conv nets on CUDA,
        where the per-task loop is launch-bound; on CPU a conv's cost is its arithmetic, which
        folding does not reduce, see the README's performance section), else loops."""
        if self.task_batching != "auto":
            return self.task_batching
        if self.bn_stats:
            return "loop"
        can_fold = getattr(self.backbone, "can_fold_tasks", False)
        folds = device.type in getattr(self.backbone, "fold_devices", ())
        return "fold" if can_fold and folds else "loop"

    # -- functional pieces -------------------------------------------------------------------
    def _with_step_bn(self, params: Params, step: int) -> Params:
        """``params`` with the batch-norm entries of inner step ``step`` (MAML++ BNWB)."""
        if self.step_bn is None:
            return params
        out = dict(params)
        for name in self.bn_names:
            row = self.step_bn[self._key[name]][min(step, self.inner_steps - 1)]
            out[name] = row.expand_as(params[name])  # folded weights carry a task axis
        return out

    def _forward(self, params: Params, x: torch.Tensor, step: int = 0) -> torch.Tensor:
        stats = step_statistics(self._bn_mode, step) if self.bn_stats else contextlib.nullcontext()
        with stats:
            return functional_call(self.backbone, self._with_step_bn(params, step), (x,))

    def _forward_tasks(self, params: Params, x: torch.Tensor, step: int = 0) -> torch.Tensor:
        return self.backbone.forward_tasks(self._with_step_bn(params, step), x)

    def _support_loss(
        self, params: Params, x: torch.Tensor, y: torch.Tensor, step: int = 0
    ) -> torch.Tensor:
        return task_loss(self._forward(params, x, step), y)

    def _inner_grads(self, loss: torch.Tensor, params: Params) -> Params:
        """Gradients of ``loss`` for the adapted fast weights; differentiable only in second
        order."""
        names = [k for k in params if k in self.adapt_names]
        grads = torch.autograd.grad(
            loss, [params[k] for k in names], create_graph=not self.first_order_now()
        )
        return dict(zip(names, grads))

    def first_order_now(self) -> bool:
        """First order by choice, or (MAML++ annealing) before ``first_order_until``."""
        return self.first_order or self.meta_step < self.first_order_until

    def step_weights(self) -> torch.Tensor | None:
        """MAML++ multi-step loss: weights of the query losses after each inner step, or None
        when only the last counts. Uniform at first, all on the last step once
        ``multi_step_loss`` meta-iterations have passed."""
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

    def _step(self, params: Params, grads: Params, step: int = 0) -> Params:
        """Inner update number ``step`` of the adapted weights; the others pass unchanged."""
        return {k: p - self._lr(k, step) * grads[k] if k in grads else p for k, p in params.items()}

    def _sgd_no_graph(
        self, loss_fn: Callable[[Params], torch.Tensor], params: Params, step: int = 0
    ) -> Params:
        """Inner step ``step`` for evaluation: detached in, detached out, grad mode or not."""
        with torch.enable_grad():
            params = {
                k: p.detach().requires_grad_(k in self.adapt_names) for k, p in params.items()
            }
            names = [k for k in params if k in self.adapt_names]
            grads = dict(
                zip(names, torch.autograd.grad(loss_fn(params), [params[k] for k in names]))
            )
        with torch.no_grad():
            return {
                k: (p - self._lr(k, step) * grads[k] if k in grads else p).detach()
                for k, p in params.items()
            }

    def adapt(self, params: Params, x: torch.Tensor, y: torch.Tensor, steps: int) -> Params:
        """``steps`` SGD updates of ``params`` on one task's support set ``(x, y)``."""
        params = trainable(params)
        for i in range(steps):
            loss = self._support_loss(params, x, y, i)
            params = self._step(params, self._inner_grads(loss, params), i)
        return params

    # -- meta-training -------------------------------------------------------------------------
    # Each path adapts with the support set and returns the query loss after the last inner
    # step, or, under the multi-step loss, the weighted sum of the query losses after each step.
    def _query_loss(self, params: Params, qx, qy, step: int = 0) -> tuple[torch.Tensor, dict]:
        pred = self._forward(params, qx, step)
        loss = task_loss(pred, qy)
        return loss, task_metrics(pred.detach(), qy, loss.detach())

    def _train_task(
        self, params: Params, sx, sy, qx, qy, weights: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict]:
        params = trainable(params)
        total = 0.0
        for i in range(self.inner_steps):
            loss = self._support_loss(params, sx, sy, i)
            params = self._step(params, self._inner_grads(loss, params), i)
            if weights is not None and i < self.inner_steps - 1:
                total = total + weights[i] * self._query_loss(params, qx, qy, i)[0]
        loss, metrics = self._query_loss(params, qx, qy, self.inner_steps - 1)
        return (loss if weights is None else total + weights[-1] * loss), metrics

    def _train_task_vmap(
        self, params: Params, sx, sy, qx, qy, weights: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict]:
        grad_fn = grad(self._support_loss)
        total = 0.0
        for i in range(self.inner_steps):
            grads = grad_fn(params, sx, sy, i)
            grads = {k: g for k, g in grads.items() if k in self.adapt_names}
            if self.first_order_now():
                grads = {k: g.detach() for k, g in grads.items()}
            params = self._step(params, grads, i)
            if weights is not None and i < self.inner_steps - 1:
                total = total + weights[i] * self._query_loss(params, qx, qy, i)[0]
        loss, metrics = self._query_loss(params, qx, qy, self.inner_steps - 1)
        return (loss if weights is None else total + weights[-1] * loss), metrics

    def _train_tasks_folded(
        self, params: Params, batch: TaskBatch, weights: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict]:
        sx, sy, qx, qy = batch
        params = trainable({k: p.expand(batch.num_tasks, *p.shape) for k, p in params.items()})
        total = 0.0
        for i in range(self.inner_steps):
            loss = task_losses(self._forward_tasks(params, sx, i), sy).sum()
            params = self._step(params, self._inner_grads(loss, params), i)
            if weights is not None and i < self.inner_steps - 1:
                query = task_losses(self._forward_tasks(params, qx, i), qy)
                total = total + weights[i] * query
        pred = self._forward_tasks(params, qx, self.inner_steps - 1)
        losses = task_losses(pred, qy)
        metrics = batched_task_metrics(pred.detach(), qy, losses.detach())
        return (losses if weights is None else total + weights[-1] * losses), metrics

    def _train_tasks(
        self, params: Params, batch: TaskBatch, batching: str
    ) -> tuple[torch.Tensor, dict]:
        """Per-task query losses ``[B]`` (differentiable) and detached per-task metrics."""
        weights = self.step_weights()  # the same for every task of the batch
        if batching == "fold":
            return self._train_tasks_folded(params, batch, weights)
        if batching == "vmap":
            task_fn = functools.partial(self._train_task_vmap, weights=weights)
            with plain_op_batch_norm():
                return vmap(task_fn, in_dims=(None, 0, 0, 0, 0))(params, *batch)
        return stack([self._train_task(params, *task, weights) for task in zip(*batch)])

    def chunk_size(self, batch: TaskBatch, batching: str | None = None) -> int:
        """Tasks per forward/backward in :meth:`meta_backward` (``batching``: the path taken,
        by default :meth:`batching_for` the batch's device)."""
        if self.task_chunk:
            return self.task_chunk
        batching = batching or self.batching_for(batch.support_x.device)
        if batching == "vmap":
            return batch.num_tasks
        if batching == "loop":
            return 1
        elements = (batch.support_x[0].numel() + batch.query_x[0].numel()) or 1
        return max(1, FOLD_ELEMENTS // elements)

    def meta_loss(self, batch: TaskBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        params = dict(self.backbone.named_parameters())
        batching = self.batching_for(batch.support_x.device)
        losses, metrics = self._train_tasks(params, batch, batching)
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
            losses, metrics = self._train_tasks(params, chunk, batching)
            (losses.sum() / tasks).backward()
            for k, v in {"loss": losses.detach(), **metrics}.items():
                sums[k] = sums[k] + v.sum() if k in sums else v.sum()
        return {k: v / tasks for k, v in sums.items()}

    # -- evaluation --------------------------------------------------------------------------
    def _eval_scores(self, forward: Callable, update: Callable, params: Params, qx, qy) -> dict:
        """Query metrics after ``eval_inner_steps`` updates (and at each ``eval_report_steps``),
        read off one adaptation trajectory."""
        last = max((self.eval_inner_steps, *self.eval_report_steps))
        out: dict[str, torch.Tensor] = {}
        for step in range(last + 1):
            if step == self.eval_inner_steps or step in self.eval_report_steps:
                with torch.no_grad():  # the batch norm of the last step taken (MAML++ BNWB)
                    pred = forward(params, qx, max(step - 1, 0))
                    scores = batched_task_metrics(pred, qy, task_losses(pred, qy))
                if step == self.eval_inner_steps:
                    out.update(scores)
                if step in self.eval_report_steps:
                    out.update({f"{k}_step{step}": v for k, v in scores.items()})
            if step < last:
                params = update(params, step)
        return out

    def evaluate(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        with self._using_running_stats():
            return self._evaluate(batch)

    @contextlib.contextmanager
    def _using_running_stats(self):
        """Evaluation normalises with the per-step running statistics (when kept)."""
        self._bn_mode = "use"
        try:
            yield
        finally:
            self._bn_mode = "record"

    def _evaluate(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        params = {k: p.detach() for k, p in self.backbone.named_parameters()}
        sx, sy, qx, qy = batch
        if self.batching_for(sx.device) == "fold":
            tasks = {k: p.expand(batch.num_tasks, *p.shape) for k, p in params.items()}

            def update(ps: Params, step: int) -> Params:
                loss = lambda q: task_losses(self._forward_tasks(q, sx, step), sy).sum()  # noqa: E731
                return self._sgd_no_graph(loss, ps, step)

            return self._eval_scores(self._forward_tasks, update, tasks, qx, qy)
        per_task = []
        for t in range(batch.num_tasks):

            def update(ps: Params, step: int, t=t) -> Params:
                loss = lambda q: self._support_loss(q, sx[t], sy[t], step)  # noqa: E731
                return self._sgd_no_graph(loss, ps, step)

            def forward(ps: Params, x: torch.Tensor, step: int) -> torch.Tensor:
                return self._forward(ps, x[0], step).unsqueeze(0)  # one task, as a batch of 1

            one = slice(t, t + 1)
            per_task.append(self._eval_scores(forward, update, params, qx[one], qy[one]))
        return {k: torch.cat([s[k] for s in per_task]) for k in per_task[0]}

    def predict(self, support_x, support_y, query_x) -> torch.Tensor:
        with self._using_running_stats():
            return self._predict(support_x, support_y, query_x)

    def _predict(self, support_x, support_y, query_x) -> torch.Tensor:
        params = {k: p.detach() for k, p in self.backbone.named_parameters()}
        for step in range(self.eval_inner_steps):
            loss_fn = lambda q, s=step: self._support_loss(q, support_x, support_y, s)  # noqa: E731
            params = self._sgd_no_graph(loss_fn, params, step)
        with torch.no_grad():
            return self._forward(params, query_x, max(self.eval_inner_steps - 1, 0))

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
