"""Nothing a user types damages an earlier run: refused commands leave every file byte-identical.

Each case of ``CASES`` runs the real entry point on a finished run (or sweep) folder, expects one
error line and exit code 2, and compares a hash of every file of that folder before and after.
The cases join the error catalogue (docs/errors.md) with those of tests/test_errors.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metarun import cli
from tests.conftest import GLYPHS_SMALL, clean_env
from tests.test_errors import QUIET, Case, run_case

RECORDED: list[tuple[str, str, str]] = []  # joins tests/test_errors.py's catalogue
SNAPSHOTS: dict[Path, dict[str, str]] = {}


def tree_hashes(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path -> SHA-256), hidden ones included."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _cli(*args: str) -> None:
    argv, sys.argv = sys.argv, ["metarun", *args]
    try:
        cli.main()
    finally:
        sys.argv = argv


def _finished(edit=None):
    """Prepare: a finished 10-step run in ``done``, optionally edited, then snapshotted."""

    def prepare(tmp: Path, mp: pytest.MonkeyPatch) -> None:
        _cli(*QUIET, "train.steps=10", f"hydra.run.dir={tmp / 'done'}")
        if edit:
            edit(tmp / "done")
        SNAPSHOTS[tmp] = tree_hashes(tmp / "done")

    return prepare


def _unchanged(folder: str = "done"):
    def check(tmp: Path) -> None:
        assert tree_hashes(tmp / folder) == SNAPSHOTS.pop(tmp), f"{folder} changed"

    return check


def _sweep(tmp: Path, mp: pytest.MonkeyPatch) -> None:
    _cli("-m", *QUIET, "train.steps=5", "seed=0,1", f"hydra.sweep.dir={tmp / 'sweep'}")
    SNAPSHOTS[tmp] = tree_hashes(tmp / "sweep")


def _without_optimizer(run: Path) -> None:
    import torch

    from metarun.checkpoint import save_checkpoint

    last = run / "checkpoints" / "last.pt"
    content = torch.load(last, weights_only=True)
    del content["optimizer"]
    save_checkpoint(last, **content)


def _plain_torch_file(run: Path) -> None:
    import torch

    torch.save({"weights": torch.zeros(3)}, run / "checkpoints" / "last.pt")


def _renamed_weights(run: Path) -> None:
    import torch

    from metarun.checkpoint import save_checkpoint

    last = run / "checkpoints" / "last.pt"
    content = torch.load(last, weights_only=True)
    content["model"] = {f"{k}_renamed": v for k, v in content["model"].items()}
    save_checkpoint(last, **content)


def _hand_made(run: Path) -> None:
    import torch

    torch.save({"config": 5, "model": {}, "step": 0}, run / "checkpoints" / "last.pt")


def _edited_metrics(run: Path) -> None:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], "[1, 2]", *lines[1:]]) + "\n")


DONE = "{tmp}/done"
RESUME = ["resume=true", f"resume_dir={DONE}", *QUIET, "train.steps=20"]
CASES = [
    Case("run folder holds a run", [*QUIET, f"hydra.run.dir={DONE}", "seed=7"],
         ".*/done already holds a finished run; a new run never writes into it: choose a new "
         "hydra.run.dir",
         _finished(), _unchanged()),
    Case("empty run folder", [*QUIET, "hydra.run.dir="], "hydra.run.dir is empty; give the "
         "folder for the run"),
    Case("sweep folder holds a sweep", ["-m", *QUIET, "seed=3,4", "hydra.sweep.dir={tmp}/sweep"],
         "hydra.sweep.dir=.*/sweep already holds a sweep \\(multirun.yaml\\)",
         _sweep, _unchanged("sweep")),
    Case("resume with another seed", [*RESUME, "seed=7"],
         "cannot resume .*/done: the config differs from the checkpoint's in seed",
         _finished(), _unchanged()),
    Case("resume without best.pt", RESUME,
         "cannot resume .*/done: .*best.pt \\(the best weights, step 10, which the meta-test "
         "uses\\) is missing", _finished(lambda r: (r / "checkpoints" / "best.pt").unlink()),
         _unchanged()),
    Case("resume from a weights-only checkpoint", RESUME,
         "cannot resume .*/done: .*last.pt lacks optimizer .*train.init_from=",
         _finished(_without_optimizer), _unchanged()),
    Case("resume with an edited metrics.jsonl", RESUME,
         "metrics.jsonl line 2 is not a metarun record", _finished(_edited_metrics), _unchanged()),
    Case("resume from a truncated last.pt", RESUME, "last.pt is not a checkpoint file",
         _finished(lambda r: (r / "checkpoints" / "last.pt").write_bytes(b"PK\x03\x04")),
         _unchanged()),
    Case("resume with an unreadable best.pt", RESUME, "best.pt is not a checkpoint file",
         _finished(lambda r: (r / "checkpoints" / "best.pt").write_bytes(b"<html>")),
         _unchanged()),
    Case("resume from a PyTorch file that is not a checkpoint", RESUME,
         "last.pt is a PyTorch file but not a metarun checkpoint",
         _finished(_plain_torch_file), _unchanged()),
    Case("resume from a last.pt holding other weights", RESUME,
         "cannot resume .*/done: last.pt: its weights \\(MAML, step 10\\) do not fit this model",
         _finished(_renamed_weights), _unchanged()),
    Case("resume from a hand-made checkpoint", RESUME, "last.pt is a PyTorch file but not a "
         "metarun checkpoint \\(config is not what metarun writes there\\)",
         _finished(_hand_made), _unchanged()),
    Case("resume with a changed model", [*RESUME, "backbone.hidden=[8]"],
         "the config differs from the checkpoint's in backbone.hidden", _finished(), _unchanged()),
    Case("a bad value while resuming", [*RESUME, "algo.optimizer.lr=nan"],
         "algo.optimizer.lr=nan must be a finite number", _finished(), _unchanged()),
    Case("report --out on a file", [DONE, "--out", "{tmp}/done/summary.json"],
         "--out .*summary.json: cannot create that folder", _finished(), _unchanged(),
         tool="metarun-report"),
    Case("predict out= in a missing folder", ["checkpoint={tmp}/done/checkpoints/best.pt",
         "support={tmp}", "query={tmp}", "out={tmp}/nowhere/p.csv"],
         "out=.*/nowhere/p.csv: the folder .*/nowhere does not exist", _finished(), _unchanged(),
         tool="metarun-predict"),
]  # fmt: skip


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_a_refused_command_leaves_earlier_runs_byte_identical(entry, tmp_path, monkeypatch, case):
    run_case(entry, tmp_path, monkeypatch, case, RECORDED)


def test_a_second_process_on_a_running_folder_is_refused_and_a_killed_run_resumes(tmp_path):
    """The run folder is locked while a job runs (flock on the folder: nothing is added to it);
    SIGKILL drops the lock with the process, so the killed run resumes."""
    exe = Path(sys.executable).with_name("metarun")
    env = clean_env(tmp_path)
    run = tmp_path / "run"
    base = [*QUIET, "train.steps=100000", "checkpoint.every=5", "val.every=50000"]
    first = subprocess.Popen([str(exe), *base, f"hydra.run.dir={run}"], env=env, cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 120
        while not (run / "checkpoints" / "last.pt").is_file():
            assert time.time() < deadline and first.poll() is None, "the first run did not start"
            time.sleep(0.2)
        second = subprocess.run([str(exe), *base, "resume=true", f"resume_dir={run}"], env=env,
                                cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
        assert second.returncode == 2
        assert second.stderr.strip() == (
            f"metarun: error: {run} is in use by another running metarun process; wait for it "
            "to end (or stop it), or choose another folder"
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    resumed = subprocess.run([str(exe), *QUIET, "train.steps=10", "checkpoint.every=5",
                              "val.every=50000", "resume=true", f"resume_dir={run}"],
                             env=env, cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"


def test_a_default_folder_taken_in_the_same_second_gets_a_suffix(compose_cfg, tmp_path):
    from hydra.core.hydra_config import HydraConfig

    from metarun.runfolder import claim

    cfg = compose_cfg(QUIET)
    HydraConfig.instance().set_config(cfg)  # no hydra.run.dir on the command line
    taken = tmp_path / "10-00-00"
    (taken / "checkpoints").mkdir(parents=True)
    got = claim(cfg, taken)
    try:
        assert got.run_dir == tmp_path / "10-00-00-2" and not got.resuming
        assert (got.run_dir / ".hydra" / "overrides.yaml").is_file()
        assert sorted(os.listdir(taken)) == ["checkpoints"]
    finally:
        got.release()


def test_a_run_refused_for_its_input_leaves_no_folder_and_a_sweep_job_keeps_its_verdict(
    metarun_cli, tmp_path
):
    """A single run that cannot use its input (13-way tasks, 12 validation classes) leaves no
    output folder behind; as a sweep job it writes its verdict, and the other job runs."""
    small = ["dataset=glyphs", *GLYPHS_SMALL, "logger=none", "train.steps=2", "val.every=2"]
    small += ["val.episodes=2", "test.episodes=2", "task.meta_batch=2"]
    alone = metarun_cli(*small, "task.way=13")
    assert alone.returncode == 2 and "13-way tasks need 13 classes" in alone.stderr
    assert not (tmp_path / "outputs").exists()
    sweep = metarun_cli("-m", *small, "task.way=5,13")
    assert sweep.returncode == 2, sweep.stderr
    jobs = {p.parent.name: json.loads(p.read_text()) for p in tmp_path.glob("outputs/*/*/*/*/s*")}
    assert jobs["0"]["status"] == "finished" and jobs["1"]["status"] == "failed"
    assert "13-way tasks need 13 classes" in jobs["1"]["error"]
