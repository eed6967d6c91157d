"""The fan-out every run logs through; each sink sees the same keys, values and steps."""

from __future__ import annotations

from typing import Any


class Sink:
    """A destination for metrics. Methods are no-ops unless a sink needs them.

    A sink chosen with ``logger=<name>`` is built from ``configs/logger/<name>.yaml`` (its
    ``_target_`` and options) with the keyword arguments ``run_dir``, ``run_config`` (the resolved
    run config), ``tags``, ``console`` and ``series`` (the learner's metric series) added."""

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Refuse, in one line, options this sink would only reject after the data is built."""

    def start(self, total_steps: int) -> None:
        pass

    def advance(self, step: int) -> None:
        pass

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def summary(self, summary: dict[str, Any]) -> None:
        pass

    def close(self, status: str) -> None:
        """``status`` is ``finished``, ``failed`` or ``interrupted``."""


class Logger:
    """Sends every call to all sinks, in order; closing always reaches every sink."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks

    def start(self, total_steps: int) -> None:
        for sink in self.sinks:
            sink.start(total_steps)

    def advance(self, step: int) -> None:
        for sink in self.sinks:
            sink.advance(step)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for sink in self.sinks:
            sink.log(metrics, step)

    def summary(self, summary: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.summary(summary)

    def close(self, status: str) -> None:
        errors = []
        for sink in self.sinks:
            try:
                sink.close(status)
            except Exception as e:  # one broken sink must not keep the others open
                errors.append(e)
        if errors:
            raise errors[0]
