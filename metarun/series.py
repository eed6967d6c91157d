"""Metric series: families of keys indexed by an integer, declared by the learner that logs them.

MANN reports accuracy at the i-th presentation of a class (``acc_inst<i>``), MAML the query
metrics after i inner steps (``<metric>_step<i>``). A learner declares its families in
:attr:`MetaLearner.metric_series <metarun.algorithms.base.MetaLearner.metric_series>`; the console
leaves their members out of its one-line view, the W&B sink adds a table and line plot per family
to the run, and the report adds their columns and a panel each. None of those names a learner.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Series:
    """Keys ``pattern`` with ``{metric}`` (a metric name) and ``{i}`` (an integer); ``axis``
    names what ``i`` counts (a table column, a plot's x label)."""

    pattern: str
    axis: str

    @functools.cached_property
    def _regex(self) -> re.Pattern:
        regex = re.escape(self.pattern).replace(r"\{metric\}", r"(?P<metric>[A-Za-z]\w*?)")
        return re.compile(regex.replace(r"\{i\}", r"(?P<i>\d+)"))

    def match(self, key: str) -> tuple[str, int] | None:
        """``(metric, i)`` when ``key`` (without its ``split/`` prefix) is a member."""
        found = self._regex.fullmatch(key)
        return (found["metric"], int(found["i"])) if found else None


def members(keys, declared: tuple[Series, ...], split: str = "test") -> dict[tuple, list]:
    """``{(series, metric): [(i, key), ...]}`` for the ``<split>/`` keys among ``keys``, by i."""
    found: dict[tuple, list] = {}
    for key in keys:
        head, _, rest = key.partition("/")
        if head != split:
            continue
        for series in declared:
            hit = series.match(rest)
            if hit:
                found.setdefault((series, hit[0]), []).append((hit[1], key))
                break
    return {k: sorted(v) for k, v in found.items()}


def is_member(key: str, declared: tuple[Series, ...]) -> bool:
    """Whether ``key`` (``split/name``) belongs to one of the ``declared`` series."""
    rest = key.partition("/")[2] or key
    return any(s.match(rest) for s in declared)


def declared_by(target: str | None) -> tuple[Series, ...]:
    """The series the learner class ``target`` (an ``algo._target_``) declares; none when it
    cannot be imported (a run folder written by another version)."""
    if not target:
        return ()
    try:
        from hydra.utils import get_class

        return tuple(getattr(get_class(target), "metric_series", ()))
    except Exception:  # noqa: BLE001 - any import failure: the run still reports, unseriesed
        return ()
