"""Data-parallel runs (torch.distributed, gloo on CPU): two processes compute what one does.

Each test launches real processes with ``torchrun --standalone`` (the launcher users run)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from metarun.checkpoint import load_checkpoint
from tests.conftest import clean_env
from tests.distributed_worker import CASES, train_case

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
WORKER = Path(__file__).with_name("distributed_worker.py")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc (Linux)"),
]


def _env(home: Path) -> dict[str, str]:
    return {**clean_env(home), "OMP_NUM_THREADS": "1"}


def _noise_only(state: dict[str, torch.Tensor]) -> set[str]:
    """Parameters whose exact gradient is zero, so that theirs is rounding noise that Adam
    turns into steps of up to ``lr``: a conv's bias right before a batch norm (which subtracts
    it again), and Meta-SGD's / MAML++'s learned step sizes for it. No two summation orders
    (of tasks, threads or processes) agree on them; the network's function does not depend on
    them. See docs/distributed.md."""
    out = set()
    for key, value in state.items():
        prefix, _, last = key.rpartition(".")
        if last != "weight" or value.dim() != 4 or not prefix.rsplit(".", 1)[-1].isdigit():
            continue
        head, index = prefix.rsplit(".", 1)
        following = state.get(f"{head}.{int(index) + 1}.weight")
        if following is not None and following.dim() == 1:  # a norm layer's scale
            bias = f"{prefix}.bias"
            short = bias.removeprefix("backbone.").replace(".", "/")
            out |= {bias} | {k for k in state if k.endswith(f".{short}")}
    return out


@pytest.fixture(scope="module", params=["float64", "float32"])
def two_processes(request, tmp_path_factory) -> tuple[str, dict]:
    out = tmp_path_factory.mktemp("dist") / f"{request.param}.pt"
    proc = subprocess.run(
        [*TORCHRUN, str(WORKER), str(out), request.param],
        env=_env(out.parent),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return request.param, torch.load(out, weights_only=False)


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_train_the_weights_one_process_trains(two_processes, case, tmp_path):
    dtype_name, results = two_processes
    dtype = getattr(torch, dtype_name)
    one = train_case(case, dtype, tmp_path)
    two = results[case]
    assert one["state"].keys() == two["state"].keys()
    noise = _noise_only(one["state"])
    running = {k for k in one["state"] if "running_" in k or "step_mean" in k or "step_var" in k}
    for key, a in one["state"].items():
        b = two["state"][key]
        if not a.is_floating_point():  # num_batches_tracked
            assert torch.equal(a, b), key
        elif dtype == torch.float64:
            # noise-only: Adam's steps on rounding; running averages: they include those biases
            tol = 1e-7 if key in noise else 1e-9 if key in running else 1e-12
            assert torch.allclose(a, b, rtol=0, atol=tol), (key, (a - b).abs().max())
        elif key not in noise | running:  # float32: running averages carry the noisy biases
            # MANN's LSTM after conv4's synchronised batch norm: 3e-6 (Adam on rounding)
            tol = 1e-5 if case == "mann" else 1e-6
            assert torch.allclose(a, b, rtol=0, atol=tol), (key, (a - b).abs().max())
    if dtype == torch.float64:  # the per-task validation values, gathered over the ranks
        for key, value in one["scores"].items():
            assert two["scores"][key] == pytest.approx(value, abs=1e-9), key


# -- the command line: one run folder, rank 0 writing, kill and resume ----------------------
LONG = [
    "logger=none",
    "task.meta_batch=24",
    "train.steps=3000",
    "train.log_every=40",
    "val.every=500",
    "val.episodes=21",  # not a multiple of 2: the ranks evaluate 10 and 11 episodes
    "checkpoint.every=130",
    "test.episodes=51",
    "seed=7",
]


def _launch(cwd: Path, *args: str, ranks: int = 2) -> subprocess.Popen:
    cwd.mkdir(exist_ok=True)
    command = [*TORCHRUN[:-1], f"--nproc_per_node={ranks}", "-m", "metarun", *args]
    return subprocess.Popen(
        command, cwd=cwd, env=_env(cwd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _run_dir(cwd: Path) -> Path:
    (run_dir,) = [p for p in (cwd / "outputs").glob("*/*") if p.is_dir()]  # one, not one a rank
    return run_dir


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("two")
    proc = _launch(cwd, *LONG)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    return _run_dir(cwd)


def test_a_two_process_run_logs_what_one_process_logs(uninterrupted, tmp_path):
    one = _launch(tmp_path, *LONG, ranks=1)  # torchrun with one process: the plain path
    _, stderr = one.communicate(timeout=300)
    assert one.returncode == 0, stderr[-3000:]
    single = _run_dir(tmp_path)
    assert sorted(p.name for p in uninterrupted.iterdir()) == sorted(
        p.name for p in single.iterdir()
    )
    rows, reference = (
        [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        for d in (uninterrupted, single)
    )
    assert [r.keys() for r in rows] == [r.keys() for r in reference]
    # float32: the two sum a step's gradient in another order, so the runs part by rounding
    # (exact equality is the float64 test above); early on they agree closely.
    for row, ref in zip(rows, reference):
        if row["step"] <= 200:
            for key, value in ref.items():
                assert row[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (row["step"], key)
    two, one_summary = (
        json.loads((d / "summary.json").read_text()) for d in (uninterrupted, single)
    )
    assert (two["world_size"], one_summary["world_size"]) == (2, 1)
    assert two["test/mse"] == pytest.approx(one_summary["test/mse"], rel=0.1)
    last = load_checkpoint(uninterrupted / "checkpoints" / "last.pt")
    assert last["world_size"] == 2 and len(last["ranks"]) == 2


def _rank(proc: subprocess.Popen, rank: int) -> int:
    """The pid of the worker of ``rank`` that torchrun (``proc``) started (read from /proc)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if parent == proc.pid and f"RANK={rank}".encode() in environ:
            return int(stat.parent.name)
    raise AssertionError(f"no process of rank {rank}")


