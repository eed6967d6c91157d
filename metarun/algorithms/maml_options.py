"""MAML's options, checked up front, and the pieces its variants add to the inner loop.

:func:`check_options` refuses a bad combination in one line before any work; the builders make
the learned inner-loop parameters of Meta-SGD and MAML++ (kept on the MAML module under its
``inner_lrs`` / ``step_lrs`` / ``step_bn`` names, so checkpoints keep their keys).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from metarun.backbones import explicit
from metarun.backbones.folded import folds
from metarun.backbones.norm import TransductiveBatchNorm2d
from metarun.errors import MetarunError

Params = dict[str, torch.Tensor]
BATCHING = ("auto", "fold", "loop", "vmap")


def check_options(
    learner, learn_inner_lr: bool, per_step_inner_lr: bool, per_step_bn_stats: bool
) -> None:
    """Raise :class:`MetarunError` naming the option (and the fix) for the first bad one of a
    :class:`~metarun.algorithms.MAML` whose plain options are set (the flags that build learned
    parts are passed, since those parts do not exist yet)."""
    backbone, adapt, task_batching = learner.backbone, learner.adapt_mode, learner.task_batching
    inner_steps, eval_inner_steps = learner.inner_steps, learner.eval_inner_steps
    eval_report_steps, task_chunk = learner.eval_report_steps, learner.task_chunk
    multi_step_loss, first_order_until = learner.multi_step_loss, learner.first_order_until
    batch_norm, bn_names = learner.batch_norm, learner.bn_names
    if adapt not in ("all", "head"):
        raise MetarunError(f"algo.adapt={adapt!r} is unknown; use all (MAML) or head (ANIL)")
    if task_batching not in BATCHING:
        raise MetarunError(
            f"algo.task_batching={task_batching!r} is unknown; use one of {list(BATCHING)}"
        )
    if inner_steps < 1:
        raise MetarunError(f"algo.inner_steps={inner_steps} must be >= 1")
    if eval_inner_steps < 0 or any(s < 0 for s in eval_report_steps):
        raise MetarunError(
            f"algo.eval_inner_steps={eval_inner_steps} and algo.eval_report_steps="
            f"{list(eval_report_steps)} must be >= 0"
        )
    running = any(getattr(m, "track_running_stats", False) for m in backbone.modules())
    if running or batch_norm != "transductive":
        raise MetarunError(
            "MAML adapts with batch statistics and cannot update running batch-norm "
            "statistics inside its inner loop; set algo.batch_norm=transductive and "
            "backbone.batch_norm=transductive"
        )
    if task_batching == "fold" and not folds(backbone):
        raise MetarunError(
            f"algo.task_batching=fold needs a backbone of plain conv / batch-norm / "
            f"element-wise layers (conv4, mlp); {type(backbone).__name__} is not one; use "
            "algo.task_batching=loop or auto"
        )
    if task_chunk < 0:
        raise MetarunError(f"algo.task_chunk={task_chunk} must be >= 0 (0: automatic)")
    if per_step_bn_stats and bn_names and task_batching in ("fold", "vmap"):
        raise MetarunError(
            f"algo.per_step_bn_stats updates running statistics task by task, which "
            f"algo.task_batching={task_batching} cannot; use loop or auto"
        )
    if learn_inner_lr and per_step_inner_lr:
        raise MetarunError(
            "algo.learn_inner_lr (Meta-SGD) and algo.per_step_inner_lr (MAML++) both learn "
            "the inner step size; choose one"
        )
    if multi_step_loss < 0 or first_order_until < 0:
        raise MetarunError(
            f"algo.multi_step_loss={multi_step_loss} and algo.first_order_until="
            f"{first_order_until} must be >= 0 (meta-iterations; 0 turns them off)"
        )


def batch_norm_names(backbone: nn.Module) -> frozenset[str]:
    """Names of the weights and biases of the backbone's transductive batch norms."""
    return frozenset(
        f"{name}.{p}"
        for name, module in backbone.named_modules()
        if isinstance(module, TransductiveBatchNorm2d)
        for p in ("weight", "bias")
    )


def adapted_names(backbone: nn.Module, adapt: str) -> frozenset[str]:
    """Names of the parameters the inner loop updates: all of them, or (``head``, ANIL) those of
    the last module that holds parameters of its own: the linear head of Conv4 / ResNet-12, the
    output layer of an MLP."""
    names = [name for name, _ in backbone.named_parameters()]
    if adapt == "all":
        return frozenset(names)
    owners = [m for m, mod in backbone.named_modules() if list(mod.parameters(recurse=False))]
    if not owners or not owners[-1]:
        raise MetarunError(
            "algo.adapt=head needs a backbone with a separate last layer; "
            f"{type(backbone).__name__} has none: use algo.adapt=all"
        )
    prefix = owners[-1] + "."
    return frozenset(n for n in names if n.startswith(prefix))


def parameter_key(name: str) -> str:
    """A parameter's name as a ParameterDict key (keys cannot hold dots)."""
    return name.replace(".", "/")


def per_parameter(
    backbone: nn.Module, names: frozenset[str], make: Callable[[torch.Tensor], torch.Tensor]
) -> nn.ParameterDict:
    """A learned tensor ``make(p)`` for each backbone parameter ``p`` named in ``names``, keyed
    by :func:`parameter_key`."""
    return nn.ParameterDict(
        {
            parameter_key(name): nn.Parameter(make(p.detach().clone()))
            for name, p in backbone.named_parameters()
            if name in names
        }
    )


def multi_step_weights(
    inner_steps: int, meta_step: int, multi_step_loss: int
) -> torch.Tensor | None:
    """MAML++ multi-step loss: weights of the query losses after each inner step, or None when
    only the last counts. Uniform at first, moving linearly to all on the last step over the
    first ``multi_step_loss`` meta-iterations."""
    if not multi_step_loss or meta_step >= multi_step_loss:
        return None
    n = inner_steps
    last = 1 / n + (1 - 1 / n) * meta_step / multi_step_loss
    weights = torch.full((n,), (1 - last) / max(n - 1, 1), dtype=torch.float64)
    weights[-1] = last
    return weights


def trainable(params: Params) -> Params:
    """``params`` as given if the graph already tracks them, else detached leaves that do."""
    if any(p.requires_grad for p in params.values()):
        return params
    return {k: p.detach().requires_grad_() for k, p in params.items()}


def stack(outs: list):
    """Stack per-task outputs (tensors, or tuples / dicts of them) along a new dim 0."""
    first = outs[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(outs)
    if isinstance(first, dict):
        return {k: stack([o[k] for o in outs]) for k in first}
    return type(first)(stack(list(xs)) for xs in zip(*outs))


def uncompiled_reason(learner) -> str | None:
    """Why ``train.compile`` leaves a MAML eager, in a phrase (None: its task step compiles:
    the backbone's inner gradient is written out, :mod:`metarun.backbones.explicit`, and the
    step's graph is the same every meta-iteration)."""
    if learner.multi_step_loss or learner.first_order_until or learner.step_bn is not None:
        return "MAML++'s per-step options change its graph from step to step"
    if learner.bn_stats:
        return "MAML++'s per-step running statistics are updated outside the graph"
    if not explicit.supports(learner.backbone):
        return f"the inner gradient of {type(learner.backbone).__name__} is not written out"
    device = next(learner.backbone.parameters()).device
    if (name := learner.batching_for(device).name) not in ("loop", "compiled"):
        return f"algo.task_batching={name} (the per-task loop is what compiles)"
    return None
