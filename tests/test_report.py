"""``metarun-report`` on a real sweep's folders."""

from __future__ import annotations

import csv

import pytest

from metarun import report
from tests.conftest import TINY


@pytest.mark.slow
def test_report_groups_seeds_sorts_and_writes_csv_and_png(metarun_cli, tmp_path, capsys):
    proc = metarun_cli("-m", "algo=maml,fomaml", "seed=0,1", *TINY, "logger=none")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "report"
    report.main([str(tmp_path / "outputs" / "multirun"), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "4 runs, 2 configurations, sorted by test/mse" in printed
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert {r["algo"] for r in rows} == {"maml", "fomaml"} and all(r["runs"] == "2" for r in rows)
    means = [float(r["test/mse"]) for r in rows]
    assert means == sorted(means)  # lower MSE first
    runs = report.find_runs([str(tmp_path / "outputs" / "multirun")])
    maml = [r.summary["test/mse"] for r in runs if r.overrides["algo"] == "maml"]
    expected = next(float(r["test/mse"]) for r in rows if r["algo"] == "maml")
    assert expected == pytest.approx(sum(maml) / 2)
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_without_runs_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(tmp_path / "nothing")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("metarun-report: error: no run folders")
