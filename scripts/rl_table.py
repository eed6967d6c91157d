"""docs/rl.md's results table from the run folders scripts/rl_cpu_budget.sh writes.

Usage: python scripts/rl_table.py outputs/rl
Each row: a run's test returns after 0..3 adaptation steps and the gain of one step (paired over
the test tasks), mean ± 95% CI, with its training budget (meta-iterations, env steps, CPU time).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROWS = [("nav", "2D navigation"), ("vel", "HalfCheetah velocity")]
#: (run folder suffix, row name, metarun-eval overrides: rescored with them when given)
KINDS = [
    ("maml", "MAML", None),
    ("pretrained", "pretrained", None),
    # the authors fine-tuned their pretrained cheetah policy with a smaller step
    # (cbfinn/maml_rl: maml_examples/test_maml_cheetah.py, step_sizes 0.02, then halved)
    (
        "pretrained",
        "pretrained, fine-tuned at 0.02",
        ["algo.inner_lr=0.02", "algo.later_inner_lr=0.01"],
    ),
    ("random", "random", None),
]


def cell(summary: dict, key: str) -> str:
    if key not in summary:
        return "-"
    return f"{summary[key]:.1f} ± {summary[key + '_ci95']:.1f}"


def rescore(run: Path, overrides: list[str]) -> dict:
    """The run's best checkpoint on its own test tasks (the same tasks and rollouts its
    summary scored), with every metric the evaluation reports now and ``overrides``."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from metarun.trained import evaluate_checkpoint

    steps = "algo.eval_report_steps=[0,1,2,3]"
    return evaluate_checkpoint([f"checkpoint={run}", steps, *overrides])


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/rl")
    print("| task | policy | meta-iterations | train min | return, 0 steps | 1 step | 2 steps "
          "| 3 steps | gain of 1 step |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for prefix, task in ROWS:
        for kind, name, overrides in KINDS:
            path = root / f"{prefix}_{kind}" / "summary.json"
            if not path.exists() or (overrides and prefix != "vel"):
                continue
            s = json.loads(path.read_text())
            if "test/return_step0" not in s:  # still running, or failed
                continue
            if overrides or "test/gain_step1" not in s:  # (a run from before gain_step{k})
                s = {**s, **rescore(path.parent, overrides or [])}
            steps = [cell(s, f"test/return_step{k}") for k in range(4)]
            minutes = f"{s.get('train/time_s', 0) / 60:.0f}"
            print(f"| {task} | {name} | {s.get('train/steps')} | {minutes} | "
                  f"{' | '.join(steps)} | {cell(s, 'test/gain_step1')} |")  # fmt: skip


if __name__ == "__main__":
    main()
