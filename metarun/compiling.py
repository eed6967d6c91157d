"""``train.compile``: :func:`torch.compile` of a learner's training step, where it compiles.

What is compiled is what :meth:`MetaLearner.compile_with` names, for learners that compile
(:attr:`MetaLearner.compiles`: no ``uncompiled_reason``): by default ``meta_loss`` (one forward
whose loss is backpropagated once: ProtoNet, MANN / LSTM; the backward follows through
AOTAutograd); for MAML and its
variants each task's step, inner loop and query loss, with the inner gradient written out as
tensor ops (:mod:`metarun.backbones.explicit`) so that no double backward is left to trace
(Conv4 and MLP backbones; MAML++'s per-step options stay eager). Reptile runs an inner optimizer
and stays eager. Evaluation stays eager (``docs/performance.md``: it is a small share of a long
run; MAML evaluates task by task, so a compiled evaluation would have one shape anyway).

``true`` compiles; ``false`` does not; ``auto`` compiles fp32 runs with at least
:data:`AUTO_MIN_STEPS` steps left to train (the measured rule, docs/performance.md).
:meth:`Trainer.fit <metarun.trainer.Trainer.fit>` decides, before its first step: an
experiment built for anything else (tests, benchmarks, metarun-eval) is never compiled. A
compilation that fails (no C++ compiler, a graph Inductor cannot build) costs one warning line
and the run goes on eager. Inductor's caches live in metarun's cache folder
(``<cache>/inductor``), so a second run of the same shapes starts from compiled code.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

from metarun.data.download import cache_dir
from metarun.errors import MetarunError, warn

#: ``TORCHINDUCTOR_CACHE_DIR`` as the user set it before metarun ran (None: metarun's cache).
_USERS_INDUCTOR_CACHE = os.environ.get("TORCHINDUCTOR_CACHE_DIR")

#: ``train.compile=auto`` compiles fp32 runs of at least this many training steps. Measured on
#: 2 CPU cores (scripts/bench_speedups.py, scripts/bench.py, docs/performance.md): ProtoNet's
#: cold compile took 15-22 s and made its step 1.18-1.31x faster, repaid after 400-1,600 steps;
#: MANN's took 106 s for 1.80x, repaid after 2,900 steps; MAML's 20-150 s (the longer, the more
#: inner steps) for 1.23-1.46x, repaid after 100-220 meta-batches of 32 tasks; under bf16
#: ProtoNet compiled was no faster than bf16 eager (so auto leaves bf16 / fp16 runs eager).
#: The quick start (1,500 steps), debug runs and tests stay eager; a warm Inductor cache makes
#: the compile a few seconds.
AUTO_MIN_STEPS = 5000


def check(setting: Any) -> None:
    if setting not in ("auto", True, False):
        raise MetarunError(f"train.compile={setting!r} is unknown; use auto, true or false")


def wanted(setting: Any, learner: Any, steps: int, precision: str = "fp32") -> bool:
    """Whether this run compiles its training step (``setting`` already checked)."""
    if not learner.compiles:
        return False
    auto = setting == "auto" and steps >= AUTO_MIN_STEPS and precision == "fp32"
    return setting is True or auto


class _FallsBack:
    """``compiled(*args)``; if compiling fails, one warning and ``eager(*args)`` from then on."""

    def __init__(self, compiled: Callable, eager: Callable, what: str) -> None:
        self.compiled, self.eager, self.what = compiled, eager, what
        self.failed = False

    def __call__(self, *args, **kwargs):
        if self.failed:
            return self.eager(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except Exception as e:  # dynamo / inductor errors (no compiler, unsupported graph)
            if isinstance(e, MetarunError):
                raise
            self.failed = True
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            warn(f"torch.compile of {self.what} failed ({type(e).__name__}: {first}); "
                 "running eager (train.compile=false avoids the attempt)")  # fmt: skip
            return self.eager(*args, **kwargs)


def compile_training(learner: Any) -> None:
    """Compile ``learner``'s training step (:meth:`MetaLearner.compile_with`: ``meta_loss`` by
    default, each task's step for MAML), falling back to eager."""
    import torch

    if _USERS_INDUCTOR_CACHE is None:  # torch sets it itself (to /tmp) once it looks
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir() / "inductor")
    # A graph break (ProtoNet reads its way from the labels) is expected, not news: dynamo's
    # many-line warnings about it are kept off the run's output.
    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)
    learner.compile_with(
        lambda fn, eager, what: _FallsBack(torch.compile(fn, dynamic=False), eager, what)
    )
