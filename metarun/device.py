"""Pick the torch device named by ``device.name``."""

from __future__ import annotations

import torch

from metarun.errors import MetarunError


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit device that is absent is an error."""
    name = str(getattr(name, "value", name))
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise MetarunError(
            f"device=cuda was requested but no CUDA GPU is usable (torch {torch.__version__}, "
            f"{build}); use device=auto or device=cpu"
        )
    if name == "mps" and not _mps_available():
        raise MetarunError(
            "device=mps was requested but Apple MPS is not available on this machine; "
            "use device=auto or device=cpu"
        )
    return torch.device(name)
