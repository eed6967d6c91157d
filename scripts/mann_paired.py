"""Two trained sequence learners (MANN and its LSTM baseline, say) on the same test episodes:
per-presentation accuracy of each and their paired difference with a 95% CI.

Usage: python scripts/mann_paired.py A/checkpoints/best.pt B/checkpoints/best.pt
       [--episodes 1000] [--seed 2002] [--batch-size 100]

(``--seed 2002 --episodes 1000 --batch-size 100``, the defaults, are a run's own test episodes.)
Both models see exactly the same episodes in the same order (checked batch by batch), so the
difference is measured per episode: its CI is far tighter than the two runs' own CIs suggest,
since most of an episode's difficulty is shared. The checkpoints must test on the same data
and episode shape.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from metarun.errors import MetarunError
from metarun.evaluate import fixed_episodes, mean_ci95
from metarun.trained import load_trained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("a", type=Path, metavar="A")
    parser.add_argument("b", type=Path, metavar="B")
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=2002)
    parser.add_argument("--batch-size", type=int, default=100, help="episodes drawn at once")
    args = parser.parse_args()
    exps = [load_trained(path, []) for path in (args.a, args.b)]
    for exp in exps:
        exp.learner.eval()
    if exps[0].eval_shape != exps[1].eval_shape:
        raise MetarunError(
            f"{args.a} tests on {exps[0].eval_shape} episodes but {args.b} on "
            f"{exps[1].eval_shape}; compare checkpoints of the same task"
        )
    names = [f"acc_inst{i}" for i in exps[0].learner.report_instances] + ["acc"]
    scores: list[dict[str, list[torch.Tensor]]] = [{n: [] for n in names} for _ in exps]
    draws = [
        fixed_episodes(e.dataset, "test", e.eval_shape, args.episodes, args.batch_size,
                       args.seed, e.device, True)
        for e in exps
    ]  # fmt: skip
    for batch_a, batch_b in zip(*draws):
        same = torch.equal(batch_a.support_y, batch_b.support_y) and torch.equal(
            batch_a.support_x, batch_b.support_x
        )
        if not same:
            raise MetarunError(
                f"{args.a} and {args.b} draw different test episodes (their dataset options "
                "differ); compare checkpoints trained on the same data"
            )
        for exp, batch, out in zip(exps, (batch_a, batch_b), scores):
            metrics = exp.learner.evaluate(batch)
            for n in names:
                if n not in metrics:
                    raise MetarunError(f"{exp.cfg.algo._target_} reports no {n}; use MANN runs")
                out[n].append(metrics[n].cpu())
    print(f"A: {args.a}\nB: {args.b}\n{args.episodes} test episodes, seed {args.seed}")
    print(f"{'':<10}{'A':>7}{'B':>7}{'A - B':>8}{'95% CI':>8}")
    for n in names:
        a, b = (torch.cat(s[n]) for s in scores)
        diff, ci = mean_ci95(a - b)
        label = n.replace("acc_inst", "inst ") if n != "acc" else "all"
        print(f"{label:<10}{100 * a.mean():7.1f}{100 * b.mean():7.1f}{100 * diff:+8.1f}"
              f"{'±':>4}{100 * ci:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
