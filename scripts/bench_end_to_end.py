"""End-to-end wall time of paper presets, scaled to a few thousand steps: this tree's defaults,
this tree with ``train.compile=true`` (a cold compile cache: compile time included), and an
earlier revision's defaults (the code before the speed options), one after another.

Usage:
  python scripts/bench_end_to_end.py --old d9de86d                  # about 25 min on 2 cores
  python scripts/bench_end_to_end.py --old d9de86d --steps 500 --experiments mann_omniglot_5way

Each run is a fresh ``python -m metarun experiment=<E> train.steps=<N>`` process (W&B off,
everything else the preset's: validation, test episodes, checkpoints), timed from start to end.
The dataset cache is built once per revision before the timed runs (a ``train.steps=0`` run), so
what is timed is training, validation and test. The earlier revision is exported with
``git archive`` into a temporary folder and run from there with the same Python environment.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def export(rev: str, into: Path) -> Path:
    """The tree of ``rev`` under ``into`` (``git archive``)."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def run(tree: Path, cache: Path, out: Path, overrides: list[str]) -> float:
    """Seconds one metarun process of ``tree`` takes; raises with its last lines if it fails."""
    env = {**os.environ, "PYTHONPATH": str(tree), "METARUN_CACHE_DIR": str(cache)}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)  # metarun's own cache folder: cold per variant
    cmd = [sys.executable, "-m", "metarun", *overrides, "logger=none", f"hydra.run.dir={out}"]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="the earlier revision (e.g. a commit)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument(
        "--experiments", nargs="*", default=["protonet_omniglot_20w1s", "mann_omniglot_5way"]
    )
    parser.add_argument("--root", default=str(ROOT.parent / "shared/data/omniglot"))
    parser.add_argument(
        "--data",
        nargs="*",
        default=["dataset.background=small1+small2"],
        help="dataset overrides (default: the two small background sets beside the project)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="metarun-e2e-") as tmp:
        work = Path(tmp)
        old = export(args.old, work / "old")
        variants = {  # name: (tree, cache folder, extra overrides)
            f"{args.old} defaults": (old, work / "cache-old", []),
            "this tree, defaults": (ROOT, work / "cache-new", []),
            "this tree, train.compile=true": (ROOT, work / "cache-compile", ["train.compile=true"]),
        }
        print(f"{args.steps} training steps per run; dataset.root={args.root}", *args.data)
        for experiment in args.experiments:
            preset = [f"experiment={experiment}", f"dataset.root={args.root}", *args.data]
            for name, (tree, cache, extra) in variants.items():
                warm = ["train.steps=0", "val.episodes=2", "test.episodes=2"]
                folder = "".join(c if c.isalnum() else "_" for c in name)
                run(tree, cache, work / "warm" / experiment / folder, [*preset, *warm])
                out = work / experiment / folder
                seconds = run(tree, cache, out, [*preset, f"train.steps={args.steps}", *extra])
                print(f"{experiment:<26} {name:<32} {seconds:8.1f} s", flush=True)


if __name__ == "__main__":
    main()
