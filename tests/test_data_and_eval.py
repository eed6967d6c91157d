"""Sinusoid tasks, fixed evaluation episodes, confidence intervals, device choice."""

from __future__ import annotations

import math

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
