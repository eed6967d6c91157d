"""Data-parallel throughput and memory: one process against N (torchrun, torch.distributed).

Usage:
  python scripts/bench_distributed.py                        # CPU: 1 vs 2 processes, 2 cores
  python scripts/bench_distributed.py --json dist.json --steps 30
  python scripts/bench_distributed.py --device cuda --nproc 4 --threads 4   # NCCL, 4 GPUs

Each row trains with metarun's own training step (``Trainer.train_step``: sampling this rank's
share, adapting, the gradient all-reduce, the optimizer step) on the real Omniglot archives
(``--data``, the official small background sets), for ``--steps`` timed steps after a warm-up,
started by ``torchrun --standalone``. On CPU the cores are divided: one process gets
``--threads`` threads, each of N processes ``--threads / N``, so that both use the same cores.
tasks/s is the meta-batch times the steps over the slowest rank's wall time; memory is each
rank's peak resident set (``ru_maxrss``) and, on CUDA, its peak allocated GPU memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OMNIGLOT = [
    "dataset=omniglot",
    "dataset.background=small1+small2",
    "dataset.split=random",
    "dataset.download=false",
    "task.way=5",
    "task.shot=1",
    "task.query=15",
    "val.episodes=4",
    "test.episodes=4",
    "logger=none",
    "checkpoint.save=false",
]
CASES = {
    "MAML 5w1s, meta-batch 32": ["algo=maml", "task.meta_batch=32"],
    "ProtoNet 5w1s, meta-batch 4": ["algo=protonet", "task.meta_batch=4", "task.train_way=null"],
    # The archives' own 105 px: a dataset big enough (~60 MB) to see whether ranks share it.
    "ProtoNet 105px, meta-batch 2": [
        "algo=protonet",
        "task.meta_batch=2",
        "task.train_way=null",
        "dataset.image_size=105",
    ],
}


def memory_mb() -> dict[str, float]:
    """This process's proportional (shared pages split among their users) and private resident
    memory, from /proc/self/smaps_rollup (Linux; empty elsewhere)."""
    path = Path("/proc/self/smaps_rollup")
    if not path.exists():
        return {}
    kb = {}
    for line in path.read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        kb[key] = int(value.split()[0])
    private = kb.get("Private_Clean", 0) + kb.get("Private_Dirty", 0)
    return {"pss_mb": round(kb.get("Pss", 0) / 1024), "private_mb": round(private / 1024)}


def worker(case: str, data: str, steps: int, device: str, out: str) -> None:
    """One rank: build the experiment, warm up, time ``steps`` training steps."""
    import torch
    import torch.distributed as dist

    from metarun.compose import compose_config
    from metarun.distributed import init_world
    from metarun.experiment import build_experiment
    from metarun.trainer import Trainer

    cfg = compose_config([*OMNIGLOT, f"dataset.root={data}", f"device={device}", *CASES[case]])
    world = init_world(cfg)
    with tempfile.TemporaryDirectory() as run_dir:
        exp = build_experiment(cfg, run_dir=Path(run_dir), world=world)
        loaded_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        loaded = memory_mb()  # the dataset mapped, the model built
        trainer = Trainer(exp)
        for _ in range(3):
            trainer.train_step()
        sync = torch.cuda.synchronize if exp.device.type == "cuda" else lambda: None
        sync()
        if world.active:
            dist.barrier()
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        sync()
        elapsed = time.perf_counter() - start
        record = {
            "elapsed_s": elapsed,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_after_build_mb": loaded_rss,
            "after_build": loaded,
            "gpu_peak_mb": (
                torch.cuda.max_memory_allocated() / 2**20 if exp.device.type == "cuda" else None
            ),
            "threads": torch.get_num_threads(),
        }
    records = world.gather(record)
    if world.is_main:
        Path(out).write_text(json.dumps(records))
    world.close()
    sys.stdout.flush()
    os._exit(0)  # no interpreter teardown under gloo (see metarun.cli.main)


def measure(case: str, nproc: int, threads: int, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ranks.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += [f"--nproc_per_node={nproc}", __file__, "--worker", case, str(out)]
        command += ["--data", str(args.data), "--steps", str(args.steps), "--device", args.device]
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads // nproc))}
        proc = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            raise SystemExit(f"{case}, {nproc} process(es) failed:\n{proc.stderr[-3000:]}")
        ranks = json.loads(out.read_text())
    meta_batch = int(CASES[case][1].split("=")[1])
    slowest = max(r["elapsed_s"] for r in ranks)
    return {
        "case": case,
        "processes": nproc,
        "threads_per_process": ranks[0]["threads"],
        "device": args.device,
        "tasks_per_s": round(args.steps * meta_batch / slowest, 1),
        "step_ms": round(1000 * slowest / args.steps, 1),
        "peak_rss_mb_per_rank": [round(r["peak_rss_mb"]) for r in ranks],
        "rss_after_build_mb_per_rank": [round(r["rss_after_build_mb"]) for r in ranks],
        "pss_after_build_mb_per_rank": [r["after_build"].get("pss_mb") for r in ranks],
        "private_after_build_mb_per_rank": [r["after_build"].get("private_mb") for r in ranks],
        "gpu_peak_mb_per_rank": [r["gpu_peak_mb"] and round(r["gpu_peak_mb"]) for r in ranks],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "omniglot")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--nproc", type=int, default=2, help="processes of the parallel rows")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="cores in all")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], str(args.data), args.steps, args.device, args.worker[1])
        return
    rows = [measure(c, n, args.threads, args) for c in CASES for n in (1, args.nproc)]
    print(
        f"{'case':28s} {'procs':>5s} {'thr':>3s} {'tasks/s':>7s} {'step ms':>7s}  "
        "peak RSS MB/rank | after build: PSS / private MB/rank"
    )
    for r in rows:
        join = lambda key: ", ".join(map(str, r[key]))  # noqa: E731
        print(
            f"{r['case']:28s} {r['processes']:5d} {r['threads_per_process']:3d} "
            f"{r['tasks_per_s']:7.1f} {r['step_ms']:7.1f}  {join('peak_rss_mb_per_rank')} | "
            f"{join('pss_after_build_mb_per_rank')} / {join('private_after_build_mb_per_rank')}"
        )
    import torch

    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
    meta["torch"] = torch.__version__
    if args.device == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(0)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
