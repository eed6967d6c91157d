"""Task losses and per-task metrics, picked by the target dtype (float: regression, int: labels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def task_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean loss over the examples of one task (or of every task when batched)."""
    if target.is_floating_point():
        return F.mse_loss(pred, target)
    return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1))


def task_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Metrics of one task's predictions ``[M, out]`` against targets ``[M(, out)]``.

    Regression reports ``mse``; classification reports ``loss`` (cross-entropy) and ``acc``.
    """
    if target.is_floating_point():
        return {"mse": F.mse_loss(pred, target)}
    return {
        "loss": F.cross_entropy(pred, target),
        "acc": (pred.argmax(-1) == target).float().mean(),
    }
