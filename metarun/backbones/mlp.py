"""Fully connected network, e.g. MAML's 1-40-40-1 sinusoid regressor."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from metarun.backbones.folded import folded_linear
from metarun.errors import MetarunError

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "elu": nn.ELU}


class MLP(nn.Module):
    """``Linear -> act -> ... -> Linear`` over flattened inputs.

    ``out_features=None`` drops the head and returns the last hidden layer (an embedding).
    """

    #: Where MAML's ``task_batching=auto`` folds tasks into one call (see MAML.batching_for):
    #: batched matmuls beat a per-task loop on every device for MLPs.
    fold_devices = ("cpu", "cuda", "mps")

    def __init__(
        self,
        input_shape: Sequence[int],
        out_features: int | None,
        hidden: Sequence[int] = (40, 40),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise MetarunError(
                f"backbone.activation={activation!r} is unknown; use one of {sorted(_ACTIVATIONS)}"
            )
        self.input_shape = tuple(input_shape)
        in_features = math.prod(self.input_shape)
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_features, width), _ACTIVATIONS[activation]()]
            in_features = width
        if out_features is not None:
            layers.append(nn.Linear(in_features, out_features))
            in_features = out_features
        self.net = nn.Sequential(*layers)
        self.out_features = in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[: x.dim() - len(self.input_shape)]
        return self.net(x.reshape(*lead, -1))

    can_fold_tasks = True

    def explicit_layers(self) -> list[tuple[str, nn.Module]]:
        """The layers in order, each with its parameters' name prefix
        (:mod:`metarun.backbones.explicit`)."""
        return [(f"net.{k}.", m) for k, m in self.net.named_children()]

    def forward_tasks(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Every task of ``x`` ``[B, N, ...]`` through its own weights (each parameter with a
        leading task axis ``B``), as batched matmuls; returns ``[B, N, out]``."""
        h = x.reshape(*x.shape[:2], -1)
        for name, layer in self.net.named_children():
            if isinstance(layer, nn.Linear):
                h = folded_linear(params, f"net.{name}.", h)
            else:
                h = layer(h)
        return h
