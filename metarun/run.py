"""One job: claim the run folder, build the experiment from config, train, validate, test."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import DictConfig
from rich.console import Console
from rich.markup import escape

from metarun.distributed.launch import claim_shared, lost_processes_as_error
from metarun.distributed.world import World, init_world, launched_size
from metarun.errors import Interrupted
from metarun.experiment import build_experiment, check_config
from metarun.logging.local import atomic_write_json
from metarun.logging.logger import Logger
from metarun.logging.setup import build_logger
from metarun.memory import out_of_memory_as_error
from metarun.runfolder import discard_new, in_sweep
from metarun.trainer import Trainer


def _failure_summary(run_dir: Path, error: BaseException) -> None:
    """``summary.json`` of a run that ended before its logger existed: a sweep job's verdict
    (bad config or data), or a run whose logs had begun (W&B refusing it)."""
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
    if launched_size() > 1:  # the values first, so that every process refuses a bad one alike
        check_config(cfg)  # (one process checks them after claiming: a failed job's summary)
    world = init_world(cfg)  # one process, or this one's rank among the launched ones
    try:
        with lost_processes_as_error(world):
            folder = claim_shared(world, cfg, Path(HydraConfig.get().runtime.output_dir))
            try:
                objective = _run_in(cfg, folder.run_dir, folder.resuming, world)
            finally:
                folder.release()
    except BaseException:
        world.close(orderly=False)
        raise
    world.close()
    return objective


def _run_in(cfg: DictConfig, run_dir: Path, resuming: bool, world: World) -> float:
    console = Console(log_path=False)
    built = False  # whether the run got as far as its logs (files, W&B) before it failed
    try:
        if cfg.logger is not None:  # before the dataset is built
            get_class(cfg.logger._target_).check_config(cfg.logger)
        with out_of_memory_as_error(), lost_processes_as_error(world, run_dir):
            exp = build_experiment(cfg, run_dir=run_dir, resuming=resuming, world=world)
            trainer = Trainer(exp)  # restores a resumed run's state (read from the checkpoints)
        resume_step = exp.resume_from["step"] if exp.resume_from else None
        series = exp.learner.metric_series
        built = True
        logger = (  # rank 0 logs for the run; the other processes log nothing
            build_logger(cfg, exp.config, exp.run_dir, console, series, resume_step)
            if world.is_main
            else Logger([])
        )
    except BaseException as e:
        if not resuming and world.is_main:  # a refused resume leaves its folder as it was
            # A refused run (a typo, data it cannot use) leaves no folder behind; a sweep's
            # folder keeps each job's verdict (metarun-report), as does a run whose logs began.
            if built or in_sweep():
                _failure_summary(run_dir, e)
            else:
                discard_new(run_dir)
        raise
    with trainer.catching_stop_signals():  # also while a failing run writes its summary
        try:
            if world.is_main:
                _print_start(console, exp)
            with out_of_memory_as_error(), lost_processes_as_error(world, run_dir):
                objective = trainer.fit(logger)
        except BaseException as e:
            interrupted = isinstance(e, (KeyboardInterrupt, Interrupted))
            try:
                if not interrupted:
                    logger.summary({"error": str(e) or type(e).__name__})
                logger.close("interrupted" if interrupted else "failed")
            except Exception as close_error:  # e.g. the disk is full: keep the original error
                note = escape(str(close_error))
                console.print(f"[yellow]warning:[/] could not close the run's logs ({note})")
            raise
        logger.close("finished")
    return objective


def _threads() -> str:
    n = torch.get_num_threads()
    return f"{n} thread{'s' if n > 1 else ''}"


def _print_start(console: Console, exp) -> None:
    """What the run is: its folder, device, algorithm, and (data-parallel) its processes."""
    console.print(
        f"run dir: {exp.run_dir}\ndevice: {exp.device} ({_threads()})  algorithm: "
        f"{exp.learner.__class__.__name__}({exp.learner.extra_repr()})",
        soft_wrap=True,
    )
    if exp.initialised_from is not None:
        path, step, what = exp.initialised_from
        console.print(f"weights from: {path} (step {step}): {what}", soft_wrap=True)
    world = exp.world
    if world.active:
        share = exp.cfg.task.meta_batch // world.size
        console.print(
            f"processes: {world.size} ({world.backend}), {share} tasks each per step",
            soft_wrap=True,
        )
