"""Task losses and per-task metrics, picked by the target dtype (float: regression, int: labels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def task_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean loss over the examples of one task (or of every task when batched)."""
    if target.is_floating_point():
        return F.mse_loss(pred, target)
    return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1))


def task_metrics(
    pred: torch.Tensor, target: torch.Tensor, loss: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Metrics of one task's predictions ``[M, out]`` against targets ``[M(, out)]``.

    Regression reports ``mse``; classification reports ``loss`` (cross-entropy) and ``acc``.
    ``loss``, when the caller already has :func:`task_loss` of these predictions, is reused.
    """
    if loss is None:
        loss = task_loss(pred, target)
    if target.is_floating_point():
        return {"mse": loss}
    return {"loss": loss, "acc": (pred.argmax(-1) == target).float().mean()}


def task_losses(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-task mean losses ``[B]`` of predictions ``[B, M, out]``, targets ``[B, M(, out)]``."""
    if target.is_floating_point():
        return (pred - target).pow(2).flatten(1).mean(1)
    ce = F.cross_entropy(pred.flatten(0, 1), target.flatten(), reduction="none")
    return ce.view(target.shape).mean(1)


def batched_task_metrics(
    pred: torch.Tensor, target: torch.Tensor, losses: torch.Tensor
) -> dict[str, torch.Tensor]:
    """:func:`task_metrics` of every task of ``[B, M, out]`` predictions at once (``[B]`` each)."""
    if target.is_floating_point():
        return {"mse": losses}
    return {"loss": losses, "acc": (pred.argmax(-1) == target).float().mean(1)}
