"""A data-parallel run's start and end: one run folder for all its processes, and one line when
a process loses the others.

Every process composes the same config, but Hydra's default run folder is a time stamp that
differs by a second between processes started a moment apart. Rank 0 alone claims the folder
(:func:`metarun.runfolder.claim`: new, or the run it resumes, locked) and tells the others
which; they write nothing into it, and remove the empty folder Hydra made for them.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import torch.distributed as dist
from omegaconf import DictConfig

from metarun.distributed.world import World
from metarun.errors import MetarunError
from metarun.runfolder import Claim, claim, remove_if_empty


def claim_shared(world: World, cfg: DictConfig, job_dir: Path) -> Claim:
    """The run folder of every process: rank 0's claim (the others do not lock it)."""
    if not world.active:
        return claim(cfg, job_dir)
    if world.is_main:
        try:
            folder = claim(cfg, job_dir)
        except BaseException as e:  # the others stop too, with rank 0's reason
            world.broadcast((None, False, str(e) or type(e).__name__))
            raise
        world.broadcast((str(folder.run_dir), folder.resuming, None))
        return folder
    run_dir, resuming, error = world.broadcast(None)
    if error is not None:
        raise MetarunError(f"rank {world.rank}: stopped with rank 0 ({error})")
    if Path(run_dir) != job_dir:
        remove_if_empty(job_dir)  # Hydra's folder for this process, a second off rank 0's
    return Claim(Path(run_dir), resuming, None)


@contextlib.contextmanager
def lost_processes_as_error(world: World) -> Iterator[None]:
    """A process that lost the others (one was killed, or stopped on an error of its own)
    stops with one line instead of a backend traceback."""
    try:
        yield
    except dist.DistError as e:
        if not world.active:
            raise
        raise MetarunError(
            f"rank {world.rank} of {world.size} lost the run's other processes "
            f"({str(e).splitlines()[0][:160]}); the first process to stop says why; continue "
            "from the last checkpoint with resume=true resume_dir=<run folder>"
        ) from None
