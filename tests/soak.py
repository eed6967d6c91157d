"""Soak test: one real multirun of many short jobs with random overrides; every job must either
finish or fail with one line, and every job folder must hold a summary.json saying which.

    .venv/bin/python scripts/soak.py                  # 200 jobs, joblib launcher, 2 workers
    .venv/bin/python scripts/soak.py --runs 40 --seed 3 --out /tmp/soak

Each job is a generated preset (``experiment=soak_NNN`` under ``hydra.searchpath``) drawing the
algorithm, dataset, backbone, episode shape, schedule, logger and algorithm options at random
from ranges that are valid one by one. Some combinations cannot work (``algo=protonet
dataset=sinusoid``, a 14-pixel image under four pooling blocks, more classes than a split has):
those must fail with one ``metarun: error: job N: ...`` line and ``status: failed``. Anything
else (a traceback, a job without summary.json, a second error line for a job) fails the soak.
Exit code 0 when the soak passes; it prints the tally and the distinct failure messages.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

GLYPHS = {"dataset.classes": [30, 10, 10]}  # small splits: rendering and sampling stay cheap


def random_job(rng: random.Random) -> tuple[dict, dict]:
    """(config groups to override, values to set) for one job."""
    algo = rng.choice(
        ["maml", "fomaml", "anil", "metasgd", "mamlpp", "reptile", "protonet", "mann", "lstm",
         "pretrain"]
    )  # fmt: skip
    maml_like = algo in ("maml", "fomaml", "anil", "metasgd", "mamlpp")
    # Regression suits the MAML family and Reptile; one job in ten tries a classifier anyway.
    regression = rng.random() < (0.4 if maml_like or algo == "reptile" else 0.1)
    dataset = "sinusoid" if regression else "glyphs"
    groups = {"algo": algo, "dataset": dataset}
    values: dict = {
        "seed": rng.randrange(1000),
        "task.way": rng.randint(2, 5),
        "task.shot": rng.randint(1, 3),
        "task.query": 0 if algo in ("mann", "lstm") else rng.randint(1, 3),
        "task.meta_batch": rng.randint(1, 4),
        "train.steps": rng.randint(0, 12),
        "train.log_every": rng.randint(1, 5),
        "val.every": rng.randint(1, 8),
        "val.episodes": rng.randint(1, 6),
        "val.batch_size": rng.randint(1, 4),
        "test.episodes": rng.randint(2, 8),
        "test.batch_size": rng.randint(1, 4),
        "checkpoint.every": rng.choice([0, 0, 3]),
        "algo.optimizer.lr": round(10 ** rng.uniform(-4, 0.5), 6),  # the top end may diverge
        "logger": None,  # logger=none ...
    }
    if rng.random() < 0.05:  # ... except a few offline W&B runs
        values["logger"] = {"mode": "offline", "project": "soak"}
    if dataset == "glyphs":
        values.update(GLYPHS)
        values["dataset.image_size"] = rng.choice([14] + [20, 28] * 5)  # 14: too small for conv4
        if algo not in ("mann", "lstm") or rng.random() < 0.3:
            groups["backbone"] = "conv4"
            values["backbone.hidden"] = rng.choice([8, 16])
        # ProtoNet may train with more classes than it tests with, the others may not.
        many = rng.random() < (0.5 if algo == "protonet" else 0.05)
        values["task.train_way"] = rng.randint(2, 12) if many else None
    if maml_like:
        values["algo.inner_steps"] = rng.randint(1, 3)
        values["algo.eval_inner_steps"] = rng.randint(0, 3)
        values["algo.task_batching"] = rng.choice(["auto", "loop", "vmap", "fold"])
    if algo == "mamlpp":
        values["algo.multi_step_loss"] = rng.randint(0, 8)
        values["algo.first_order_until"] = rng.randint(0, 8)
    if algo == "reptile":
        values["algo.inner_steps"] = rng.randint(1, 3)
        values["algo.eval_inner_steps"] = rng.randint(0, 5)
        values["algo.inner_optimizer"] = rng.choice(["adam", "sgd"])
    if algo == "pretrain":
        values["algo.batch_size"] = rng.randint(1, 16)
        values["algo.head"] = rng.choice(["prototype", "logistic", "finetune", "cosine"])
        values["algo.classifier"] = rng.choice(["linear", "cosine"])
        values["algo.head_epochs"] = rng.randint(1, 5)
    if algo in ("mann", "lstm"):
        values["algo.controller_size"] = rng.choice([8, 16, 32])
        values["algo.memory_slots"] = rng.choice([4, 8, 16])
        values["algo.memory_width"] = rng.choice([4, 8])
        values["algo.read_heads"] = rng.randint(1, 2)
    return groups, values


def preset(groups: dict, values: dict) -> str:
    """A ``# @package _global_`` experiment file holding one job's overrides."""
    body: dict = {"defaults": [{f"override /{g}": v} for g, v in groups.items()]}
    for key, value in values.items():
        node = body
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return "# @package _global_\n" + yaml.safe_dump(body, sort_keys=False)


