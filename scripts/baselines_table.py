"""The transfer-baseline table: every run of scripts/baselines_cpu_budget.sh scored on the same
test episodes per setting (5-way, 15 queries per class, 600 episodes of the test split, the
runs' shared test seed), mean ± 95% CI of the accuracy in %.

Rows: ProtoNet and MAML as trained; the pre-trained network with each test-time head
(metarun-eval head=...); Baseline++ (cosine classifier, cosine head); P>M>F (pre-training, then
ProtoNet from its weights) with ProtoNet's rule and with fine-tuning. Columns: Omniglot small1+
small2 1-shot and 5-shot, glyphs 1-shot (a missing run leaves its cell empty).

    python scripts/baselines_table.py [OUT]   (default outputs/baselines; about 10 minutes)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from metarun.algorithms.pretrain import with_head
from metarun.checkpoint import load_checkpoint
from metarun.trained import build_trained, checkpoint_config, checkpoint_file

SETTINGS = [("omniglot", 1), ("omniglot", 5), ("glyphs", 1)]
# (row, run folder (formatted with data and shot), head or None for the algorithm's own rule)
ROWS = [
    ("ProtoNet", "protonet_{data}_{shot}s", None),
    ("MAML", "maml_{data}_{shot}s", None),
    ("pretrain + prototype", "pretrain_{data}", "prototype"),
    ("pretrain + logistic (RFS)", "pretrain_{data}", "logistic"),
    ("pretrain + finetune (Baseline)", "pretrain_{data}", "finetune"),
    ("pretrain + cosine", "pretrain_{data}", "cosine"),
    ("Baseline++ (cosine classifier + cosine head)", "baselinepp_{data}", "cosine"),
    ("P>M>F: pretrain, then ProtoNet", "pmf_{data}_{shot}s", None),
    ("P>M>F + finetune", "pmf_{data}_{shot}s", "finetune"),
]


def score(run: Path, shot: int, head: str | None, episodes: int) -> tuple[float, float] | None:
    """Test accuracy and its 95% CI of ``run``'s best checkpoint on the shared episodes."""
    path = checkpoint_file(str(run))
    if not path.is_file():
        return None
    checkpoint = load_checkpoint(path)
    overrides = [
        "task.way=5",
        f"task.shot={shot}",
        "task.query=15",
        f"test.episodes={episodes}",
        "test.protocol=random",
        "test.views=1",
    ]
    exp = build_trained(path, checkpoint, checkpoint_config(checkpoint, overrides))
    if head is not None:
        exp.learner = with_head(exp.learner, head)
    scores = exp.evaluate("test")
    return 100 * scores["test/acc"], 100 * scores["test/acc_ci95"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="outputs/baselines")
    parser.add_argument("--episodes", type=int, default=600)
    args = parser.parse_args()
    torch.set_num_threads(int(torch.get_num_threads()))
    out = Path(args.out)
    header = [f"{d} 5-way {s}-shot" for d, s in SETTINGS]
    lines = ["| method | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for name, folder, head in ROWS:
        cells = []
        for data, shot in SETTINGS:
            start = time.perf_counter()
            result = score(out / folder.format(data=data, shot=shot), shot, head, args.episodes)
            cells.append("" if result is None else f"{result[0]:.2f} ± {result[1]:.2f}")
            took = time.perf_counter() - start
            print(f"{name}, {data} {shot}-shot: {cells[-1] or '(no run)'} ({took:.0f} s)",
                  file=sys.stderr)  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
