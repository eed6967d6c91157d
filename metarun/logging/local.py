"""Local files every run writes: ``metrics.jsonl`` (line per logged step) and ``summary.json``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from metarun.atomic import atomic_write
from metarun.errors import MetarunError
from metarun.logging.logger import Sink


def _jsonable(value: Any) -> Any:
    # JSON has no NaN/inf; write them as strings so the file stays valid for any reader.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def atomic_write_json(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps({k: _jsonable(v) for k, v in data.items()}, indent=2) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def decode_value(value: Any) -> Any:
    """The inverse of :func:`_jsonable`: ``"nan"``, ``"inf"``, ``"-inf"`` back to floats."""
    return NON_FINITE.get(value, value) if isinstance(value, str) else value


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (none when it does not exist).

    Every line must be a JSON object with an integer ``step``; only the last line may be cut
    short (a run killed while appending), and it is dropped. Anything else is a one-line error
    naming the file and the line."""
    if not path.is_file():
        return []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise MetarunError(f"{path} cannot be read ({getattr(e, 'strerror', None) or e})") from None
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # a line cut short by a kill
                break
            record = None
        if isinstance(record, dict):  # NaN and inf were written as strings (JSON has none)
            record = {k: decode_value(v) for k, v in record.items()}
        if not isinstance(record, dict) or type(record.get("step")) is not int:
            raise MetarunError(
                f"{path} line {number} is not a metarun record (a JSON object with an integer "
                "step); it was edited or written by another tool: restore the file or remove "
                "that line"
            )
        records.append(record)
    return records


class LocalFilesSink(Sink):
    """Appends ``{"step": s, ...metrics}`` lines, flushed as written, and writes the summary."""

    def __init__(self, run_dir: Path, resume_step: int | None = None) -> None:
        self.metrics_path = run_dir / "metrics.jsonl"
        self.summary_path = run_dir / "summary.json"
        if resume_step is not None:
            self._keep_until(resume_step)
        self._file = open(self.metrics_path, "a", buffering=1)  # line-buffered
        self._summary: dict[str, Any] = {}

    def _keep_until(self, step: int) -> None:
        """Resuming from ``step``: drop what was logged after it (and any test result), so the
        file ends up as an uninterrupted run's would."""
        if not self.metrics_path.is_file():
            return
        kept = [
            json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n"
            for record in read_metrics(self.metrics_path)
            if record["step"] <= step and not any(k.startswith("test/") for k in record)
        ]
        atomic_write(self.metrics_path, lambda f: f.write("".join(kept).encode()))

    def log(self, metrics: dict[str, float], step: int) -> None:
        record = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        try:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        except OSError as e:  # a reader skips a cut last line; resuming drops it
            raise MetarunError(
                f"could not append to {self.metrics_path} ({e.strerror or e}); free space "
                "there and resume the run from its last checkpoint"
            ) from e

    def summary(self, summary: dict[str, Any]) -> None:
        self._summary.update(summary)
        atomic_write_json(self.summary_path, self._summary)

    def close(self, status: str) -> None:
        self._file.close()
        self._summary["status"] = status
        atomic_write_json(self.summary_path, self._summary)
