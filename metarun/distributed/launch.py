"""A data-parallel run's start and end: one run folder for all its processes, and one line when
a process loses the others.

Every process composes the same config, but Hydra's default run folder is a time stamp that
differs by a second between processes started a moment apart. Rank 0 alone claims the folder
(:func:`metarun.runfolder.claim`: new, or the run it resumes, locked) and tells the others
which; they write nothing into it, and remove the empty folder Hydra made for them.
"""

from __future__ import annotations

import contextlib
import os
import re
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
def lost_processes_as_error(world: World, run_dir: Path | None = None) -> Iterator[None]:
    """A process that lost the others (one was killed, or stopped on an error of its own)
    stops with one line instead of a backend traceback."""
    try:
        yield
    except RuntimeError as e:  # gloo reports a peer gone as a plain RuntimeError
        if not world.active or not (isinstance(e, dist.DistError) or _raised_by_a_collective(e)):
            raise
        reason = re.sub(r"^\[[^\]]*\]\s*", "", str(e).splitlines()[0]).split(". ")[0][:120]
        folder = run_dir or "<run folder>"
        raise MetarunError(
            f"rank {world.rank} of {world.size} lost the run's other processes ({reason}); the "
            "first one to stop says why; continue from the last checkpoint with the same "
            f"launcher and resume=true resume_dir={folder} (plus the run's overrides)"
        ) from None


def _raised_by_a_collective(e: BaseException) -> bool:
    """Whether ``e`` came out of ``torch.distributed`` itself (an exchange with the others)."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = tb.tb_frame.f_code.co_filename if tb is not None else ""
    return f"{os.sep}torch{os.sep}distributed{os.sep}" in where
