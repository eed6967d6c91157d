"""Is a trained MANN / LSTM limited by its training characters? Per-presentation accuracy on
episodes of the characters it trained on (unshifted) next to the held-out test characters.

Usage: python scripts/mann_train_vs_test.py RUN/checkpoints/best.pt [--episodes 1000]

Both rows use the same fixed seed and episode shape (the run's test shape); equal rows mean no
generalisation gap (more training characters would not help), a higher train row means one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from metarun.evaluate import evaluate, fixed_episodes
from metarun.trained import load_trained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    # The training characters scored as they are (unshifted), like the test ones.
    exp = load_trained(args.checkpoint, ["dataset.shift=0"])
    instances = exp.learner.report_instances
    print(f"{'split':<6}" + "".join(f"{f'inst{i}':>8}" for i in instances) + f"{'all':>8}")
    for split in ("train", "test"):
        batches = fixed_episodes(
            exp.dataset, split, exp.eval_shape, args.episodes, 100, args.seed, exp.device, True
        )
        scores = evaluate(exp.learner, batches, split)  # MANN evaluates without a graph
        row = [scores[f"{split}/acc_inst{i}"] for i in instances] + [scores[f"{split}/acc"]]
        print(f"{split:<6}" + "".join(f"{100 * v:8.1f}" for v in row))


if __name__ == "__main__":
    main()
