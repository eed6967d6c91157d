"""Sweeps through the official Hydra plugins: joblib, submitit (local) and Optuna."""

from __future__ import annotations

import json

import pytest
import yaml

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


def test_optuna_search_optimises_the_returned_objective(metarun_cli, tmp_path):
    proc = metarun_cli("hparams_search=maml_sinusoid", "hydra.sweeper.n_trials=3", *QUIET)
    assert proc.returncode == 0, proc.stderr
    summaries = job_summaries(tmp_path)
    assert len(summaries) == 3
    (results,) = (tmp_path / "outputs" / "multirun").glob("*/*/optimization_results.yaml")
    best = yaml.safe_load(results.read_text())
    assert best["best_value"] == pytest.approx(min(s["best_val/mse"] for s in summaries.values()))
    assert set(best["best_params"]) == {"algo.inner_lr", "algo.inner_steps", "algo.optimizer.lr"}
