"""MAML's inner loop, written once: the mixin :class:`InnerLoop` that MAML (and so every
variant) uses for meta-training, evaluation and prediction.

:meth:`InnerLoop.inner_loop` takes ``steps`` SGD updates of the fast weights on a support loss,
with the step size of each parameter and step (``inner_lr``, Meta-SGD's per-element rates or
MAML++'s per-step ones) and, in meta-training, the meta-graph kept (second order) or dropped
(first order, or MAML++ before ``first_order_until``). :meth:`~InnerLoop.train_task` adds the
query loss (MAML++'s multi-step loss when on); :meth:`~InnerLoop.eval_task` reads the query
metrics after ``eval_inner_steps`` updates and at each ``eval_report_steps`` off one trajectory.
The task-batching strategies (:mod:`.task_batching`) call these with the forward of their layout.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.func import grad

from metarun.algorithms.losses import batched_task_metrics, task_loss, task_losses
from metarun.algorithms.maml_options import multi_step_weights, trainable
from metarun.backbones import explicit

Params = dict[str, torch.Tensor]
#: ``loss_fn(params, step)``: the support loss of inner step ``step``.
LossFn = Callable[[Params, int], torch.Tensor]


class SupportLoss:
    """One task's support loss, ``loss(params, step)``, that keeps its data at hand (for
    :meth:`InnerLoop.explicit_grads`)."""

    def __init__(self, learner: "InnerLoop", x: torch.Tensor, y: torch.Tensor) -> None:
        self.learner, self.x, self.y = learner, x, y

    def __call__(self, params: Params, step: int) -> torch.Tensor:
        return self.learner.support_loss(params, self.x, self.y, step)


class InnerLoop:
    """Needs on ``self``: ``adapt_names``, ``inner_lr``, ``inner_steps``, ``eval_inner_steps``,
    ``eval_report_steps``, ``first_order``, ``first_order_until``, ``multi_step_loss``,
    ``meta_step``, ``inner_lrs`` / ``step_lrs`` (or None), ``_key``, ``forward_one`` and
    (for :meth:`explicit_grads`) ``backbone``."""

    def first_order_now(self) -> bool:
        """First order by choice, or (MAML++ annealing) before ``first_order_until``."""
        # meta_step is read only when it matters: a compiled task step (which needs
        # first_order_until = 0) must not depend on it, or it would recompile every step
        until = self.first_order_until
        return self.first_order or (until > 0 and self.meta_step < until)

    def step_weights(self) -> torch.Tensor | None:
        """MAML++ multi-step loss: weights of the query losses after each inner step, or None
        when only the last counts."""
        if not self.multi_step_loss:  # (meta_step unread: see first_order_now)
            return None
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
            loss_fn(params, step),
            [params[k] for k in names],
            create_graph=not self.first_order_now(),
        )
        return dict(zip(names, grads))

    def func_grads(self, loss_fn: LossFn, params: Params, step: int) -> Params:
        """Inner gradients by ``torch.func.grad`` (inside ``vmap``); detached in first order."""
        grads = grad(lambda ps: loss_fn(ps, step))(params)
        grads = {k: g for k, g in grads.items() if k in self.adapt_names}
        return {k: g.detach() for k, g in grads.items()} if self.first_order_now() else grads

    def explicit_grads(self, loss_fn: SupportLoss, params: Params, step: int) -> Params:
        """Inner gradients written out as tensor ops (:mod:`metarun.backbones.explicit`), so
        the task step has no double backward and compiles; detached in first order."""
        grads = explicit.grads(self.backbone, params, loss_fn.x, loss_fn.y, self.adapt_names)
        return {k: g.detach() for k, g in grads.items()} if self.first_order_now() else grads

    def _detached_step(self, loss_fn: LossFn, params: Params, step: int) -> Params:
        """Inner step ``step`` off the meta-graph (evaluation): detached in, detached out."""
        with torch.enable_grad():
            params = {
                k: p.detach().requires_grad_(k in self.adapt_names) for k, p in params.items()
            }
            names = [k for k in params if k in self.adapt_names]
            grads = torch.autograd.grad(loss_fn(params, step), [params[k] for k in names])
        with torch.no_grad():
            return {
                k: p.detach() for k, p in self._step(params, dict(zip(names, grads)), step).items()
            }

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
        return self.inner_loop(params, SupportLoss(self, x, y), steps, self.autograd_grads)

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

        self.inner_loop(
            params, loss_fn, max((self.eval_inner_steps, *self.eval_report_steps)), visit=visit
        )
        return out
