"""Does a trained MANN use its memory? Prints :mod:`metarun.algorithms.memory_use`'s table.

Usage: python scripts/mann_memory_use.py RUN/checkpoints/best.pt [--episodes 500] [--seed 1234]
(``--seed 2002 --episodes 1000 --batch-size 100``: a run's own test episodes, by default)
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from metarun.algorithms.memory_use import memory_use
from metarun.trained import load_trained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--episodes", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--batch-size", type=int, default=100, help="episodes drawn at once")
    args = parser.parse_args()
    exp = load_trained(args.checkpoint, [])
    (header, *names), rows = memory_use(exp, args.episodes, args.batch_size, args.seed)
    print(header)
    print(f"{'inst':>4} " + " ".join(f"{n:>7}" for n in names))
    for i, *m in rows:
        same, late = ("-" if math.isnan(v) else f"{v:.2f}" for v in m[3:5])
        accs = " ".join(f"{v:7.3f}" for v in m[5:])
        print(f"{i:>4} {m[0]:7.3f} {m[1]:7.4f} {m[2]:7.4f} {same:>7} {late:>7} {accs}")


if __name__ == "__main__":
    main()
