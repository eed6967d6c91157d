"""Peak memory of every experiment preset: 2 training steps, one validation and one test chunk.

    .venv/bin/python scripts/preset_memory.py                 # all presets, CPU, a table
    .venv/bin/python scripts/preset_memory.py maml_miniimagenet_5w5s --device cuda

Each preset runs in a fresh process on synthetic data of its real shapes (image size, channels,
classes and samples per split, rotations), so no dataset is needed. The process's peak resident
memory is read (``VmHWM``) after building (model and dataset), after drawing the episodes a run
holds (every validation episode and one block of test episodes), after two training steps, and
after one validation chunk plus one test chunk of the preset's own ``val/test.batch_size``
(``auto`` unless the preset says otherwise), with the peak reset before each of the last two
(``/proc/self/clear_refs``), so the table shows whether evaluating ever needs more than
training. On CUDA the columns are ``torch.cuda.max_memory_allocated``. The budget the
presets must meet: 16 GB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_GB = 16
# Classes per split and samples per class of each dataset, as the real files have them.
SHAPES = {
    "metarun.data.Omniglot": ((1100, 100, 423), 20, 1, None),
    "metarun.data.Glyphs": (None, None, 1, None),
    "metarun.data.MiniImageNet": ((64, 16, 20), 600, 3, None),
    "metarun.data.CIFARFS": ((64, 16, 20), 600, 3, 32),
    "metarun.data.FC100": ((60, 20, 20), 600, 3, 32),
}


def presets() -> list[str]:
    return sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))


def synthetic(cfg):
    """A dataset of random images with the preset's shapes (or the real sinusoid)."""
    import torch
    from hydra.utils import instantiate

    from metarun.data.episodes import EpisodicImages

    target = cfg.dataset._target_
    if target not in SHAPES:
        return instantiate(cfg.dataset)  # sinusoid: generated, nothing to download
    classes, samples, channels, size = SHAPES[target]
    if target == "metarun.data.Glyphs":
        classes, samples = tuple(cfg.dataset.classes), cfg.dataset.samples_per_class
    size = size or cfg.dataset.image_size
    g = torch.Generator().manual_seed(0)
    splits = {
        split: torch.randint(
            0, 256, (n, samples, channels, size, size), generator=g, dtype=torch.uint8
        )
        for split, n in zip(("train", "val", "test"), classes)
    }
    shift = cfg.dataset.get("shift", 0)
    return EpisodicImages(splits, rotations=cfg.dataset.rotations, shift=shift)


def peak_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def probe(preset: str, device: str) -> dict:
    """In this process: the preset's phases and their peaks (MB)."""
    import torch

    from metarun.compose import compose_config
    from metarun.evaluate import evaluate
    from metarun.experiment import build_experiment
    from metarun.logging import Logger
    from metarun.trainer import Trainer

    torch.set_num_threads(2)
    cfg = compose_config([f"experiment={preset}", f"device={device}"])
    exp = build_experiment(cfg, run_dir=Path("/nonexistent"), dataset=synthetic(cfg))
    record = {"preset": preset, "built_mb": peak_mb(exp.device)}
    trainer = Trainer(exp)  # draws and keeps the validation episodes
    trainer.logger = Logger([])
    chunks = {"val": trainer.val_batches[0], "test": next(iter(exp.episodes("test")))}
    record["data_mb"] = peak_mb(exp.device)
    reset_peak(exp.device)
    start = time.perf_counter()
    for _ in range(2):
        trainer.train_step()
    record["train_s"] = round((time.perf_counter() - start) / 2, 2)
    record["train_mb"] = peak_mb(exp.device)
    reset_peak(exp.device)
    for split, chunk in chunks.items():
        evaluate(exp.learner, [chunk], split)
    record["eval_mb"] = peak_mb(exp.device)
    record["chunk"] = f"{exp.chunk('val')}/{exp.chunk('test')}"
    record["batch"] = f"{cfg.task.meta_batch}x{exp.train_shape.way}w{exp.train_shape.shot}s"
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="*", help="default: every preset")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # internal: one preset, JSON out
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(args.probe, args.device)))
        return
    rows, over = [], []
    header = f"{'preset':36s} {'train batch':>11s} {'chunk':>7s} {'built':>6s} {'+data':>6s} "
    header += f"{'train peak':>10s} {'eval peak':>10s} {'s/step':>7s}"
    print(f"peak resident memory (MB) on {args.device}, synthetic data of the presets' shapes")
    print(header)
    for preset in args.presets or presets():
        proc = subprocess.run(
            [sys.executable, __file__, "--probe", preset, "--device", args.device],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            print(f"{preset:36s} FAILED: {proc.stderr.strip().splitlines()[-1:]}")
            over.append(preset)
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(
            f"{preset:36s} {r['batch']:>11s} {r['chunk']:>7s} {r['built_mb']:6.0f} "
            f"{r['data_mb']:6.0f} {r['train_mb']:10.0f} {r['eval_mb']:10.0f} {r['train_s']:7.2f}",
            flush=True,
        )
        if max(r["train_mb"], r["eval_mb"]) > BUDGET_GB * 1024:
            over.append(preset)
    worst = max(rows, key=lambda r: max(r["train_mb"], r["eval_mb"]), default=None)
    if worst:
        print(f"largest: {worst['preset']} at {max(worst['train_mb'], worst['eval_mb']):.0f} MB")
    # 8 MB of slack: allocator noise between two peaks read a second apart
    evals_over = [r["preset"] for r in rows if r["eval_mb"] > max(r["train_mb"], r["data_mb"]) + 8]
    print(f"presets whose evaluation chunk peaked above their training step: {evals_over or 0}")
    if over:
        print(f"over {BUDGET_GB} GB or failed: {over}")
        sys.exit(1)
    print(f"every preset fits in {BUDGET_GB} GB")


if __name__ == "__main__":
    main()
