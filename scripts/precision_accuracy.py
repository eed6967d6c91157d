"""Does bf16 reach fp32's test accuracy? Short real runs on the minimal Omniglot sets, side by side.

Usage:
  python scripts/precision_accuracy.py                     # MAML and ProtoNet (~12 min, 2 cores)
  python scripts/precision_accuracy.py --steps 300 --algos maml --root ../shared/data/omniglot

Each algorithm trains twice from the same seed, ``train.precision=fp32`` and ``bf16`` (the test
episodes are the same fixed ones), and the script prints test accuracy with its 95% CI and
whether bf16's mean lies inside fp32's interval.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = [
    "dataset=omniglot",
    "dataset.background=small1+small2",
    "dataset.split=random",
    "dataset.download=false",
]
ALGOS = {
    "maml": ["algo=maml", "task.meta_batch=8"],
    "protonet": ["algo=protonet", "task.train_way=20"],
}


def run(overrides: list[str], folder: Path) -> dict:
    exe = Path(sys.executable).with_name("metarun")
    command = [str(exe), *overrides, "logger=none", f"hydra.run.dir={folder}"]
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    return json.loads((folder / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT.parent / "shared" / "data" / "omniglot")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--algos", nargs="*", default=sorted(ALGOS), choices=sorted(ALGOS))
    parser.add_argument("--test-episodes", type=int, default=600)
    args = parser.parse_args()
    common = [*DATA, f"dataset.root={args.root.resolve()}", f"train.steps={args.steps}"]
    common += [f"val.every={args.steps}", "val.episodes=100", f"test.episodes={args.test_episodes}"]
    with tempfile.TemporaryDirectory() as tmp:
        for algo in args.algos:
            results = {}
            for precision in ("fp32", "bf16"):
                overrides = [*common, *ALGOS[algo], f"train.precision={precision}"]
                results[precision] = run(overrides, Path(tmp) / f"{algo}-{precision}")
            ref, low = results["fp32"], results["bf16"]
            inside = abs(low["test/acc"] - ref["test/acc"]) <= ref["test/acc_ci95"]
            print(f"{algo}, {args.steps} steps, {args.test_episodes} test episodes:")
            for name, s in results.items():
                print(
                    f"  {name}: test/acc {s['test/acc']:.4f} ± {s['test/acc_ci95']:.4f}, "
                    f"{s['train/steps_per_s']:.2f} steps/s"
                )
            print(f"  bf16 inside fp32's 95% CI: {'yes' if inside else 'no'}")


if __name__ == "__main__":
    main()
