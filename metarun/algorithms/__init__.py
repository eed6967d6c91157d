"""Meta-learners: each wraps a backbone and turns a :class:`~metarun.data.TaskBatch` into a loss."""

from metarun.algorithms.base import MetaLearner
from metarun.algorithms.maml import MAML
from metarun.algorithms.mann import MANN
from metarun.algorithms.protonet import ProtoNet
from metarun.algorithms.reptile import Reptile

__all__ = ["MetaLearner", "MAML", "MANN", "ProtoNet", "Reptile"]
