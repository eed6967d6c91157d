"""Config fuzz: random values for every field of every schema, each through the real CLI.

    .venv/bin/python scripts/fuzz.py --draws 300 --seed 0 --budget 600

Each draw picks an algorithm, a dataset (glyphs, sinusoid, tiny miniImageNet and CIFAR files
in their real formats, Omniglot when $METARUN_TEST_DATA or ../shared has the archives) and a
backbone, composes them, walks the composed config's fields (so a field added to a schema later
is drawn without a change here) and replaces one to three of them with a value drawn for its type:
wrong types, zero, negative, huge, NaN and inf, empty lists, unknown strings, null. Some draws
also aim at a finished run: ``hydra.run.dir`` or ``resume_dir`` set to it. ``metarun.cli.main``
then runs in this process (a fraction of a second per draw), and the draw passes when it

- exits 0, or exits non-zero with exactly one ``metarun: error:`` line and no traceback;
- leaves the finished run, and every earlier draw's folder, byte-identical.

A draw still running after ``--per-draw`` seconds (``train.steps=10**12`` is a valid, long run)
is stopped and counted as ``long``. Prints the tally, every distinct error message, and the
failures; exit code 1 when any draw failed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import io
import math
import os
import random
import re
import signal
import sys
import tempfile
import time
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TINY = ["train.steps=1", "train.log_every=1", "val.every=1", "val.episodes=2",
        "test.episodes=2", "logger=none", "checkpoint.every=0"]  # fmt: skip
ALGOS = ["maml", "fomaml", "anil", "metasgd", "mamlpp", "reptile", "protonet", "mann", "lstm",
         "pretrain"]  # fmt: skip
RL_ALGOS = ["maml_rl", "pretrained_rl"]  # on navigation2d only (MuJoCo tasks are slow to build)


class Long(BaseException):
    """A draw that ran past its time: a valid run that is long, not a failure."""


def tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def datasets(work: Path) -> dict[str, list[str]]:
    """Overrides that make each dataset small and offline."""
    from tests.conftest import OMNIGLOT_DATA
    from tests.fewshot_fixtures import write_cifar_archive, write_mini_pickles

    mini = write_mini_pickles(work / "mini")
    md5 = write_cifar_archive(work / "cifar" / "cifar-100-python.tar.gz")
    cifar = [f"dataset.root={work / 'cifar'}", f"dataset.md5={md5}", "dataset.download=false"]
    small = ["task.way=3", "task.shot=1", "task.query=1"]
    out = {
        "glyphs": ["dataset=glyphs", "dataset.classes=[12,6,6]", *small],
        "sinusoid": ["dataset=sinusoid", "task.shot=3", "task.query=3"],
        "miniimagenet": ["dataset=miniimagenet", f"dataset.root={mini}", *small],
        "cifar_fs": ["dataset=cifar_fs", *cifar, *small],
        "navigation2d": [
            "dataset=navigation2d",
            "dataset.horizon=3",
            "task.shot=2",
            "task.query=2",
            "task.meta_batch=2",
        ],  # fmt: skip
    }
    if OMNIGLOT_DATA is not None:
        out["omniglot"] = ["dataset=omniglot", f"dataset.root={OMNIGLOT_DATA}",
                           "dataset.background=small1", "dataset.split=random",
                           "dataset.download=false", *small]  # fmt: skip
    return out


def fields(cfg, prefix: str = "") -> list[tuple[str, typing.Any]]:
    """(dotted key, type hint) of every schema field under ``cfg``."""
    import dataclasses

    from omegaconf import DictConfig, OmegaConf

    schema = OmegaConf.get_type(cfg)
    if not dataclasses.is_dataclass(schema):
        return []
    hints = typing.get_type_hints(schema)
    out = []
    for f in dataclasses.fields(schema):
        if f.name.startswith("_") and f.name != "_target_":
            continue
        node = cfg._get_node(f.name)
        if isinstance(node, DictConfig) and not node._is_none():
            out += fields(node, f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", hints.get(f.name)))
    return out


PLAUSIBLE_WORDS = ["auto", "max", "stride", "running", "transductive", "key", "add", "head",
                   "all", "small1", "lake", "random", "sgd", "adam", "relu"]  # fmt: skip


def value_for(hint, rng: random.Random) -> str:
    """A value (as typed on the command line) drawn for a field of type ``hint``: half the
    time a plausible one (so that draws reach past the first check), else an odd one."""
    args = typing.get_args(hint)
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    plausible = rng.random() < 0.5
    odd = ["null", "abc", "''", "[]", "[1,2]", "{a:1}"]
    if base is bool:
        pool = ["true", "false"] if plausible else ["2", "maybe", *odd]
    elif base is int:
        pool = ["0", "1", "2", "3", "5"] if plausible else ["-1", "-7", "1.5", "nan", str(10**12),
                                                           str(2**70), *odd]  # fmt: skip
    elif base is float:
        pool = ["0.0", "0.001", "0.1", "0.5", "1.0", "2"] if plausible else [
            "-1.0", "1e-300", "1e300", "nan", "inf", "-inf", *odd]  # fmt: skip
    elif typing.get_origin(base) in (list, typing.List):
        pool = ["[1]", "[2,2]", "[1,2,3]", "[]"] if plausible else [
            "[0]", "[-1]", "[1e12]", "[a]", "[nan]", "[1,2,3,4,5]", "5", "null"]  # fmt: skip
    else:  # str, enums, Any
        pool = PLAUSIBLE_WORDS if plausible else [
            "unknown_xyz", "", "5", "-1", "null", "[1]", "a.b.C", "torch.nn.Linear"]  # fmt: skip
    return rng.choice(pool)


def draw(rng: random.Random, data: dict, compose, done: Path, n: int, work: Path) -> list[str]:
    algo = rng.choice(ALGOS + RL_ALGOS)
    if algo in RL_ALGOS:
        dataset = "navigation2d"
    else:
        dataset = rng.choice([d for d in data if d not in ("navigation2d", "sinusoid")
                              or (d == "sinusoid" and algo in ALGOS[:6])])  # fmt: skip
    overrides = [f"algo={algo}", *data[dataset], *TINY]
    if dataset not in ("sinusoid", "navigation2d") and algo not in ("mann", "lstm"):
        overrides += ["backbone=conv4", "backbone.hidden=4", "backbone.blocks=2"]
    if algo in ("mann", "lstm"):
        overrides += ["task.query=0", "algo.controller_size=8", "algo.memory_slots=4"]
    if algo not in ("protonet", "mann", "lstm", "pretrain"):
        overrides += ["algo.eval_inner_steps=1"]
    if algo == "pretrain":  # a few images per step, a short test-time fit
        overrides += ["algo.batch_size=8", "algo.head_epochs=2"]
    candidates = [f for f in fields(compose(overrides)) if not f[0].startswith("logger.")]
    for key, hint in rng.sample(candidates, rng.randint(1, 3)):
        overrides.append(f"{key}={value_for(hint, rng)}")
    target = rng.random()
    if target < 0.1:
        overrides.append(f"hydra.run.dir={done}")
    elif target < 0.2:
        overrides += ["resume=true", f"resume_dir={done}", f"hydra.run.dir={work / f'd{n}'}"]
    else:
        overrides.append(f"hydra.run.dir={work / f'd{n}'}")
    return overrides


def run_cli(args: list[str], seconds: float) -> tuple[str, str]:
    """(outcome, stderr): outcome is ok, error (one line), long, or a failure description."""
    from metarun import cli

    def alarm(signum, frame):
        raise Long()

    err = io.StringIO()
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    argv, sys.argv = sys.argv, ["metarun", *args]
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            cli.main()
        outcome = "ok"
    except SystemExit as e:
        outcome = "ok" if e.code in (0, None) else f"exit {e.code}"
    except Long:
        outcome = "long"
    except BaseException as e:  # noqa: BLE001 - an uncaught exception is a traceback
        outcome = f"traceback: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        sys.argv = argv
    text = err.getvalue()
    if outcome.startswith("exit"):
        errors = [line for line in text.splitlines() if line.startswith("metarun: error:")]
        outcome = "error" if len(errors) == 1 and "Traceback" not in text else (
            f"{outcome} with {len(errors)} error lines: {text[-600:]!r}")  # fmt: skip
    return outcome, text


def fuzz(draws: int, seed: int, budget: float, per_draw: float = 20.0) -> dict:
    """Run the draws (until ``budget`` seconds); returns the tally, messages and failures."""
    import torch

    from metarun.compose import compose_config

    torch.set_num_threads(1)
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="metarun-fuzz-"))
    os.chdir(work)  # relative paths a draw names (dataset.root=small1) land here, not in a clone
    done = work / "done"
    outcome, text = run_cli([*TINY, "train.steps=2", f"hydra.run.dir={done}"], 120)
    assert outcome == "ok", text
    snapshots = {done: tree(done)}
    data = datasets(work)

    composed = compose_config

    tally, messages, failures = collections.Counter(), collections.Counter(), []
    start = time.perf_counter()
    for n in range(draws):
        if time.perf_counter() - start > budget:
            break
        args = draw(rng, data, composed, done, n, work)
        outcome, text = run_cli(args, per_draw)
        tally[outcome if outcome in ("ok", "error", "long") else "failed"] += 1
        if outcome == "error":
            line = next(x for x in text.splitlines() if x.startswith("metarun: error:"))
            messages[re.sub(r"/tmp/\S+", "PATH", line)[16:130]] += 1
        elif outcome not in ("ok", "long"):
            failures.append(f"draw {n}: {' '.join(args)}\n    {outcome}")
        for folder, before in snapshots.items():
            if tree(folder) != before:
                failures.append(f"draw {n}: changed {folder}: {' '.join(args)}")
                snapshots[folder] = tree(folder)
        own = work / f"d{n}"
        if outcome != "long" and own.is_dir():
            snapshots[own] = tree(own)  # later draws must leave it as it is now
    tally["draws"] = sum(tally.values())
    tally["seconds"] = math.ceil(time.perf_counter() - start)
    return {"tally": dict(tally), "messages": messages, "failures": failures, "work": work}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=float, default=600, help="seconds for all draws")
    parser.add_argument("--per-draw", type=float, default=20, help="seconds before 'long'")
    args = parser.parse_args()
    result = fuzz(args.draws, args.seed, args.budget, args.per_draw)
    print(f"fuzz (seed {args.seed}): {result['tally']}")
    for message, count in result["messages"].most_common():
        print(f"  {count:4d} x {message}")
    if result["failures"]:
        print(f"fuzz FAILED ({len(result['failures'])}):\n  " + "\n  ".join(result["failures"]))
        sys.exit(1)
    print("fuzz passed: every draw ran or failed with one line; no earlier folder changed")


if __name__ == "__main__":
    main()
