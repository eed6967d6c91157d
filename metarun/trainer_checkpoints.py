"""The trainer's checkpoints: what a run writes to continue exactly, and reading it back.

A checkpoint holds the model, optimizer, scheduler, step, the loop's partial metric sums and best
record, the config and every random state; a data-parallel run adds ``world_size`` and each
rank's random states and sums (``ranks``), since every process continues its own streams.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from metarun.checkpoint import (
    check_weights,
    load_model_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from metarun.errors import MetarunError

if TYPE_CHECKING:
    from metarun.trainer import Trainer


class Checkpointing:
    """The :class:`~metarun.trainer.Trainer`'s ``save`` and resume (its ``_restore``)."""

    def _restore(self: Trainer, checkpoint: dict) -> None:
        exp = self.exp
        trained_by, size = checkpoint.get("world_size", 1), self.world.size
        if trained_by != size:
            how = f"torchrun --nproc_per_node={trained_by}" if trained_by > 1 else "one process"
            raise MetarunError(
                f"cannot resume {exp.run_dir}: it was trained by {trained_by} process(es) and "
                f"this run has {size}; resume it with {trained_by} ({how}: the random streams "
                "are per process)"
            )
        if checkpoint.get("best_model") is not None:  # the meta-test loads it at the end: fits?
            best = {**checkpoint, "model": checkpoint["best_model"]}
            check_weights(exp.learner, best, f"cannot resume {exp.run_dir}: best.pt")
        load_model_state(exp.learner, checkpoint, f"cannot resume {exp.run_dir}: last.pt")
        exp.optimizer.load_state_dict(checkpoint["optimizer"])
        if exp.scheduler is not None:
            exp.scheduler.load_state_dict(checkpoint["scheduler"])
        exp.precision.load_state_dict(checkpoint.get("scaler"))  # absent before precision
        loop = checkpoint["loop"]
        own = {"rng": checkpoint["rng"], "sums": loop["sums"]}
        if self.world.active:  # each process continues its own random streams and sums
            own = checkpoint["ranks"][self.world.rank]
        set_rng_state(own["rng"], self.sampler)
        self.saved_step = checkpoint["step"]
        self.step, self.count = checkpoint["step"], loop["count"]
        self.sums = {k: v.to(exp.device) for k, v in own["sums"].items()}
        self.best_value, self.best_step = loop["best_value"], loop["best_step"]
        self.best_state = checkpoint.get("best_model")  # read and checked with last.pt

    def save(self: Trainer, name: str, metrics: dict[str, float]) -> None:
        """Write ``checkpoints/<name>`` (rank 0; every rank sends its own state), if saving."""
        if not self.cfg.checkpoint.save:
            return
        self.check_finite()
        exp = self.exp
        path = exp.run_dir / "checkpoints" / name
        ranks = None
        if self.world.active:  # every rank's own random states and sums, for rank 0 to write
            sums = {k: v.cpu() for k, v in self.sums.items()}
            ranks = self.world.gather({"rng": rng_state(self.sampler), "sums": sums})
        if not self.world.is_main:  # rank 0 writes what every process needs to continue
            self.saved_step = self.step if name == "last.pt" else self.saved_step
            return
        try:
            self._write_checkpoint(path, metrics, ranks)
        except OSError as e:
            raise MetarunError(
                f"could not write {path} ({e.strerror or e}); the previous checkpoint is intact: "
                "free space (or fix the folder's permissions) and resume the run"
            ) from e
        if name == "last.pt":
            self.saved_step = self.step

    def _write_checkpoint(
        self: Trainer, path: Path, metrics: dict[str, float], ranks: list | None
    ) -> None:
        exp = self.exp
        per_process = {"world_size": len(ranks), "ranks": ranks} if ranks else {}
        save_checkpoint(
            path,
            step=self.step,
            model=exp.learner.state_dict(),
            optimizer=exp.optimizer.state_dict(),
            scheduler=exp.scheduler.state_dict() if exp.scheduler is not None else None,
            scaler=exp.precision.state_dict(),  # fp16's gradient scale, else None
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
            **per_process,
        )
