"""First-order MAML (Finn et al. 2017, section 5.2): MAML whose inner gradients are detached
from the outer graph, so the meta-gradient drops exactly the Hessian-vector terms and their
cost (``tests/test_maml.py`` checks the dropped term by hand). ``algo=fomaml``."""

from __future__ import annotations

from metarun.algorithms.maml import MAML


class FOMAML(MAML):
    """:class:`MAML` with ``first_order=True`` by default (every other option is MAML's)."""

    replaces = ("metarun.algorithms.MAML",)  # its runs from before it had a class

    def __init__(self, *args, first_order: bool = True, **options) -> None:
        super().__init__(*args, first_order=first_order, **options)
