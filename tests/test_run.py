"""Whole jobs: in-process for the loop's behaviour, as the ``metarun`` CLI for what users type."""

from __future__ import annotations

import json

import pytest
import torch

from metarun.checkpoint import load_checkpoint
from tests.conftest import OMNIGLOT_SMALL, TINY, options, read_jsonl
from tests.wandb_records import logged_history, run_config, run_info, run_summary

NO_WANDB = [*TINY, "logger=none"]


def test_a_run_writes_metrics_summary_and_checkpoints(run_inprocess):
    run_dir, objective = run_inprocess(NO_WANDB)
    rows = read_jsonl(run_dir / "metrics.jsonl")
    train = [r for r in rows if "train/loss" in r]
    val = [r for r in rows if "val/mse" in r]
    assert [r["step"] for r in train] == [5, 10, 15, 20]
    assert [r["step"] for r in val] == [10, 20] and all("val/mse_ci95" in r for r in val)
    assert rows[-1]["step"] == 20 and "test/mse" in rows[-1]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["test/mse"] == rows[-1]["test/mse"] and summary["test/mse_ci95"] > 0
    assert objective == summary["best_val/mse"] == min(r["val/mse"] for r in val)
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert best["step"] == summary["best_val/step"]
    assert best["config"]["algo"]["inner_lr"] == 0.01  # the config travels with the weights
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 20


def test_a_scheduled_run_logs_the_learning_rate_it_reached(run_inprocess):
    halving = (
        "algo.scheduler={_target_: torch.optim.lr_scheduler.StepLR, _partial_: true, "
        "step_size: 5, gamma: 0.5}"
    )
    run_dir, _ = run_inprocess([*NO_WANDB, halving])
    train = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "train/loss" in r]
    lr = 1e-3  # algo.optimizer.lr of the tiny config
    assert [r["train/lr"] for r in train] == pytest.approx([lr / 2, lr / 4, lr / 8, lr / 16])
    plain, _ = run_inprocess(NO_WANDB, name="constant")  # no schedule: nothing to report
    assert not any("train/lr" in r for r in read_jsonl(plain / "metrics.jsonl"))


def test_same_seed_same_metrics_other_seed_other_metrics(run_inprocess):
    a, _ = run_inprocess([*NO_WANDB, "seed=3"], name="a")
    b, _ = run_inprocess([*NO_WANDB, "seed=3"], name="b")
    c, _ = run_inprocess([*NO_WANDB, "seed=4"], name="c")
    assert (a / "metrics.jsonl").read_text() == (b / "metrics.jsonl").read_text()
    assert (a / "metrics.jsonl").read_text() != (c / "metrics.jsonl").read_text()


def test_maml_learns_sinusoids(run_inprocess):
    """A short run cuts the post-adaptation MSE well below the untrained model's."""
    overrides = [
        "logger=none",
        "train.steps=600",
        "val.every=600",
        "val.episodes=100",
        "test.episodes=100",
        "algo.eval_report_steps=[0,10]",
        "checkpoint.save=false",
    ]
    run_dir, _ = run_inprocess(overrides)
    summary = json.loads((run_dir / "summary.json").read_text())
    untrained = 1 / 2 * (0.1**2 + 0.1 * 5 + 5**2) / 3  # E[A^2]/2 for A ~ U[0.1, 5]: ~4.3
    assert summary["test/mse_step0"] < 0.8 * untrained
    assert summary["test/mse"] < 0.5 * summary["test/mse_step0"]


def test_test_uses_the_best_validated_weights(run_inprocess):
    run_dir, _ = run_inprocess([*NO_WANDB, "val.every=5"])
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    summary = json.loads((run_dir / "summary.json").read_text())
    val = {r["step"]: r["val/mse"] for r in read_jsonl(run_dir / "metrics.jsonl") if "val/mse" in r}
    assert summary["best_val/step"] == min(val, key=val.get) == best["step"]


