"""``metarun-report``: compare finished runs from their folders, no W&B needed.

Reads each run's ``summary.json``, ``metrics.jsonl`` and ``.hydra/overrides.yaml``; runs that
differ only by ``seed`` form one configuration (mean over seeds, with their spread). Prints a
table sorted by the main test metric, writes it as CSV, and plots meta-train and
meta-validation curves (one line per configuration, a band over seeds) to a PNG.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import statistics
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from metarun.atomic import atomic_write
from metarun.errors import print_line
from metarun.run_records import Run, find_runs
from metarun.series import members as series_members

IGNORED = {"seed", "resume", "resume_dir", "hparams_search"}  # not part of a configuration


def unfinished_table(runs: list[Run]) -> Table:
    """Runs that did not finish: folder, status and the one-line error they ended with."""
    table = Table(title=f"{len(runs)} runs did not finish (left out of the comparison)")
    for column in ("run", "status", "error"):
        table.add_column(column)
    for run in runs:
        table.add_row(str(run.path), run.summary.get("status", "?"), run.summary.get("error", ""))
    return table


def main_metric(runs: list[Run]) -> tuple[str, bool]:
    """``test/acc`` (higher is better) when present, else ``test/mse`` (lower is better)."""
    keys = set().union(*(r.summary for r in runs))
    return ("test/acc", True) if "test/acc" in keys else ("test/mse", False)


def group(runs: list[Run]) -> dict[tuple, list[Run]]:
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        key = tuple(sorted((k, v) for k, v in run.overrides.items() if k not in IGNORED))
        groups.setdefault(key, []).append(run)
    return groups


def _stats(values: list) -> tuple[float, float]:
    """Mean and sample std of the numbers among ``values`` (None, NaN and non-numbers left
    out); an infinite value makes the mean infinite and the spread NaN, never an exception."""
    values = [float(v) for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    if not all(math.isfinite(v) for v in values):
        return sum(values) / len(values), float("nan")
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), spread


def series_keys(groups: dict[tuple, list[Run]]) -> dict[tuple, list[tuple[int, str]]]:
    """The ``test/`` keys of the metric series the runs' learners declare (MANN's accuracy by
    presentation, MAML's metrics by inner step), by series and then index."""
    found: dict[tuple, dict[int, str]] = {}
    for runs in groups.values():
        for run in runs:
            for key, items in series_members(run.summary, run.series).items():
                found.setdefault(key, {}).update(items)
    return {key: sorted(items.items()) for key, items in found.items()}


def table_rows(groups: dict[tuple, list[Run]], metric: str, higher: bool) -> tuple[list, list]:
    """Columns and rows: differing overrides, seeds, metric mean, seed spread, mean CI, then
    the per-presentation accuracies where runs report them (means over seeds)."""
    keys = sorted({k for key in groups for k, _ in key})
    differing = [k for k in keys if len({dict(g).get(k) for g in groups}) > 1]
    extra = [k for items in series_keys(groups).values() for _, k in items]
    columns = [*differing, "runs", metric, "seed std", "ci95 (mean)", "best_val step (mean)"]
    columns += [k.split("/", 1)[1] for k in extra]
    rows = []
    for key, members in groups.items():
        as_dict = dict(key)
        mean, spread = _stats([r.summary.get(metric) for r in members])
        ci, _ = _stats([r.summary.get(f"{metric}_ci95") for r in members])
        step, _ = _stats([r.summary.get("best_val/step") for r in members])
        more = [_stats([r.summary.get(k) for r in members])[0] for k in extra]
        rows.append(
            [*(as_dict.get(k, "") for k in differing), len(members), mean, spread, ci, step, *more]
        )
    m = len(differing) + 1
    rows.sort(key=lambda r: (math.isnan(r[m]), -r[m] if higher else r[m]))
    return columns, rows


def _label(key: tuple, differing: list[str]) -> str:
    as_dict = dict(key)
    return ", ".join(f"{k}={as_dict[k]}" for k in differing if k in as_dict) or "all runs"


