"""``metarun``: Hydra entry point. Thin on purpose: compose, then hand the config to ``run``.

User errors end as one line on stderr and exit code 2 (``HYDRA_FULL_ERROR=1`` shows the
traceback instead); internal bugs keep their traceback. In a multirun a failing job prints its
line, writes ``status: failed`` to its ``summary.json`` and lets the other jobs run; the sweep
then exits non-zero.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException, InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from metarun.errors import Interrupted, MetarunError, print_line
from metarun.schemas import close_names, register_configs

# OSErrors that the machine or the user's paths cause, never a bug in metarun.
ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}
_TRACEBACK_ENV = "METARUN_TRACEBACK"  # the user's HYDRA_FULL_ERROR=1, seen by sweep jobs too


def config_dir() -> str:
    """Configs ship inside the wheel (``metarun/configs``); a source checkout has ``configs/``."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise RuntimeError(f"metarun's configs are missing (looked in {here}/configs and ../configs)")


register_configs()


def _want_traceback() -> bool:
    return os.environ.get(_TRACEBACK_ENV) == "1"


_job_started = False  # False while Hydra itself prepares the job (run folder, .hydra/, logs)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def _main(cfg: DictConfig) -> float:
    from metarun.run import run  # heavy imports (torch, wandb) after Hydra handled --help etc.

    global _job_started
    _job_started = True
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        return run(cfg)
    except Interrupted as e:
        if int(os.environ.get("RANK", "0") or 0) == 0:  # a data-parallel run's rank 0 says it
            print_line(f"metarun: {e}")
        if multirun:  # the sweep stops too: the user asked the whole process to stop
            raise KeyboardInterrupt from None
        sys.exit(128 + e.signum)
    except MetarunError as e:
        job = f"job {HydraConfig.get().job.num}: " if multirun else ""
        print_line(f"metarun: error: {job}{e}")
        if multirun:
            e.job = HydraConfig.get().job.num  # Hydra records the job as failed, runs the others
            raise
        if _want_traceback():
            raise
        sys.exit(2)


def _close_keys(error: OmegaConfBaseException) -> str:
    """``; did you mean ...?`` for a misspelt key of a structured config, else ``""``."""
    key, schema = getattr(error, "key", None), getattr(error, "object_type", None)
    if not isinstance(key, str) or not dataclasses.is_dataclass(schema):
        return ""
    return close_names(key, schema)


def _one_line(e: BaseException) -> str | None:
    """The one-line message for an error the user caused, or None for a bug."""
    if isinstance(e, MetarunError):
        return str(e)
    if isinstance(e, InstantiationException) and not isinstance(
        e.__cause__, OmegaConfBaseException
    ):
        return None  # a constructor failed: a bug (user errors arrive unwrapped as MetarunError)
    if isinstance(e, (CompactHydraException, OmegaConfBaseException)):
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        cause = e.__cause__ if isinstance(e, CompactHydraException) else e
        if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
            first = str(cause).splitlines()[0]
            hint = (
                _close_keys(cause)
                if isinstance(cause, (ConfigAttributeError, ConfigKeyError))
                else ""
            ) or "; every key and its current value: metarun --cfg job"
            return f"{cause.full_key}: {first}{hint}"
        if lines and lines[0].startswith("In '") and "Could not find" in lines[0]:
            # "In 'train': Could not find 'algo/mamll'" followed by the available options
            options = [line for line in lines[2:] if not line.startswith(("provider=", "Config"))]
            if lines[1:2] and lines[1].startswith("Available options"):
                return f"{lines[0].split(': ', 1)[1]}; valid options: {', '.join(options)}"
        if lines and lines[0].startswith("Error parsing override"):
            return (
                f"{lines[0]}: check quotes and brackets (values with special characters go in "
                "quotes: key='a(b)'); grammar: https://hydra.cc/docs/advanced/override_grammar/basic/"
            )
        return "; ".join(lines[:3]) + " (see metarun --help)"
    if not _job_started and not isinstance(e, OSError) and _raised_in_hydra(e):
        # Composing the user's overrides failed inside Hydra or OmegaConf, e.g. "Config group
        # override must be a string or a list. Got int" for logger=5
        return f"{str(e).splitlines()[0]} (check the overrides; see metarun --help)"
    if isinstance(e, OSError) and not _job_started:  # Hydra could not set the run folder up
        return (
            f"cannot create the run folder ({e.strerror}: {e.filename}); set hydra.run.dir "
            "(hydra.sweep.dir in a multirun) to a writable folder"
        )
    if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS:
        where = f" {e.filename}" if e.filename else ""
        return f"cannot write{where} ({e.strerror}); free space or choose a writable folder"
    return None


def _raised_in_hydra(e: BaseException) -> bool:
    """Whether ``e`` was raised inside Hydra or OmegaConf (composing the user's overrides)."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = tb.tb_frame.f_code.co_filename if tb is not None else ""
    return any(f"{os.sep}{pkg}{os.sep}" in where for pkg in ("hydra", "omegaconf"))


def main() -> None:
    """The ``metarun`` command (:func:`_command`), leaving a data-parallel run's process at once
    when it is done: at interpreter teardown gloo's worker threads can still hold tensors and
    abort the process ("terminate called without an active exception", pytorch/pytorch#190489)
    after a run that finished well, and the launcher would report that run as failed. The run's
    files, logs and process group are closed before this exit."""
    from metarun.distributed.world import joined

    try:
        _command()
    except SystemExit as e:
        if not joined():
            raise
        code = e.code
        if isinstance(code, str):
            print_line(code)
        _leave(1 if isinstance(code, str) else int(code or 0))
    except BaseException:
        if not joined():
            raise
        traceback.print_exc()
        _leave(1)
    if joined():
        _leave(0)


def _leave(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _command() -> None:
    """Run Hydra with its own error printing off, so that every user error is one line."""
    global _job_started
    _job_started = False
    original = os.environ.get("HYDRA_FULL_ERROR")
    user_traceback = original == "1"
    os.environ[_TRACEBACK_ENV] = "1" if user_traceback else "0"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing several lines
    try:
        _main()
    except BrokenPipeError:  # `metarun --help | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except Exception as e:
        message = _one_line(e)
        if message is None or user_traceback:
            raise
        job = getattr(e, "job", None)
        if job is not None:  # the sweep ran every job; the first failure reaches us here
            message = (
                f"sweep job {job} failed ({message}); the other jobs ran: each job's "
                "summary.json has its status (metarun-report <sweep folder> lists them)"
            )
        print_line(f"metarun: error: {message}")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        if original is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = original


if __name__ == "__main__":
    main()