def test_sigterm_to_torchrun_stops_every_process_after_the_same_step(tmp_path):
    proc = _launch(tmp_path, *LONG)
    deadline = time.time() + 200
    while time.time() < deadline and not list((tmp_path / "outputs").glob("*/*/metrics.jsonl")):
        time.sleep(0.05)
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both processes
    _, stderr = proc.communicate(timeout=120)
    run_dir = _run_dir(tmp_path)
    stopped = [line for line in stderr.splitlines() if line.startswith("metarun: stopped by")]
    assert len(stopped) == 1, stderr[-3000:]  # rank 0 tells it once
    assert "Resume with: the same launcher (2 processes, e.g. torchrun) resume=true" in stopped[0]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert last["world_size"] == 2 and f"at step {last['step']};" in stopped[0]


def test_a_killed_rank_stops_the_run_and_resume_continues_it_exactly(uninterrupted, tmp_path):
    proc = _launch(tmp_path, *LONG)
    deadline = time.time() + 200
    while time.time() < deadline:  # a checkpoint past the first validation
        time.sleep(0.05)
        last = list((tmp_path / "outputs").glob("*/*/checkpoints/last.pt"))
        if last and load_checkpoint(last[0])["step"] >= 1000:
            break
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.kill(_rank(proc, 1), signal.SIGKILL)  # no handler, no checkpoint
    start = time.time()
    _, stderr = proc.communicate(timeout=120)  # the other rank must not hang
    assert proc.returncode != 0 and time.time() - start < 90
    run_dir = _run_dir(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["error"].startswith("rank 0 of 2 lost the run's other processes (")
    assert f"metarun: error: {summary['error']}\n" in stderr  # one line, what it recorded

    # Resuming with another number of processes is refused in one line, the folder untouched.
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    exe = Path(sys.executable).with_name("metarun")  # plain metarun: one process
    one = subprocess.run(
        [str(exe), *LONG, "resume=true", f"resume_dir={run_dir}"],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    stderr = one.stderr
    assert one.returncode == 2, stderr
    assert (
        f"metarun: error: cannot resume {run_dir}: it was trained by 2 process(es) and this run "
        "has 1; resume it with 2 (torchrun --nproc_per_node=2" in stderr
    )
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before

    again = _launch(tmp_path / "again", *LONG, "resume=true", f"resume_dir={run_dir}")
    _, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr[-3000:]
    assert (run_dir / "metrics.jsonl").read_text() == (uninterrupted / "metrics.jsonl").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    reference = json.loads((uninterrupted / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["test/mse"] == reference["test/mse"]
