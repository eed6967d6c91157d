"""Building an experiment from its config: dataset, backbone, algorithm, optimizer and the
checks a run (or a resumed run) must pass before any work."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, get_object
from omegaconf import DictConfig, OmegaConf

from metarun.algorithms.base import MetaLearner
from metarun.building import build
from metarun.checkpoint import load_weights
from metarun.checks import check_values
from metarun.compiling import check as check_compile
from metarun.data.batch import TaskBatch, TaskShape
from metarun.data.episodes import check_protocol, protocol_options
from metarun.data.image_batches import check_image_batches
from metarun.device import resolve_device, use_threads
from metarun.distributed.batch_norm import synchronise
from metarun.distributed.sync import broadcast_state
from metarun.distributed.world import SINGLE, World, device_of, draw_share
from metarun.errors import MetarunError
from metarun.evaluate import chunk_size, evaluate, fixed_episodes
from metarun.memory import check_memory, model_parameters
from metarun.precision import Precision
from metarun.problems import MONITOR
from metarun.profiling import check as check_profile
from metarun.resume import resume_checkpoint
from metarun.schemas import added_keys, close_names
from metarun.views import Views

EVAL_SPLITS = ("val", "test")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _check_kinds(cfg: DictConfig) -> None:
    """``algo``, ``backbone`` and ``dataset`` targets name the kind of class each must be."""
    kinds = {
        "algo": (lambda c: issubclass(c, MetaLearner), "a metarun MetaLearner"),
        "backbone": (lambda c: issubclass(c, torch.nn.Module), "a torch.nn.Module"),
        "dataset": (lambda c: hasattr(c, "sample") and hasattr(c, "check_shape"), "a dataset"),
    }
    for key, (fits, what) in kinds.items():
        target = cfg[key]._target_
        cls = get_object(target)
        if not isinstance(cls, type) or not fits(cls):
            raise MetarunError(
                f"{key}._target_={target} is not {what}; pick one with {key}=<name> "
                f"(metarun --help lists them)"
            )


def check_config(cfg: DictConfig) -> None:
    """Every value against its schema (:mod:`metarun.checks`), before any expensive work."""
    added = added_keys(cfg)
    if added:
        key, schema = added[0]
        name = key.rsplit(".", 1)[-1]
        others = f" (and {', '.join(k for k, _ in added[1:])})" if added[1:] else ""
        raise MetarunError(
            f"{key}: Key '{name}' not in '{schema.__name__}'{others}: added with '+', nothing "
            f"would read it{close_names(name, schema) or '; every key: metarun --cfg job'}"
        )
    check_values(cfg)
    check_profile(cfg.profile, cfg.train.steps)
    check_compile(cfg.train.compile)


def _chunk(cfg: DictConfig, split: str, eval_shape: TaskShape, train_shape: TaskShape) -> int:
    views = max(1, cfg[split].views)
    return chunk_size(cfg[split].batch_size, eval_shape, train_shape, cfg.task.meta_batch, views)


@dataclass
class Experiment:
    """Everything a run builds from its config before training starts."""

    cfg: DictConfig
    config: dict  # the resolved config as plain data: saved in checkpoints, sent to W&B
    run_dir: Path
    device: torch.device
    dataset: Any
    learner: MetaLearner
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_shape: TaskShape
    eval_shape: TaskShape
    metric: str  # the validation metric that picks the best checkpoint and the objective
    mode: str  # "min" or "max"
    resume_from: dict | None = None  # the last checkpoint, when continuing a run
    initialised_from: tuple[Path, int, str] | None = None  # train.init_from: file, step, what
    world: World = SINGLE  # the run's processes (data-parallel runs: this one's rank)
    precision: Precision = None  # train.precision: autocast and fp16's gradient scaler

    def chunk(self, split: str) -> int:
        """Tasks per evaluation forward for ``split`` (``<split>.batch_size``, or auto)."""
        return _chunk(self.cfg, split, self.eval_shape, self.train_shape)

    def train_batch(self, generator: torch.Generator, step: int = 0) -> TaskBatch:
        """The meta-training batch of step ``step`` drawn from ``generator``: in a data-parallel
        run, this rank's ``meta_batch / N`` tasks of the batch one process would draw (every
        rank draws the same random numbers and keeps its share). A learner that trains on
        images (``image_batch``) gets step ``step``'s mini-batch of the training split's images
        (:mod:`metarun.data.image_batches`), this rank's share of it."""
        size = self.learner.image_batch
        if size:
            share = self.world.share(size)
            seed = self.cfg.seed
            return self.dataset.sample_images(
                "train", size, step, seed, generator, self.device, part=share
            )
        total, draw = self.cfg.task.meta_batch, protocol_options(self.cfg.train.protocol)
        batch = draw_share(
            self.dataset, self.world, total, self.train_shape, generator, self.device, **draw
        )
        if self.learner.sequential:
            batch = batch.shuffled(generator, total, self.world.share(total))
        return batch

    def episodes(self, split: str) -> Iterator[TaskBatch]:
        """The fixed evaluation episodes of ``split`` ("val" or "test"), set by ``<split>.*``."""
        section = self.cfg[split]
        return fixed_episodes(
            self.dataset,
            split,
            self.eval_shape,
            section.episodes,
            self.chunk(split),
            section.seed,
            self.device,
            shuffle=self.learner.sequential,
            part=self.world.span(section.episodes),
            protocol=section.protocol,
            views=Views.of(section, split),
        )

    def evaluate(self, split: str, batches=None) -> dict[str, float]:
        """Mean and 95% CI of each metric on ``split``'s fixed episodes (or ``batches`` of
        them, made by :meth:`episodes`), under ``train.precision``."""
        batches = self.episodes(split) if batches is None else batches
        views = Views.of(self.cfg[split], split)
        with self.precision.autocast():
            return evaluate(self.learner, batches, split, self.world, views)


