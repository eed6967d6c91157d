"""The report's figure: meta-train and meta-validation curves per configuration (mean over
seeds, ±1 std band) and the test metric of each learner-declared series."""

from __future__ import annotations

from metarun.problems import MONITOR
from metarun.report import _stats, series_keys
from metarun.run_records import Run

VAL_METRICS = tuple(f"val/{metric}" for metric, _ in MONITOR.values())

#: Curves with at most this many points are drawn with markers (one point is no line).
MARKERS_UP_TO = 20


def _label(key: tuple, differing: list[str], members: list[Run]) -> str:
    as_dict = dict(key)
    named = ", ".join(f"{k}={as_dict[k]}" for k in differing if k in as_dict)
    if not named:  # one configuration: its overrides, or its folder for a bare run
        named = ", ".join(f"{k}={v}" for k, v in key) or members[0].path.name
    runs = f"{len(members)} run{'s' if len(members) > 1 else ''}"
    stopped = sum(r.summary.get("status") != "finished" for r in members)  # --include-failed
    return f"{named} ({runs}{f', {stopped} unfinished' if stopped else ''})"


def plot(groups: dict[tuple, list[Run]], differing: list[str], path) -> None:
    """Curves of every configuration, saved as PNG to ``path`` (a file name or a binary file)."""
    import matplotlib.pyplot as plt

    fig = figure(groups, differing)
    fig.savefig(path, dpi=150, format="png")
    plt.close(fig)


def figure(groups: dict[tuple, list[Run]], differing: list[str]):
    """The report's figure: meta-train loss, a meta-validation panel per metric the runs log
    (accuracy, MSE and return apart), and a panel per metric series; short curves get markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logged = {k for runs in groups.values() for run in runs for row in run.rows for k in row}
    panels = [("train/loss", "meta-train loss")]
    if "train/return_post" in logged:  # RL: the adapted policies' return (the loss is TRPO's)
        panels.append(("train/return_post", "meta-train return after adaptation"))
    panels += [(k, f"meta-validation {k[4:]}") for k in VAL_METRICS if k in logged]
    series = list(series_keys(groups).items())
    width = len(panels) + len(series)
    fig, axes = plt.subplots(1, width, figsize=(5.5 * width, 4.2), constrained_layout=True)
    axes = list(axes) if width > 1 else [axes]
    for key, members in groups.items():
        label = _label(key, differing, members)
        for ax, (_, items) in zip(axes[len(panels) :], series):  # a test metric by index
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
            marker = "o" if len(steps) <= MARKERS_UP_TO else None
            (line,) = ax.plot(steps, mean, label=label, linewidth=1.8, marker=marker, ms=4)
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
    for ax, ((declared, metric), _) in zip(axes[len(panels) :], series):
        ax.set_title(f"test {metric} by {declared.axis}")
        ax.set_xlabel(declared.axis)
        ax.set_ylabel(f"test/{declared.pattern.format(metric=metric, i='<i>')}")
        ax.grid(alpha=0.3)
    axes[-1 if len(panels) == 1 else 1].legend(fontsize=8, loc="best")
    fig.suptitle("mean over seeds, band: ±1 std", fontsize=9)
    return fig
