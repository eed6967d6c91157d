"""Supervised pre-training on all meta-training classes, then a test-time head: the baselines of
Chen et al. 2019 (Baseline, Baseline++), Tian et al. 2020 (RFS) and the first stage of P>M>F
(Hu et al. 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metarun.algorithms.base import MetaLearner
from metarun.backbones.norm import TransductiveBatchNorm2d
from metarun.data.batch import LabelledImages, TaskBatch
from metarun.errors import MetarunError
from metarun.heads import CosineClassifier, HeadOptions, check_head, head_logits


def embed(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A backbone's embedding of tasks ``x [B, M, ...]``: its features before any output layer.
    A backbone whose batch norm uses batch statistics at test time (MAML's, transductive) embeds
    each task by itself, so that no task's statistics mix with another's."""
    run = backbone.embed if hasattr(backbone, "embed") else backbone
    if any(_batch_statistics(m) for m in backbone.modules()):
        return torch.stack([run(task) for task in x])
    return run(x)


def _batch_statistics(module: nn.Module) -> bool:
    """Whether ``module`` normalises with the batch's statistics in evaluation too."""
    if isinstance(module, TransductiveBatchNorm2d):
        return True
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and not module.track_running_stats


class Pretrain(MetaLearner):
    """Train the backbone and a classifier over every training class (one label space,
    cross-entropy on mini-batches of ``batch_size`` images, not episodes); validate and test
    episodically by fitting ``head`` (:mod:`metarun.heads`) on each task's support embeddings.

    ``classifier``: the pre-training classifier, ``linear`` (Baseline, RFS) or ``cosine``
    (Baseline++: :class:`~metarun.heads.CosineClassifier`, factor ``scale``, by default 2 up to
    200 classes and 10 above). ``head``: ``prototype``, ``logistic`` (RFS), ``finetune``
    (Baseline) or ``cosine`` (Baseline++), fitted with ``head_*`` and ``logistic_c``.
    ``classes`` (the training split's class count) comes from the dataset; a learner built
    without it only evaluates (``metarun-eval head=...`` on another algorithm's checkpoint).
    """

    uncompiled_reason = None  # train.compile: a forward and one backward
    batch_norm_across_tasks = True  # one forward normalises the whole mini-batch
    training_only = ("classifier.",)  # what an evaluation-only learner leaves out

    def __init__(
        self,
        backbone,
        optimizer,
        scheduler=None,
        batch_norm: str = "running",
        batch_size: int = 64,
        classifier: str = "linear",
        scale: float | None = None,
        label_smoothing: float = 0.0,
        head: str = "logistic",
        head_epochs: int = 100,
        head_lr: float = 0.01,
        head_batch_size: int = 4,
        head_weight_decay: float = 1e-3,
        logistic_c: float = 1.0,
        classes: int | None = None,
    ) -> None:
        super().__init__(backbone, optimizer, scheduler, batch_norm)
        #: images per training step: the trainer draws mini-batches of images, not episodes
        self.image_batch = batch_size
        self.label_smoothing = label_smoothing
        self.head = head
        self.head_options = HeadOptions(
            head_epochs, head_lr, head_batch_size, head_weight_decay, logistic_c, scale=scale
        )
        self.classifier = None
        if classes is not None:
            size = backbone.out_features
            self.classifier = (
                CosineClassifier(size, classes, scale)
                if classifier == "cosine"
                else nn.Linear(size, classes)
            )

    @classmethod
    def output_size(cls, dataset, way: int) -> None:
        return cls.no_head_for_classes(dataset)  # the backbone embeds; the classifier is ours

    @classmethod
    def dataset_arguments(cls, dataset) -> dict:
        """The training split's class count: the classifier's size (none for the images a user
        hands to metarun-predict: an evaluation-only learner)."""
        return {"classes": dataset.num_classes("train")} if hasattr(dataset, "num_classes") else {}

    @classmethod
    def check_run(cls, cfg, world) -> None:
        super().check_run(cfg, world)
        size = cfg.algo.batch_size
        if world.active and size % world.size:
            raise MetarunError(
                f"algo.batch_size={size} does not divide among {world.size} processes; set it "
                f"to a multiple of {world.size}"
            )

    def meta_loss(self, batch: LabelledImages) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.classifier is None:
            raise MetarunError("this Pretrain learner was built to evaluate only (no classes)")
        logits = self.classifier(self.backbone(batch.x))
        loss = F.cross_entropy(logits, batch.y, label_smoothing=self.label_smoothing)
        acc = (logits.argmax(-1) == batch.y).float().mean()
        return loss, {"loss": loss.detach(), "acc": acc.detach()}

    def query_logits(self, batch: TaskBatch) -> torch.Tensor:
        nk = batch.support_y.shape[1]
        with torch.no_grad():
            z = embed(self.backbone, torch.cat([batch.support_x, batch.query_x], dim=1))
        way = int(batch.support_y.max()) + 1
        return head_logits(self.head, z[:, :nk], batch.support_y, z[:, nk:], way, self.head_options)

    def evaluate(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        logits = self.query_logits(batch)
        loss = F.cross_entropy(logits.transpose(1, 2), batch.query_y, reduction="none")
        return {"loss": loss.mean(1), "acc": (logits.argmax(-1) == batch.query_y).float().mean(1)}

    def predict(self, support_x, support_y, query_x) -> torch.Tensor:
        dummy = torch.zeros(1, query_x.shape[0], dtype=torch.long, device=query_x.device)
        task = TaskBatch(support_x[None], support_y[None], query_x[None], dummy)
        return self.query_logits(task)[0]

    def extra_repr(self) -> str:
        return f"head={self.head}, batch_size={self.image_batch}"


def with_head(learner: MetaLearner, head: str) -> Pretrain:
    """``learner`` classifying with test-time head ``head`` on its backbone's embeddings
    (``metarun-eval head=...``): a pre-trained learner switches head, any other image learner's
    backbone (ProtoNet's, MAML's without its output layer) goes into an evaluation-only
    :class:`Pretrain` with the default head options."""
    check_head(head)
    if isinstance(learner, Pretrain):
        learner.head = head
        return learner
    backbone = learner.backbone
    if not hasattr(backbone, "embed"):
        raise MetarunError(
            f"head={head} classifies image embeddings, and {type(learner).__name__}'s backbone "
            f"({type(backbone).__name__}) embeds no images; use it on an image checkpoint"
        )
    device = next(backbone.parameters()).device
    return Pretrain(backbone, optimizer=None, head=head, batch_norm=learner.batch_norm).to(device)
