"""A run's memory floor, checked before the model is built: values that cannot fit are refused.

The floor counts what a run must hold whatever the algorithm does with it: one training batch of
inputs, the fixed validation episodes the loop keeps, one evaluation chunk, and the model's
weights with their gradients and two optimizer moments (counted on PyTorch's ``meta`` device, so
a model too large for the machine is never allocated). Activations come on top, so passing this
check does not promise a fit; failing it proves there is none, and says so in one line instead
of a kernel OOM kill minutes later.
"""

from __future__ import annotations

import contextlib
import math
import os
import re

import torch
from omegaconf import DictConfig

from metarun.data.batch import TaskShape
from metarun.errors import MetarunError

FLOAT_BYTES = 4
PARAMETER_COPIES = 4  # weights, gradients, Adam's two moments


def device_bytes(device: torch.device) -> int | None:
    """Memory of ``device`` (a CUDA card's, else this machine's RAM); None when unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def model_parameters(build_model) -> int | None:
    """Parameter count of ``build_model()`` built on the meta device (no memory is allocated);
    None when the model cannot be built there."""
    try:
        with torch.device("meta"):
            return sum(p.numel() for p in build_model().parameters())
    except Exception:  # noqa: BLE001 - a constructor that needs real tensors: no estimate
        return None


def check_memory(
    cfg: DictConfig,
    input_shape: tuple[int, ...],
    train_shape: TaskShape,
    eval_shape: TaskShape,
    eval_chunk: int,
    parameters: int | None,
    device: torch.device,
) -> None:
    """Refuse a run whose floor (module docstring) exceeds the device's memory."""
    total = device_bytes(device)
    if total is None:
        return
    example = math.prod(input_shape) * FLOAT_BYTES
    need = {  # what it is for -> (examples, what to lower)
        "one training batch": (cfg.task.meta_batch * train_shape.examples, "task.meta_batch"),
        "the validation episodes": (
            cfg.val.episodes * eval_shape.examples * max(1, cfg.val.views),
            "val.episodes or val.views",
        ),
        "one evaluation chunk": (eval_chunk * eval_shape.examples, "val/test.batch_size"),
    }
    need = {what: (n * example, key) for what, (n, key) in need.items()}
    if parameters is not None:
        weights = parameters * FLOAT_BYTES * PARAMETER_COPIES
        need[f"{parameters:,} weights"] = (weights, "the backbone's size")
    floor = sum(n for n, _ in need.values())
    if floor > total:
        what = max(need, key=lambda k: need[k][0])
        size, key = need[what]
        raise MetarunError(
            f"this run needs at least {_gb(floor)} before any activation ({_gb(size)} for "
            f"{what}), more than the {_gb(total)} of this {device.type}; lower {key}"
        )


@contextlib.contextmanager
def out_of_memory_as_error():
    """An allocation the device cannot serve (CPU or CUDA) becomes a one-line error: the
    config asked for more than the machine has, which is not a bug in metarun."""
    try:
        yield
    except (torch.OutOfMemoryError, RuntimeError) as e:
        text = str(e)
        if not isinstance(e, torch.OutOfMemoryError) and "can't allocate memory" not in text:
            raise
        tried = re.search(r"allocate ([\d.]+ \w?i?B|\d+ bytes)", text)
        what = f" (an allocation of {tried.group(1)})" if tried else ""
        raise MetarunError(
            f"out of memory{what}; lower task.meta_batch, val/test.batch_size or the model's "
            "size (algo and backbone options), or use a device with more memory"
        ) from None


def _gb(n: float) -> str:
    return f"{n / 1e9:.3g} GB" if n >= 1e8 else f"{n / 1e6:.3g} MB"
