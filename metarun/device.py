"""Pick the torch device named by ``device.name``, and the CPU threads a job computes with."""

from __future__ import annotations

import os
from typing import Any

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


def usable_cores() -> int:
    """The cores this process may run on (its affinity: a SLURM allocation, ``taskset``)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def jobs_at_once() -> int:
    """How many sweep jobs Hydra's launcher runs at once on this machine: joblib's ``n_jobs``
    (``-1``: one per core, ``-2``: all but one, ...), else 1 (the basic launcher runs jobs one
    after another; SLURM gives each job its own allocation)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return 1
    launcher = HydraConfig.get().launcher
    if "joblib" not in str(launcher.get("_target_", "")):
        return 1
    n_jobs = launcher.get("n_jobs") or 1
    return max(1, n_jobs if n_jobs > 0 else usable_cores() + 1 + n_jobs)


def threads_for(setting: Any, local_processes: int = 1) -> int:
    """``device.threads``: a number, or ``auto``: the usable cores shared out among the jobs
    (or the data-parallel processes) that run on this machine at once, at least one each."""
    if setting != "auto":
        return int(setting)
    return max(1, usable_cores() // max(local_processes, jobs_at_once()))


def use_threads(setting: Any, local_processes: int = 1) -> int:
    """Set torch's intra-op threads from ``device.threads``; returns the number."""
    threads = threads_for(setting, local_processes)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
