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
user + system time (os.wait4). Evaluation-only steps on the ``--final`` recipes (test-time views,
then the transductive ones: soft k-means refinement, balanced assignment) re-score its
checkpoint with ``metarun-eval`` overrides. Every score is within-alphabet 20-way
1-shot with one query per character unless its column says otherwise; the validation column
(Greek, 500 episodes) is what picks, no test number feeds back into a choice.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NO_WARP = [f"dataset.warp.{k}=0" for k in ("rotate", "shear", "scale", "translate", "elastic")]
MODERATE = ["dataset.warp.rotate=10", "dataset.warp.shear=0.2", "dataset.warp.scale=0.15"]
MODERATE += ["dataset.warp.translate=0.06", "dataset.warp.elastic=0"]
# Training recipes: the preset (strong warps, 3,000 steps, the final recipe) plus these overrides.
RECIPES = {
    "preset": NO_WARP,  # today's ProtoNet Omniglot settings: no augmentation
    "warp": MODERATE,  # + random affine warps of training images
    "warp-6k": [*MODERATE, "train.steps=6000"],  # + twice the episodes
    "warp-strong": [],  # stronger warps instead, elastic too: the preset
}
# Evaluation-only steps on the --final recipes (metarun-eval overrides; {split}: val or test).
FINAL_STEPS = {
    "+views": ["{split}.views=8"],
    "+views+refine (transductive)": ["{split}.views=8", "algo.refine_steps=2"],
    "+views+balanced (transductive)": ["{split}.views=8", "algo.balanced=true"],
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


def score(checkpoint: Path, split: str, overrides: list[str]) -> tuple[float, float]:
    """Error % on ``split`` and its 95% CI half-width (one query per class, as Lake's runs)."""
    from metarun import trained

    # the same validation episodes for every run, no views unless a step adds them
    fixed = ["task.query=1", "val.episodes=500", "{split}.views=1"]
    overrides = [o.format(split=split) for o in [*fixed, *overrides]]
    scores = trained.evaluate_checkpoint([f"checkpoint={checkpoint}", f"split={split}", *overrides])
    return 100 * (1 - scores[f"{split}/acc"]), 100 * scores[f"{split}/acc_ci95"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder with the small Omniglot archives")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "one_shot_recipes")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--episodes", type=int, default=1000, help="test episodes per column")
    parser.add_argument("--final", nargs="*", default=["warp-strong"], help="+views, transductive")
    parser.add_argument("--eval-only", action="store_true")
    parser.add_argument("--train-only", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = str(Path(args.data).resolve())
    if not args.eval_only:
        train_all(args.recipes, args.out, data, args.jobs)
    if args.train_only:
        return
    rows = []
    for name in args.recipes:
        folder = args.out / name
        summary = json.loads((folder / "summary.json").read_text())
        cpu_file = folder / "cpu_seconds.json"
        cpu = json.loads(cpu_file.read_text()) if cpu_file.is_file() else summary["train/time_s"]
        steps = {"": [], **(FINAL_STEPS if name in args.final else {})}
        for step, extra in steps.items():
            val = score(folder, "val", extra)
            cells = [
                score(folder, "test", [f"test.episodes={args.episodes}", *column, *extra])
                for column in COLUMNS.values()
            ]
            rows.append((name + step, summary["train/steps"], cpu / 60, val, cells))
    header = ["recipe", "steps", "CPU min", "val err %", *(f"{c} err %" for c in COLUMNS)]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, steps, minutes, val, cells in rows:
        numbers = " | ".join(f"{m:.1f} ± {ci:.1f}" for m, ci in [val, *cells])
        print(f"| {name} | {steps} | {minutes:.0f} | {numbers} |")


if __name__ == "__main__":
    main()
