"""The meta-training loop: build everything from config, train, validate, test, report."""

from __future__ import annotations

import copy
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from metarun.checkpoint import save_checkpoint
from metarun.data.batch import TaskShape
from metarun.device import resolve_device
from metarun.errors import MetarunError
from metarun.evaluate import evaluate, fixed_episodes
from metarun.logging import Logger
from metarun.logging.console import ConsoleSink
from metarun.logging.local import LocalFilesSink
from metarun.logging.wandb_sink import WandbSink

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


def check_config(cfg: DictConfig) -> None:
    """Value checks that types alone cannot express, before any expensive work."""
    positive = {
        "task.way": cfg.task.way,
        "task.shot": cfg.task.shot,
        "task.query": cfg.task.query,
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
    if cfg.train.steps < 0:
        raise MetarunError(f"train.steps={cfg.train.steps} must be >= 0")
    if cfg.test.episodes < 2:
        raise MetarunError(
            f"test.episodes={cfg.test.episodes} gives no confidence interval; use 2 or more"
        )


def _wandb_names(cfg: DictConfig) -> tuple[str | None, str | None]:
    """W&B group (one per sweep) and run name (the job's overrides) unless set in config."""
    hydra_cfg = HydraConfig.get()
    group, name = cfg.logger.group, cfg.logger.name
    if group is None and hydra_cfg.mode == RunMode.MULTIRUN:
        group = "sweep-" + "_".join(Path(hydra_cfg.sweep.dir).parts[-2:])
    if name is None:  # the overrides as typed, e.g. "algo=fomaml,seed=1"
        name = ",".join(hydra_cfg.overrides.task) or None
    return group, name


def build_logger(cfg: DictConfig, config: dict, run_dir: Path, console: Console) -> Logger:
    sinks = [ConsoleSink(console), LocalFilesSink(run_dir)]
    if cfg.logger is not None:
        group, name = _wandb_names(cfg)
        sinks.append(
            WandbSink(
                run_dir=run_dir,
                config=config,
                project=cfg.logger.project,
                entity=cfg.logger.entity,
                mode=str(cfg.logger.mode.value),
                group=group,
                name=name,
                tags=list(cfg.tags),
                notes=cfg.logger.notes,
                console=console,
            )
        )
    return Logger(sinks)


def run(cfg: DictConfig) -> float:
    """Meta-train, validate and meta-test as ``cfg`` says; return the best validation objective."""
    check_config(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
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
    dataset.check_shape("train", train_shape, "meta-training")
    dataset.check_shape("val", eval_shape, "validation")
    dataset.check_shape("test", eval_shape, "meta-test")
    backbone = build(cfg.backbone, input_shape=dataset.input_shape, out_features=out_features)
    learner = build(cfg.algo, backbone=backbone).to(device)
    optimizer, scheduler = learner.configure_optimizers()
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)

    console = Console(log_path=False)
    logger = build_logger(cfg, config, run_dir, console)
    status = "failed"
    try:
        console.print(
            f"run dir: {run_dir}\ndevice: {device}  algorithm: "
            f"{learner.__class__.__name__}({learner.extra_repr()})",
            soft_wrap=True,
        )
        objective = _train_and_test(
            cfg,
            dataset,
            learner,
            optimizer,
            scheduler,
            logger,
            config,
            run_dir,
            device,
            train_shape,
            eval_shape,
            metric,
            mode,
        )
        status = "finished"
        return objective
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        logger.close(status)


def _train_and_test(
    cfg,
    dataset,
    learner,
    optimizer,
    scheduler,
    logger,
    config,
    run_dir,
    device,
    train_shape,
    eval_shape,
    metric,
    mode,
) -> float:
    ckpt_dir = run_dir / "checkpoints"
    val_batches = list(
        fixed_episodes(
            dataset, "val", eval_shape, cfg.val.episodes, cfg.val.batch_size, cfg.val.seed, device
        )
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    better = (lambda a, b: a < b) if mode == "min" else (lambda a, b: a > b)
    best: dict[str, Any] = {"value": None, "step": None, "state": None}

    eval_time = 0.0  # kept out of the training throughput

    def validate(step: int) -> None:
        nonlocal eval_time
        start_eval = time.perf_counter()
        scores = evaluate(learner, val_batches, "val")
        eval_time += time.perf_counter() - start_eval
        logger.log(scores, step)
        value = scores[f"val/{metric}"]
        if best["value"] is None or better(value, best["value"]):
            best.update(value=value, step=step, state=copy.deepcopy(learner.state_dict()))
            if cfg.checkpoint.save:
                save_checkpoint(
                    ckpt_dir / "best.pt",
                    learner=learner,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    step=step,
                    config=config,
                    metrics=scores,
                )

    def checkpoint(step: int, name: str) -> None:
        if cfg.checkpoint.save:
            save_checkpoint(
                ckpt_dir / name,
                learner=learner,
                optimizer=optimizer,
                scheduler=scheduler,
                step=step,
                config=config,
                metrics={},
            )

    steps = cfg.train.steps
    logger.start(steps)
    learner.train()
    sums: dict[str, torch.Tensor] = {}
    count = 0
    start = time.perf_counter()
    for step in range(1, steps + 1):
        batch = dataset.sample("train", cfg.task.meta_batch, train_shape, generator, device)
        loss, metrics = learner.meta_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        # Summed as tensors and read once per log interval: no device sync every step.
        for k, v in metrics.items():
            sums[k] = sums[k] + v if k in sums else v.clone()
        count += 1
        if step % cfg.train.log_every == 0 or step == steps:
            means = {f"train/{k}": (v / count).item() for k, v in sums.items()}
            if not np.isfinite(means["train/loss"]):
                raise MetarunError(
                    f"the training loss became {means['train/loss']} by step {step}; lower "
                    "algo.optimizer.lr or algo.inner_lr"
                )
            logger.log(means, step)
            sums, count = {}, 0
        if step % cfg.val.every == 0 or step == steps:
            validate(step)
        if cfg.checkpoint.every and step % cfg.checkpoint.every == 0:
            checkpoint(step, "last.pt")
        logger.advance(step)
    train_time = time.perf_counter() - start - eval_time
    if steps == 0:
        validate(0)
    checkpoint(steps, "last.pt")

    # Meta-test the weights that validated best, as the papers' protocols do.
    learner.load_state_dict(best["state"])
    test_batches = fixed_episodes(
        dataset, "test", eval_shape, cfg.test.episodes, cfg.test.batch_size, cfg.test.seed, device
    )
    scores = evaluate(learner, test_batches, "test")
    logger.log(scores, steps)
    summary = {
        **scores,
        f"best_val/{metric}": best["value"],
        "best_val/step": best["step"],
        "train/steps": steps,
        "train/time_s": round(train_time, 3),
        "train/steps_per_s": round(steps / train_time, 3) if steps else None,
        "train/tasks_per_s": round(steps * cfg.task.meta_batch / train_time, 3) if steps else None,
        "device": str(device),
        "seed": cfg.seed,
    }
    logger.summary(summary)
    return best["value"]
