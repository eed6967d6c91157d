"""Sweeps through the official Hydra plugins: joblib, submitit (local) and Optuna."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from metarun import device as device_module
from metarun.device import usable_cores
from tests.conftest import TINY

pytestmark = pytest.mark.slow
QUIET = [*TINY, "logger=none", "checkpoint.save=false"]


def job_summaries(root) -> dict[str, dict]:
    """Summary of each job folder of the single sweep under ``root/outputs/multirun``."""
    (sweep,) = (root / "outputs" / "multirun").glob("*/*")
    return {
        job.name: json.loads((job / "summary.json").read_text())
        for job in sorted(sweep.iterdir())
        if (job / "summary.json").is_file()
    }


@pytest.mark.parametrize(
    "launcher",
    [["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], ["hydra/launcher=submitit_local"]],
    ids=["joblib", "submitit_local"],
)
def test_parallel_launchers_run_both_jobs(metarun_cli, tmp_path, launcher):
    proc = metarun_cli("-m", *launcher, "algo=maml,fomaml", *QUIET)
    assert proc.returncode == 0, proc.stderr
    summaries = job_summaries(tmp_path)
    assert sorted(summaries) == ["0", "1"]
    assert all(s["status"] == "finished" and "test/mse" in s for s in summaries.values())
    if "hydra/launcher=joblib" in launcher:  # two jobs at once share the cores (device.threads)
        each = max(1, usable_cores() // 2)
        shown = re.findall(r"device: cpu \((\d+) threads?\)", proc.stdout)
        assert shown == [str(each)] * 2, proc.stdout


@pytest.mark.parametrize(
    ("launcher", "local", "cores", "threads"),
    [
        ([], 1, 8, 8),  # one job at a time: every core
        (["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], 1, 8, 4),
        (["hydra/launcher=joblib", "hydra.launcher.n_jobs=3"], 1, 8, 2),
        (["hydra/launcher=joblib", "hydra.launcher.n_jobs=-1"], 1, 8, 1),  # a job per core
        (["hydra/launcher=joblib", "hydra.launcher.n_jobs=-3"], 1, 8, 1),  # 6 jobs at once
        (["hydra/launcher=joblib", "hydra.launcher.n_jobs=-7"], 1, 8, 4),  # 2 jobs at once
        ([], 4, 8, 2),  # torchrun: 4 processes on this machine
        ([], 16, 8, 1),
    ],
)
def test_auto_threads_share_the_cores_among_the_jobs_at_once(
    compose_cfg, monkeypatch, launcher, local, cores, threads
):
    from hydra.core.hydra_config import HydraConfig

    monkeypatch.setattr(device_module, "usable_cores", lambda: cores)
    hydra = HydraConfig.instance()
    monkeypatch.setattr(hydra, "cfg", hydra.cfg)  # the next tests get theirs back
    hydra.set_config(compose_cfg(launcher))
    assert device_module.threads_for("auto", local) == threads
    assert device_module.threads_for(3, local) == 3  # a number is taken as it is


def test_optuna_search_optimises_the_returned_objective(metarun_cli, tmp_path):
    proc = metarun_cli("hparams_search=maml_sinusoid", "hydra.sweeper.n_trials=3", *QUIET)
    assert proc.returncode == 0, proc.stderr
    summaries = job_summaries(tmp_path)
    assert len(summaries) == 3
    (results,) = (tmp_path / "outputs" / "multirun").glob("*/*/optimization_results.yaml")
    best = yaml.safe_load(results.read_text())
    assert best["best_value"] == pytest.approx(min(s["best_val/mse"] for s in summaries.values()))
    assert set(best["best_params"]) == {"algo.inner_lr", "algo.inner_steps", "algo.optimizer.lr"}


@pytest.mark.parametrize(
    "launcher",
    [[], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]],
    ids=["basic", "joblib"],
)
def test_a_failing_job_leaves_the_others_alone_and_the_report_marks_it(
    metarun_cli, tmp_path, launcher
):
    """Job 1 diverges (NaN) mid-training; jobs 0 and 2 still run to the end."""
    proc = metarun_cli("-m", *launcher, "algo.inner_lr=0.01,1e30,0.02", *QUIET)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("metarun: error:")]
    assert errors[0].startswith("metarun: error: job 1: the training loss became NaN or inf")
    assert errors[-1].startswith("metarun: error: sweep job 1 failed (the training loss became")
    summaries = job_summaries(tmp_path)
    assert [summaries[j]["status"] for j in ("0", "1", "2")] == ["finished", "failed", "finished"]
    assert "NaN or inf in steps 1-5" in summaries["1"]["error"]
    assert all("test/mse" in summaries[j] for j in ("0", "2"))
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    out = subprocess.run(
        [str(Path(sys.executable).with_name("metarun-report")), str(sweep), "--out", "rep"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    (left_out,) = [line for line in out.stdout.splitlines() if "did not finish" in line]
    assert left_out.startswith("left out, 1 did not finish (--include-failed compares and plots")
    assert f"{sweep / '1'} (failed: the training loss became NaN" in left_out
    assert "2 runs, 2 configurations" in out.stdout
