"""The one-shot recipe search of docs/one-shot.md: train each recipe on Omniglot's background
small1, then score its best checkpoint (chosen on the validation alphabet) on the alphabets
small2 adds, within-alphabet and with random characters, and print one table.

Usage:
  python scripts/one_shot_recipes.py --data ../shared/data/omniglot              # every recipe
  python scripts/one_shot_recipes.py --data DIR --recipes preset warp --jobs 2   # two at a time
  python scripts/one_shot_recipes.py --data DIR --eval-only                       # runs done

Recipes train as ``python -m metarun experiment=protonet_omniglot_new_alphabets <overrides>`` in
``--out/<recipe>`` (an existing finished run there is reused, never overwritten), each with
``device.threads=1`` so that ``--jobs`` runs share the cores; a recipe's CPU time is its process's
user + system time (os.wait4). Evaluation-only steps (test-time views, transductive refinement)
re-score a trained recipe's checkpoint with ``metarun-eval`` overrides; no test number feeds
back into a choice (the validation column, Greek within-alphabet, is what picks).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NO_WARP = [f"dataset.warp.{k}=0" for k in ("rotate", "shear", "scale", "translate")]
# Training recipes, each the preset plus these overrides (the preset is the final recipe).
RECIPES = {
    "preset": ["train.steps=3000", *NO_WARP],  # today's ProtoNet Omniglot settings
    "warp": ["train.steps=3000"],  # + random affine warps of training images
    "warp-6k": ["train.steps=6000"],  # + twice the episodes
    "warp-cosine": ["train.steps=3000", "algo.distance=cosine", "algo.scale=10"],
    "warp-within": ["train.steps=3000", "train.protocol=within_alphabet", "task.train_way=20"],
}
# Evaluation-only steps on a trained recipe (metarun-eval overrides).
EVALS = {
    "": [],
    "+views": ["test.views=8"],
    "+views+refine (transductive)": ["test.views=8", "algo.refine_steps=2"],
}
# The test columns: Lake's within-alphabet protocol 20-way (Japanese, Sanskrit) and 17-way (all
# three held-out alphabets: Tagalog has 17 characters), and random characters of those alphabets.
COLUMNS = {
    "within 20-way": ["test.protocol=within_alphabet"],
    "within 17-way": ["test.protocol=within_alphabet", "task.way=17"],
    "random 20-way": ["test.protocol=random"],
}


def train(name: str, out: Path, data: str) -> subprocess.Popen | None:
    """Start recipe ``name`` in ``out/name`` unless a finished run is there."""
    folder = out / name
    if (folder / "summary.json").is_file():
        return None
    if folder.exists():
        raise SystemExit(f"{folder} holds an unfinished run; move it away or finish it")
    cmd = [
        sys.executable, "-m", "metarun", "experiment=protonet_omniglot_new_alphabets",
        f"dataset.root={data}", "dataset.download=false", "device.threads=1", "logger=none",
        f"hydra.run.dir={folder}", *RECIPES[name],
    ]  # fmt: skip
    log = open(out / f"{name}.log", "w")
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def train_all(names: list[str], out: Path, data: str, jobs: int) -> dict[str, float]:
    """CPU seconds of each recipe trained now, ``jobs`` at a time."""
    pending, running, cpu = list(names), {}, {}
    while pending or running:
        while pending and len(running) < jobs:
            name = pending.pop(0)
            process = train(name, out, data)
            if process is not None:
                running[process.pid] = (name, process)
        if running:
            pid, status, usage = os.wait4(-1, 0)
            name, _ = running.pop(pid)
            if status:
                raise SystemExit(f"recipe {name} failed: see {out / (name + '.log')}")
            cpu[name] = usage.ru_utime + usage.ru_stime
            (out / name / "cpu_seconds.json").write_text(json.dumps(cpu[name]))
    return cpu


def score(checkpoint: Path, overrides: list[str]) -> tuple[float, float]:
    """Test error % and its 95% CI half-width."""
    from metarun import trained

    scores = trained.evaluate_checkpoint([f"checkpoint={checkpoint}", *overrides])
    return 100 * (1 - scores["test/acc"]), 100 * scores["test/acc_ci95"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder with the small Omniglot archives")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "one_shot_recipes")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--episodes", type=int, default=1000, help="test episodes per column")
    parser.add_argument("--eval-only", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = str(Path(args.data).resolve())
    if not args.eval_only:
        train_all(args.recipes, args.out, data, args.jobs)
    rows = []
    for name in args.recipes:
        folder = args.out / name
        summary = json.loads((folder / "summary.json").read_text())
        cpu_file = folder / "cpu_seconds.json"
        cpu = json.loads(cpu_file.read_text()) if cpu_file.is_file() else summary["train/time_s"]
        for step, extra in EVALS.items():
            cells = [
                score(folder, [f"test.episodes={args.episodes}", *column, *extra])
                for column in COLUMNS.values()
            ]
            val = 100 * (1 - summary["best_val/acc"])
            rows.append((name + step, summary["train/steps"], cpu / 60, val, cells))
    header = ["recipe", "steps", "CPU min", "val err %", *(f"{c} err %" for c in COLUMNS)]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, steps, minutes, val, cells in rows:
        numbers = " | ".join(f"{m:.1f} ± {ci:.1f}" for m, ci in cells)
        print(f"| {name} | {steps} | {minutes:.0f} | {val:.1f} | {numbers} |")


if __name__ == "__main__":
    main()
