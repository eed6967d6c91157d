"""The meta-training loop: train steps, logging, validation, stop signals, test (checkpoints:
:mod:`metarun.trainer_checkpoints`)."""

from __future__ import annotations

import contextlib
import copy
import signal
import threading
import time

import torch

from metarun import compiling
from metarun.checkpoint import remove_partial_writes
from metarun.distributed.batch_norm import synchronised_batch_norm
from metarun.distributed.sync import RunningStats, average_gradients, mean_over_ranks
from metarun.errors import Interrupted, MetarunError, say
from metarun.experiment import Experiment
from metarun.logging import Logger
from metarun.profiling import profiled
from metarun.trainer_checkpoints import Checkpointing


class Trainer(Checkpointing):
    """The loop: train on sampled task batches, validate on fixed ones, test the best weights."""

    def __init__(self, exp: Experiment) -> None:
        self.exp, self.cfg = exp, exp.cfg
        self.logger: Logger | None = None  # set by fit
        self.val_batches = list(exp.episodes("val"))  # reused at every validation
        self.sampler = torch.Generator().manual_seed(self.cfg.seed)  # training tasks
        self.step = 0
        self.sums: dict[str, torch.Tensor] = {}  # train metrics since the last log line
        self.count = 0
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.best_state: dict | None = None
        self.eval_time = 0.0  # kept out of the training throughput
        self.stop_signal: int | None = None  # a signal this process received
        self.stopping = False  # whether any process of the run had one at the last step
        self.world = exp.world
        self.running_stats = RunningStats(self.world, exp.learner)
        self.sync_batch_norm = self.world.active and exp.learner.batch_norm_across_tasks
        self.saved_step: int | None = None  # step of the last last.pt written
        self.finite_at: int | None = None  # step whose loss and weights were last checked
        if exp.resume_from is not None:
            self._restore(exp.resume_from)

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
        bad_loss = self.world.any(bad_loss)  # every process stops, or none
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
        lower = " or ".join(f"algo.{o}" for o in self.exp.learner.step_size_options)
        raise MetarunError(f"the {what} became NaN or inf in {steps}{kept}; lower {lower}")

    def validate(self) -> None:
        self.check_finite()
        start = time.perf_counter()
        scores = self.exp.evaluate("val", self.val_batches)
        self.eval_time += time.perf_counter() - start
        self.logger.log(scores, self.step)
        value = scores[f"val/{self.exp.metric}"]
        if self._better(value):
            self.best_value, self.best_step = value, self.step
            self.best_state = copy.deepcopy(self.exp.learner.state_dict())
            self.save("best.pt", scores)

    def train_step(self) -> None:
        exp = self.exp
        batch = exp.train_batch(self.sampler, self.step)
        exp.optimizer.zero_grad(set_to_none=True)
        exp.learner.meta_step = self.step
        self.running_stats.snapshot()
        exp.learner.loss_scale = exp.precision.loss_scale()  # fp16's gradient scale, or None
        with synchronised_batch_norm(self.sync_batch_norm), exp.precision.autocast():
            metrics = exp.learner.meta_backward(batch)
        # Data-parallel: the mean of the ranks' gradients is the meta-batch's; the stop request
        # travels with it, so every process stops after the same step.
        self.stopping = average_gradients(
            self.world, exp.learner.parameters(), self.stop_signal is not None
        )
        metrics.update(exp.learner.outer_step(exp.optimizer, exp.precision))
        self.running_stats.merge()
        if exp.scheduler is not None:
            exp.scheduler.step()
        self.step += 1
        # Summed as tensors and read once per log interval: no device sync every step.
        for k, v in metrics.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        self.count += 1

    def log_train(self) -> None:
        self.check_finite()
        sums = mean_over_ranks(self.world, self.sums)
        means = {f"train/{k}": (v / self.count).item() for k, v in sums.items()}
        if self.exp.scheduler is not None:  # the step size the schedule has reached
            means["train/lr"] = self.exp.optimizer.param_groups[0]["lr"]
        self.logger.log(means, self.step)
        self.sums, self.count = {}, 0

    def fit(self, logger: Logger) -> float:
        """Train, validate and test; returns the best validation value. Hold
        :meth:`catching_stop_signals` around it for SIGINT / SIGTERM to stop with a checkpoint."""
        cfg = self.cfg
        self.logger = logger
        if self.exp.resume_from is not None:  # from a kill during a checkpoint write
            remove_partial_writes(self.exp.run_dir / "checkpoints")
        steps = cfg.train.steps
        self._compile(steps - self.step)
        self.logger.start(steps)
        self.logger.advance(self.step)
        self.exp.learner.train()
        start = time.perf_counter()
        first = self.step
        profile = cfg.profile if self.world.rank == 0 else None
        with profiled(profile, self.exp.run_dir, self.exp.device, steps - self.step) as tick:
            while self.step < steps:
                self.train_step()
                tick()  # debug=profile: the profiler's schedule
                if self.step % cfg.train.log_every == 0 or self.step == steps:
                    self.log_train()
                if self.step % cfg.val.every == 0 or self.step == steps:
                    self.validate()
                if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0:
                    self.save("last.pt", {})
                self.logger.advance(self.step)
                if self.stopping:
                    self.save("last.pt", {})
                    signum = self.stop_signal or signal.SIGTERM  # another process's signal
                    command = "metarun"
                    if self.world.active:  # the same number of processes continues it
                        command = f"the same launcher ({self.world.size} processes, e.g. torchrun)"
                    raise Interrupted(signum, self.step, str(self.exp.run_dir), command)
        train_time = time.perf_counter() - start - self.eval_time
        if self.best_state is None:  # no validation happened (train.steps=0)
            self.validate()
        self.save("last.pt", {})
        self.test(self.step - first, train_time)
        return self.best_value

    def _compile(self, steps_left: int) -> None:
        """``train.compile``: compile the learner's training step if the rule says so (and say
        it, or that this learner's step does not compile when asked to)."""
        setting, learner = self.cfg.train.compile, self.exp.learner
        name, main = type(learner).__name__, self.world.is_main
        if compiling.wanted(setting, learner, steps_left, self.exp.precision.name):
            if main:
                say(
                    f"compiling {name}'s training step (train.compile={str(setting).lower()}); "
                    "the first step takes longer; later runs of these shapes reuse the cache"
                )
            compiling.compile_training(learner)
        elif setting is True and not learner.compiles and main:
            say(f"train.compile=true: {name}'s training step does not compile "
                f"({learner.uncompiled_reason}); it runs eager")  # fmt: skip

    @contextlib.contextmanager
    def catching_stop_signals(self):
        """Within this block SIGINT / SIGTERM are recorded, not fatal: :meth:`fit` finishes the
        current step, then stops with a checkpoint; a run that is already failing finishes
        writing its summary (a launcher stopping the other processes of a data-parallel run
        sends SIGTERM right after one fails)."""
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
        scores = exp.evaluate("test")
        self.logger.log(scores, self.step)
        per_s = (lambda n: round(n / train_time, 3)) if steps else (lambda n: None)
        images = exp.learner.image_batch  # a learner trained on images counts those, not tasks
        rate, per_step = ("images", images) if images else ("tasks", cfg.task.meta_batch)
        self.logger.summary(
            {
                **scores,
                f"best_val/{exp.metric}": self.best_value,
                "best_val/step": self.best_step,
                "train/steps": self.step,
                "train/time_s": round(train_time, 3),
                "train/steps_per_s": per_s(steps),
                f"train/{rate}_per_s": per_s(steps * per_step),
                "device": str(exp.device),
                "world_size": self.world.size,
                "seed": cfg.seed,
            }
        )
