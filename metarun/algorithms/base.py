"""The interface every meta-learning algorithm implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable

import torch
from torch import nn

from metarun.data.batch import TaskBatch, TaskShape
from metarun.errors import MetarunError
from metarun.series import Series

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


class MetaLearner(nn.Module, ABC):
    """A backbone plus the rule that meta-learns it.

    ``optimizer`` and ``scheduler`` are partials built from config (``_partial_: true``); the
    learner binds them to its own parameters in :meth:`configure_optimizers`, so algorithms with
    extra meta-parameters (learned inner learning rates, say) get them optimised too.
    ``batch_norm`` names the batch-norm mode this algorithm wants from backbones that have batch
    norm (their configs default to ``${algo.batch_norm}``): ``transductive`` or ``running``.
    """

    # -- what a learner declares to the generic parts (trainer, sinks, report) ---------------
    #: Whether the learner reads an episode as a sequence (MANN): the trainer and the evaluation
    #: episodes then shuffle each task's support set, with the run's task generator.
    sequential = False

    #: The meta-iteration about to be trained, set by the trainer before each step (restored on
    #: resume with the step), for schedules inside an algorithm (MAML++'s annealing).
    meta_step = 0

    #: Whether one training forward normalises a whole batch of tasks with batch norm
    #: (ProtoNet, MANN embed every task's images at once): a data-parallel run then takes those
    #: statistics over every process's tasks, so it computes what one process does. Learners
    #: that run each task through its own forward (MAML) leave it False.
    batch_norm_across_tasks = False

    #: Why ``train.compile`` leaves this learner eager, in a phrase said when it is asked to
    #: compile; None for learners whose training step compiles (:meth:`compile_with`: by
    #: default :meth:`meta_loss`, for a step that is one forward whose loss is backpropagated
    #: once: no gradient of a gradient, no inner optimizer).
    uncompiled_reason: str | None = "its training step is not written to compile"

    @property
    def compiles(self) -> bool:
        """Whether ``train.compile`` may compile the training step."""
        return self.uncompiled_reason is None

    #: Whether a data-parallel run (torchrun, SLURM) can split this learner's meta-batch.
    data_parallel = True

    #: Images per training step for a learner that trains on mini-batches of a split's images
    #: (:class:`~metarun.data.batch.LabelledImages`, supervised pre-training) instead of
    #: episodes; None: episodes (``task.*``).
    image_batch: int | None = None

    #: Prefixes of weights used only in training (a pre-training classifier): a learner built to
    #: evaluate only, without them, loads a checkpoint that has them.
    training_only: tuple[str, ...] = ()

    #: The options whose step sizes a diverging run should lower (named in its error line).
    step_size_options: tuple[str, ...] = ("optimizer.lr",)

    #: What the outer loss is multiplied by before its backward (``train.precision=fp16``'s
    #: gradient scale, set by the trainer every step; None: nothing). Learners that call
    #: backward themselves use :meth:`outer_backward`; one that writes ``.grad`` by hand
    #: (Reptile) multiplies by it.
    loss_scale: torch.Tensor | None = None

    #: Families of metric keys indexed by an integer that this learner reports
    #: (:class:`~metarun.series.Series`): the sinks and the report group them.
    metric_series: tuple[Series, ...] = ()

    def __init__(
        self,
        backbone: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        batch_norm: str = "transductive",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.batch_norm = batch_norm
        self._optimizer_factory = optimizer
        self._scheduler_factory = scheduler

    @classmethod
    def output_size(cls, dataset: Any, way: int) -> int | None:
        """Size of the backbone's output layer this algorithm needs (``None``: no head)."""
        return dataset.output_size(way)

    @classmethod
    def dataset_arguments(cls, dataset: Any) -> dict:
        """More constructor arguments this algorithm reads from the dataset (none by default;
        pre-training: the training split's class count)."""
        return {}

    @classmethod
    def no_head_for_classes(cls, dataset: Any) -> None:
        """``output_size`` of a learner that classifies with a headless backbone (ProtoNet's
        embeddings, MANN's encoder): refuses a regression dataset in one line."""
        if dataset.problem != "classification":
            other = "algo=maml_rl" if dataset.problem == "reinforcement" else "algo=maml"
            raise MetarunError(
                f"algo={cls.__name__.lower()} classifies; it cannot run on a {dataset.problem} "
                f"dataset ({type(dataset).__name__}); use {other} or a classification dataset"
            )
        return None

    @classmethod
    def check_task(cls, shape: TaskShape, what: str, algo_cfg: Any) -> None:
        """Raise a one-line error if this algorithm cannot use episodes of ``shape``."""
        if shape.query < 1:
            raise MetarunError(
                f"{what}: {cls.__name__} scores each task on its query set; task.query must be "
                "at least 1"
            )

    @classmethod
    def check_run(cls, cfg: Any, world: Any) -> None:
        """Raise a one-line error if this algorithm cannot run as ``cfg`` and ``world`` (the
        run's processes) say; by default it refuses data parallelism it does not support."""
        if world.active and not cls.data_parallel:
            raise MetarunError(
                f"{cls.__name__} runs in one process ({world.size} were launched); launch it "
                "with plain `metarun`, without torchrun or a data-parallel launcher"
            )

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, Any | None]:
        optimizer = self._optimizer_factory(self.parameters())
        scheduler = self._scheduler_factory(optimizer) if self._scheduler_factory else None
        return optimizer, scheduler

    @abstractmethod
    def meta_loss(self, batch: TaskBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Meta-training objective of a task batch and detached scalar metrics (``loss``, ...)."""

    def meta_backward(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        """Accumulate the meta-gradient of ``batch`` into ``.grad``; return detached metrics.

        The default backpropagates :meth:`meta_loss`; learners that can free memory by
        backpropagating task by task (MAML) override it.
        """
        loss, metrics = self.meta_loss(batch)
        self.outer_backward(loss)
        return metrics

    def outer_step(self, optimizer: torch.optim.Optimizer, precision: Any) -> dict:
        """Apply the meta-gradient :meth:`meta_backward` left in ``.grad``: the optimizer's
        step (``precision``: fp16's scaler). A learner whose outer update is not a gradient
        step (TRPO's trust region) overrides it; returns more metrics of the step (or none)."""
        precision.step(optimizer)
        return {}

    def compile_with(self, compiled: Callable) -> None:
        """``train.compile``: run the training step through ``compiled(fn, eager, what)`` (a
        compiled ``fn`` that falls back to ``eager``; :func:`metarun.compiling.compile_training`).
        The default compiles :meth:`meta_loss`."""
        eager = self.meta_loss
        self.meta_loss = compiled(eager, eager, f"{type(self).__name__}.meta_loss")

    def outer_backward(self, loss: torch.Tensor) -> None:
        """Backpropagate (part of) the meta-loss into ``.grad``, scaled by :attr:`loss_scale`."""
        (loss if self.loss_scale is None else loss * self.loss_scale).backward()

    @abstractmethod
    def evaluate(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        """Adapt to each task's support set and score its query set, without an outer update.

        Returns per-task values, each of shape ``[B]``, so callers can form confidence intervals.
        """

    def predict(
        self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor
    ) -> torch.Tensor:
        """Class logits ``[Q, N]`` for the queries of one task given its labelled support set."""
        raise MetarunError(f"{type(self).__name__} cannot classify new images")

    def query_logits(self, batch: TaskBatch) -> torch.Tensor:
        """Class logits ``[B, NQ, N]`` of every task's queries (test-time views score these);
        by default :meth:`predict` task by task, learners that batch tasks override it."""
        return torch.stack(
            [self.predict(*task) for task in zip(batch.support_x, batch.support_y, batch.query_x)]
        )
