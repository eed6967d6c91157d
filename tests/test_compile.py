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
TINY_MAML = ["dataset=glyphs", *GLYPHS_SMALL, "backbone.hidden=4", "backbone.blocks=2"]
TINY_MAML += ["task.meta_batch=2", "task.query=1", "algo.inner_steps=1"]


def _experiment(setting: str, steps: int = 10, overrides=TINY_PROTONET):
    """The experiment, its training step compiled when ``train.compile`` says so (as fit does)."""
    cfg = compose_config([*overrides, f"train.compile={setting}", f"train.steps={steps}"])
    exp = build_experiment(cfg, run_dir=Path("unused"))
    if compiling.wanted(setting if setting == "auto" else setting == "true", exp.learner, steps):
        compiling.compile_training(exp.learner)
    return exp


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
    assert isinstance(compiled.learner.meta_loss, compiling._FallsBack)
    assert not isinstance(eager.learner.meta_loss, compiling._FallsBack)
    reference, loss = _float64_gradient(eager)
    grads, compiled_loss = _float64_gradient(compiled)
    assert not compiled.learner.meta_loss.failed  # it ran compiled, not the fallback
    torch.testing.assert_close(compiled_loss, loss, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads, reference, rtol=1e-9, atol=1e-11)
    assert any((tmp_path / "inductor").iterdir())  # Inductor's cache, where the run put it


@pytest.mark.slow
def test_mamls_compiled_task_step_gives_the_eager_gradients(tmp_path, monkeypatch):
    """Second order through the written-out inner gradient, compiled: autograd's float64
    meta-gradient (tests/test_explicit.py checks every option uncompiled)."""
    monkeypatch.setenv("METARUN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(compiling, "_USERS_INDUCTOR_CACHE", None)
    eager, compiled = (
        _experiment("false", overrides=TINY_MAML),
        _experiment("true", overrides=TINY_MAML),
    )
    assert isinstance(compiled.learner.compiled_task, compiling._FallsBack)
    reference, loss = _float64_gradient(eager)
    grads, compiled_loss = _float64_gradient(compiled)
    assert not compiled.learner.compiled_task.failed
    torch.testing.assert_close(compiled_loss, loss, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads, reference, rtol=1e-9, atol=1e-11)


TINY_MANN = ["algo=mann", "dataset=glyphs", *GLYPHS_SMALL, "task.query=0", "task.shot=2"]
TINY_MANN += ["task.meta_batch=2"]


@pytest.mark.parametrize(
    "overrides", [TINY_PROTONET, TINY_MAML, TINY_MANN], ids=["protonet", "maml", "mann"]
)
def test_training_steps_do_not_recompile(overrides, monkeypatch):
    """The compiled step is traced once: later training steps (new batches, a new
    ``meta_step``) hit its guards instead of compiling again. Dynamo's own counting backend
    stands in for Inductor, so this takes a second."""
    from torch._dynamo.testing import CompileCounter

    from metarun.trainer import Trainer

    counter, real = CompileCounter(), torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, backend=counter, **kw))
    torch._dynamo.reset()
    trainer = Trainer(_experiment("true", overrides=overrides))
    trainer.train_step()
    frames = counter.frame_count
    assert frames >= 1
    for _ in range(3):
        trainer.train_step()
    assert counter.frame_count == frames


@pytest.mark.parametrize(
    ("overrides", "what"),
    [(TINY_PROTONET, "ProtoNet.meta_loss"), (TINY_MAML, "MAML's task step")],
    ids=["protonet", "maml"],
)
def test_a_compilation_that_fails_warns_once_and_runs_eager(monkeypatch, capsys, overrides, what):
    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("InductorError: no working C++ compiler found\nmore detail")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    reference, loss = _float64_gradient(_experiment("false", overrides=overrides))
    exp = _experiment("true", overrides=overrides)
    for _ in range(2):
        exp.learner.zero_grad()
        grads, fallback_loss = _float64_gradient(exp)
    torch.testing.assert_close(grads, reference)
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        f"metarun: warning: torch.compile of {what} failed (RuntimeError: "
        "InductorError: no working C++ compiler found); running eager (train.compile=false "
        "avoids the attempt)"
    )


def test_fit_compiles_what_the_rule_says(run_inprocess, monkeypatch, capsys):
    """A run compiles (once, before its first step, saying so) when ``train.compile`` is true,
    or auto with at least AUTO_MIN_STEPS fp32 steps to train of a learner that compiles; one
    that does not says why. An experiment built for other uses is never compiled.
    """
    compiled = []
    monkeypatch.setattr(compiling, "compile_training", compiled.append)
    few = ["train.steps=2", "val.every=2", "val.episodes=2", "test.episodes=2", "logger=none"]
    run_inprocess([*TINY_PROTONET, *few, "train.compile=true"], name="true")
    assert len(compiled) == 1 and "compiling ProtoNet's training step" in capsys.readouterr().out
    run_inprocess([*TINY_PROTONET, *few, "train.compile=auto"], name="auto")
    assert len(compiled) == 1
    run_inprocess([*TINY_MAML, *few, "train.compile=true"], name="maml")
    assert len(compiled) == 2 and "compiling MAML's training step" in capsys.readouterr().out
    mamlpp = ["algo=mamlpp", *TINY_MAML, *few, "train.compile=true"]
    run_inprocess(mamlpp, name="mamlpp")
    assert len(compiled) == 2
    said = capsys.readouterr().out
    assert "MAMLPlusPlus's training step does not compile (MAML++'s per-step" in said
    learner = _experiment("false").learner
    steps = compiling.AUTO_MIN_STEPS
    assert compiling.wanted("auto", learner, steps) and not compiling.wanted(
        "auto", learner, steps - 1
    )
    assert not compiling.wanted("auto", learner, 10 * steps, "bf16")  # no faster there
    reptile = compose_config(["algo=reptile", "dataset=glyphs", *GLYPHS_SMALL])
    assert not compiling.wanted(True, build_experiment(reptile, run_dir=Path("unused")).learner, 9)
    with pytest.raises(Exception, match="train.compile='sometimes' is unknown"):
        _experiment("sometimes")
