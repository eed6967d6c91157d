"""Test-time augmentation: every support and query image also seen as warped views.

``test.views=V`` (and ``val.views``, and ``metarun-predict``'s ``test.views``) evaluates each task
on its images plus ``V - 1`` random warps of each (``*.view_warp``, :mod:`metarun.data.warps`).
The warped support images join the support as more shots of their class, so a metric learner's
prototype averages the embeddings of every view; each query's class scores are the mean of its
views' log-probabilities. For ProtoNet's squared distances that mean ranks the classes exactly as
the distance of the views' mean embedding does (the views' spread is the same for every class),
so this is embedding averaging, for any learner that classifies with
:meth:`~metarun.algorithms.base.MetaLearner.query_logits`. Not transductive: each query is
scored from the support and its own views only (unless the learner's options say otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from metarun.data.batch import TaskBatch
from metarun.data.warps import Warp, warp_images
from metarun.errors import MetarunError


@dataclass(frozen=True)
class Views:
    """``count`` views (the image itself first) under ``warp``. Episode ``i``'s warps come from
    a generator seeded by ``(seed, i)``: the same whatever the evaluation chunk or rank."""

    count: int
    warp: Warp
    seed: int = 0

    @classmethod
    def of(cls, section, name: str) -> "Views | None":
        """From an evaluation section (``val``, ``test``) called ``name``; None when its
        ``views`` is 1."""
        count = int(section.get("views", 1))
        if count <= 1:
            return None
        warp = Warp.of(section.get("view_warp"))
        if not warp.active:
            raise MetarunError(
                f"{name}.views={count} with no warp in {name}.view_warp: every view would be the "
                f"image itself; set {name}.view_warp.rotate / shear / scale / translate, or "
                f"{name}.views=1"
            )
        return cls(count, warp, int(section.get("seed", 0)))

    def _expand(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``[M, ...]`` -> ``[count * M, ...]``: the images, then each warped view."""
        warped = [warp_images(images, self.warp, generator) for _ in range(self.count - 1)]
        return torch.cat([images, *warped])

    def batch(self, batch: TaskBatch, first: int) -> TaskBatch:
        """The batch (episodes ``first``, ``first + 1``, ...) with every view: the views of a
        support image are shots of its class; queries are view-major."""
        support, query = [], []
        for b in range(batch.num_tasks):
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + first + b)
            support.append(self._expand(batch.support_x[b], generator))
            query.append(self._expand(batch.query_x[b], generator))
        repeat = lambda y: y.repeat(1, self.count)  # noqa: E731
        return TaskBatch(
            torch.stack(support), repeat(batch.support_y), torch.stack(query), repeat(batch.query_y)
        )

    def combine(self, logits: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``[..., Q, N]`` of the queries: the mean over their views of
        ``logits [..., count * Q, N]`` (view-major, as :meth:`batch` orders them)."""
        *lead, vq, n = logits.shape
        per_view = logits.float().log_softmax(-1).reshape(*lead, self.count, vq // self.count, n)
        return per_view.mean(-3)

    def evaluate(self, learner, batch: TaskBatch) -> dict[str, torch.Tensor]:
        """Per-task ``loss`` and ``acc`` (``[B]`` each) of a batch made by :meth:`batch`."""
        with torch.no_grad():
            scores = self.combine(learner.query_logits(batch))
        q = batch.query_y.shape[1] // self.count
        labels = batch.query_y[:, :q]
        loss = F.nll_loss(scores.transpose(1, 2), labels, reduction="none").mean(1)
        return {"loss": loss, "acc": (scores.argmax(-1) == labels).float().mean(1)}
