"""One job: claim the run folder, build the experiment from config, train, validate, test."""

from __future__ import annotations

import contextlib
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import DictConfig
from rich.console import Console

from metarun.errors import Interrupted
from metarun.experiment import build_experiment
from metarun.logging.local import atomic_write_json
from metarun.logging.setup import build_logger
from metarun.memory import out_of_memory_as_error
from metarun.runfolder import claim
from metarun.trainer import Trainer


def _failure_summary(run_dir: Path, error: BaseException) -> None:
    """``summary.json`` of a new run that ended before its logger existed (bad config or data)."""
    if isinstance(error, (KeyboardInterrupt, Interrupted)):
        summary = {"status": "interrupted"}
    else:
        summary = {"status": "failed", "error": str(error) or type(error).__name__}
    with contextlib.suppress(OSError):
        atomic_write_json(run_dir / "summary.json", summary)


def run(cfg: DictConfig) -> float:
    """Meta-train, validate and meta-test as ``cfg`` says; return the best validation objective.

    The run writes only into a new folder, or the one it resumes (locked while it runs). A resume
    that is refused (or fails before training starts) leaves that folder byte for byte as it
    was. Otherwise, however it ends, the folder's ``summary.json`` says how (finished, failed
    with its ``error``, or interrupted) and the W&B run is closed with the same verdict."""
    folder = claim(cfg, Path(HydraConfig.get().runtime.output_dir))
    try:
        return _run_in(cfg, folder.run_dir, folder.resuming)
    finally:
        folder.release()


def _run_in(cfg: DictConfig, run_dir: Path, resuming: bool) -> float:
    console = Console(log_path=False)
    try:
        if cfg.logger is not None:  # before the dataset is built
            get_class(cfg.logger._target_).check_config(cfg.logger)
        with out_of_memory_as_error():
            exp = build_experiment(cfg, run_dir=run_dir, resuming=resuming)
            trainer = Trainer(exp)  # restores a resumed run's state (read from the checkpoints)
        resume_step = exp.resume_from["step"] if exp.resume_from else None
        series = exp.learner.metric_series
        logger = build_logger(cfg, exp.config, exp.run_dir, console, series, resume_step)
    except BaseException as e:
        if not resuming:  # a refused resume leaves its folder as it was
            _failure_summary(run_dir, e)
        raise
    try:
        console.print(
            f"run dir: {exp.run_dir}\ndevice: {exp.device}  algorithm: "
            f"{exp.learner.__class__.__name__}({exp.learner.extra_repr()})",
            soft_wrap=True,
        )
        if exp.initialised_from is not None:
            path, step = exp.initialised_from
            console.print(f"weights from: {path} (step {step})", soft_wrap=True)
        with out_of_memory_as_error():
            objective = trainer.fit(logger)
    except BaseException as e:
        interrupted = isinstance(e, (KeyboardInterrupt, Interrupted))
        try:
            if not interrupted:
                logger.summary({"error": str(e) or type(e).__name__})
            logger.close("interrupted" if interrupted else "failed")
        except Exception as close_error:  # e.g. the disk is full: keep the original error
            console.print(f"[yellow]warning:[/] could not close the run's logs ({close_error})")
        raise
    logger.close("finished")
    return objective