def build_experiment(
    cfg: DictConfig,
    run_dir: Path | None = None,
    splits: tuple[str, ...] = ("train", "val", "test"),
    resuming: bool = False,
    dataset: Any = None,
    world: World = SINGLE,
) -> Experiment:
    """Check the config, then build dataset, backbone, learner and optimizer from it.

    ``run_dir`` defaults to Hydra's output folder; ``resuming`` continues the run there from its
    last checkpoint (checked first); ``splits`` are the dataset splits whose episode shape is
    checked (evaluation needs only ``test``); ``dataset``, when given, is used instead of building
    ``cfg.dataset`` (benchmarks on synthetic data of a preset's shapes); ``world``: this
    process's rank in a data-parallel run (:func:`metarun.distributed.init_world`)."""
    check_config(cfg)
    seed_everything(cfg.seed)
    device = device_of(world, resolve_device(cfg.device.name))
    use_threads(cfg.device.threads, world.local_size)
    _check_kinds(cfg)
    dataset = build(cfg.dataset) if dataset is None else dataset
    metric, mode = MONITOR[dataset.problem]
    t = cfg.task
    eval_shape = TaskShape(t.way, t.shot, t.query)
    query = t.query if t.train_query is None else t.train_query
    train_shape = TaskShape(t.train_way or t.way, t.train_shot or t.shot, query)
    algo_cls = get_class(cfg.algo._target_)
    algo_cls.check_run(cfg, world)
    out_features = algo_cls.output_size(dataset, train_shape.way)
    if out_features is not None and out_features != algo_cls.output_size(dataset, eval_shape.way):
        raise MetarunError(
            f"{algo_cls.__name__} has a {train_shape.way}-way output layer, so it cannot be "
            f"tested {eval_shape.way}-way; set task.train_way=null or equal to task.way"
        )
    purpose = {"train": "meta-training", "val": "validation", "test": "meta-test"}
    for split in splits:
        shape = train_shape if split == "train" else eval_shape
        algo_cls.check_task(shape, purpose[split], cfg.algo)
        check_protocol(dataset, cfg[split].protocol, purpose[split])
        dataset.check_shape(split, shape, purpose[split], **protocol_options(cfg[split].protocol))
        if split != "train" and Views.of(cfg[split], split) and dataset.problem != "classification":
            raise MetarunError(f"{split}.views warps images; {dataset.problem} has none: set 1")
    check_input = getattr(get_class(cfg.backbone._target_), "check_input", None)
    if check_input is not None:  # e.g. a convolutional backbone needs images
        check_input(tuple(dataset.input_shape))

    def build_learner() -> MetaLearner:
        backbone = build(cfg.backbone, input_shape=dataset.input_shape, out_features=out_features)
        return build(cfg.algo, backbone=backbone, **algo_cls.dataset_arguments(dataset))

    chunk = max(_chunk(cfg, s, eval_shape, train_shape) * cfg[s].views for s in EVAL_SPLITS)
    parameters = model_parameters(build_learner)
    check_memory(cfg, dataset.input_shape, train_shape, eval_shape, chunk, parameters, device)
    learner = build_learner().to(device)
    if "train" in splits:
        check_image_batches(learner, dataset)
    if world.active:
        if learner.batch_norm_across_tasks:
            synchronise(learner)  # its batch statistics span the whole meta-batch
        broadcast_state(world, learner)
    try:
        optimizer, scheduler = learner.configure_optimizers()
    except (TypeError, ValueError) as e:  # the optimizer's or scheduler's own check of its options
        raise MetarunError(
            f"algo.optimizer / algo.scheduler: {str(e).splitlines()[0]}; fix those options"
        ) from None
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    if run_dir is None:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
    resume_from = resume_checkpoint(config, run_dir, device) if resuming else None
    initialised_from = None
    if cfg.train.init_from and resume_from is None:  # a resumed run has its own weights
        initialised_from = load_weights(learner, cfg.train.init_from)
    return Experiment(
        cfg=cfg,
        config=config,
        run_dir=run_dir,
        resume_from=resume_from,
        initialised_from=initialised_from,
        device=device,
        dataset=dataset,
        learner=learner,
        optimizer=optimizer,
        scheduler=scheduler,
        train_shape=train_shape,
        eval_shape=eval_shape,
        metric=metric,
        mode=mode,
        world=world,
        precision=Precision(cfg.train.precision, device),
    )
