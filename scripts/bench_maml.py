"""MAML training-step throughput of metarun's three task paths (loop, vmap, fold), 2nd/1st order.

Usage:
  python scripts/bench_maml.py                       # sinusoid MLP 1-40-40-1, meta-batch 25, K=10
  python scripts/bench_maml.py --model conv4 --way 5 --shot 1 --query 15 --meta-batch 32
      # Omniglot-shaped 28x28 episodes (random pixels: speed does not depend on content)
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
from metarun.backbones import MLP, Conv4
from metarun.data import EpisodicImages, Sinusoid, TaskShape


def setup(args):
    if args.model == "mlp":
        return Sinusoid(), TaskShape(1, args.shot, args.query), MLP((1,), 1, (40, 40))
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (200, 20, 1, 28, 28), dtype=torch.uint8, generator=g)
    dataset = EpisodicImages({s: images for s in ("train", "val", "test")})
    net = Conv4((1, 28, 28), args.way, hidden=args.hidden, pool=args.pool)
    return dataset, TaskShape(args.way, args.shot, args.query), net


def rate(first_order: bool, batching: str, args) -> float:
    torch.manual_seed(0)
    dataset, shape, net = setup(args)
    learner = MAML(
        net,
        functools.partial(torch.optim.Adam, lr=1e-3),
        inner_lr=args.inner_lr,
        inner_steps=args.inner_steps,
        first_order=first_order,
        task_batching=batching,
    )
    optimizer, _ = learner.configure_optimizers()
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        batch = dataset.sample("train", args.meta_batch, shape, generator)
        optimizer.zero_grad(set_to_none=True)
        learner.meta_backward(batch)
        optimizer.step()

    for _ in range(args.warmup):
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
    parser.add_argument("--model", choices=["mlp", "conv4"], default="mlp")
    parser.add_argument("--way", type=int, default=5)
    parser.add_argument("--shot", type=int, default=10)
    parser.add_argument("--query", type=int, default=10)
    parser.add_argument("--meta-batch", type=int, default=25)
    parser.add_argument("--inner-steps", type=int, default=1)
    parser.add_argument("--inner-lr", type=float, default=0.01)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--pool", default="max")
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    what = (
        "sinusoid MLP 1-40-40-1"
        if args.model == "mlp"
        else f"conv4-{args.hidden} ({args.pool}) 28x28, {args.way}-way"
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {what}, "
        f"meta-batch {args.meta_batch}, K={args.shot}, Q={args.query}, "
        f"{args.inner_steps} inner step(s)"
    )
    paths = ("loop", "vmap", "fold")
    print(f"{'order':<8}" + "".join(f"{p + ' it/s':>12}" for p in paths) + "  (x loop)")
    for first_order in (False, True):
        rates = [rate(first_order, path, args) for path in paths]
        name = "first" if first_order else "second"
        ratios = " ".join(f"{r / rates[0]:.2f}" for r in rates[1:])
        print(f"{name:<8}" + "".join(f"{r:>12.2f}" for r in rates) + f"  ({ratios})")


if __name__ == "__main__":
    main()
