"""Run folders: a run writes only into a folder that is new, or that it resumes.

Two guards keep a finished run safe from a later command:

- :class:`RunFolderGuard`, a Hydra callback, refuses ``hydra.run.dir`` (or ``hydra.sweep.dir``)
  naming a folder that already holds a run (or a sweep) *before* Hydra creates or writes anything.
- :func:`claim` runs first thing in a job: it locks the folder for the job's lifetime (an
  ``flock`` on the folder itself, so nothing is added to it and a SIGKILL leaves no stale lock),
  checks again under the lock (two processes started in the same second) and writes ``.hydra/``
  (Hydra's own ``output_subdir`` is off, so that nothing is written before these checks).

A default, time-stamped folder that another job took in the same second gets a ``-2``, ``-3``
... suffix instead of an error; a folder the user named is refused.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from metarun.atomic import atomic_write
from metarun.errors import MetarunError, print_line

try:
    import fcntl
except ImportError:  # Windows: no advisory locks on folders; the content checks still hold
    fcntl = None

# What a run writes: a folder holding any of these holds a run, and a new run never enters it.
RUN_FILES = (".hydra", "metrics.jsonl", "summary.json", "checkpoints")
SWEEP_FILE = "multirun.yaml"
HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")  # what .hydra/ holds


def holds_run(folder: Path) -> list[str]:
    """The run files already in ``folder`` (empty when it is new or holds none)."""
    return [name for name in RUN_FILES if (folder / name).exists()]


def _taken(folder: Path, found: list[str]) -> str:
    status = ""
    try:
        status = json.loads((folder / "summary.json").read_text()).get("status", "")
    except (OSError, ValueError, AttributeError):
        pass
    article = "an" if status[:1] in tuple("aeiou") else "a"  # an interrupted run
    what = f"{article} {status} run" if status else f"a run ({', '.join(found)})"
    return (
        f"{folder} already holds {what}; a new run never writes into it: choose a new "
        f"hydra.run.dir (hydra.sweep.dir for a sweep), or continue that run with resume=true "
        f"resume_dir={folder}"
    )


def _explicit(hydra_cfg: DictConfig, key: str) -> bool:
    """Whether the command line set ``key`` (a Hydra key such as ``hydra.run.dir``)."""
    return any(o.lstrip("+~").split("=", 1)[0] == key for o in hydra_cfg.overrides.hydra)


def _hydra_node() -> DictConfig | None:
    """This job's ``hydra`` node, or None (a test calling ``run`` directly)."""
    try:
        return HydraConfig.get()
    except ValueError:
        return None


