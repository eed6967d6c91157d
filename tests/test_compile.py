"""``train.compile``: the compiled training loss gives the eager gradients (float64), a
compilation that fails falls back to eager with one warning, and ``auto`` follows its rule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from metarun import compiling
from metarun.compose import compose_config
from metarun.data import TaskBatch
from metarun.experiment import build_experiment
from tests.conftest import GLYPHS_SMALL

TINY_PROTONET = ["algo=protonet", "dataset=glyphs", *GLYPHS_SMALL, "task.train_way=null"]
TINY_PROTONET += ["backbone.hidden=8", "backbone.blocks=2", "task.meta_batch=2", "task.query=2"]


def _experiment(setting: str, steps: int = 10):
    cfg = compose_config([*TINY_PROTONET, f"train.compile={setting}", f"train.steps={steps}"])
    return build_experiment(cfg, run_dir=Path("unused"))


def _float64_gradient(exp) -> tuple[torch.Tensor, torch.Tensor]:
    exp.learner.double()
    batch = exp.train_batch(torch.Generator().manual_seed(0))
    batch = TaskBatch(batch.support_x.double(), batch.support_y, batch.query_x.double(),
                      batch.query_y)  # fmt: skip
    metrics = exp.learner.meta_backward(batch)
    grads = torch.cat([p.grad.flatten() for p in exp.learner.parameters()])
    return grads, metrics["loss"]


@pytest.mark.slow
def test_the_compiled_training_loss_gives_the_eager_gradients(tmp_path, monkeypatch):
    monkeypatch.setenv("METARUN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/where-torch-put-it")  # torch's own
    monkeypatch.setattr(compiling, "_USERS_INDUCTOR_CACHE", None)  # not the user's
    eager, compiled = _experiment("false"), _experiment("true")
    assert (eager.compiled, compiled.compiled) == (False, True)
    reference, loss = _float64_gradient(eager)
    grads, compiled_loss = _float64_gradient(compiled)
    assert not compiled.learner.meta_loss.failed  # it ran compiled, not the fallback
    torch.testing.assert_close(compiled_loss, loss, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads, reference, rtol=1e-9, atol=1e-11)
    assert any((tmp_path / "inductor").iterdir())  # Inductor's cache, where the run put it


def test_a_compilation_that_fails_warns_once_and_runs_eager(monkeypatch, capsys):
    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("InductorError: no working C++ compiler found\nmore detail")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    reference, loss = _float64_gradient(_experiment("false"))
    exp = _experiment("true")
    for _ in range(2):
        exp.learner.zero_grad()
        grads, fallback_loss = _float64_gradient(exp)
    torch.testing.assert_close(grads, reference)
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        "metarun: warning: torch.compile of ProtoNet.meta_loss failed (RuntimeError: "
        "InductorError: no working C++ compiler found); running eager (train.compile=false "
        "avoids the attempt)"
    )


def test_auto_compiles_long_runs_of_learners_that_compile():
    assert not _experiment("auto", steps=compiling.AUTO_MIN_STEPS - 1).compiled
    assert _experiment("auto", steps=compiling.AUTO_MIN_STEPS).compiled
    bf16 = compose_config([*TINY_PROTONET, "train.precision=bf16", "train.steps=5000"])
    assert not build_experiment(bf16, run_dir=Path("unused")).compiled  # no faster there
    maml = compose_config(["dataset=glyphs", *GLYPHS_SMALL, "train.compile=true"])
    assert not build_experiment(maml, run_dir=Path("unused")).compiled  # double backward
    with pytest.raises(Exception, match="train.compile='sometimes' is unknown"):
        _experiment("sometimes")
