"""Prototypical Networks (Snell et al. 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from metarun.algorithms.base import MetaLearner
from metarun.data.batch import TaskBatch
from metarun.heads import class_sums, squared_distance_logits


class ProtoNet(MetaLearner):
    """Classify queries by squared Euclidean distance to the mean support embedding per class.

    Support and query images of every task of the batch are embedded in one forward pass.
    Backbones with batch norm default to running statistics for it (``algo.batch_norm``).
    ``distance="cosine"`` scores by cosine similarity of the embeddings instead (normalised
    embeddings); ``scale`` multiplies the scores by a learned factor starting there (a metric
    temperature; cosine needs one, e.g. 10). ``refine_steps`` (evaluation only, transductive:
    the queries of a task shape its prototypes) runs that many soft k-means updates of the
    prototypes with the queries, weighted by their class probabilities (Ren et al. 2018);
    ``balanced`` (evaluation only, transductive, and it assumes every class has the same number
    of queries, as in episodes and Lake's runs) rescales the query-class probabilities by Sinkhorn
    iterations until each class takes an equal share of the queries (balanced assignment).
    """

    uncompiled_reason = None  # train.compile: a forward and one backward

    batch_norm_across_tasks = True

    def __init__(
        self,
        backbone,
        optimizer,
        scheduler=None,
        batch_norm: str = "running",
        distance: str = "euclidean",
        scale: float | None = None,
        refine_steps: int = 0,
        balanced: bool = False,
    ) -> None:
        super().__init__(backbone, optimizer, scheduler, batch_norm)
        self.distance, self.refine_steps, self.balanced = distance, refine_steps, balanced
        self.scale = None if scale is None else torch.nn.Parameter(torch.tensor(float(scale)))

    @classmethod
    def output_size(cls, dataset, way: int) -> None:
        return cls.no_head_for_classes(dataset)  # the backbone embeds; no output layer

    def _scores(self, query: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        if self.distance == "cosine":
            scores = F.normalize(query, dim=-1) @ F.normalize(prototypes, dim=-1).transpose(1, 2)
        else:
            scores = squared_distance_logits(query, prototypes)
        return scores if self.scale is None else scores * self.scale  # [B, NQ, N]

    def _logits(self, batch: TaskBatch, refine: int = 0) -> torch.Tensor:
        nk = batch.support_y.shape[1]
        z = self.backbone(torch.cat([batch.support_x, batch.query_x], dim=1))  # [B, NK+NQ, D]
        support, query = z[:, :nk], z[:, nk:]
        way = int(batch.support_y.max()) + 1
        sums, counts = class_sums(support, batch.support_y, way)  # [B, N, D], [B, N, 1]
        logits = self._scores(query, sums / counts)
        for _ in range(refine):  # soft k-means with the queries (transductive)
            weights = logits.softmax(-1).transpose(1, 2)  # [B, N, NQ]
            prototypes = (sums + weights @ query) / (counts + weights.sum(-1, keepdim=True))
            logits = self._scores(query, prototypes)
        return _balanced(logits) if self.balanced and not self.training else logits

    def meta_loss(self, batch: TaskBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self._logits(batch)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())
        acc = (logits.argmax(-1) == batch.query_y).float().mean()
        return loss, {"loss": loss.detach(), "acc": acc.detach()}

    def evaluate(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            logits = self._logits(batch, self.refine_steps)
            loss = F.cross_entropy(logits.transpose(1, 2), batch.query_y, reduction="none")
            return {
                "loss": loss.mean(1),
                "acc": (logits.argmax(-1) == batch.query_y).float().mean(1),
            }

    def predict(self, support_x, support_y, query_x) -> torch.Tensor:
        dummy = torch.zeros(1, query_x.shape[0], dtype=torch.long, device=query_x.device)
        batch = TaskBatch(support_x[None], support_y[None], query_x[None], dummy)
        with torch.no_grad():
            return self._logits(batch, self.refine_steps)[0]

    def query_logits(self, batch: TaskBatch) -> torch.Tensor:
        with torch.no_grad():
            return self._logits(batch, self.refine_steps)

    def extra_repr(self) -> str:
        scale = "" if self.scale is None else f", scale={float(self.scale):.3g} (learned)"
        refine = f", refine_steps={self.refine_steps} (transductive)" if self.refine_steps else ""
        balanced = ", balanced (transductive)" if self.balanced else ""
        return f"distance={self.distance}{scale}{refine}{balanced}"


def _balanced(logits: torch.Tensor, iterations: int = 30) -> torch.Tensor:
    """Log-probabilities ``[B, Q, N]`` whose rows sum to 1 and whose columns each sum to
    ``Q / N`` (Sinkhorn's alternating normalisation, in log space, from ``logits``' softmax)."""
    q, n = logits.shape[-2:]
    log_p = logits.float().log_softmax(-1)
    share = torch.log(torch.tensor(q / n))
    for _ in range(iterations):
        log_p = log_p - log_p.logsumexp(dim=-2, keepdim=True) + share
        log_p = log_p - log_p.logsumexp(dim=-1, keepdim=True)
    return log_p