def plot(groups: dict[tuple, list[Run]], differing: list[str], path) -> None:
    """Curves of every configuration, saved as PNG to ``path`` (a file name or a binary file)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sample = next(iter(groups.values()))[0].rows
    val_key = "val/acc" if any("val/acc" in r for r in sample) else "val/mse"
    panels = [("train/loss", "meta-train loss"), (val_key, f"meta-validation {val_key[4:]}")]
    series = list(series_keys(groups).items())
    fig, axes = plt.subplots(
        1, 2 + len(series), figsize=(5.5 * (2 + len(series)), 4.2), constrained_layout=True
    )
    for key, members in groups.items():
        label = _label(key, differing)
        for ax, (_, items) in zip(axes[2:], series):  # a test metric against the series index
            ys = [_stats([r.summary.get(k) for r in members])[0] for _, k in items]
            ax.plot([i for i, _ in items], ys, marker="o", label=label, linewidth=1.8)
        for ax, (metric, _) in zip(axes, panels):
            curves = [{r["step"]: r[metric] for r in run.rows if metric in r} for run in members]
            steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
            if not steps:
                continue
            stats = [_stats([c[s] for c in curves]) for s in steps]
            mean = [m for m, _ in stats]
            spread = [sd for _, sd in stats]
            (line,) = ax.plot(steps, mean, label=f"{label} (n={len(members)})", linewidth=1.8)
            ax.fill_between(
                steps,
                [m - s for m, s in zip(mean, spread)],
                [m + s for m, s in zip(mean, spread)],
                color=line.get_color(),
                alpha=0.2,
                linewidth=0,
            )
    for ax, (metric, title) in zip(axes, panels):
        ax.set_title(title)
        ax.set_xlabel("meta-iteration")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    for ax, ((declared, metric), _) in zip(axes[2:], series):
        ax.set_title(f"test {metric} by {declared.axis}")
        ax.set_xlabel(declared.axis)
        ax.set_ylabel(f"test/{declared.pattern.format(metric=metric, i='<i>')}")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="best")
    fig.suptitle("mean over seeds, band: ±1 std", fontsize=9)
    fig.savefig(path, dpi=150, format="png")
    plt.close(fig)


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _fail(message: str) -> None:
    print_line(f"metarun-report: error: {message}")
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="metarun-report", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="run folders, sweep folders or glob patterns")
    parser.add_argument("--out", default=".", help="folder for report.csv and report.png")
    args = parser.parse_args(argv)
    out = Path(args.out).expanduser()
    try:  # before any work: a bad --out never costs the report
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _fail(f"--out {out}: cannot create that folder ({e.strerror or e}); choose another")
    if not os.access(out, os.W_OK):
        _fail(f"--out {out} is not writable; choose another folder")
    runs = find_runs(args.paths)
    if not runs:
        print(
            f"metarun-report: error: no run folders (with summary.json) under {args.paths}; "
            "pass run or sweep folders, e.g. outputs/multirun/2026-11-27/10-00-00",
            file=sys.stderr,
        )
        sys.exit(2)
    # Piped output (CI logs, files) gets a wide table instead of Rich's 80-column default.
    console = Console(width=None if sys.stdout.isatty() else 220)
    unfinished = [r for r in runs if r.summary.get("status") != "finished"]
    runs = [r for r in runs if r.summary.get("status") == "finished"]
    if unfinished:
        console.print(unfinished_table(unfinished))
    if not runs:
        print("metarun-report: error: none of these runs finished", file=sys.stderr)
        sys.exit(1)
    metric, higher = main_metric(runs)
    groups = group(runs)
    columns, rows = table_rows(groups, metric, higher)
    differing = columns[: columns.index("runs")]
    table = Table(title=f"{len(runs)} runs, {len(groups)} configurations, sorted by {metric}")
    for column in columns:
        table.add_column(column, justify="left" if column in differing else "right")
    for row in rows:
        table.add_row(*(_fmt(v) for v in row))
    console.print(table)
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(columns)
    writer.writerows(rows)
    png = io.BytesIO()
    plot(groups, differing, png)
    try:  # each file is replaced whole or not at all (a full disk keeps the earlier report)
        atomic_write(out / "report.csv", lambda f: f.write(text.getvalue().encode()))
        atomic_write(out / "report.png", lambda f: f.write(png.getvalue()))
    except OSError as e:
        _fail(f"could not write the report in {out} ({e.strerror or e}); free space there")
    print(f"wrote {out / 'report.csv'} and {out / 'report.png'}")


if __name__ == "__main__":
    main()
