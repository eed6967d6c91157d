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

from rich.table import Table
from rich.text import Text

from metarun.atomic import atomic_write
from metarun.errors import print_line
from metarun.problems import MONITOR
from metarun.run_records import Run, find_runs
from metarun.series import members as series_members
from metarun.usage import tool_console

IGNORED = {"seed", "resume", "resume_dir", "hparams_search"}  # not part of a configuration


def _listed(runs: list[Run], with_status: bool) -> str:
    def one(run: Run) -> str:
        status, error = run.summary.get("status", "?"), run.summary.get("error", "")
        said = f"{status}: {error}" if with_status and error else status if with_status else error
        return f"{run.path} ({said})" if said else str(run.path)

    return ", ".join(one(run) for run in runs)


def left_out_lines(unreadable: list[Run], unfinished: list[Run], included: bool) -> list[str]:
    """One line for runs whose files cannot be read (always left out), one for runs that did
    not finish (failed, interrupted, still running): left out unless ``--include-failed``."""
    lines = []
    if unreadable:
        lines.append(f"left out, {len(unreadable)} unreadable: {_listed(unreadable, False)}")
    if unfinished:
        n = len(unfinished)
        lines.append(
            f"compared although they did not finish ({n}): {_listed(unfinished, True)}"
            if included
            else f"left out, {n} did not finish (--include-failed compares and plots them): "
            f"{_listed(unfinished, True)}"
        )
    return lines


#: The main test metric of each kind of problem, and whether higher is better.
MAIN_METRICS = tuple((f"test/{metric}", mode == "max") for metric, mode in MONITOR.values())
_NAMES = " or ".join(m for m, _ in MAIN_METRICS)


def by_metric(runs: list[Run]) -> dict[tuple[str, bool], list[Run]]:
    """The runs by their main test metric (classification: ``test/acc``, regression:
    ``test/mse``, RL: ``test/return``), so runs of two kinds are never ranked in one table; a
    run with none is left out."""
    kinds: dict[tuple[str, bool], list[Run]] = {}
    for run in runs:
        kind = next((m for m in MAIN_METRICS if m[0] in run.summary), None)
        if kind is not None:
            kinds.setdefault(kind, []).append(run)
    return {m: kinds[m] for m in MAIN_METRICS if m in kinds}


def group(runs: list[Run]) -> dict[tuple, list[Run]]:
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        key = tuple(sorted((k, v) for k, v in run.overrides.items() if k not in IGNORED))
        groups.setdefault(key, []).append(run)
    return groups


def differing_keys(groups: dict[tuple, list[Run]]) -> list[str]:
    """The overrides whose values differ between the configurations."""
    keys = sorted({k for key in groups for k, _ in key})
    return [k for k in keys if len({dict(g).get(k) for g in groups}) > 1]


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
    differing = differing_keys(groups)
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


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _fail(message: str) -> None:
    print_line(f"metarun-report: error: {message}")
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    from metarun.report_plot import plot  # matplotlib only when a report is drawn

    parser = argparse.ArgumentParser(prog="metarun-report", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="run folders, sweep folders or glob patterns")
    parser.add_argument("--out", default=".", help="folder for report.csv and report.png")
    parser.add_argument(
        "--include-failed",
        action="store_true",
        help="also compare and plot runs that failed or were interrupted (their curves up to "
        "where they stopped); by default they are listed in one line and left out",
    )
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
    console = tool_console()
    status = lambda run: run.summary.get("status")  # noqa: E731
    unreadable = [r for r in runs if status(r) == "unreadable"]
    unfinished = [r for r in runs if status(r) not in ("finished", "unreadable")]
    kept = {"finished"} | ({status(r) for r in unfinished} if args.include_failed else set())
    runs = [r for r in runs if status(r) in kept]
    for line in left_out_lines(unreadable, unfinished, args.include_failed):
        console.print(Text(line), soft_wrap=True)
    if not runs:
        hint = "" if args.include_failed or not unfinished else " (--include-failed compares them)"
        print(f"metarun-report: error: none of these runs finished{hint}", file=sys.stderr)
        sys.exit(1)
    kinds = by_metric(runs)
    lacking = [r for r in runs if not any(m in r.summary for m, _ in MAIN_METRICS)]
    if lacking:
        named = ", ".join(str(r.path) for r in lacking)
        console.print(Text(f"not ranked (no {_NAMES}): {named}"), soft_wrap=True)
    if not kinds and not (args.include_failed and unfinished):
        _fail(f"none of these runs has a test metric ({_NAMES}) to compare")
    files = {}  # name -> CSV text: report.csv for the first kind, report-<metric>.csv after it
    for n, ((metric, higher), members) in enumerate(kinds.items()):
        groups = group(members)
        columns, rows = table_rows(groups, metric, higher)
        differing = columns[: columns.index("runs")]
        title = f"{len(members)} runs, {len(groups)} configurations, sorted by {metric}"
        table = Table(title=title)
        for column in columns:
            table.add_column(column, justify="left" if column in differing else "right")
        for row in rows:
            table.add_row(*(_fmt(v) for v in row))
        console.print(table)
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow(columns)
        writer.writerows(rows)
        files["report.csv" if n == 0 else f"report-{metric.split('/')[1]}.csv"] = text.getvalue()
    every = group(runs)  # what was compared, and runs that stopped before their test
    png = io.BytesIO()
    plot(every, differing_keys(every), png)
    try:  # each file is replaced whole or not at all (a full disk keeps the earlier report)
        for name, content in files.items():
            atomic_write(out / name, lambda f, c=content: f.write(c.encode()))
        atomic_write(out / "report.png", lambda f: f.write(png.getvalue()))
    except OSError as e:
        _fail(f"could not write the report in {out} ({e.strerror or e}); free space there")
    print(f"wrote {', '.join(str(out / name) for name in [*files, 'report.png'])}")


if __name__ == "__main__":
    main()
