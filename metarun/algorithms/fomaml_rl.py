"""First-order MAML for policies: :class:`~metarun.algorithms.maml_rl.MAMLRL` whose inner
policy-gradient step is detached from the TRPO objective's graph. ``algo=fomaml_rl``."""

from __future__ import annotations

from metarun.algorithms.maml_rl import MAMLRL


class FOMAMLRL(MAMLRL):
    """:class:`MAMLRL` with ``first_order=True`` by default."""

    def __init__(self, *args, first_order: bool = True, **options) -> None:
        super().__init__(*args, first_order=first_order, **options)
