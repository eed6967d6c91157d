"""The MAML paper's "pretrained" baseline for meta-RL: one policy trained by TRPO on the
trajectories of all training tasks jointly (no inner step in training: ``inner_steps=0``),
then fine-tuned on each test task by the same policy-gradient steps as MAML's policy.
``algo=pretrained_rl``; a randomly initialised policy fine-tuned the same way is
``algo=pretrained_rl train.steps=0`` (nothing trained)."""

from __future__ import annotations

from metarun.algorithms.maml_rl import MAMLRL


class PretrainedRL(MAMLRL):
    """:class:`MAMLRL` with ``inner_steps=0`` by default (joint training)."""

    def __init__(self, *args, inner_steps: int = 0, **options) -> None:
        super().__init__(*args, inner_steps=inner_steps, **options)
