"""Meta-iterations per second of MAML on sinusoid: per-task loop vs vmap, second vs first order.

Usage: python scripts/bench_maml.py [--meta-batch 25] [--shot 10] [--inner-steps 1] [--iters 300]
Each configuration runs the full training step (sample tasks, meta-loss, backward, Adam step)
`--iters` times after a warm-up, `--repeats` times; the median rate is printed.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch

from metarun.algorithms import MAML
from metarun.backbones import MLP
from metarun.data import Sinusoid, TaskShape


def rate(first_order: bool, batching: str, args) -> float:
    torch.manual_seed(0)
    learner = MAML(MLP((1,), 1, (40, 40)), functools.partial(torch.optim.Adam, lr=1e-3),
                   inner_lr=0.01, inner_steps=args.inner_steps, first_order=first_order,
                   task_batching=batching)
    optimizer, _ = learner.configure_optimizers()
    dataset, shape = Sinusoid(), TaskShape(1, args.shot, args.shot)
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        batch = dataset.sample("train", args.meta_batch, shape, generator)
        loss, _ = learner.meta_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(20):
        step()
    rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.iters):
            step()
        rates.append(args.iters / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meta-batch", type=int, default=25)
    parser.add_argument("--shot", type=int, default=10)
    parser.add_argument("--inner-steps", type=int, default=1)
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; sinusoid MLP 1-40-40-1, "
          f"meta-batch {args.meta_batch}, K={args.shot}, {args.inner_steps} inner step(s)")
    print(f"{'order':<8}{'loop it/s':>12}{'vmap it/s':>12}{'vmap/loop':>11}")
    for first_order in (False, True):
        loop, vmapped = rate(first_order, "loop", args), rate(first_order, "vmap", args)
        name = "first" if first_order else "second"
        print(f"{name:<8}{loop:>12.1f}{vmapped:>12.1f}{vmapped / loop:>10.2f}x")


if __name__ == "__main__":
    main()
