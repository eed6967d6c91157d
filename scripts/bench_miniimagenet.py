"""miniImageNet-sized data: start-up time and memory, and meta-training throughput.

    .venv/bin/python scripts/bench_miniimagenet.py [--root DIR] [--steps 10] [--json FILE]

Writes a synthetic miniImageNet in the pickle-cache layout (64 + 16 + 20 classes x 600 random
84x84 RGB images, 1.27 GB; kept in ``--root`` for later runs), then, each in a fresh process:

- the first load (unpickle with the restricted unpickler, convert to the uint8 cache, write it)
  and a second load (memory-maps the cache): wall time, resident memory after loading and peak;
- ``experiment=protonet_miniimagenet_5w1s`` (Conv4-64, 30-way 1-shot 15-query training episodes)
  and ``experiment=maml_miniimagenet_5w1s`` (Conv4-32, 5 inner steps, second order, meta-batch 4)
  training steps through the real ``Trainer.train_step`` (sampling included): steps/s, tasks/s,
  the share of a step spent sampling, and peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SPLITS = {"train": 64, "val": 16, "test": 20}
PER_CLASS, SIZE = 600, 84
PRESETS = {
    "protonet conv4-64 (30-way train)": "protonet_miniimagenet_5w1s",
    "maml conv4-32 (5 inner steps, 2nd order)": "maml_miniimagenet_5w1s",
}


def write_synthetic(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, classes in SPLITS.items():
        path = root / f"mini-imagenet-cache-{split}.pkl"
        if path.is_file():
            continue
        images = rng.integers(0, 256, (classes * PER_CLASS, SIZE, SIZE, 3), dtype=np.uint8)
        names = [f"n{split}{c:05d}" for c in range(classes)]
        class_dict = {
            n: list(range(c * PER_CLASS, (c + 1) * PER_CLASS)) for c, n in enumerate(names)
        }
        with open(path.with_suffix(".tmp"), "wb") as f:
            pickle.dump({"image_data": images, "class_dict": class_dict}, f, protocol=4)
        path.with_suffix(".tmp").rename(path)


def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def probe_load(root: str) -> dict:
    from metarun.data import MiniImageNet

    base = status_mb("VmRSS")
    start = time.perf_counter()
    ds = MiniImageNet(root=root)
    seconds = time.perf_counter() - start
    return {
        "seconds": round(seconds, 3),
        "rss_mb": round(status_mb("VmRSS") - base),
        "peak_mb": round(status_mb("VmHWM") - base),
        "classes": [ds.num_classes(s) for s in SPLITS],
    }


def probe_train(root: str, preset: str, steps: int) -> dict:
    import torch

    from metarun.compose import compose_config
    from metarun.experiment import build_experiment
    from metarun.logging import Logger
    from metarun.trainer import Trainer

    overrides = [f"experiment={preset}", f"dataset.root={root}", "logger=none", "device=cpu"]
    overrides += ["val.episodes=2", "val.batch_size=2", "checkpoint.save=false"]
    cfg = compose_config(overrides)
    exp = build_experiment(cfg, run_dir=Path("/tmp"))
    trainer = Trainer(exp)
    trainer.logger = Logger([])
    exp.learner.train()
    trainer.train_step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    seconds = time.perf_counter() - start
    sample_start = time.perf_counter()
    for _ in range(steps):
        exp.dataset.sample("train", cfg.task.meta_batch, exp.train_shape, trainer.sampler)
    sampling = time.perf_counter() - sample_start
    return {
        "steps_per_s": round(steps / seconds, 3),
        "tasks_per_s": round(steps * cfg.task.meta_batch / seconds, 3),
        "sampling_share": round(sampling / seconds, 4),
        "peak_mb": round(status_mb("VmHWM")),
        "threads": torch.get_num_threads(),
    }


def in_fresh_process(*args: str) -> dict:
    """A probe's record, plus ``process_s``: the whole process, Python and imports included."""
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, __file__, "--probe", *args], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    record = json.loads(out.stdout.strip().splitlines()[-1])
    return {**record, "process_s": round(time.perf_counter() - start, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/tmp/metarun-miniimagenet-synthetic")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--json", help="write the records here")
    parser.add_argument("--probe", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        kind, *rest = args.probe
        result = probe_load(*rest) if kind == "load" else probe_train(rest[0], rest[1], args.steps)
        print(json.dumps(result))
        return

    root = Path(args.root)
    start = time.perf_counter()
    write_synthetic(root)
    print(f"synthetic miniImageNet in {root} ({time.perf_counter() - start:.0f} s to write)")
    for cache in root.glob("miniimagenet-cache/*"):
        cache.unlink()  # the first load below builds the cache from the pickles
    records = []
    for label in ("first load (decode, write cache)", "second load (memory-mapped cache)"):
        r = in_fresh_process("load", str(root))
        records.append({"what": label, **r})
        print(f"{label:36s} {r['seconds']:7.3f} s (process {r['process_s']:.1f} s with imports)"
              f"   resident +{r['rss_mb']} MB   peak +{r['peak_mb']} MB")  # fmt: skip
    for label, preset in PRESETS.items():
        r = in_fresh_process("train", str(root), preset)
        records.append({"what": label, "preset": preset, **r})
        print(f"{label:42s} {r['steps_per_s']:7.3f} steps/s  {r['tasks_per_s']:7.3f} tasks/s  "
              f"sampling {100 * r['sampling_share']:.2f}% of a step  peak {r['peak_mb']} MB "
              f"({r['threads']} threads)")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=2) + "\n")


if __name__ == "__main__":
    main()
