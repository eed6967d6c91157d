"""One process of the data-parallel equivalence test (tests/test_distributed.py).

``torchrun --standalone --nproc_per_node=2 tests/distributed_worker.py OUT DTYPE`` trains
every case of :data:`CASES` for :data:`STEPS` steps in each process and rank 0 saves the weights
(and validation scores) to ``OUT``; :func:`train_case` run without torchrun is the one-process
reference.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from metarun.compose import compose_config
from metarun.data.batch import LabelledImages, TaskBatch
from metarun.distributed import SINGLE, World, init_world
from metarun.evaluate import evaluate
from metarun.experiment import build_experiment
from metarun.trainer import Trainer

STEPS = 3
GLYPHS = [
    "dataset=glyphs",
    "dataset.classes=[24,8,8]",
    "dataset.samples_per_class=6",
    "dataset.image_size=12",
    "backbone.hidden=3",
    "backbone.blocks=2",
    "task.way=3",
    "task.train_way=null",
    "task.train_shot=null",
    "task.shot=1",
    "task.query=2",
]
SMALL = ["task.meta_batch=4", "val.episodes=5", "val.batch_size=2", "logger=none", "device=cpu"]
# The algorithms of the issue, with the batch-norm paths each exercises: per-task batch norm
# (MAML family), running statistics merged after each step (MAML++'s per-step statistics),
# statistics synchronised across ranks (ProtoNet, and MANN with conv4's running ones).
CASES = {
    "maml": ["algo=maml", *GLYPHS, "algo.inner_steps=2", "algo.eval_inner_steps=2"],
    "maml_sinusoid_fold": ["algo=maml", "algo.task_batching=fold", "task.shot=5", "task.query=5"],
    "fomaml": ["algo=fomaml", *GLYPHS],
    "metasgd": ["algo=metasgd", *GLYPHS, "algo.eval_inner_steps=2"],
    "mamlpp": [
        "algo=mamlpp",
        *GLYPHS,
        "algo.inner_steps=2",
        "algo.eval_inner_steps=2",
        "algo.first_order_until=1",
        "algo.multi_step_loss=2",
        "algo.per_step_bn_stats=true",
    ],
    "protonet": ["algo=protonet", *GLYPHS],
    "mann": ["algo=mann", *GLYPHS, "backbone=conv4", "task.shot=2", "task.query=0"],
    "reptile": ["algo=reptile", *GLYPHS, "algo.inner_steps=2", "algo.eval_inner_steps=2"],
    "pretrain": ["algo=pretrain", *GLYPHS, "algo.batch_size=8", "algo.head=prototype"],
}


class InDtype:
    """A dataset whose batches come in ``dtype`` (float64 for the exact comparison)."""

    def __init__(self, inner, dtype: torch.dtype) -> None:
        self.inner, self.dtype = inner, dtype

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def sample(self, *args, part: slice = slice(None), **kwargs) -> TaskBatch:
        batch = self.inner.sample(*args, part=part, **kwargs)
        return TaskBatch(*(t.to(self.dtype) if t.is_floating_point() else t for t in batch))

    def sample_images(self, *args, part: slice = slice(None), **kwargs) -> LabelledImages:
        batch = self.inner.sample_images(*args, part=part, **kwargs)
        return LabelledImages(batch.x.to(self.dtype), batch.y)


def train_case(name: str, dtype: torch.dtype, run_dir: Path, world: World = SINGLE) -> dict:
    """The weights (state dict) after :data:`STEPS` steps and the validation scores."""
    from hydra.utils import instantiate

    cfg = compose_config([*CASES[name], *SMALL])
    dataset = InDtype(instantiate(cfg.dataset), dtype)
    exp = build_experiment(cfg, run_dir=run_dir, dataset=dataset, world=world)
    exp.learner.to(dtype)
    trainer = Trainer(exp)
    for _ in range(STEPS):
        trainer.train_step()
    scores = evaluate(exp.learner, exp.episodes("val"), "val", world)
    state = {k: v.detach().cpu().clone() for k, v in exp.learner.state_dict().items()}
    return {"state": state, "scores": scores}


def main(out: str, dtype_name: str) -> None:
    dtype = getattr(torch, dtype_name)
    world = init_world(compose_config([*CASES["maml"], *SMALL]))
    results = {name: train_case(name, dtype, Path(out).parent, world) for name in CASES}
    if world.is_main:
        torch.save(results, out)
    world.close()  # waits for every rank
    sys.stdout.flush()
    os._exit(0)  # no interpreter teardown under gloo (see metarun.cli.main)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(*sys.argv[1:3])
