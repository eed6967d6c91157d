"""What image backbones share: a feature extractor and an optional linear head."""

from __future__ import annotations

import torch
from torch import nn

from metarun.backbones.folded import Params, can_fold, folded_linear, folded_sequential
from metarun.errors import MetarunError


class ImageBackbone(nn.Module):
    """``features`` maps ``[n, ch, H, W]`` images to flat vectors; ``head`` (or None) to logits.

    ``forward`` accepts any leading dims (``[B, M, ch, H, W]`` for a task batch) and keeps them.
    """

    features: nn.Module
    head: nn.Module | None
    #: Devices where MAML's ``task_batching=auto`` folds tasks (when :attr:`can_fold_tasks`):
    #: on CPU a conv's cost is its arithmetic, which folding does not cut (docs/performance.md).
    fold_devices: tuple[str, ...] = ("cuda",)

    @classmethod
    def check_input(cls, input_shape: tuple[int, ...]) -> None:
        """Refuse, in one line, inputs that are not images (before anything is built)."""
        if len(input_shape) != 3:
            raise MetarunError(
                f"backbone {cls.__name__} takes images (channels x height x width) but this "
                f"dataset's inputs have shape {tuple(input_shape)}; use backbone=mlp"
            )

    #: ``backbone.memory_format``: ``channels_last`` keeps images, activations and conv weights
    #: in NHWC order (faster convolutions on many CPUs and on tensor-core GPUs); the values are
    #: those of the default ``contiguous`` (NCHW) layout.
    channels_last = False

    def lay_out(self, memory_format: str) -> None:
        """Put the conv weights in ``memory_format`` (call at the end of ``__init__``)."""
        self.channels_last = memory_format == "channels_last"
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, self.head)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The features before the head (test-time heads classify these, ``metarun.heads``)."""
        return self._run(x, None)

    def _run(self, x: torch.Tensor, head: nn.Module | None) -> torch.Tensor:
        lead = x.shape[:-3]
        x = x.reshape(-1, *x.shape[-3:])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        z = self.features(x)
        if head is not None:
            z = head(z)
        return z.reshape(*lead, -1)

    def explicit_layers(self) -> list[tuple[str, nn.Module]]:
        """The layers in order, each with its parameters' name prefix
        (:mod:`metarun.backbones.explicit`)."""
        head = [("head.", self.head)] if self.head is not None else []
        return [(f"features.{k}.", m) for k, m in self.features.named_children()] + head

    @property
    def can_fold_tasks(self) -> bool:
        """Whether :meth:`forward_tasks` can run this network (plain conv stacks can)."""
        return can_fold(self.features)

    def forward_tasks(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """Every task of ``x`` ``[B, N, ch, H, W]`` through its own weights (``params``: this
        module's parameters, each with a leading task axis ``B``); returns ``[B, N, out]``."""
        z = folded_sequential(self.features, "features.", params, x)
        return folded_linear(params, "head.", z) if self.head is not None else z
