"""Backbones: plain ``nn.Module`` s that meta-learners adapt or embed with."""

from metarun.backbones.mlp import MLP

__all__ = ["MLP"]