class RunFolderGuard(Callback):
    """Hydra callback: refuse an occupied run or sweep folder before Hydra writes to it.

    Hydra swallows exceptions raised by callbacks (it only warns), so a refusal prints the
    one-line error itself and exits with code 2."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if int(os.environ.get("RANK", "0") or 0) > 0:
            return  # a data-parallel run's other processes: rank 0 checks and claims the folder
        if not str(config.hydra.run.dir).strip():
            _refuse("hydra.run.dir is empty; give the folder for the run (or leave it unset)")
        folder = Path(str(config.hydra.run.dir)).expanduser().absolute()
        resuming_here = config.get("resume") and _same(config.get("resume_dir"), folder)
        found = holds_run(folder)
        if found and not resuming_here and _explicit(config.hydra, "hydra.run.dir"):
            _refuse(_taken(folder, found))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not str(config.hydra.sweep.dir).strip():
            _refuse("hydra.sweep.dir is empty; give the folder for the sweep (or leave it unset)")
        folder = Path(str(config.hydra.sweep.dir)).expanduser().absolute()
        if (folder / SWEEP_FILE).exists() and _explicit(config.hydra, "hydra.sweep.dir"):
            _refuse(
                f"hydra.sweep.dir={folder} already holds a sweep ({SWEEP_FILE}); a new sweep "
                "never writes into it: choose a new folder"
            )


def _same(a: Any, b: Path) -> bool:
    return bool(a) and Path(str(a)).expanduser().absolute() == b


def _refuse(message: str) -> None:
    print_line(f"metarun: error: {message}")
    sys.exit(2)


@dataclass
class Claim:
    """A run folder this process holds (locked until :meth:`release`)."""

    run_dir: Path
    resuming: bool
    fd: int | None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


def _lock(folder: Path) -> int | None:
    """Hold an exclusive lock on ``folder`` itself; refuse when another process holds it."""
    if fcntl is None:
        return None
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise _InUse(folder) from None
        return None  # a file system without flock (some network mounts): no lock, checks hold
    return fd


class _InUse(MetarunError):
    def __init__(self, folder: Path) -> None:
        super().__init__(
            f"{folder} is in use by another running metarun process; wait for it to end (or stop "
            "it), or choose another folder"
        )


def claim(cfg: DictConfig, job_dir: Path) -> Claim:
    """The folder this job writes: ``resume_dir`` when resuming, else the (new) job folder."""
    resume_dir = _resume_dir(cfg, job_dir)
    if resume_dir is not None:
        fd = _lock(resume_dir)
        if job_dir != resume_dir:
            remove_if_empty(job_dir)  # Hydra made it; the resumed run lives elsewhere
        return Claim(resume_dir, True, fd)
    candidates = [job_dir]
    hydra_cfg = _hydra_node()
    named = hydra_cfg is None or any(
        _explicit(hydra_cfg, k) for k in ("hydra.run.dir", "hydra.sweep.dir")
    )
    if not named:
        candidates += [job_dir.with_name(f"{job_dir.name}-{i}") for i in range(2, 100)]
    for folder in candidates:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            fd = _lock(folder)
        except _InUse:
            if folder is candidates[-1]:
                raise
            continue
        found = holds_run(folder)
        if not found:
            write_hydra_files(folder, cfg)
            return Claim(folder, False, fd)
        if fd is not None:
            os.close(fd)
        if len(candidates) == 1:
            raise MetarunError(_taken(folder, found))
    raise MetarunError(f"{job_dir} and 98 numbered folders beside it hold runs; set hydra.run.dir")


def _resume_dir(cfg: DictConfig, job_dir: Path) -> Path | None:
    if cfg.resume:
        if not cfg.resume_dir:
            raise MetarunError(
                "resume=true needs the run folder to continue: resume_dir=<run folder>"
            )
        folder = Path(cfg.resume_dir).expanduser().absolute()
        last = folder / "checkpoints" / "last.pt"
        if not last.is_file():
            raise MetarunError(
                f"no checkpoint at {last}; check the path (resume_dir is the run folder)"
            )
        return folder
    # A submitit job requeued after preemption or a timeout (hydra-submitit-launcher's
    # checkpoint hook resubmits it with the same config, so into the same folder): continue.
    if os.environ.get("SUBMITIT_EXECUTOR") and (job_dir / "checkpoints" / "last.pt").is_file():
        return job_dir
    return None


def remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` if it is an empty folder; leave anything else as it is."""
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty, or gone: leave it


def discard_new(folder: Path) -> None:
    """Undo :func:`claim` of a new folder whose run was refused before it trained: remove the
    ``.hydra`` files written there, then the folder if that left it empty (anything else in it
    stays), and, for Hydra's default ``outputs/<date>/<time>``, the date and outputs folders if
    they are empty now."""
    hydra_files = folder / ".hydra"
    for name in HYDRA_FILES:
        (hydra_files / name).unlink(missing_ok=True)
    remove_if_empty(hydra_files)
    remove_if_empty(folder)
    hydra_cfg = _hydra_node()
    if hydra_cfg is not None and not _explicit(hydra_cfg, "hydra.run.dir"):
        remove_if_empty(folder.parent)
        remove_if_empty(folder.parent.parent)


def in_sweep() -> bool:
    """Whether this job is one of a multirun (whose folder records each job, failed or not)."""
    from hydra.types import RunMode

    hydra_cfg = _hydra_node()
    return hydra_cfg is not None and hydra_cfg.mode == RunMode.MULTIRUN


def write_hydra_files(folder: Path, cfg: DictConfig) -> None:
    """``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml``, as Hydra writes them."""
    hydra_cfg = _hydra_node()
    if hydra_cfg is None:
        return
    overrides = OmegaConf.create(list(hydra_cfg.overrides.task))
    texts = (
        OmegaConf.to_yaml(cfg),
        OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})),
        OmegaConf.to_yaml(overrides),
    )
    for name, text in zip(HYDRA_FILES, texts):
        atomic_write(folder / ".hydra" / name, lambda f, t=text: f.write(t.encode()))
