"""Build the logging fan-out a run's config asks for."""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from rich.console import Console

from metarun.logging.console import ConsoleSink
from metarun.logging.local import LocalFilesSink
from metarun.logging.logger import Logger
from metarun.logging.wandb_sink import WandbSink


def _wandb_names(cfg: DictConfig) -> tuple[str | None, str | None]:
    """W&B group (one per sweep) and run name (the job's overrides) unless set in config."""
    hydra_cfg = HydraConfig.get()
    group, name = cfg.logger.group, cfg.logger.name
    if group is None and hydra_cfg.mode == RunMode.MULTIRUN:
        group = "sweep-" + "_".join(Path(hydra_cfg.sweep.dir).parts[-2:])
    if name is None:  # the overrides as typed, e.g. "algo=fomaml,seed=1"
        name = ",".join(hydra_cfg.overrides.task) or None
    return group, name


def build_logger(
    cfg: DictConfig, config: dict, run_dir: Path, console: Console, resume_step: int | None = None
) -> Logger:
    sinks = [ConsoleSink(console), LocalFilesSink(run_dir, resume_step)]
    if cfg.logger is not None:
        group, name = _wandb_names(cfg)
        sinks.append(
            WandbSink(
                run_dir=run_dir,
                config=config,
                project=cfg.logger.project,
                entity=cfg.logger.entity,
                mode=str(cfg.logger.mode.value),
                group=group,
                name=name,
                tags=list(cfg.tags),
                notes=cfg.logger.notes,
                console=console,
            )
        )
    return Logger(sinks)
