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
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from metarun.algorithms.base import MetaLearner
from metarun.checkpoint import load_checkpoint, load_weights
from metarun.checks import check_values
from metarun.config import added_keys, close_names
from metarun.data.batch import TaskBatch, TaskShape
from metarun.device import resolve_device
from metarun.errors import MetarunError
from metarun.evaluate import chunk_size, evaluate, fixed_episodes
from metarun.logging.local import read_metrics
from metarun.memory import check_memory, model_parameters

EVAL_SPLITS = ("val", "test")

# The metric the validation objective and "best" checkpoint follow, by kind of problem.
MONITOR = {"regression": ("mse", "min"), "classification": ("acc", "max")}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build(node: DictConfig, **kwargs: Any) -> Any:
    """``instantiate``, letting a user error raised by a constructor through unwrapped.

    A nested object that is not metarun's own (``algo.optimizer``, ``algo.scheduler``: torch's
    classes with the user's options) refusing its options is a user error too, told in one line;
    metarun's own constructors failing otherwise keep their traceback (a bug)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, MetarunError):
            raise e.__cause__ from None
        where = str(e).rsplit("full_key: ", 1)[-1].strip() if "full_key: " in str(e) else ""
        target = OmegaConf.select(node._get_root(), f"{where}._target_", default=None)
        if not where or not isinstance(target, str) or target.startswith("metarun."):
            raise
        cause = str(e.__cause__ or e).splitlines()[0]
        raise MetarunError(
            f"{where}: {target} could not be built ({cause}); fix {where}.* (optimizers and "
            "schedulers need _partial_: true: metarun passes the parameters or optimizer)"
        ) from None


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
    initialised_from: tuple[Path, int] | None = None  # train.init_from: the file and its step

    def chunk(self, split: str) -> int:
        """Tasks per evaluation forward for ``split`` (``<split>.batch_size``, or auto)."""
        return chunk_size(
            self.cfg[split].batch_size, self.eval_shape, self.train_shape, self.cfg.task.meta_batch
        )

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
        )


# Config sections that must match for a checkpoint to be continued (they shape the model, the
# data or the random streams); train.steps, logging and the device may change.
RESUME_MUST_MATCH = ("algo", "backbone", "dataset", "task", "seed", "checkpoint")


# Options added after checkpoints may have been written, with the value that reproduces what
# metarun did before they existed: a checkpoint without the key resumes if the run keeps it.
ADDED_OPTIONS = {
    "algo.task_chunk": 0,
    "algo.write": "key",
    "algo.key_strength": False,
    "dataset.shift": 0,
    "algo.adapt": "all",
    "algo.learn_inner_lr": False,
    "algo.per_step_inner_lr": False,
    "algo.multi_step_loss": 0,
    "algo.first_order_until": 0,
    "algo.per_step_bn": False,
    "algo.per_step_bn_stats": False,
}
_ABSENT = object()


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys where ``a`` (the checkpoint's config) and ``b`` (this run's) differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            d
            for k in sorted(set(a) | set(b))
            for d in _differences(a.get(k, _ABSENT), b.get(k, _ABSENT), f"{prefix}{k}.")
        ]
    key = prefix.rstrip(".")
    if a is _ABSENT and key in ADDED_OPTIONS and b == ADDED_OPTIONS[key]:
        return []
    return [] if a == b else [key]


# What a checkpoint must hold for a run to continue from it (checkpoints written by metarun do).
RESUME_KEYS = ("optimizer", "scheduler", "rng", "loop")


def _resume_checkpoint(cfg: DictConfig, config: dict, run_dir: Path, device) -> dict:
    """``run_dir``'s last checkpoint, checked against ``config``, with the best weights of the
    run (``best_model``) when it validated. Reads only: a refusal leaves the folder as it was."""
    path = run_dir / "checkpoints" / "last.pt"
    checkpoint = load_checkpoint(path)
    missing = [k for k in RESUME_KEYS if k not in checkpoint]
    loop = checkpoint.get("loop")
    if not missing and (not isinstance(loop, dict) or not LOOP_KEYS <= set(loop)):
        missing = ["loop." + k for k in sorted(LOOP_KEYS - set(loop or {}))] or ["loop"]
    if missing:
        raise MetarunError(
            f"cannot resume {run_dir}: {path} lacks {', '.join(missing)} (written by another "
            "tool, or only weights); start a new run from its weights with "
            f"train.init_from={path}"
        )
    changed = [
        d
        for key in RESUME_MUST_MATCH
        for d in _differences(checkpoint["config"].get(key), config.get(key), f"{key}.")
    ]
    if changed:
        raise MetarunError(
            f"cannot resume {run_dir}: the config differs from the checkpoint's in "
            f"{', '.join(changed)}; resume with the run's original overrides (see its "
            ".hydra/overrides.yaml)"
        )
    if loop["best_step"] is not None:  # the meta-test at the end needs the best weights
        best_path = run_dir / "checkpoints" / "best.pt"
        if not best_path.is_file():
            raise MetarunError(
                f"cannot resume {run_dir}: {best_path} (the best weights, step "
                f"{loop['best_step']}, which the meta-test uses) is missing; restore it, or start "
                f"a new run from the last weights with train.init_from={path}"
            )
        checkpoint["best_model"] = load_checkpoint(best_path, device)["model"]
    read_metrics(run_dir / "metrics.jsonl")  # the resumed run rewrites it: it must be readable
    return checkpoint


LOOP_KEYS = {"sums", "count", "best_value", "best_step"}


def build_experiment(
    cfg: DictConfig,
    run_dir: Path | None = None,
    splits: tuple[str, ...] = ("train", "val", "test"),
    resuming: bool = False,
) -> Experiment:
    """Check the config, then build dataset, backbone, learner and optimizer from it.

    ``run_dir`` defaults to Hydra's output folder; ``resuming`` continues the run there from its
    last checkpoint (checked first); ``splits`` are the dataset splits whose episode shape is
    checked (evaluation needs only ``test``)."""
    check_config(cfg)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device.name)
    dataset = build(cfg.dataset)
    metric, mode = MONITOR[dataset.problem]
    t = cfg.task
    eval_shape = TaskShape(t.way, t.shot, t.query)
    train_shape = TaskShape(t.train_way or t.way, t.train_shot or t.shot, t.query)
    algo_cls = get_class(cfg.algo._target_)
    out_features = algo_cls.output_size(dataset, train_shape.way)
    if out_features is not None and out_features != dataset.output_size(eval_shape.way):
        raise MetarunError(
            f"{algo_cls.__name__} has a {train_shape.way}-way output layer, so it cannot be "
            f"tested {eval_shape.way}-way; set task.train_way=null or equal to task.way"
        )
    purpose = {"train": "meta-training", "val": "validation", "test": "meta-test"}
    for split in splits:
        shape = train_shape if split == "train" else eval_shape
        algo_cls.check_task(shape, purpose[split], cfg.algo)
        dataset.check_shape(split, shape, purpose[split])
    check_input = getattr(get_class(cfg.backbone._target_), "check_input", None)
    if check_input is not None:  # e.g. a convolutional backbone needs images
        check_input(tuple(dataset.input_shape))

    def build_learner() -> MetaLearner:
        backbone = build(cfg.backbone, input_shape=dataset.input_shape, out_features=out_features)
        return build(cfg.algo, backbone=backbone)

    chunk = max(
        chunk_size(cfg[s].batch_size, eval_shape, train_shape, t.meta_batch) for s in EVAL_SPLITS
    )
    parameters = model_parameters(build_learner)
    check_memory(cfg, dataset.input_shape, train_shape, eval_shape, chunk, parameters, device)
    learner = build_learner().to(device)
    try:
        optimizer, scheduler = learner.configure_optimizers()
    except (TypeError, ValueError) as e:  # the optimizer's or scheduler's own check of its options
        raise MetarunError(
            f"algo.optimizer / algo.scheduler: {str(e).splitlines()[0]}; fix those options"
        ) from None
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    if run_dir is None:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
    resume_from = _resume_checkpoint(cfg, config, run_dir, device) if resuming else None
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
    )


def meta_test(exp: Experiment) -> dict[str, float]:
    """Mean and 95% CI of each metric on the fixed test episodes (``test.*``)."""
    return evaluate(exp.learner, exp.episodes("test"), "test")
