"""Checkpoints written atomically (temporary file, fsync, rename) with the config inside."""

from __future__ import annotations

from pathlib import Path

import torch

from metarun.atomic import atomic_write


def save_checkpoint(
    path: Path, *, learner, optimizer, scheduler, step: int, config: dict, metrics: dict[str, float]
) -> None:
    checkpoint = {
        "step": step,
        "model": learner.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "config": config,
        "metrics": metrics,
    }
    atomic_write(path, lambda f: torch.save(checkpoint, f))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint without unpickling arbitrary objects (``weights_only=True``)."""
    return torch.load(path, map_location=map_location, weights_only=True)
