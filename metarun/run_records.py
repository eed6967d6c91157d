"""Reading run folders back (``metarun-report``): each file validated, never trusted blindly."""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from metarun.errors import MetarunError
from metarun.logging.local import decode_value, read_metrics
from metarun.series import declared_by


@dataclass
class Run:
    path: Path
    overrides: dict[str, str]
    summary: dict
    rows: list[dict] = field(repr=False)
    series: tuple = ()  # the metric series its learner declares (metarun.series)


def find_runs(patterns: list[str]) -> list[Run]:
    """Run folders at, or anywhere below, the given paths or glob patterns."""
    folders: list[Path] = []
    for pattern in patterns:
        for match in sorted(glob.glob(pattern)) or [pattern]:
            path = Path(match)
            if (path / "summary.json").is_file():
                folders.append(path)
            elif path.is_dir():
                folders += sorted(p.parent for p in path.rglob("summary.json"))
    return [_read_run(folder) for folder in dict.fromkeys(folders)]


def _read_run(folder: Path) -> Run:
    """A run folder's files, each validated; a run with a file that is not what metarun writes
    is reported as ``unreadable`` with the file and what is wrong (the others still compare)."""
    try:
        summary = json.loads((folder / "summary.json").read_text())
        if not isinstance(summary, dict):
            raise ValueError("not a JSON object")
        summary = {k: decode_value(v) for k, v in summary.items()}
    except (OSError, ValueError) as e:  # metarun's writes are atomic: not written by metarun
        return _unreadable(folder, f"{folder / 'summary.json'} is not a metarun summary ({e})")
    overrides_file = folder / ".hydra" / "overrides.yaml"
    try:
        items = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
        if not isinstance(items or [], list) or not all(isinstance(i, str) for i in items or []):
            raise ValueError("not a list of key=value strings")
    except (OSError, ValueError, yaml.YAMLError) as e:
        message = str(e).splitlines()[0]
        return _unreadable(folder, f"{overrides_file} is not a list of overrides ({message})")
    try:
        rows = read_metrics(folder / "metrics.jsonl")
    except MetarunError as e:
        return _unreadable(folder, str(e))
    overrides = dict(item.split("=", 1) for item in items or [] if "=" in item)
    return Run(folder, overrides, summary, rows, declared_by(_algo_target(folder)))


def _algo_target(folder: Path) -> str | None:
    """``algo._target_`` of the run's saved config, or None when it cannot be read."""
    try:
        config = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())
        return config["algo"]["_target_"]
    except (OSError, yaml.YAMLError, TypeError, KeyError):
        return None


def _unreadable(folder: Path, error: str) -> Run:
    return Run(folder, {}, {"status": "unreadable", "error": error}, [])