@pytest.mark.slow
def test_cli_run_logs_to_files_and_an_offline_wandb_run(metarun_cli, tmp_path):
    proc = metarun_cli(*TINY, "seed=5")
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]
    assert {".hydra", "metrics.jsonl", "summary.json", "checkpoints", "wandb"} <= {
        p.name for p in run_dir.iterdir()
    }
    assert "wandb sync" in proc.stdout  # offline: the user is told how to upload
    (log,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    local = read_jsonl(run_dir / "metrics.jsonl")
    history = logged_history(log)
    # Every local value reached W&B at the same step (W&B merges rows that share a step).
    by_step: dict[int, dict] = {}
    for row in history:
        by_step.setdefault(row["_step"], {}).update(row)
    for row in local:
        for key, value in row.items():
            if key != "step":
                assert by_step[row["step"]][key] == pytest.approx(value), key
    summary = json.loads((run_dir / "summary.json").read_text())
    wandb_summary = run_summary(log)
    for key in ("test/mse", "test/mse_ci95", "best_val/mse"):
        assert wandb_summary[key] == pytest.approx(summary[key])
    assert run_config(log)["seed"] == 5 and run_config(log)["algo"]["first_order"] is False
    assert run_info(log).project == "metarun"


@pytest.mark.slow
def test_cli_multirun_runs_each_job_in_its_own_folder_grouped_in_wandb(metarun_cli, tmp_path):
    proc = metarun_cli("-m", "algo=maml,fomaml", *TINY)
    assert proc.returncode == 0, proc.stderr
    jobs = sorted(p for p in (tmp_path / "outputs" / "multirun").glob("*/*/*") if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    assert "- algo=fomaml" in (jobs[1] / ".hydra" / "overrides.yaml").read_text()
    infos = [run_info(next(job.glob("wandb/offline-run-*/run-*.wandb"))) for job in jobs]
    assert infos[0].run_group == infos[1].run_group and infos[0].run_group.startswith("sweep-")
    assert [i.display_name.split(",")[0] for i in infos] == ["algo=maml", "algo=fomaml"]
    for job in jobs:
        assert json.loads((job / "summary.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_cli_misspelt_override_fails_fast_with_a_clear_message(metarun_cli, tmp_path):
    proc = metarun_cli("algo.inner_lrr=0.1")
    assert proc.returncode != 0
    assert "Key 'inner_lrr' not in 'MAMLConfig'" in proc.stderr
    assert not (tmp_path / "outputs").exists()  # nothing started


@pytest.mark.slow
def test_cli_user_errors_are_one_line(metarun_cli):
    for args, message in [
        (("device=cuda",), "metarun: error: device=cuda was requested but no CUDA GPU"),
        (("test.episodes=1",), "metarun: error: test.episodes=1 must be >= 2 (a 95% confidence"),
    ]:
        if args == ("device=cuda",) and torch.cuda.is_available():
            continue
        proc = metarun_cli(*args, "logger=none")
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
        assert proc.stderr.startswith(message), proc.stderr


@pytest.mark.slow
def test_cli_help_lists_groups_and_options(metarun_cli):
    proc = metarun_cli("--help")
    assert proc.returncode == 0
    assert proc.stdout.startswith("metarun: config-driven meta-learning experiments.")
    algos = "anil, fomaml, fomaml_rl, lstm, maml, maml_rl, mamlpp, mann, metasgd, pretrain"
    assert f"algo: {algos}, pretrained_rl, protonet, reptile" in proc.stdout
    for group in ("algo", "algo_dataset", "dataset", "backbone", "device", "logger", "experiment"):
        assert f"{group}: {', '.join(options(group))}\n" in proc.stdout


REAL_OMNIGLOT = [
    "dataset=omniglot",
    *OMNIGLOT_SMALL,
    "logger=none",
    "checkpoint.save=false",
    "test.episodes=100",
    "task.way=5",
    "task.shot=1",
    "task.query=5",
    "backbone.hidden=32",
]


@pytest.mark.omniglot
def test_protonet_learns_real_omniglot(run_inprocess):
    """20 episodes of 20-way training on held-out-character data: far above 5-way chance."""
    run_dir, _ = run_inprocess(
        [
            *REAL_OMNIGLOT,
            "algo=protonet",
            "task.train_way=20",
            "task.meta_batch=1",
            "train.steps=20",
            "val.every=20",
        ]
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test/acc"] > 0.5  # chance: 0.2


@pytest.mark.omniglot
def test_maml_learns_real_omniglot(run_inprocess):
    run_dir, _ = run_inprocess(
        [
            *REAL_OMNIGLOT,
            "algo=maml",
            "algo.inner_lr=0.4",
            "algo.eval_inner_steps=3",
            "task.meta_batch=4",
            "train.steps=60",
            "val.every=60",
        ]
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test/acc"] > 0.35  # chance: 0.2; untrained MAML stays near it
