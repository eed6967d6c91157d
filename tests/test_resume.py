"""Checkpoints and resume: an interrupted run, resumed, logs what an uninterrupted one logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metarun.checkpoint import load_checkpoint
from metarun.errors import MetarunError
from metarun.trained import evaluate_checkpoint
from tests.conftest import TINY, clean_env

QUIET = [*TINY, "logger=none"]


def test_resumed_run_matches_an_uninterrupted_one(run_inprocess):
    # 20 and 40 are multiples of log_every, so stopping at 20 logs what the full run logs.
    base = [*QUIET, "train.steps=40", "checkpoint.every=10", "train.log_every=4"]
    full, _ = run_inprocess(base, name="full")
    part, _ = run_inprocess(
        [*QUIET, "train.steps=20", "checkpoint.every=10", "train.log_every=4"], name="part"
    )
    # Continue the 20-step run to 40 steps, in its own folder.
    resumed, _ = run_inprocess([*base, "resume=true", f"resume_dir={part}"], name="resumer")
    assert (part / "metrics.jsonl").read_text() == (full / "metrics.jsonl").read_text()
    assert (
        json.loads((part / "summary.json").read_text())["test/mse"]
        == json.loads((full / "summary.json").read_text())["test/mse"]
    )
    assert not (resumed / "metrics.jsonl").exists()  # nothing written to the new folder
    last = load_checkpoint(part / "checkpoints" / "last.pt")
    assert last["step"] == 40 and set(last["rng"]) >= {"python", "numpy", "torch", "sampler"}


def test_resume_refuses_a_missing_folder_and_a_changed_model(run_inprocess, tmp_path):
    with pytest.raises(
        MetarunError, match="no checkpoint at .*missing/checkpoints/last.pt; check the path"
    ):
        run_inprocess([*QUIET, "resume=true", f"resume_dir={tmp_path / 'missing'}"], name="a")
    first, _ = run_inprocess(QUIET, name="first")
    with pytest.raises(MetarunError, match="differs from the checkpoint's in backbone.hidden"):
        run_inprocess(
            [*QUIET, "backbone.hidden=[20,20]", "resume=true", f"resume_dir={first}"], name="b"
        )
    with pytest.raises(MetarunError, match="resume=true needs the run folder"):
        run_inprocess([*QUIET, "resume=true"], name="c")


def test_a_checkpoint_from_before_an_option_existed_resumes_at_its_neutral_value(run_inprocess):
    """A checkpoint written before ``algo.task_chunk`` existed: resuming with the value that
    reproduces the old behaviour works; another value is a change and is refused."""
    import torch

    from metarun.checkpoint import save_checkpoint

    base = [*QUIET, "checkpoint.every=10"]
    first, _ = run_inprocess([*base, "train.steps=10"], name="old")
    path = first / "checkpoints" / "last.pt"
    checkpoint = load_checkpoint(path)
    del checkpoint["config"]["algo"]["task_chunk"]  # as an older metarun wrote it
    save_checkpoint(path, **checkpoint)
    assert "task_chunk" not in torch.load(path, weights_only=False)["config"]["algo"]
    with pytest.raises(MetarunError, match="differs from the checkpoint's in algo.task_chunk"):
        run_inprocess(
            [*base, "train.steps=20", "algo.task_chunk=2", "resume=true", f"resume_dir={first}"],
            name="changed",
        )
    run_inprocess([*base, "train.steps=20", "resume=true", f"resume_dir={first}"], name="ok")
    assert load_checkpoint(path)["step"] == 20


def test_init_from_starts_a_fresh_run_from_another_runs_weights(run_inprocess, tmp_path):
    first, _ = run_inprocess([*QUIET, "train.steps=10"], name="first")
    # No training steps: the run tests exactly the weights it started from, so it scores what
    # the first run's best weights scored (same fixed test tasks); a run folder means its best.pt.
    same, _ = run_inprocess([*QUIET, "train.steps=0", f"train.init_from={first}"], name="same")
    summary = lambda run: json.loads((run / "summary.json").read_text())  # noqa: E731
    assert summary(same)["test/mse"] == summary(first)["test/mse"]
    assert (
        summary(run_inprocess([*QUIET, "train.steps=0"], name="scratch")[0])["test/mse"]
        != (summary(first)["test/mse"])
    )
    # Training from them: a new run (its own step count and optimizer) that resumes as usual,
    # from its own last.pt: the file it started from is not read again (here it is gone).
    warm = [*QUIET, f"train.init_from={first / 'checkpoints' / 'best.pt'}", "checkpoint.every=10"]
    full, _ = run_inprocess([*warm, "train.steps=20"], name="full")
    part, _ = run_inprocess([*warm, "train.steps=10"], name="part")
    assert load_checkpoint(part / "checkpoints" / "last.pt")["step"] == 10
    assert json.loads((part / "metrics.jsonl").read_text().splitlines()[0])["step"] == 5
    (first / "checkpoints" / "best.pt").rename(first / "moved.pt")
    run_inprocess([*warm, "train.steps=20", "resume=true", f"resume_dir={part}"], name="resumer")
    assert (part / "metrics.jsonl").read_text() == (full / "metrics.jsonl").read_text()
    scores = evaluate_checkpoint([f"checkpoint={part / 'checkpoints' / 'best.pt'}"])
    assert scores["test/mse"] == summary(part)["test/mse"]  # its own weights, not its start
    with pytest.raises(
        MetarunError,
        match=r"^train.init_from=.*first/moved.pt: its weights \(MAML, step \d+\) do not fit "
        r"this model \(backbone.net.0.bias is \(40,\), not \(20,\); .* and 2 more\); use a ",
    ):
        run_inprocess(
            [*QUIET, "backbone.hidden=[20,20]", f"train.init_from={first}/moved.pt"], name="b"
        )
    with pytest.raises(MetarunError, match=r"^train.init_from=.*: no checkpoint at .*nothing"):
        run_inprocess([*QUIET, f"train.init_from={tmp_path / 'nothing'}"], name="c")


LONG = [
    "logger=none",
    "train.steps=1500",
    "train.log_every=40",
    "val.every=500",
    "val.episodes=20",
    "checkpoint.every=130",
    "test.episodes=50",
    "seed=7",
]


def _metarun(cwd: Path, *args: str) -> subprocess.Popen:
    cwd.mkdir(exist_ok=True)
    exe = Path(sys.executable).with_name("metarun")
    return subprocess.Popen(
        [str(exe), *args],
        cwd=cwd,
        env=clean_env(cwd),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run_dir(cwd: Path) -> Path:
    (run_dir,) = [p for p in (cwd / "outputs").glob("*/*") if p.is_dir()]
    return run_dir


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("reference")
    proc = _metarun(cwd, *LONG)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    return _run_dir(cwd)


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=["SIGKILL", "SIGTERM", "SIGINT"]
)
def test_killed_run_resumes_to_the_same_metrics(reference, tmp_path, sig):
    proc = _metarun(tmp_path, *LONG)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait for a checkpoint past the first validation
        time.sleep(0.05)
        last = list((tmp_path / "outputs").glob("*/*/checkpoints/last.pt"))
        if last and os.path.getsize(last[0]) > 0 and load_checkpoint(last[0])["step"] >= 600:
            break
    assert proc.poll() is None, "the run ended before it could be interrupted"
    # Checkpoints every 130 steps, logs every 40: the checkpoint it resumes from holds a
    # partial log interval, which must carry over.
    proc.send_signal(sig)
    code = proc.wait(timeout=60)
    run_dir = _run_dir(tmp_path)
    if sig != signal.SIGKILL:
        stderr = proc.stderr.read().strip()
        assert code == 128 + sig
        assert stderr.startswith(f"metarun: stopped by {sig.name} at step ")
        assert f"resume=true resume_dir={run_dir}" in stderr and "\n" not in stderr
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    else:
        assert code == -signal.SIGKILL
    resumed = _metarun(tmp_path / "again", *LONG, "resume=true", f"resume_dir={run_dir}")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert (run_dir / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["test/mse"] == json.loads((reference / "summary.json").read_text())["test/mse"]


def test_a_requeued_submitit_job_continues_in_its_own_folder(
    run_inprocess, compose_cfg, monkeypatch, tmp_path
):
    """hydra-submitit-launcher's checkpoint hook resubmits a preempted job with the same config
    (so the same folder); finding last.pt there, the job continues instead of starting over."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from metarun.run import run

    base = [*QUIET, "train.steps=40", "checkpoint.every=10", "train.log_every=4"]
    full, _ = run_inprocess(base, name="full")
    job, _ = run_inprocess(
        [*QUIET, "train.steps=20", "checkpoint.every=10", "train.log_every=4"], name="job"
    )
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    cfg = compose_cfg(base)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(job)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    run(cfg)
    assert (job / "metrics.jsonl").read_text() == (full / "metrics.jsonl").read_text()


