"""Prototypical Networks' rule against a hand computation."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from metarun.algorithms import ProtoNet
from metarun.data import Sinusoid, TaskBatch
from metarun.errors import MetarunError


class Flat(nn.Module):
    def forward(self, x):
        return x.flatten(-3)


def test_logits_are_negative_squared_distances_to_class_means():
    learner = ProtoNet(Flat(), functools.partial(torch.optim.Adam, lr=1e-3))
    support = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 6.0]]]).view(1, 4, 1, 1, 2)
    support_y = torch.tensor([[0, 0, 1, 1]])
    query = torch.tensor([[[1.0, 1.0], [0.0, 5.0]]]).view(1, 2, 1, 1, 2)
    query_y = torch.tensor([[0, 1]])
    batch = TaskBatch(support, support_y, query, query_y)
    logits = learner._logits(batch)
    # prototypes (1, 0) and (0, 5)
    expected = -torch.tensor([[[1.0, 1 + 16], [1 + 25, 0.0]]])
    assert torch.allclose(logits, expected)
    scores = learner.evaluate(batch)
    assert scores["acc"].tolist() == [1.0]
    loss, metrics = learner.meta_loss(batch)
    assert torch.isclose(loss, torch.nn.functional.cross_entropy(expected[0], query_y[0]))
    assert metrics["acc"] == 1.0


def test_protonet_refuses_regression():
    with pytest.raises(MetarunError, match="algo=protonet classifies"):
        ProtoNet.output_size(Sinusoid(), 5)
