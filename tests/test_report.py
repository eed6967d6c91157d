"""``metarun-report`` on a real sweep's folders."""

from __future__ import annotations

import csv

import pytest

from metarun import report, report_plot
from metarun.errors import MetarunError
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


def test_report_on_one_point_runs_of_two_kinds_draws_markers_and_ranks_each_kind_apart(
    run_inprocess, tmp_path, capsys
):
    """A regression run and a classification run that logged one point each: two tables (no
    NaN row from ranking one kind by the other's metric), a validation panel per metric,
    markers on every curve, and legends that name each run."""
    one_point = ["logger=none", "train.steps=1", "train.log_every=1", "val.every=1"]
    one_point += ["val.episodes=2", "test.episodes=4"]
    regression, _ = run_inprocess(one_point, name="sine")
    glyphs = ["dataset=glyphs", "dataset.classes=[40,12,12]", "algo.eval_inner_steps=1"]
    classification, _ = run_inprocess([*one_point, *glyphs], name="glyph")
    out = tmp_path / "report"
    capsys.readouterr()
    report.main([str(regression), str(classification), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "1 runs, 1 configurations, sorted by test/acc" in printed
    assert "1 runs, 1 configurations, sorted by test/mse" in printed and "nan" not in printed
    assert list(csv.DictReader((out / "report.csv").open()))[0]["test/acc"]
    assert list(csv.DictReader((out / "report-mse.csv").open()))[0]["test/mse"]
    runs = report.find_runs([str(regression), str(classification)])
    fig = report_plot.figure(report.group(runs), [])
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["meta-train loss", "meta-validation acc", "meta-validation mse"]
    lines = [line for ax in fig.axes for line in ax.get_lines()]
    assert len(lines) == 4 and all(line.get_marker() == "o" for line in lines)
    labels = {t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().texts}
    assert all(" (1 run)" in label for label in labels) and "all runs (n=1)" not in labels


def test_runs_that_did_not_finish_are_listed_in_one_line_unless_included(
    run_inprocess, tmp_path, capsys, monkeypatch
):
    """A run that failed (NaN at step 2) is left out of tables and plot and named in one line;
    with ``--include-failed`` its curve (one point) is plotted beside the finished run's."""
    quick = ["logger=none", "train.steps=4", "train.log_every=1", "val.every=1"]
    quick += ["val.episodes=2", "test.episodes=4"]
    finished, _ = run_inprocess(quick, name="ok")
    with pytest.raises(MetarunError, match="NaN or inf in step 2"):
        run_inprocess([*quick, "algo.optimizer.lr=1e8"], name="diverged")
    failed = tmp_path / "diverged"
    plotted = []
    monkeypatch.setattr(report_plot, "plot", lambda groups, *a: plotted.append(groups))
    for include in (False, True):
        capsys.readouterr()
        flag = ["--include-failed"] if include else []
        report.main([str(finished), str(failed), "--out", str(tmp_path / "out"), *flag])
        lines = capsys.readouterr().out.splitlines()
        named = [line for line in lines if str(failed) in line]
        assert len(named) == 1 + include  # included: also "not ranked (no test/mse)"
        said = f"{failed} (failed: the training loss became NaN or inf in step 2; lower "
        assert named[0].startswith(
            "compared although they did not finish (1): " + said
            if include
            else "left out, 1 did not finish (--include-failed compares and plots them): " + said
        )
        assert any("1 runs, 1 configurations, sorted by test/mse" in line for line in lines)
        runs = [r.path for members in plotted[-1].values() for r in members]
        assert runs == ([finished, failed] if include else [finished])
    fig = report_plot.figure(plotted[-1], ["algo.optimizer.lr"])
    labels = {t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().texts}
    assert "algo.optimizer.lr=1e8 (1 run, 1 unfinished)" in labels
