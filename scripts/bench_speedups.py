"""Issue 20's options side by side: train.precision, backbone.memory_format, device.threads.

Usage:
  python scripts/bench_speedups.py                 # steps and the two-job sweep (~6 min, 2 cores)
  python scripts/bench_speedups.py --no-sweep      # step rows only
  python scripts/bench_speedups.py --json out.json --device cuda

Step rows: the median seconds of metarun's whole training step (``Trainer.train_step``:
sampling, model, loss, backward, optimizer) for each variant of a case, the variants in
alternation in this process after a warm-up, on glyphs at Omniglot's shapes (28 px, Conv4-64).
Sweep row: the wall time of ``metarun -m hydra/launcher=joblib hydra.launcher.n_jobs=2
seed=0,1`` (ProtoNet, glyphs, 150 steps per job) with ``device.threads`` = every core per job
(what each job took before the option) against ``auto`` (the cores shared out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import GLYPHS, trainer_for, trainer_step  # noqa: E402

from metarun import compiling  # noqa: E402
from metarun.device import usable_cores  # noqa: E402

CASES = {
    "MAML 5w1s q15, meta-batch 8, second order": [
        "algo=maml", "task.meta_batch=8", "task.query=15", "algo.inner_lr=0.4",
    ],
    "ProtoNet 20w1s q5": ["algo=protonet", "task.way=20", "task.train_way=20", "task.query=5"],
    "ProtoNet 60w1s q5": ["algo=protonet", "task.way=20", "task.train_way=60", "task.query=5"],
    "MANN 5w, batch 16 (mann_glyphs)": ["algo=mann"],
}  # fmt: skip
FAST = ["train.precision=bf16", "backbone.memory_format=channels_last"]
EAGER = ["train.compile=false"]  # not auto: these runs' 8,000 default steps would compile
VARIANTS = {
    "fp32": EAGER,
    "bf16": [*EAGER, "train.precision=bf16"],
    "channels_last": [*EAGER, "backbone.memory_format=channels_last"],
    "bf16 + channels_last": [*EAGER, *FAST],
    "compiled": ["train.compile=true"],  # only for learners that compile
    "bf16 + compiled": ["train.precision=bf16", "train.compile=true"],
    "channels_last + compiled": ["backbone.memory_format=channels_last", "train.compile=true"],
}
CONV = ("channels_last",)  # variants that need a conv backbone (MANN's is a flatten)


def bench_steps(args, records: list[dict], root: Path) -> None:
    device = [f"device.name={args.device}"]
    for case, overrides in CASES.items():
        if args.cases and not any(c.lower() in case.lower() for c in args.cases):
            continue
        trainers = {}
        for name, extra in VARIANTS.items():
            if "algo=mann" in overrides and any(c in name for c in CONV):
                continue
            folder = root / f"{case}-{name}"
            trainer = trainer_for([*GLYPHS, *overrides, *extra, *device], folder)[1]
            if "train.compile=true" in extra:  # what Trainer.fit does before its first step
                if not trainer.exp.learner.compiles:
                    continue  # it would run eager
                compiling.compile_training(trainer.exp.learner)
            trainers[name] = trainer
        times = {name: [] for name in trainers}
        first = {name: trainer_step(trainer) for name, trainer in trainers.items()}
        for _ in range(args.warmup):
            for trainer in trainers.values():
                trainer_step(trainer)
        for _ in range(args.repeats):
            for name, trainer in trainers.items():
                times[name].append(trainer_step(trainer))
        base = statistics.median(times["fp32"])
        print(f"\n{case}: median training step over {args.repeats} steps")
        for name, seconds in times.items():
            median = statistics.median(seconds)
            line = f"  {name:32s} {1000 * median:8.1f} ms   {base / median:5.2f}x fp32"
            record = {"case": case, "variant": name, "step_s": median}
            if "compiled" in name:  # the first step compiles (Inductor's cache was empty)
                uncompiled = statistics.median(  # the same variant eager
                    times[name.replace(" + compiled", "").replace("compiled", "fp32")]
                )
                cost = first[name] - median
                pays = cost / (uncompiled - median) if uncompiled > median else float("inf")
                line += f"   compile {cost:.0f} s, repaid after {pays:.0f} steps"
                record |= {"compile_s": cost, "repaid_after_steps": pays}
            print(line)
            records.append(record)


def bench_sweep(args, records: list[dict], root: Path) -> None:
    exe = Path(sys.executable).with_name("metarun")
    every = usable_cores()
    print(f"\ntwo ProtoNet glyphs jobs at once (joblib, n_jobs=2), 150 steps each, {every} cores:")
    walls = {}
    for threads in (str(every), "auto"):
        command = [
            str(exe), "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1",
            "algo=protonet", *GLYPHS, "task.train_way=20", "train.steps=150", "val.every=150",
            "val.episodes=20", "test.episodes=20", "logger=none", "checkpoint.save=false",
            f"device.threads={threads}", f"hydra.sweep.dir={root / f'sweep-{threads}'}",
        ]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, cwd=root)
        walls[threads] = time.perf_counter() - start
        print(f"  device.threads={threads:5s} {walls[threads]:6.1f} s")
        records.append({"case": "two-job sweep", "variant": threads, "wall_s": walls[threads]})
    print(f"  auto: {walls[str(every)] / walls['auto']:.2f}x faster")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--cases", nargs="*", help="only the cases whose name has one of these")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{usable_cores()} cores, {torch.get_num_threads()} threads, device {args.device}"
    )
    records: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        cold = str(Path(tmp) / "inductor")  # a cold compile, not metarun's own cache
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = compiling._USERS_INDUCTOR_CACHE = cold
        bench_steps(args, records, Path(tmp))
        if not args.no_sweep:
            bench_sweep(args, records, Path(tmp))
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
