"""The meta-training loop: build everything from config, train, validate, test, report."""

from __future__ import annotations

import contextlib
import copy
import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from metarun.algorithms.base import MetaLearner
from metarun.checkpoint import (
    load_checkpoint,
    remove_partial_writes,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from metarun.data.batch import TaskBatch, TaskShape
from metarun.device import resolve_device
from metarun.errors import Interrupted, MetarunError
from metarun.evaluate import evaluate, fixed_episodes
from metarun.logging import Logger
from metarun.logging.local import atomic_write_json
from metarun.logging.setup import build_logger
from metarun.logging.wandb_sink import check_wandb_settings

# The metric the validation objective and "best" checkpoint follow, by kind of problem.
MONITOR = {"regression": ("mse", "min"), "classification": ("acc", "max")}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build(node: DictConfig, **kwargs: Any) -> Any:
    """``instantiate``, letting a user error raised by a constructor through unwrapped."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, MetarunError):
            raise e.__cause__ from None
        raise


# Numbers in an algorithm's config that only make sense above zero, checked where present.
POSITIVE_ALGO_OPTIONS = (
    "optimizer.lr",
    "inner_lr",
    "inner_steps",
    "controller_size",
    "memory_slots",
    "memory_width",
    "read_heads",
)


def check_config(cfg: DictConfig) -> None:
    """Value checks that types alone cannot express, before any expensive work."""
    positive = {
        "task.way": cfg.task.way,
        "task.shot": cfg.task.shot,
        "task.meta_batch": cfg.task.meta_batch,
        "train.log_every": cfg.train.log_every,
        "val.every": cfg.val.every,
        "val.episodes": cfg.val.episodes,
        "val.batch_size": cfg.val.batch_size,
        "test.batch_size": cfg.test.batch_size,
    }
    for key in ("train_way", "train_shot"):
        if cfg.task[key] is not None:
            positive[f"task.{key}"] = cfg.task[key]
    for key, value in positive.items():
        if value < 1:
            raise MetarunError(f"{key}={value} must be a positive integer")
    if cfg.task.query < 0:
        raise MetarunError(f"task.query={cfg.task.query} must be >= 0")
    if cfg.train.steps < 0:
        raise MetarunError(f"train.steps={cfg.train.steps} must be >= 0")
    for key in POSITIVE_ALGO_OPTIONS:
        value = OmegaConf.select(cfg.algo, key)
        if value is not None and value <= 0:
            raise MetarunError(f"algo.{key}={value} must be positive")
    if cfg.test.episodes < 2:
        raise MetarunError(
            f"test.episodes={cfg.test.episodes} gives no confidence interval; use 2 or more"
        )


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

    def episodes(self, split: str) -> Iterator[TaskBatch]:
        """The fixed evaluation episodes of ``split`` ("val" or "test"), set by ``<split>.*``."""
        section = self.cfg[split]
        return fixed_episodes(
            self.dataset,
            split,
            self.eval_shape,
            section.episodes,
            section.batch_size,
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


def _resume_checkpoint(
    cfg: DictConfig, config: dict, run_dir: Path | None = None
) -> tuple[Path, dict]:
    """The run folder to continue and its last checkpoint, checked against ``config``."""
    if run_dir is None:
        if not cfg.resume_dir:
            raise MetarunError(
                "resume=true needs the run folder to continue: resume_dir=<run folder>"
            )
        run_dir = Path(cfg.resume_dir).expanduser()
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.pt")
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
    return run_dir, checkpoint


def build_experiment(
    cfg: DictConfig, run_dir: Path | None = None, splits: tuple[str, ...] = ("train", "val", "test")
) -> Experiment:
    """Check the config, then build dataset, backbone, learner and optimizer from it.

    ``run_dir`` defaults to Hydra's output folder (or ``resume_dir`` when resuming); ``splits``
    are the dataset splits whose episode shape is checked (evaluation needs only ``test``)."""
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
    backbone = build(cfg.backbone, input_shape=dataset.input_shape, out_features=out_features)
    learner = build(cfg.algo, backbone=backbone).to(device)
    optimizer, scheduler = learner.configure_optimizers()
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    resume_from = None
    if run_dir is None:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.resume:
        run_dir, resume_from = _resume_checkpoint(cfg, config)
    elif os.environ.get("SUBMITIT_EXECUTOR") and (run_dir / "checkpoints" / "last.pt").is_file():
        # A submitit job requeued after preemption or a timeout (hydra-submitit-launcher's
        # checkpoint hook resubmits it with the same config, so into the same folder): continue.
        run_dir, resume_from = _resume_checkpoint(cfg, config, run_dir)
    return Experiment(
        cfg=cfg,
        config=config,
        run_dir=run_dir,
        resume_from=resume_from,
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


def _failure_summary(run_dir: Path, error: BaseException) -> None:
    """``summary.json`` of a run that ended before its logger existed (bad config or data)."""
    if isinstance(error, (KeyboardInterrupt, Interrupted)):
        summary = {"status": "interrupted"}
    else:
        summary = {"status": "failed", "error": str(error) or type(error).__name__}
    with contextlib.suppress(OSError):
        atomic_write_json(run_dir / "summary.json", summary)


def run(cfg: DictConfig) -> float:
    """Meta-train, validate and meta-test as ``cfg`` says; return the best validation objective.

    However it ends, the run folder gets a ``summary.json`` whose ``status`` says how (finished,
    failed with its ``error``, or interrupted) and the W&B run is closed with the same verdict."""
    job_dir = Path(HydraConfig.get().runtime.output_dir)
    console = Console(log_path=False)
    try:
        if cfg.logger is not None and cfg.logger.mode != "disabled":
            check_wandb_settings(cfg.logger)  # before the dataset is built
        exp = build_experiment(cfg)
        resume_step = exp.resume_from["step"] if exp.resume_from else None
        logger = build_logger(cfg, exp.config, exp.run_dir, console, resume_step)
    except BaseException as e:
        _failure_summary(job_dir, e)
        raise
    try:
        console.print(
            f"run dir: {exp.run_dir}\ndevice: {exp.device}  algorithm: "
            f"{exp.learner.__class__.__name__}({exp.learner.extra_repr()})",
            soft_wrap=True,
        )
        objective = Trainer(exp, logger).fit()
    except BaseException as e:
        interrupted = isinstance(e, (KeyboardInterrupt, Interrupted))
        try:
            if not interrupted:
                logger.summary({"error": str(e) or type(e).__name__})
            logger.close("interrupted" if interrupted else "failed")
        except Exception as close_error:  # e.g. the disk is full: keep the original error
            console.print(f"[yellow]warning:[/] could not close the run's logs ({close_error})")
        raise
    logger.close("finished")
    return objective


class Trainer:
    """The loop: train on sampled task batches, validate on fixed ones, test the best weights."""

    def __init__(self, exp: Experiment, logger: Logger) -> None:
        self.exp, self.cfg, self.logger = exp, exp.cfg, logger
        self.val_batches = list(exp.episodes("val"))  # reused at every validation
        self.sampler = torch.Generator().manual_seed(self.cfg.seed)  # training tasks
        self.step = 0
        self.sums: dict[str, torch.Tensor] = {}  # train metrics since the last log line
        self.count = 0
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.best_state: dict | None = None
        self.eval_time = 0.0  # kept out of the training throughput
        self.stop_signal: int | None = None
        self.saved_step: int | None = None  # step of the last last.pt written
        self.finite_at: int | None = None  # step whose loss and weights were last checked
        if exp.resume_from is not None:
            self._restore(exp.resume_from)

    def _restore(self, checkpoint: dict) -> None:
        exp = self.exp
        remove_partial_writes(exp.run_dir / "checkpoints")  # from a kill during a save
        exp.learner.load_state_dict(checkpoint["model"])
        exp.optimizer.load_state_dict(checkpoint["optimizer"])
        if exp.scheduler is not None:
            exp.scheduler.load_state_dict(checkpoint["scheduler"])
        set_rng_state(checkpoint["rng"], self.sampler)
        loop = checkpoint["loop"]
        self.saved_step = checkpoint["step"]
        self.step, self.sums, self.count = checkpoint["step"], loop["sums"], loop["count"]
        self.best_value, self.best_step = loop["best_value"], loop["best_step"]
        if self.best_step is not None:
            best = load_checkpoint(exp.run_dir / "checkpoints" / "best.pt", exp.device)
            self.best_state = best["model"]

    def _better(self, value: float) -> bool:
        if self.best_value is None:
            return True
        return value < self.best_value if self.exp.mode == "min" else value > self.best_value

    def check_finite(self) -> None:
        """Stop on a NaN or inf loss or weight before it reaches a checkpoint or a validation.

        Checked when a step's results are read anyway (logging, validating, saving), so there is
        no device sync per step; the message names the steps in which it happened."""
        if self.finite_at == self.step:  # logging, validating and saving at one step: once
            return
        losses = self.sums.get("loss")
        bad_loss = losses is not None and not bool(torch.isfinite(losses).all())
        weights = [torch.isfinite(p).all() for p in self.exp.learner.parameters()]
        if not bad_loss and bool(torch.stack(weights).all()):  # one device sync
            self.finite_at = self.step
            return
        what = "training loss" if bad_loss else "model's weights"
        first = self.step - self.count + 1 if bad_loss else self.step
        steps = f"step {self.step}" if first == self.step else f"steps {first}-{self.step}"
        kept = (
            f"; checkpoints/last.pt from step {self.saved_step} is kept"
            if self.saved_step is not None
            else ""
        )
        raise MetarunError(
            f"the {what} became NaN or inf in {steps}{kept}; lower algo.optimizer.lr or "
            "algo.inner_lr"
        )

    def save(self, name: str, metrics: dict[str, float]) -> None:
        if not self.cfg.checkpoint.save:
            return
        self.check_finite()
        exp = self.exp
        path = exp.run_dir / "checkpoints" / name
        try:
            self._write_checkpoint(path, metrics)
        except OSError as e:
            raise MetarunError(
                f"could not write {path} ({e.strerror or e}); the previous checkpoint is intact: "
                "free space (or fix the folder's permissions) and resume the run"
            ) from e
        if name == "last.pt":
            self.saved_step = self.step

    def _write_checkpoint(self, path: Path, metrics: dict[str, float]) -> None:
        exp = self.exp
        save_checkpoint(
            path,
            step=self.step,
            model=exp.learner.state_dict(),
            optimizer=exp.optimizer.state_dict(),
            scheduler=exp.scheduler.state_dict() if exp.scheduler is not None else None,
            rng=rng_state(self.sampler),
            loop={
                "sums": self.sums,
                "count": self.count,
                "best_value": self.best_value,
                "best_step": self.best_step,
            },
            config=exp.config,
            data={
                "input_shape": list(exp.dataset.input_shape),
                "preprocess": getattr(exp.dataset, "preprocess", None),
            },
            metrics=metrics,
        )

    def validate(self) -> None:
        self.check_finite()
        start = time.perf_counter()
        scores = evaluate(self.exp.learner, self.val_batches, "val")
        self.eval_time += time.perf_counter() - start
        self.logger.log(scores, self.step)
        value = scores[f"val/{self.exp.metric}"]
        if self._better(value):
            self.best_value, self.best_step = value, self.step
            self.best_state = copy.deepcopy(self.exp.learner.state_dict())
            self.save("best.pt", scores)

    def train_step(self) -> None:
        exp, cfg = self.exp, self.cfg
        batch = exp.dataset.sample(
            "train", cfg.task.meta_batch, exp.train_shape, self.sampler, exp.device
        )
        if exp.learner.sequential:
            batch = batch.shuffled(self.sampler)
        exp.optimizer.zero_grad(set_to_none=True)
        exp.learner.meta_step = self.step
        metrics = exp.learner.meta_backward(batch)
        exp.optimizer.step()
        if exp.scheduler is not None:
            exp.scheduler.step()
        self.step += 1
        # Summed as tensors and read once per log interval: no device sync every step.
        for k, v in metrics.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        self.count += 1

    def log_train(self) -> None:
        self.check_finite()
        means = {f"train/{k}": (v / self.count).item() for k, v in self.sums.items()}
        if self.exp.scheduler is not None:  # the step size the schedule has reached
            means["train/lr"] = self.exp.optimizer.param_groups[0]["lr"]
        self.logger.log(means, self.step)
        self.sums, self.count = {}, 0

    def fit(self) -> float:
        cfg = self.cfg
        steps = cfg.train.steps
        self.logger.start(steps)
        self.logger.advance(self.step)
        self.exp.learner.train()
        start = time.perf_counter()
        first = self.step
        with self._catch_stop_signals():
            while self.step < steps:
                self.train_step()
                if self.step % cfg.train.log_every == 0 or self.step == steps:
                    self.log_train()
                if self.step % cfg.val.every == 0 or self.step == steps:
                    self.validate()
                if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0:
                    self.save("last.pt", {})
                self.logger.advance(self.step)
                if self.stop_signal is not None:
                    self.save("last.pt", {})
                    raise Interrupted(self.stop_signal, self.step, str(self.exp.run_dir))
        train_time = time.perf_counter() - start - self.eval_time
        if self.best_state is None:  # no validation happened (train.steps=0)
            self.validate()
        self.save("last.pt", {})
        self.test(self.step - first, train_time)
        return self.best_value

    @contextlib.contextmanager
    def _catch_stop_signals(self):
        """SIGINT / SIGTERM finish the current step, then stop with a checkpoint."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum, frame) -> None:
            self.stop_signal = signum

        previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def test(self, steps: int, train_time: float) -> None:
        """Meta-test the weights that validated best, as the papers' protocols do.

        ``steps`` is the number of steps this process trained (for the throughput)."""
        exp, cfg = self.exp, self.cfg
        exp.learner.load_state_dict(self.best_state)
        scores = meta_test(exp)
        self.logger.log(scores, self.step)
        per_s = (lambda n: round(n / train_time, 3)) if steps else (lambda n: None)
        self.logger.summary(
            {
                **scores,
                f"best_val/{exp.metric}": self.best_value,
                "best_val/step": self.best_step,
                "train/steps": self.step,
                "train/time_s": round(train_time, 3),
                "train/steps_per_s": per_s(steps),
                "train/tasks_per_s": per_s(steps * cfg.task.meta_batch),
                "device": str(exp.device),
                "seed": cfg.seed,
            }
        )
