"""Meta-SGD (Li et al. 2017): MAML with a learned inner step size for every weight, initialised
to ``inner_lr`` and meta-trained with the weights by the outer optimizer. The step sizes are
the learner's ``inner_lrs`` parameters (saved in checkpoints under that name). ``algo=metasgd``."""

from __future__ import annotations

from metarun.algorithms.maml import MAML


class MetaSGD(MAML):
    """:class:`MAML` with ``learn_inner_lr=True`` by default (every other option is MAML's)."""

    replaces = ("metarun.algorithms.MAML",)  # its runs from before it had a class

    def __init__(self, *args, learn_inner_lr: bool = True, **options) -> None:
        super().__init__(*args, learn_inner_lr=learn_inner_lr, **options)
