"""Meta-RL throughput: environment steps per second, batched rollouts against task-by-task
ones, and where a meta-iteration's time goes (simulating vs learning).

Usage:
  python scripts/bench_rl.py                       # navigation2d and halfcheetah_vel, 1 thread
  python scripts/bench_rl.py --tasks halfcheetah_vel --meta-batch 10 --trajectories 10
  python scripts/bench_rl.py --threads 2 --device cuda

Rollout rows: the same rollouts (every task's ``--trajectories`` trajectories of a full
episode, the meta policy acting) once as metarun steps them, every trajectory of every task
together (one batched policy forward per step; MuJoCo: one gymnasium ``SyncVectorEnv`` of
tasks x trajectories sub-environments), and once task by task (the loop of pytorch-maml-rl's
and learn2learn's examples: each task's environments and its policy forward on their own).
Env steps/s counts steps taken, the policy's forward and action noise included.

Meta-iteration rows: ``--iterations`` full MAML-TRPO meta-iterations of the dataset's preset
(``experiment=maml_rl_<task>``, with ``--meta-batch`` / ``--trajectories`` when given): the
share spent in rollouts (simulating and acting) and in learning (baselines, advantages, the inner
step, TRPO's conjugate gradient and line search).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def experiment(task: str, args) -> "object":
    from metarun.compose import compose_config
    from metarun.experiment import build_experiment

    overrides = [f"experiment=maml_rl_{task}", "logger=none", f"device.name={args.device}"]
    overrides += [f"device.threads={args.threads}"]
    if args.meta_batch:
        overrides.append(f"task.meta_batch={args.meta_batch}")
    if args.trajectories:
        n = args.trajectories
        overrides += [f"task.train_shot={n}", f"task.train_query={n}"]
    cfg = compose_config(overrides)
    return build_experiment(cfg, run_dir=Path(tempfile.mkdtemp()), splits=("train",))


def rollouts(exp, trajectories: int, repeats: int) -> tuple[float, float, int]:
    """(batched seconds, task-by-task seconds, env steps) of the same rollouts, medians."""
    from metarun.evaluate import _take

    learner = exp.learner
    batch = exp.train_batch(torch.Generator().manual_seed(0))
    generators = lambda part: [torch.Generator().manual_seed(int(s)) for s in part.seeds]  # noqa

    def together() -> int:
        params = {k: p.detach() for k, p in learner.folded(batch.num_tasks).items()}
        return learner._rollout(batch, params, trajectories, 0, generators(batch)).steps

    def one_by_one() -> int:
        steps = 0
        for b in range(batch.num_tasks):
            part = _take(batch, b, b + 1)
            params = {k: p.detach() for k, p in learner.folded(1).items()}
            steps += learner._rollout(part, params, trajectories, 0, generators(part)).steps
        return steps

    out = []
    for run in (together, one_by_one):
        run()  # builds (and caches) the vector environments, warms up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            steps = run()
            times.append(time.perf_counter() - start)
        out.append(statistics.median(times))
    return out[0], out[1], steps


def iterations(exp, count: int) -> tuple[float, float, float]:
    """(seconds per meta-iteration, rollout share, env steps per iteration), means."""
    learner, generator = exp.learner, torch.Generator().manual_seed(1)
    totals, shares, steps = [], [], []
    for _ in range(count):
        batch = exp.train_batch(generator)
        start = time.perf_counter()
        learner.meta_backward(batch)
        metrics = learner.outer_step(exp.optimizer, exp.precision)
        totals.append(time.perf_counter() - start)
        shares.append(float(metrics["sim_share"]))
        steps.append(float(metrics["env_steps"]))
    return statistics.mean(totals), statistics.mean(shares), statistics.mean(steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["navigation2d", "halfcheetah_vel"])
    parser.add_argument("--meta-batch", type=int, default=0, help="0: the preset's")
    parser.add_argument("--trajectories", type=int, default=0, help="0: the preset's")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), device {args.device}")
    rows = []
    for task in args.tasks:
        try:
            exp = experiment(task, args)
        except Exception as e:  # noqa: BLE001 - e.g. MuJoCo not installed: say it, go on
            print(f"{task}: skipped ({e})")
            continue
        shape = exp.train_shape
        together, alone, steps = rollouts(exp, shape.shot, args.repeats)
        per_iter, share, iter_steps = iterations(exp, args.iterations)
        rows.append((task, exp.cfg.task.meta_batch, shape.shot, exp.dataset.horizon,
                     steps / together, steps / alone, alone / together,
                     iter_steps, per_iter, share))  # fmt: skip
        exp.dataset.close()
    header = ("task", "tasks", "traj", "horizon", "batched steps/s", "task-by-task steps/s",
              "speed-up", "env steps/iter", "s/iter", "simulating", "learning")  # fmt: skip
    print(" | ".join(header))
    for task, b, k, h, fast, slow, gain, n, s, share in rows:
        print(f"{task} | {b} | {k} | {h} | {fast:,.0f} | {slow:,.0f} | {gain:.1f}x | {n:,.0f} | "
              f"{s:.2f} | {share:.0%} | {1 - share:.0%}")  # fmt: skip


if __name__ == "__main__":
    main()
