"""Test-time classifiers on frozen embeddings: what a pre-trained network (``algo=pretrain``), or
any image checkpoint (``metarun-eval head=...``), uses to classify a task's queries from its
labelled support set.

Every head takes a chunk of tasks at once: support embeddings ``[B, S, D]`` with labels
``[B, S]`` in ``[0, way)``, query embeddings ``[B, Q, D]``, and returns query logits
``[B, Q, way]``. The embeddings are constants: only the head's own weights are fitted.

- ``prototype``: nearest class mean, the negative squared Euclidean distance to each class's
  mean support embedding (ProtoNet's rule on these features).
- ``logistic``: multinomial logistic regression on L2-normalised embeddings (RFS, Tian et al.
  2020): the minimum of ``0.5 |W|^2 + C * sum_i CE(W x_i + b, y_i)`` (scikit-learn's
  ``LogisticRegression(C=C, multi_class="multinomial")``, the bias not penalised), by L-BFGS.
- ``finetune``: a new linear layer trained on the support set (Baseline, Chen et al. 2019): SGD
  with momentum 0.9 and dampening 0.9, step ``lr``, weight decay, mini-batches of ``batch_size``
  support examples, ``epochs`` passes over the support set.
- ``cosine``: the same training of Baseline++'s cosine classifier: ``scale * g_c * cos(x, v_c)``
  (a weight-normalised layer without bias: direction ``v_c`` and length ``g_c`` per class).

Fitting is deterministic and the same for every task whatever the chunk: ``finetune`` and
``cosine`` start every task from one initial layer and take the support examples in one order
per epoch, both drawn from a generator seeded with 0 (episodes' labels are a fresh random
permutation of their classes, so sharing them costs nothing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from metarun.errors import MetarunError
from metarun.schemas.baselines import HEADS, PretrainConfig


def cosine_scale(classes: int, scale: float | None) -> float:
    """``scale``, or Baseline++'s fixed factor: 2 up to 200 classes, 10 above (Chen et al.)."""
    return float(scale) if scale is not None else (2.0 if classes <= 200 else 10.0)


@dataclass(frozen=True)
class HeadOptions:
    """How a head fits; the defaults are ``algo=pretrain``'s (its schema: Chen et al.'s
    fine-tuning, RFS's logistic regression)."""

    epochs: int = PretrainConfig.head_epochs
    lr: float = PretrainConfig.head_lr
    batch_size: int = PretrainConfig.head_batch_size
    weight_decay: float = PretrainConfig.head_weight_decay
    logistic_c: float = PretrainConfig.logistic_c
    logistic_iterations: int = 1000
    scale: float | None = PretrainConfig.scale  # cosine: None is Chen et al.'s rule


class CosineClassifier(nn.Module):
    """Baseline++'s classifier: ``scale * g_c * cos(x, v_c)``, a weight-normalised linear layer
    without bias on L2-normalised inputs (the pre-training classifier of ``classifier=cosine``)."""

    def __init__(self, in_features: int, classes: int, scale: float | None = None) -> None:
        super().__init__()
        self.scale = cosine_scale(classes, scale)
        layer = nn.Linear(in_features, classes, bias=False)
        self.layer = nn.utils.parametrizations.weight_norm(layer, dim=0)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.scale * self.layer(F.normalize(z, dim=-1))

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}"


def head_logits(
    name: str,
    support: torch.Tensor,
    support_y: torch.Tensor,
    query: torch.Tensor,
    way: int,
    options: HeadOptions = HeadOptions(),
) -> torch.Tensor:
    """Query logits ``[B, Q, way]`` of head ``name`` fitted on each task's support set."""
    dtype = torch.promote_types(support.dtype, torch.float32)  # fp16 / bf16 embeddings: fp32
    support, query = support.detach().to(dtype), query.detach().to(dtype)
    with torch.autocast(support.device.type, enabled=False):
        if name == "prototype":
            return prototype_logits(support, support_y, query, way)
        if name == "logistic":
            c, iterations = options.logistic_c, options.logistic_iterations
            return logistic_logits(support, support_y, query, way, c, iterations)
        if name in ("finetune", "cosine"):
            return finetuned_logits(support, support_y, query, way, options, name == "cosine")
    raise ValueError(f"unknown head {name!r}; one of {', '.join(HEADS)}")