# `metarun` whose checkpoint writer is killed (SIGKILL, no chance to clean up) half-way through
# the file of its KILL_AT_WRITE-th checkpoint write.
KILLED_MID_WRITE = """
import os, signal, sys
import metarun.checkpoint as checkpoint
from metarun.cli import main
real, count = checkpoint.atomic_write, [0]
def atomic_write(path, write):
    count[0] += 1
    if count[0] != int(os.environ["KILL_AT_WRITE"]):
        return real(path, write)
    def half_then_killed(f):
        f.write(b"PK" + bytes(4096))
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    real(path, half_then_killed)
checkpoint.atomic_write = atomic_write
main()
"""


@pytest.mark.slow
def test_a_kill_in_the_middle_of_a_checkpoint_write_loses_nothing(reference, tmp_path):
    # Writes: last.pt at 130, 260, 390, best.pt at 500, last.pt at 520, then the 6th: 650.
    env = {**clean_env(tmp_path), "KILL_AT_WRITE": "6"}
    code = subprocess.run(
        [sys.executable, "-c", KILLED_MID_WRITE, *LONG], cwd=tmp_path, env=env, timeout=300
    ).returncode
    assert code == -signal.SIGKILL
    run_dir = _run_dir(tmp_path)
    (partial,) = (run_dir / "checkpoints").glob(".last.pt.*.tmp")  # what the kill left
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 520
    resumed = _metarun(tmp_path / "again", *LONG, "resume=true", f"resume_dir={run_dir}")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert not partial.exists()
    assert (run_dir / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test/mse"] == json.loads((reference / "summary.json").read_text())["test/mse"]


def test_an_option_added_since_a_checkpoint_resumes_at_its_schema_default():
    """Options metarun gained after a checkpoint was written are absent from its config; the
    run may keep them at their schema default (which reproduces the old behaviour), nothing else."""
    from metarun.resume import _differences, _schema_defaults

    saved = {"_target_": "metarun.algorithms.MAML", "inner_lr": 0.1}
    run = {**saved, "task_chunk": 0, "per_step_bn": False}
    defaults = _schema_defaults({"algo": run})["algo"]
    assert _differences(saved, run, defaults, "algo.") == []
    assert _differences(saved, {**run, "task_chunk": 4}, defaults, "algo.") == ["algo.task_chunk"]
    assert _differences(saved, {**run, "inner_lr": 0.2}, defaults, "algo.") == ["algo.inner_lr"]


def test_a_run_of_a_variant_made_before_it_had_a_class_resumes_under_its_new_name():
    """algo=anil was metarun.algorithms.MAML with adapt=head: such a run resumes as ANIL, and
    the options are still compared."""
    from metarun.resume import _as_renamed

    old = {"algo": {"_target_": "metarun.algorithms.MAML", "adapt": "head"}}
    new = {"algo": {"_target_": "metarun.algorithms.ANIL", "adapt": "head"}}
    assert _as_renamed(old, new) == new
    other = {"algo": {"_target_": "metarun.algorithms.ProtoNet"}}
    assert _as_renamed(old, other) == old  # ProtoNet replaces nothing
