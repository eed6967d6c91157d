"""ANIL, "Almost No Inner Loop" (Raghu et al. 2020): MAML whose inner loop adapts only the
last layer (the linear head of Conv4 / ResNet-12, the output layer of an MLP:
:func:`~metarun.algorithms.maml_options.adapted_names`); the body is learned by the outer
updates alone. ``algo=anil``."""

from __future__ import annotations

from metarun.algorithms.maml import MAML


class ANIL(MAML):
    """:class:`MAML` with ``adapt="head"`` by default (every other option is MAML's)."""

    replaces = ("metarun.algorithms.MAML",)  # its runs from before it had a class

    def __init__(self, *args, adapt: str = "head", **options) -> None:
        super().__init__(*args, adapt=adapt, **options)
