"""MAML++ (Antoniou, Edwards & Storkey 2019, "How to train your MAML"): MAML with

- LSLR: a learned inner step size per layer and per inner step (``per_step_inner_lr``; the
  learner's ``step_lrs``);
- MSL: the query losses after every inner step in the meta-loss, the weights moving from
  uniform to the last step alone over the first ``multi_step_loss`` meta-iterations
  (:func:`~metarun.algorithms.maml_options.multi_step_weights`);
- derivative-order annealing: first order before meta-iteration ``first_order_until``;
- BNWB: batch-norm weights and biases per inner step (``per_step_bn``; the learner's
  ``step_bn``), used by the support forward of step i and the query forward after it;
- BNRS: batch-norm running statistics per inner step, recorded in meta-training and used at test
  time (``per_step_bn_stats``, off by default: see docs/configuration.md, Algorithms).

``algo=mamlpp`` adds the paper's cosine-annealed meta learning rate and 5 inner steps.
"""

from __future__ import annotations

from metarun.algorithms.maml import MAML


class MAMLPlusPlus(MAML):
    """:class:`MAML` with LSLR, MSL, annealing and BNWB on by default (the paper's settings)."""

    replaces = ("metarun.algorithms.MAML",)  # its runs from before it had a class

    def __init__(
        self,
        *args,
        inner_steps: int = 5,
        eval_inner_steps: int = 5,
        per_step_inner_lr: bool = True,
        multi_step_loss: int = 5000,
        first_order_until: int = 25000,
        per_step_bn: bool = True,
        **options,
    ) -> None:
        super().__init__(
            *args,
            inner_steps=inner_steps,
            eval_inner_steps=eval_inner_steps,
            per_step_inner_lr=per_step_inner_lr,
            multi_step_loss=multi_step_loss,
            first_order_until=first_order_until,
            per_step_bn=per_step_bn,
            **options,
        )
