"""Console output: progress with the latest metrics, validation lines, then a summary table.

In a terminal the progress is a rich bar filling one line, the latest metrics below it (wrapped
between values, never inside one, so it stays readable at 80 columns). Off a terminal (piped to
a file, nohup, a SLURM log) it is a plain line at most every ``progress_every_s`` seconds (step,
steps/s, elapsed, eta, latest metrics), so a long run's log shows it is alive; lines are never
wrapped mid-value."""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column, Table
from rich.text import Text

from metarun.logging.logger import Sink
from metarun.series import Series, is_member


class _RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} it/s" if speed else "-- it/s", style="progress.data.speed")


class _BarAndMetrics(Progress):
    """Rich's progress table, then the latest metrics (``metrics()``) packed into lines."""

    def __init__(
        self, *columns, console: Console, metrics: Callable[[], list[str]], **kwargs
    ) -> None:
        self._metrics, self._console = metrics, console  # set before Progress first renders
        super().__init__(*columns, console=console, **kwargs)

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        lines = packed(self._metrics(), self._console.width)
        if lines:
            yield Text("\n".join(lines), no_wrap=True, overflow="ellipsis")


def packed(items: list[str], width: int) -> list[str]:
    """``items`` joined by two spaces into lines of at most ``width`` characters, each item
    whole on one line (one wider than a line is cut by the console with an ellipsis)."""
    lines: list[str] = []
    for item in items:
        if lines and len(lines[-1]) + 2 + len(item) <= width:
            lines[-1] += "  " + item
        else:
            lines.append(item)
    return lines


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ConsoleSink(Sink):
    """Shows step, steps/s, elapsed, ETA and the latest ``train/*`` and ``val/*`` values."""

    def __init__(
        self,
        console: Console | None = None,
        series: tuple[Series, ...] = (),
        progress_every_s: float = 30.0,
    ) -> None:
        self.console = console or Console(log_path=False)
        self.plain = not self.console.is_terminal  # piped: plain lines instead of a live bar
        self.progress_every_s = progress_every_s
        self._total, self._first, self._started, self._last_line = 0, None, 0.0, 0.0
        self.series = series  # their members stay in the files and W&B, out of the one-line view
        self._latest: dict[str, float] = {}
        fixed = lambda: Column(no_wrap=True)  # noqa: E731
        self._progress = _BarAndMetrics(
            TextColumn("[bold]meta-train", table_column=fixed()),
            BarColumn(bar_width=None),  # whatever the other columns leave of the line
            MofNCompleteColumn(table_column=fixed()),
            _RateColumn(table_column=fixed()),
            TimeElapsedColumn(table_column=fixed()),
            TextColumn("eta", table_column=fixed()),
            TimeRemainingColumn(table_column=fixed()),
            metrics=self._shown,
            console=self.console,
            transient=False,
            # Off a terminal (CI logs, sweeps) a live bar is noise; validation lines remain.
            disable=not self.console.is_terminal,
        )
        self._task = None

    def _shown(self) -> list[str]:
        return [f"{k} {_fmt(v)}" for k, v in sorted(self._latest.items())]

    def start(self, total_steps: int) -> None:
        self._task = self._progress.add_task("train", total=total_steps)
        self._progress.start()
        self._total, self._started = total_steps, time.monotonic()
        self._last_line = self._started

    def advance(self, step: int) -> None:
        self._progress.update(self._task, completed=step)
        if self._first is None:  # the step a (resumed) run starts from
            self._first = step
        every = self.progress_every_s
        if not self.plain or every <= 0 or step >= self._total:
            return
        now = time.monotonic()
        if now - self._last_line >= every:
            self._last_line = now
            self._say(self._progress_line(step, now))

    def _progress_line(self, step: int, now: float) -> str:
        elapsed = now - self._started
        rate = (step - self._first) / elapsed if elapsed > 0 else 0.0
        eta = _clock((self._total - step) / rate) if rate > 0 else "--"
        latest = "  ".join(self._shown())
        share = 100 * step / self._total if self._total else 100.0
        return (
            f"step {step}/{self._total} ({share:.0f}%)  {rate:.3g} steps/s  elapsed "
            f"{_clock(elapsed)}  eta {eta}  {latest}"
        ).rstrip()

    def _say(self, text: str) -> None:
        """One line: logged with its time in a terminal; plain, unwrapped, timed when piped."""
        if self.plain:
            line = f"[{time.strftime('%H:%M:%S')}] {text}"
            self.console.print(line, soft_wrap=True, markup=False, highlight=False)
        else:
            self.console.log(text)

    def log(self, metrics: dict[str, float], step: int) -> None:
        # The bar shows the headline values; series members and CI keys stay in the files.
        shown = {
            k: v
            for k, v in metrics.items()
            if k.split("/")[0] in ("train", "val")
            and not k.endswith("_ci95")
            and not is_member(k, self.series)
        }
        self._latest.update(shown)  # the bar's second line shows them at its next refresh
        if any(k.startswith("val/") for k in metrics):
            val = "  ".join(
                f"{k} {_fmt(v)} ± {_fmt(metrics[k + '_ci95'])}"
                if k + "_ci95" in metrics
                else f"{k} {_fmt(v)}"
                for k, v in shown.items()
                if k.startswith("val/") and k != "val/loss"
            )
            train = "  ".join(
                f"{k} {_fmt(v)}" for k, v in self._latest.items() if k.startswith("train/")
            )
            self._say(f"step {step}: {train}  {val}")

    def summary(self, summary: dict[str, Any]) -> None:
        self._progress.stop()
        table = Table(title="metarun summary", show_header=True, header_style="bold")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in summary.items():
            if key.endswith("_ci95"):
                continue
            ci = summary.get(f"{key}_ci95")
            shown = f"{_fmt(value)} ± {_fmt(ci)}" if ci is not None else _fmt(value)
            table.add_row(Text(key), Text(shown))  # plain text: an error may hold "[...]"
        self.console.print(table)

    def close(self, status: str) -> None:
        self._progress.stop()
        if status != "finished":
            self.console.print(f"[bold red]run {status}[/]")
