"""Sinusoid tasks, fixed evaluation episodes, confidence intervals, device choice."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from metarun.data import Sinusoid, TaskShape
from metarun.device import resolve_device
from metarun.errors import MetarunError
from metarun.evaluate import fixed_episodes, mean_ci95


def test_sinusoid_draws_in_the_papers_ranges():
    ds = Sinusoid()
    amp, phase = ds.task_parameters(20000, torch.Generator().manual_seed(0))
    assert 0.1 <= amp.min() < 0.2 and 4.9 < amp.max() <= 5.0
    assert 0.0 <= phase.min() < 0.01 and math.pi - 0.01 < phase.max() <= math.pi
    batch = ds.sample("train", 2000, TaskShape(1, 10, 7), torch.Generator().manual_seed(0))
    x = torch.cat([batch.support_x, batch.query_x], 1)
    assert -5.0 <= x.min() < -4.99 and 4.99 < x.max() <= 5.0


def test_sinusoid_tasks_are_the_stated_function_with_shared_support_and_query():
    ds = Sinusoid()
    batch = ds.sample("train", 64, TaskShape(1, 5, 3), torch.Generator().manual_seed(7))
    assert batch.support_x.shape == (64, 5, 1) and batch.query_y.shape == (64, 3, 1)
    amp, phase = ds.task_parameters(64, torch.Generator().manual_seed(7))
    for x, y in ((batch.support_x, batch.support_y), (batch.query_x, batch.query_y)):
        expected = amp[:, None, None] * torch.sin(x - phase[:, None, None])
        assert torch.allclose(y, expected)
    assert batch.is_regression and batch.num_tasks == 64


def test_sinusoid_rejects_an_inverted_range():
    with pytest.raises(MetarunError, match=r"dataset.amplitude=\[5.0, 0.1\]"):
        Sinusoid(amplitude=[5.0, 0.1])


def test_fixed_episodes_are_the_same_on_every_call_and_differ_by_seed():
    ds, shape, cpu = Sinusoid(), TaskShape(1, 5, 5), torch.device("cpu")
    a = list(fixed_episodes(ds, "test", shape, 10, 4, seed=3, device=cpu))
    b = list(fixed_episodes(ds, "test", shape, 10, 4, seed=3, device=cpu))
    c = list(fixed_episodes(ds, "test", shape, 10, 4, seed=4, device=cpu))
    assert [x.num_tasks for x in a] == [4, 4, 2]
    assert all(torch.equal(s, t) for x, y in zip(a, b) for s, t in zip(x, y))
    assert not torch.equal(a[0].support_x, c[0].support_x)


def test_mean_ci95_is_the_normal_interval():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0])
    mean, ci = mean_ci95(values)
    assert mean == pytest.approx(2.5)
    assert ci == pytest.approx(1.96 * values.std(unbiased=True).item() / 2.0)


def test_device_auto_and_missing_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(MetarunError, match="device=cuda was requested but no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(MetarunError, match="device=mps was requested"):
        resolve_device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def _cat(batches):
    return [torch.cat(parts) for parts in zip(*batches)]


@pytest.mark.parametrize("shuffle", [False, True])
def test_the_chunk_size_never_changes_which_episodes_are_drawn(shuffle):
    """Episodes are drawn in fixed blocks, then cut into chunks: any ``batch_size`` gives the
    same tasks in the same order (250 episodes cross two block boundaries)."""
    from metarun.data import Glyphs

    ds, shape, cpu = Glyphs(classes=[20, 10, 10]), TaskShape(3, 1, 2), torch.device("cpu")
    reference = _cat(fixed_episodes(ds, "test", shape, 250, 250, 5, cpu, shuffle=shuffle))
    for size in (1, 7, 100, 130):
        chunks = list(fixed_episodes(ds, "test", shape, 250, size, 5, cpu, shuffle=shuffle))
        assert all(c.num_tasks == size for c in chunks[:-1]) and chunks[-1].num_tasks <= size
        assert all(torch.equal(a, b) for a, b in zip(_cat(chunks), reference))


def test_auto_chunks_hold_no_more_examples_than_a_training_step():
    from metarun.evaluate import chunk_size

    one_shot = TaskShape(5, 1, 15)  # 80 examples per task
    assert chunk_size("auto", one_shot, one_shot, meta_batch=4) == 4
    assert chunk_size("auto", one_shot, TaskShape(20, 5, 15), meta_batch=1) == 5  # ProtoNet
    assert chunk_size("auto", TaskShape(20, 5, 15), one_shot, meta_batch=1) == 1  # at least one
    assert chunk_size(7, one_shot, one_shot, meta_batch=4) == 7


@pytest.mark.parametrize("algo", ["maml", "protonet", "mann", "reptile", "anil", "metasgd"])
def test_evaluation_results_do_not_depend_on_the_chunk(compose_cfg, algo):
    """Every learner scores each task on its own: 1 task or 12 at once, the same numbers."""
    from omegaconf import open_dict

    from metarun.evaluate import evaluate
    from metarun.experiment import build_experiment

    overrides = [f"algo={algo}", "dataset=glyphs", "dataset.classes=[20,10,10]", "task.shot=1"]
    overrides += ["task.query=0" if algo == "mann" else "task.query=2", "logger=none"]
    overrides += ["test.episodes=24", "task.train_way=null"]
    if algo != "mann":
        overrides += ["backbone=conv4", "backbone.hidden=8"]
    if algo not in ("mann", "protonet"):
        overrides += ["algo.eval_inner_steps=2"]
    cfg = compose_cfg(overrides)
    with open_dict(cfg):
        del cfg["hydra"]
    exp = build_experiment(cfg, run_dir=Path("unused"))
    results = []
    for size in (1, 12):
        exp.cfg.test.batch_size = size
        results.append(evaluate(exp.learner, exp.episodes("test"), "test"))
    assert results[0].keys() == results[1].keys()
    for key in results[0]:
        assert results[0][key] == pytest.approx(results[1][key], rel=1e-4, abs=1e-6), key
