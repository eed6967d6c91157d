"""``train.precision``: the arithmetic of training steps and evaluations.

``fp32`` is plain float32. ``bf16`` and ``fp16`` run every forward and backward of a training
step (an algorithm's inner loop included: MAML's adaptation happens inside
``meta_backward``) and of every evaluation under :func:`torch.autocast` with that dtype; the
weights, the optimizer and the meta-gradient stay float32. ``fp16`` adds a gradient scaler
(:class:`torch.amp.GradScaler`): the outer loss is multiplied by its scale before backward
(:meth:`MetaLearner.outer_backward`), the gradients are unscaled before the optimizer step, and a
step whose gradients overflowed is skipped while the scale shrinks, as torch's AMP recipe does.
fp16 pays on CUDA; bf16 on CPUs with AVX-512 BF16 / AMX and on Ampere or later GPUs.
"""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """Autocast and, for fp16, the gradient scaler of one run."""

    def __init__(self, name: str, device: torch.device) -> None:
        """``name``: ``train.precision``, one of :data:`DTYPES` (the schema's CHOICES)."""
        self.name, self.dtype, self.device = name, DTYPES[name], device
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None

    def autocast(self):
        """The context a training step or an evaluation runs in."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def loss_scale(self) -> torch.Tensor | None:
        """What the outer loss is multiplied by before its backward (None: nothing)."""
        if self.scaler is None:
            return None
        return self.scaler.scale(torch.ones((), device=self.device))

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer step on (unscaled) gradients; with fp16, skipped on an overflow."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)  # unscales first; skips the step if a gradient is inf/NaN
        self.scaler.update()

    def state_dict(self) -> dict | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
