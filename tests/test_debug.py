"""A new user's first runs: ``debug=fast`` (every phase in seconds, any algorithm) and the
progress a piped run prints."""

from __future__ import annotations

import io
import json
import re

import pytest
from rich.console import Console, Group

from metarun.logging.console import ConsoleSink, packed
from tests.conftest import GLYPHS_SMALL, options


@pytest.mark.parametrize("algo", options("algo"))
def test_debug_fast_runs_every_phase_of_any_algorithm(run_inprocess, compose_cfg, algo):
    overrides = [f"algo={algo}", "dataset=glyphs", *GLYPHS_SMALL, "task.train_way=null"]
    metric = "acc"
    if algo.endswith("_rl"):  # policies, on an RL task distribution
        overrides, metric = [f"algo={algo}", "dataset=navigation2d", "dataset.horizon=20"], "return"
    cfg = compose_cfg([*overrides, "debug=fast"])
    assert cfg.hydra.run.dir.startswith("outputs/debug/") and cfg.logger is None
    run_dir, _ = run_inprocess([*overrides, "debug=fast"])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["train/steps"] == 4
    assert f"test/{metric}" in summary and f"test/{metric}_ci95" in summary
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if f"val/{metric}" in r] == [2, 4]
    assert [r["step"] for r in rows if "train/loss" in r] == [2, 4]
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"best.pt", "last.pt"}


def test_debug_fast_keeps_what_the_command_chose(compose_cfg):
    """The algorithm, dataset, backbone and episode shape stay the command's; only the run's
    length, the evaluation's size and logging change."""
    base = ["experiment=maml_omniglot_5w1s"]
    plain, debug = compose_cfg(base), compose_cfg([*base, "debug=fast"])
    for key in ("algo", "dataset", "backbone", "seed"):
        assert plain[key] == debug[key], key
    assert (debug.task.way, debug.task.shot, debug.task.query) == (5, 1, 15)
    assert (debug.task.meta_batch, debug.train.steps, debug.test.episodes) == (2, 4, 10)


def test_debug_profile_records_the_chosen_training_steps(run_inprocess, capsys):
    """debug=profile traces steps 3-5 of a real run (ProfilerStep#2-#4, counted from 0) into a
    Chrome trace, writes the operators' table, says where both are, and still tests the run."""
    overrides = ["algo=protonet", "dataset=glyphs", *GLYPHS_SMALL, "task.train_way=null"]
    run_dir, _ = run_inprocess([*overrides, "debug=profile"])
    trace = json.loads((run_dir / "profile" / "trace.json").read_text())
    steps = {e["name"] for e in trace["traceEvents"] if e.get("name", "").startswith("Profiler")}
    assert steps == {"ProfilerStep#2", "ProfilerStep#3", "ProfilerStep#4"}
    assert any(e.get("name") == "aten::convolution" for e in trace["traceEvents"])
    ops = (run_dir / "profile" / "ops.txt").read_text()
    assert "Self CPU" in ops and "aten::" in ops
    said = f"metarun: profile: 3 training steps recorded in {run_dir / 'profile' / 'trace.json'}"
    assert said in capsys.readouterr().out
    assert sorted(p.name for p in (run_dir / "profile").iterdir()) == ["ops.txt", "trace.json"]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"


def test_a_piped_run_shows_progress_lines_that_never_wrap(metarun_cli, tmp_path):
    """Off a terminal (nohup, tee, a SLURM log) a plain progress line comes at most every
    ``progress_every_s`` seconds, and no line is wrapped mid-value at the default 80 columns."""
    proc = metarun_cli(
        "logger=none", "train.steps=3000", "val.every=1000", "val.episodes=20",
        "test.episodes=20", "progress_every_s=0.3", "hydra.run.dir=run",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    progress = [
        line for line in lines
        if re.fullmatch(r"\[\d\d:\d\d:\d\d\] step \d+/3000 \(\d+%\)  [\d.e+]+ steps/s  elapsed "
                        r"\d+:\d\d:\d\d  eta (\d+:\d\d:\d\d|--)  train/loss [\d.e+-]+  .*", line)
    ]  # fmt: skip
    assert len(progress) >= 2, proc.stdout
    steps = [int(re.search(r"step (\d+)/", line).group(1)) for line in progress]
    assert steps == sorted(steps) and steps[-1] < 3000
    validation = [line for line in lines if re.search(r"\] step \d+: train/loss", line)]
    assert len(validation) == 3 and all(re.search(r"val/mse \S+ ± \S+$", v) for v in validation)
    assert any(len(line) > 80 for line in progress + validation)  # long, and still one line
    # What the run folder holds (runs.md): no Hydra job log (cli.log) beside them.
    held = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert held == [".hydra", "checkpoints", "metrics.jsonl", "summary.json"]


@pytest.mark.parametrize("width", [60, 80, 160])
def test_the_terminal_bar_fits_its_width_with_the_metrics_below_it(width):
    """In a terminal the bar fills one line and the latest values follow it, packed into lines
    no wider than the terminal and never broken inside a value (nothing shortened with '…')."""
    screen = Console(file=io.StringIO(), force_terminal=True, width=width, log_path=False)
    sink = ConsoleSink(screen)
    sink.start(10000)
    values = {f"train/metric_{i}": 0.123456 + i for i in range(6)} | {"val/acc": 0.7275}
    sink.log({**values, "val/acc_ci95": 0.03}, step=50)
    sink.advance(4999)
    shown = Console(file=io.StringIO(), width=width, record=True)
    shown.print(Group(*sink._progress.get_renderables()))
    sink.close("finished")
    lines = shown.export_text().splitlines()
    assert re.match(r"meta-train .*━.* 4999/10000 .* eta ", lines[0]) and len(lines[0]) <= width
    below = "  ".join(line.strip() for line in lines[1:])
    assert all(len(line) <= width for line in lines) and "…" not in below
    assert below.split("  ") == [f"{k} {v:.4g}" for k, v in sorted(values.items())]
    assert len(lines) == 1 + len(packed(below.split("  "), width))
    assert (len(lines) > 2) == (width <= 80)  # 7 values take two lines at 80 columns, one at 160
