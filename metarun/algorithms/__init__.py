"""Meta-learners: each wraps a backbone and turns a :class:`~metarun.data.TaskBatch` into a loss.

One module per algorithm (``algo=<name>`` picks ``configs/algo/<name>.yaml``, whose ``_target_``
is the class): MAML and its variants FOMAML, ANIL, Meta-SGD and MAML++ (``maml.py`` is their
shared core), ProtoNet, MANN (and its LSTM baseline, ``memory: none``), Reptile; supervised
pre-training with test-time heads (``pretrain.py``); MAML-TRPO for meta-RL (``maml_rl.py``).
"""

from metarun.algorithms.anil import ANIL
from metarun.algorithms.base import MetaLearner
from metarun.algorithms.fomaml import FOMAML
from metarun.algorithms.fomaml_rl import FOMAMLRL
from metarun.algorithms.maml import MAML
from metarun.algorithms.maml_rl import MAMLRL
from metarun.algorithms.mamlpp import MAMLPlusPlus
from metarun.algorithms.mann import MANN
from metarun.algorithms.metasgd import MetaSGD
from metarun.algorithms.pretrain import Pretrain
from metarun.algorithms.pretrained_rl import PretrainedRL
from metarun.algorithms.protonet import ProtoNet
from metarun.algorithms.reptile import Reptile
from metarun.algorithms.trpo import TRPO

__all__ = [
    "MAMLRL",
    "FOMAMLRL",
    "PretrainedRL",
    "Pretrain",
    "TRPO",
    "MetaLearner",
    "MAML",
    "FOMAML",
    "ANIL",
    "MetaSGD",
    "MAMLPlusPlus",
    "MANN",
    "ProtoNet",
    "Reptile",
]