def check(sweep: Path, runs: int, stderr: str) -> list[str]:
    """Problems found in the sweep folder and the sweep's stderr; empty when the soak passed."""
    problems = []
    jobs = sorted(
        (p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
    )
    if len(jobs) != runs:
        problems.append(f"{len(jobs)} job folders, expected {runs}")
    error_lines = collections.defaultdict(list)
    for line in stderr.splitlines():
        match = re.match(r"metarun: error: job (\d+): ", line)
        if match:
            error_lines[int(match.group(1))].append(line)
    if "Traceback" in stderr:
        problems.append("a traceback on stderr")
    for job in jobs:
        path = job / "summary.json"
        if not path.is_file():
            problems.append(f"job {job.name}: no summary.json")
            continue
        summary = json.loads(path.read_text())
        lines = error_lines.get(int(job.name), [])
        if summary.get("status") == "finished":
            if lines:
                problems.append(f"job {job.name}: finished but printed {lines}")
        elif summary.get("status") == "failed":
            error = summary.get("error", "")
            if len(lines) != 1 or "\n" in error or not error or error not in lines[0]:
                problems.append(f"job {job.name}: failed with {error!r} but printed {lines}")
        else:
            problems.append(f"job {job.name}: status {summary.get('status')!r}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0, help="draws the jobs' overrides")
    parser.add_argument("--jobs", type=int, default=2, help="joblib workers")
    parser.add_argument("--out", help="sweep folder (default: a temporary one)")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="metarun-soak-"))
    presets = work / "configs" / "experiment"
    presets.mkdir(parents=True)
    for i in range(args.runs):
        (presets / f"soak_{i:03d}.yaml").write_text(preset(*random_job(rng)))
    sweep = Path(args.out or work / "sweep").resolve()
    metarun = Path(sys.executable).with_name("metarun")
    command = [
        str(metarun),
        "-m",
        f"hydra.searchpath=[file://{work / 'configs'}]",
        "experiment=" + ",".join(f"soak_{i:03d}" for i in range(args.runs)),
        "hydra/launcher=joblib",
        f"hydra.launcher.n_jobs={args.jobs}",
        f"hydra.sweep.dir={sweep}",
    ]
    print(f"soak: {args.runs} jobs (seed {args.seed}), presets in {presets}, sweep in {sweep}")
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=work)
    elapsed = time.perf_counter() - start
    problems = check(sweep, args.runs, proc.stderr)
    statuses = collections.Counter(
        json.loads((job / "summary.json").read_text()).get("status")
        for job in sweep.iterdir()
        if (job / "summary.json").is_file()
    )
    messages = collections.Counter(
        re.sub(r"\d+", "N", line.split(": ", 3)[-1])[:120]
        for line in proc.stderr.splitlines()
        if line.startswith("metarun: error: job ")
    )
    print(f"soak: {elapsed:.0f} s, exit code {proc.returncode}, statuses {dict(statuses)}")
    for message, count in messages.most_common():
        print(f"  {count:4d} x {message}")
    if problems:
        print("soak FAILED:\n  " + "\n  ".join(problems[:30]))
        print(proc.stderr[-3000:], file=sys.stderr)
        sys.exit(1)
    print("soak passed: every job finished or failed with one line, every job has summary.json")
    if not args.out:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
