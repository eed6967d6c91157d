"""Build the logging fan-out a run's config asks for."""

from __future__ import annotations

from pathlib import Path

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from metarun.logging.console import ConsoleSink
from metarun.logging.local import LocalFilesSink
from metarun.logging.logger import Logger
from metarun.series import Series


def build_logger(
    cfg: DictConfig,
    config: dict,
    run_dir: Path,
    console: Console,
    series: tuple[Series, ...] = (),
    resume_step: int | None = None,
) -> Logger:
    """The console and the run folder's files always; ``cfg.logger`` (W&B, or any sink with a
    ``_target_``, :class:`~metarun.logging.logger.Sink`) when set."""
    console_sink = ConsoleSink(console, series, cfg.progress_every_s)
    sinks = [console_sink, LocalFilesSink(run_dir, resume_step)]
    if cfg.logger is not None:
        extra = dict(run_dir=run_dir, run_config=config, tags=list(cfg.tags), console=console)
        options = OmegaConf.to_container(cfg.logger, resolve=True, enum_to_str=True)
        # Built here, not by instantiate: it would try to build the run config's nested targets.
        sink = get_class(options.pop("_target_"))
        sinks.append(sink(**options, **extra, series=series))
    return Logger(sinks)
