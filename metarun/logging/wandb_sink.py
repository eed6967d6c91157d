"""Weights & Biases sink. A W&B failure warns once; the run and its local files go on."""

from __future__ import annotations

import importlib.util
import netrc
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from rich.console import Console

from metarun.errors import MetarunError
from metarun.logging.logger import Sink
from metarun.series import Series, members


def wandb_credentials_present() -> bool:
    """True when W&B would authenticate without prompting (env key or ``wandb login``'s netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = os.environ.get("NETRC", os.path.join(os.path.expanduser("~"), ".netrc"))
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str) -> str:
    """``auto``: an explicit ``WANDB_MODE`` wins, else online with credentials, else offline."""
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled"):
        return env
    return "online" if wandb_credentials_present() else "offline"


# W&B refuses project and entity names holding these (its "invalid project name" error).
_FORBIDDEN = set("/\\#?%:")


def check_wandb_settings(logger_cfg: Any) -> None:
    """Problems W&B would only report after the dataset is built: no package, bad names."""
    if logger_cfg.mode == "disabled":  # a str enum: equal to its value
        return
    try:
        installed = importlib.util.find_spec("wandb") is not None
    except (ImportError, ValueError):  # a broken install, or a module set to None
        installed = False
    if not installed:
        raise MetarunError(
            "logger=wandb needs the wandb package, which is not installed: pip install wandb, "
            "or run with logger=none"
        )
    for key in ("project", "entity"):
        value = logger_cfg[key]
        if value is None and key == "entity":
            continue
        bad = sorted(_FORBIDDEN & set(value or "")) + ([" "] if " " in (value or "") else [])
        if not value or bad or len(value) > 128:
            why = f"contains {''.join(bad)!r}" if bad else "must have 1 to 128 characters"
            raise MetarunError(
                f"logger.{key}={value!r} is not a valid W&B {key} name ({why}); W&B names "
                "cannot hold spaces or any of / \\ # ? % :"
            )


def _refused(error: Exception) -> bool:
    """True when W&B answered and refused the entity or project (not a network failure)."""
    text = str(error).lower()
    return any(s in text for s in ("404", "403", "401", "not found", "permission denied"))


def run_names(group: str | None, name: str | None) -> tuple[str | None, str | None]:
    """W&B group (one per sweep) and run name (the job's overrides) unless set in config."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    if group is None and hydra_cfg.mode == RunMode.MULTIRUN:
        group = "sweep-" + "_".join(Path(hydra_cfg.sweep.dir).parts[-2:])
    if name is None:  # the overrides as typed, e.g. "algo=fomaml,seed=1"
        name = ",".join(hydra_cfg.overrides.task) or None
    return group, name


class WandbSink(Sink):
    """Logs metrics with the meta-iteration as step and puts final results in the run summary;
    each metric series of the test results also becomes a table and a line plot."""

    check_config = staticmethod(check_wandb_settings)

    def __init__(
        self,
        *,
        run_dir: Path,
        run_config: dict[str, Any],
        project: str,
        entity: str | None,
        mode: str,
        group: str | None,
        name: str | None,
        tags: list[str],
        notes: str | None,
        console: Console,
        series: tuple[Series, ...] = (),
    ) -> None:
        self.console, self.series = console, series
        self.mode = resolve_mode(mode)
        self.run = None
        if self.mode == "disabled":
            return
        import wandb  # imported here: `logger=none` runs never pay for it

        group, name = run_names(group, name)

        kwargs = dict(
            project=project,
            entity=entity,
            group=group,
            name=name,
            tags=tags or None,
            notes=notes,
            config=run_config,
            dir=str(run_dir),
            job_type="train",
            settings=wandb.Settings(console="off", silent=True),
        )
        try:
            self.run = wandb.init(mode=self.mode, **kwargs)
        except Exception as e:
            if self.mode != "online":
                self._warn(f"W&B could not start ({type(e).__name__}: {e}); logging locally only")
                return
            if _refused(e):
                raise MetarunError(
                    f"W&B refused project {project!r} / entity {entity!r} ("
                    f"{str(e).splitlines()[0][:200]}); fix logger.project / logger.entity, or "
                    "use logger.mode=offline"
                ) from e
            self._warn(f"W&B online init failed ({type(e).__name__}: {e}); continuing offline")
            self.mode = "offline"
            try:
                self.run = wandb.init(mode="offline", **kwargs)
            except Exception as e2:
                self._warn(f"W&B offline init failed too ({e2}); logging locally only")

    def _warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/] {message}")

    def _call(self, what: str, fn, *args, **kwargs) -> None:
        if self.run is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as e:
            self._warn(f"W&B {what} failed ({type(e).__name__}: {e}); logging locally only")
            self.run = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._call("log", lambda: self.run.log(metrics, step=step))

    def summary(self, summary: dict[str, Any]) -> None:
        self._call("summary", lambda: self.run.summary.update(summary))
        for (series, metric), keys in members(summary, self.series).items():
            rows = [[i, summary[k], summary.get(f"{k}_ci95")] for i, k in keys]
            self._call("table", self._log_table, series.axis, metric, rows)

    def _log_table(self, axis: str, metric: str, rows: list[list[float]]) -> None:
        """``test/<metric>_by_<axis>``: a table of a series and its line plot."""
        import wandb

        table = wandb.Table(columns=[axis, metric, f"{metric}_ci95"], data=rows)
        plot = wandb.plot.line(table, axis, metric, title=f"test {metric} by {axis}")
        key = f"test/{metric}_by_{axis}"
        self.run.log({key: table, f"{key}_plot": plot})

    def close(self, status: str) -> None:
        if self.run is None:
            return
        offline_dir = self.run.settings.sync_dir if self.mode == "offline" else None
        self._call("finish", lambda: self.run.finish(exit_code=0 if status == "finished" else 1))
        self.run = None
        if offline_dir:
            self.console.print(
                f"W&B offline run saved; upload it with: wandb sync {offline_dir}", soft_wrap=True
            )
