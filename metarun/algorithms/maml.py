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
import functools
from typing import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call

from metarun.algorithms.base import MetaLearner, OptimizerFactory, SchedulerFactory
from metarun.algorithms.inner_loop import InnerLoop, Params
from metarun.algorithms.maml_options import (
    adapted_names,
    batch_norm_names,
    check_options,
    parameter_key,
    per_parameter,
    uncompiled_reason,
)
from metarun.algorithms.task_batching import (
    COMPILED,
    FOLD_ELEMENTS,
    STRATEGIES,
    TaskBatching,
    choose,
)
from metarun.backbones import explicit
from metarun.backbones.norm import TransductiveBatchNorm2d, step_statistics
from metarun.data.batch import TaskBatch
from metarun.series import Series

__all__ = ["MAML", "FOLD_ELEMENTS"]


class MAML(InnerLoop, MetaLearner):
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

    metric_series = (Series("{metric}_step{i}", "step"),)  # algo.eval_report_steps
    step_size_options = ("optimizer.lr", "inner_lr")

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
        self.task_batching = str(getattr(task_batching, "value", task_batching))  # enum or str
        self.task_chunk, self.adapt_mode = task_chunk, adapt
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
        self.inner_lrs = (
            per_parameter(backbone, self.adapt_names, element) if learn_inner_lr else None
        )
        step = lambda p: p.new_full((inner_steps,), inner_lr)  # noqa: E731
        self.step_lrs = (
            per_parameter(backbone, self.adapt_names, step) if per_step_inner_lr else None
        )
        self._batching: dict[str, TaskBatching] = {}

    def batching_for(self, device: torch.device) -> TaskBatching:
        """The task-batching strategy on ``device``, chosen once per device type."""
        if device.type not in self._batching:
            self._batching[device.type] = choose(self, device)
        return self._batching[device.type]

    # -- train.compile ------------------------------------------------------------------------
    @property
    def uncompiled_reason(self) -> str | None:
        """Why ``train.compile`` leaves this learner eager (None: its task step compiles)."""
        return uncompiled_reason(self)

    def compile_with(self, compiled: Callable) -> None:
        """Each task's step (inner loop with :meth:`explicit_grads`, query loss) compiled;
        falling back to the autograd per-task step."""
        loop = STRATEGIES["loop"]
        eager = functools.partial(loop.train_one, self)
        forward = lambda ps, x, step: explicit.forward(self.backbone, ps, x)  # noqa: E731
        written = functools.partial(
            loop.train_one, self, grads=self.explicit_grads, forward=forward
        )
        self.compiled_task = compiled(written, eager, f"{type(self).__name__}'s task step")
        self._batching[next(self.backbone.parameters()).device.type] = COMPILED

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

    # -- the MetaLearner interface -------------------------------------------------------------
    def chunk_size(self, batch: TaskBatch, batching: TaskBatching | None = None) -> int:
        """Tasks per forward/backward in :meth:`meta_backward` (``algo.task_chunk`` or the
        strategy's own choice)."""
        return self.task_chunk or (batching or self.batching_for(batch.support_x.device)).chunk(
            batch
        )

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
            self.outer_backward(losses.sum() / tasks)
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
            f"task_batching={self.task_batching}"
            + (f", multi_step_loss={self.multi_step_loss}" if self.multi_step_loss else "")
            + (", per-step batch norm" if self.step_bn is not None else "")
            + (" and running statistics" if self.bn_stats else "")
        )
