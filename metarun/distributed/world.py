"""The processes of one run: who they are, how they start, and the few exchanges they make.

A run is data-parallel when a launcher starts it as several processes: ``torchrun`` (it exports
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` / ``MASTER_PORT``), or SLURM through
submitit (``hydra/launcher=slurm`` with ``tasks_per_node`` > 1: submitit's
``TorchDistributedEnvironment`` exports the same variables). :func:`init_world` joins them with
``torch.distributed`` (env:// rendezvous); anything else runs as one process (:data:`SINGLE`).

Every check that can refuse a run (world size against the meta-batch, backend against device,
GPUs against ranks) depends only on the config and the environment, so every process refuses
alike before any of them waits for the others.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import inspect
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist

from metarun.device import resolve_device
from metarun.errors import MetarunError


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    backend: str | None = None
    control: Any = None  # a gloo group for CPU-side exchanges (None: the default group)

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the run folder, logs and checkpoints."""
        return self.rank == 0

    def part(self, total: int) -> slice:
        """This rank's equal share of ``total`` items (``total`` divides by the world size)."""
        share = total // self.size
        return slice(self.rank * share, (self.rank + 1) * share)

    def share(self, total: int) -> slice:
        """This rank's part of a meta-batch: :meth:`part`, or everything in one process."""
        return self.part(total) if self.active else slice(None)

    def span(self, total: int) -> slice:
        """This rank's contiguous share of ``total`` items, sizes differing by at most one."""
        return slice(total * self.rank // self.size, total * (self.rank + 1) // self.size)

    # -- exchanges (no-ops in one process) -------------------------------------------------
    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj, group=self.control)
        return out

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank."""
        if not self.active:
            return flag
        t = torch.tensor([int(flag)])
        dist.all_reduce(t, group=self.control)
        return bool(t.item())

    def close(self, orderly: bool = True) -> None:
        """Leave the process group; ``orderly`` (the run ended well on this rank) first waits
        for the others, so that no rank tears down connections another is still using."""
        if not (self.active and dist.is_initialized()):
            return
        if orderly:
            dist.barrier(group=self.control)
        dist.destroy_process_group()


SINGLE = World()
_joined = False  # whether this process joined a process group (see metarun.cli.main)


def joined() -> bool:
    """Whether this process has been one of a data-parallel run's processes."""
    return _joined


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return int(value) if value is not None else default
    except ValueError:
        raise MetarunError(f"${name}={value!r} is not a number; unset it or fix the launcher")


def _export_slurm() -> None:
    """Under SLURM through submitit with several tasks: the torch rendezvous variables."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm" or "WORLD_SIZE" in os.environ:
        return
    if _env_int("SLURM_NTASKS", 1) < 2:
        return
    from submitit.helpers import TorchDistributedEnvironment

    # overwrite: a MASTER_PORT the user set is read (and kept) by the helper itself
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)


def launched_size() -> int:
    """How many processes the launcher started for this run (1 outside torchrun / SLURM)."""
    _export_slurm()
    return _env_int("WORLD_SIZE", 1)


def _backend(cfg: Any, device: torch.device) -> str:
    name = str(getattr(cfg.distributed.backend, "value", cfg.distributed.backend))
    if name == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if name == "nccl" and device.type != "cuda":
        raise MetarunError(
            f"distributed.backend=nccl needs CUDA but this run's device is {device.type}; use "
            "distributed.backend=gloo (or auto) on CPU, or device=cuda"
        )
    return name


def _check(cfg: Any, size: int, local_size: int, device: torch.device, backend: str) -> None:
    meta_batch = cfg.task.meta_batch
    if meta_batch % size:
        raise MetarunError(
            f"task.meta_batch={meta_batch} does not divide among {size} processes; set "
            f"task.meta_batch to a multiple of {size} (each process adapts meta_batch / {size} "
            "tasks per step)"
        )
    available = {"nccl": dist.is_nccl_available(), "gloo": dist.is_gloo_available()}
    if not available.get(backend, True):
        raise MetarunError(
            f"distributed.backend={backend} is not available in this torch build "
            f"({torch.__version__}); use distributed.backend=auto"
        )
    if device.type == "cuda" and torch.cuda.device_count() < local_size:
        raise MetarunError(
            f"{local_size} processes on this machine need {local_size} GPUs but "
            f"{torch.cuda.device_count()} are visible; start one process per GPU "
            "(torchrun --nproc_per_node=<GPUs>) or use device=cpu"
        )


@contextlib.contextmanager
def _native_stderr_held() -> Iterator[None]:
    """torch's C++ rendezvous logs its retries and failures straight to file descriptor 2, in
    many lines; hold them, and pass them on only when the rendezvous succeeds (a failure is told
    in one line)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        ok = False
        try:
            yield
            ok = True
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if ok:
                held.seek(0)
                sys.stderr.write(held.read().decode(errors="replace"))


def init_world(cfg: Any) -> World:
    """Join the run's other processes (when a launcher started several), or :data:`SINGLE`."""
    size = launched_size()
    if size <= 1:
        return SINGLE
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    local_size = _env_int("LOCAL_WORLD_SIZE", size)
    device = resolve_device(cfg.device.name)
    backend = _backend(cfg, device)
    _check(cfg, size, local_size, device, backend)
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    timeout = datetime.timedelta(seconds=cfg.distributed.timeout_s)
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    try:
        with _native_stderr_held():
            dist.init_process_group(backend, timeout=timeout)
            control = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
    except (RuntimeError, ValueError) as e:  # DistNetworkError / DistStoreError among them
        raise MetarunError(
            f"rank {rank} of {size} could not reach the others at {where} within "
            f"{cfg.distributed.timeout_s} s ({str(e).splitlines()[0][:160]}); start every "
            "process with the same MASTER_ADDR / MASTER_PORT (torchrun does), or raise "
            "distributed.timeout_s"
        ) from None
    global _joined
    _joined = True
    return World(rank, size, local_rank, local_size, backend, control)


def device_of(world: World, device: torch.device) -> torch.device:
    """The device this rank computes on: its own GPU (``LOCAL_RANK``) on CUDA."""
    if world.active and device.type == "cuda":
        return torch.device("cuda", world.local_rank)
    return device


@functools.cache
def _draws_parts(dataset_class: type) -> bool:
    """Whether a dataset class's ``sample`` takes ``part=`` (once per class, not per step)."""
    return "part" in inspect.signature(dataset_class.sample).parameters


def draw_share(dataset, world: World, total: int, shape, generator, device, **draw) -> Any:
    """This rank's share of the ``total``-task batch one process would draw from ``generator``
    (every rank draws the same random numbers and keeps its share; a dataset whose ``sample``
    takes no ``part`` is sampled whole and sliced); ``draw``: more options of ``sample``."""
    if not world.active:
        return dataset.sample("train", total, shape, generator, device, **draw)
    part = world.share(total)
    if _draws_parts(type(dataset)):
        return dataset.sample("train", total, shape, generator, device, part=part, **draw)
    whole = dataset.sample("train", total, shape, generator, device, **draw)
    return type(whole)(*(t[part] for t in whole))