def check_head(name: str) -> None:
    """Refuse, in one line, a head that is not one of :data:`HEADS` (``metarun-eval head=``)."""
    if name not in HEADS:
        raise MetarunError(f"head={name} is not a test-time head; use one of {', '.join(HEADS)}")


def class_sums(support, support_y, way: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class's sum of support embeddings ``[B, N, D]`` and its count ``[B, N, 1]``."""
    onehot = F.one_hot(support_y, way).to(support.dtype)  # [B, S, N]
    return onehot.transpose(1, 2) @ support, onehot.sum(1).unsqueeze(-1)


def squared_distance_logits(query: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Minus the squared Euclidean distance of each query ``[B, Q, D]`` to each centre
    ``[B, N, D]``: ``[B, Q, N]``."""
    return -(query.unsqueeze(2) - centres.unsqueeze(1)).pow(2).sum(-1)


def prototype_logits(support, support_y, query, way: int) -> torch.Tensor:
    sums, counts = class_sums(support, support_y, way)
    return squared_distance_logits(query, sums / counts)


def logistic_logits(support, support_y, query, way: int, c: float, iterations: int):
    """RFS's classifier: L2-normalised features, L2-penalised multinomial logistic regression.

    The tasks' objectives are independent, so their sum is minimised jointly (one L-BFGS run
    per chunk of tasks), in float64 (but on MPS, which has none): converged to within 1e-6 of
    each task's own optimum, so a task's result does not depend on the tasks beside it."""
    dtype = torch.float32 if support.device.type == "mps" else torch.float64
    s, q = F.normalize(support.to(dtype), dim=-1), F.normalize(query.to(dtype), dim=-1)
    b, _, d = s.shape
    weight = torch.zeros(b, d, way, device=s.device, dtype=s.dtype, requires_grad=True)
    bias = torch.zeros(b, 1, way, device=s.device, dtype=s.dtype, requires_grad=True)
    targets = support_y.flatten()
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        max_iter=iterations,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        logits = (s @ weight + bias).flatten(0, 1)
        loss = c * F.cross_entropy(logits, targets, reduction="sum") + 0.5 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(objective)
    return (q @ weight + bias).detach().to(support.dtype)


def finetuned_logits(support, support_y, query, way: int, options: HeadOptions, cosine: bool):
    """A new linear (or cosine) layer per task, trained on the support set as Baseline does."""
    b, s, d = support.shape
    generator = torch.Generator().manual_seed(0)
    bound = 1.0 / math.sqrt(d)  # nn.Linear's initialisation
    start = (torch.rand(d, way, generator=generator) * 2 - 1) * bound
    weight = start.to(support.device).expand(b, d, way).clone().requires_grad_()
    if cosine:  # weight norm: direction ``weight`` (columns), length ``gain`` per class
        gain = weight.detach().norm(dim=1, keepdim=True).clone().requires_grad_()  # [B, 1, N]
        scale = cosine_scale(way, options.scale)
        extra = gain
    else:
        start_bias = (torch.rand(way, generator=generator) * 2 - 1) * bound
        extra = start_bias.to(support.device).expand(b, 1, way).clone().requires_grad_()

    def scores(z: torch.Tensor) -> torch.Tensor:
        if cosine:
            return scale * gain * (F.normalize(z, dim=-1) @ F.normalize(weight, dim=1))
        return z @ weight + extra

    optimizer = torch.optim.SGD(
        [weight, extra],
        lr=options.lr,
        momentum=0.9,
        dampening=0.9,
        weight_decay=options.weight_decay,
    )
    with torch.enable_grad():
        for _ in range(options.epochs):
            order = torch.randperm(s, generator=generator).to(support.device)
            for start_at in range(0, s, options.batch_size):
                picked = order[start_at : start_at + options.batch_size]
                logits = scores(support[:, picked])  # [B, n, N]
                labels = support_y[:, picked]
                # the sum over tasks of each task's mean loss: every task its own gradient
                loss = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
                optimizer.zero_grad()
                loss.mean(1).sum().backward()
                optimizer.step()
        return scores(query).detach()
