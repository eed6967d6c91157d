"""``debug=profile``: :mod:`torch.profiler` over a few training steps of a real run.

The trainer calls the step function this yields once per training step; the profiler's schedule
leaves out ``wait`` steps, warms up over ``warmup`` and records ``active`` steps. The recording
is written to ``<run>/profile/``: ``trace.json`` (a Chrome trace: open it in
https://ui.perfetto.dev or chrome://tracing) and ``ops.txt`` (operators by their own time, CUDA
time on a GPU). Only the first process of a data-parallel run profiles (the others write
nothing into the run folder, as always).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterator

import torch

from metarun.atomic import atomic_write
from metarun.errors import MetarunError, say

ROWS = 30  # operators in ops.txt


def _written(prof, folder: Path, on_gpu: bool) -> tuple[Path, Path]:
    folder.mkdir(exist_ok=True)
    trace, ops = folder / "trace.json", folder / "ops.txt"
    partial = folder / ".trace.json.partial"
    prof.export_chrome_trace(str(partial))
    os.replace(partial, trace)  # a trace is whole or absent
    sort = "self_cuda_time_total" if on_gpu else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=ROWS)
    atomic_write(ops, lambda f: f.write(table.encode()))
    return trace, ops


def _window(cfg) -> tuple[int, int]:
    """The first and last training step (from 1) the profiler records."""
    return cfg.wait + cfg.warmup + 1, cfg.wait + cfg.warmup + cfg.active


def check(cfg, steps: int) -> None:
    """Refuse a ``profile`` node whose recorded steps lie beyond the run's ``steps`` (left)."""
    if cfg is None:
        return
    first, last = _window(cfg)
    if steps < first:
        raise MetarunError(
            f"profile records training steps {first}-{last} but the run has {steps} to train; "
            "raise train.steps or lower profile.wait / profile.warmup"
        )


@contextlib.contextmanager
def profiled(cfg, run_dir: Path, device: torch.device, steps_left: int) -> Iterator[Callable]:
    """Yield the per-step function: the profiler's ``step`` when ``cfg`` (the run's
    ``profile`` node) is set, else a no-op."""
    if cfg is None:
        yield lambda: None
        return
    check(cfg, steps_left)
    first, last = _window(cfg)
    from torch.profiler import ProfilerActivity, profile, schedule

    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    done: list[tuple[Path, Path]] = []

    def ready(prof) -> None:
        done.append(_written(prof, run_dir / "profile", on_gpu))

    plan = schedule(wait=cfg.wait, warmup=cfg.warmup, active=cfg.active, repeat=1)
    with profile(
        activities=activities,
        schedule=plan,
        on_trace_ready=ready,
        record_shapes=cfg.record_shapes,
        profile_memory=cfg.memory,
    ) as prof:
        yield prof.step
    if done:
        trace, ops = done[0]
        recorded = min(last, steps_left) - first + 1
        say(
            f"profile: {recorded} training steps recorded in {trace} (open it in "
            f"https://ui.perfetto.dev or chrome://tracing); operators by time in {ops}"
        )
