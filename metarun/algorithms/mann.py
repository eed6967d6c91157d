"""Memory-augmented neural network (Santoro et al. 2016) and its memoryless LSTM baseline.

An episode is a sequence: the support set of an N-way, L-shot task in a shuffled order (the
trainer shuffles it, see :attr:`MetaLearner.sequential`). At step ``t`` the model sees image
``x_t`` and the one-hot label of step ``t - 1`` (zeros at ``t = 0``) and predicts the label of
``x_t``; the loss is the cross-entropy of every step. Since the class-to-label assignment is
re-drawn in every episode, the only way to do better than chance on a class's second
presentation is to bind images to labels within the episode: in the external memory.

One step: the controller ``h_t = LSTM([enc(x_t), onehot(y_{t-1}), r_{t-1}], h_{t-1})``, then
the LRUA memory (:mod:`metarun.algorithms.lrua`) writes and reads with keys from ``h_t``, and
the logits are ``Linear([h_t, r_t])``. Memory, usage and controller state start afresh in every
episode. ``memory: none`` drops the memory and the reads: the paper's LSTM baseline, same
controller.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from metarun.algorithms.base import MetaLearner
from metarun.algorithms.lrua import LRUAMemory, MemoryState
from metarun.data.batch import TaskBatch, TaskShape
from metarun.errors import MetarunError
from metarun.series import Series

MEMORY_KINDS = ("lrua", "none")


def presentation_numbers(labels: torch.Tensor, way: int) -> torch.Tensor:
    """For labels ``[B, T]``: 1 where a class appears for the first time, 2 the second, ..."""
    return F.one_hot(labels, way).cumsum(1).gather(2, labels.unsqueeze(-1)).squeeze(-1)


class MANN(MetaLearner):
    """Meta-learning with memory-augmented neural networks (Santoro et al., ICML 2016).

    ``backbone`` encodes each image (``backbone=flatten``: raw pixels, as in the paper; a conv
    backbone gives learned features). Reports the accuracy at the i-th presentation of a class
    (``acc_inst<i>`` for i in ``report_instances``, the paper's table columns) besides ``acc``.
    """

    uncompiled_reason = None  # train.compile: a forward and one backward

    sequential = True
    batch_norm_across_tasks = True
    metric_series = (Series("{metric}_inst{i}", "instance"),)  # algo.report_instances

    def __init__(
        self,
        backbone: nn.Module,
        optimizer,
        scheduler=None,
        batch_norm: str = "running",
        way: int = 5,
        memory: str = "lrua",
        controller_size: int = 200,
        memory_slots: int = 128,
        memory_width: int = 40,
        read_heads: int = 4,
        gamma: float = 0.99,
        key_strength: bool = False,
        write: str = "key",
        read_order: str | None = None,
        report_instances: Sequence[int] = (1, 2, 3, 4, 5, 10),
    ) -> None:
        super().__init__(backbone, optimizer, scheduler, batch_norm)
        if memory not in MEMORY_KINDS:
            raise MetarunError(f"algo.memory={memory!r} is unknown; use one of {MEMORY_KINDS}")
        if min(controller_size, memory_slots, memory_width, read_heads, way) < 1:
            raise MetarunError(
                "algo.controller_size, memory_slots, memory_width and read_heads must be positive"
            )
        self.way = way
        self.report_instances = tuple(int(i) for i in report_instances)
        features = backbone.out_features
        self.memory = (
            LRUAMemory(
                controller_size,
                memory_slots,
                memory_width,
                read_heads,
                gamma,
                key_strength,
                write,
                read_order,
            )
            if memory == "lrua"
            else None
        )
        read_size = read_heads * memory_width if self.memory is not None else 0
        self.controller = nn.LSTMCell(features + way + read_size, controller_size)
        self.output = nn.Linear(controller_size + read_size, way)

    @classmethod
    def output_size(cls, dataset, way: int) -> None:
        return cls.no_head_for_classes(dataset)  # the backbone embeds; no output layer

    @classmethod
    def check_task(cls, shape: TaskShape, what: str, algo_cfg) -> None:
        if shape.way != algo_cfg.way:
            raise MetarunError(
                f"{what}: algo=mann has a {algo_cfg.way}-way output layer (algo.way) but the "
                f"episodes are {shape.way}-way; set algo.way, task.way and task.train_way alike"
            )
        if shape.query != 0:
            raise MetarunError(
                f"{what}: algo=mann learns from one sequence of way x shot images per episode and "
                f"has no query set, but task.query={shape.query}; set task.query=0 (task.shot is "
                "the number of presentations of each class)"
            )

    def extra_repr(self) -> str:
        m = self.memory
        memory = "none"
        if m is not None:
            write = "key" if m.add is None else "add"
            heads = f"{m.heads} head" + ("s" if m.heads != 1 else "")
            memory = f"lrua {m.slots}x{m.width}, {heads}, write={write}, {m.read_order} read"
            memory += ", key strength" if m.strength is not None else ""
        return f"way={self.way}, controller={self.controller.hidden_size}, memory={memory}"

    def _check_way(self, labels: torch.Tensor) -> None:
        if labels.numel() and int(labels.max()) >= self.way:
            raise MetarunError(
                f"this MANN has {self.way} outputs (algo.way) but the episode has "
                f"{int(labels.max()) + 1} classes; use at most {self.way} classes, or train with "
                "algo.way equal to task.way"
            )

    def sequence_logits(
        self, x: torch.Tensor, y: torch.Tensor, state=None
    ) -> tuple[torch.Tensor, tuple]:
        """Logits ``[B, T, way]`` for sequences ``x [B, T, ...]`` with labels ``y [B, T]``.

        Step ``t`` sees ``x_t`` and ``y_{t-1}``. ``state`` (from an earlier call) continues a
        sequence; returned with the logits.
        """
        b, steps = y.shape
        z = self.backbone(x)  # [B, T, F], every image encoded in one pass
        prev = F.one_hot(y, self.way).to(z.dtype)
        if state is None:
            zeros = z.new_zeros(b, self.controller.hidden_size)
            memory = self.memory.initial_state(b, z.device, z.dtype) if self.memory else None
            state = ((zeros, zeros), memory, z.new_zeros(b, self.way))
        (hx, cx), memory, last_label = state
        # nn.LSTMCell's arithmetic (its parameters, its gate order i, f, g, o), rearranged: the
        # part of the input that does not depend on the recurrence (image, previous label) is
        # projected for all steps in one matrix product; each step multiplies only [h, reads].
        cell = self.controller
        fixed = z.shape[-1] + self.way
        labels_in = torch.cat([last_label[:, None], prev[:, :-1]], dim=1)  # y_{t-1} at step t
        inputs = torch.cat([z, labels_in], dim=-1)
        bias = cell.bias_ih + cell.bias_hh
        # T x [B, 4 * controller]; unbind has one backward, slicing [:, t] a zero-fill per step
        projected = F.linear(inputs, cell.weight_ih[:, :fixed], bias).unbind(1)
        recurrent = torch.cat([cell.weight_hh, cell.weight_ih[:, fixed:]], dim=1)
        outputs = []
        for t in range(steps):
            carried = hx if memory is None else torch.cat([hx, memory.reads.flatten(1)], dim=-1)
            gates = torch.addmm(projected[t], carried, recurrent.t())
            i, f, g, o = gates.chunk(4, dim=1)
            cx = torch.sigmoid(f) * cx + torch.sigmoid(i) * torch.tanh(g)
            hx = torch.sigmoid(o) * torch.tanh(cx)
            if memory is not None:
                reads, memory = self.memory.step(hx, memory)
                outputs.append(torch.cat([hx, reads.flatten(1)], dim=-1))
            else:
                outputs.append(hx)
        logits = self.output(torch.stack(outputs, dim=1))  # [B, T, way], one product
        return logits, ((hx, cx), memory, prev[:, -1])

    def _scores(self, batch: TaskBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-step loss ``[B, T]`` and per-episode metrics (``[B]`` each).

        Episodes are balanced (every class ``T / way`` times; ``check_task`` fixed the way when
        the run was built), so which presentations exist is known without reading the labels:
        no host-device sync in the training step."""
        x, y = batch.support_x, batch.support_y
        logits, _ = self.sequence_logits(x, y)
        loss = F.cross_entropy(logits.transpose(1, 2), y, reduction="none")  # [B, T]
        correct = (logits.argmax(-1) == y).to(logits.dtype)
        instance = presentation_numbers(y, self.way)  # [B, T]
        metrics = {"loss": loss.mean(1), "acc": correct.mean(1)}
        for i in self.report_instances:
            if i <= y.shape[1] // self.way:
                mask = (instance == i).to(correct.dtype)
                metrics[f"acc_inst{i}"] = (correct * mask).sum(1) / mask.sum(1)
        return loss, metrics

    def meta_loss(self, batch: TaskBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, metrics = self._scores(batch)
        return loss.mean(), {k: v.detach().mean() for k, v in metrics.items()}

    def evaluate(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return self._scores(batch)[1]

    def predict(self, support_x, support_y, query_x) -> torch.Tensor:
        """Run the support set as a sequence, then each query as its own next step.

        The support set is put in a fixed shuffled order first (classes mixed, as in training).
        Returns logits ``[Q, N]``."""
        self._check_way(support_y)
        order = torch.rand(len(support_y), generator=torch.Generator().manual_seed(0)).argsort()
        support_x, support_y = (
            support_x[order.to(support_x.device)],
            support_y[order.to(support_y.device)],
        )
        with torch.no_grad():
            _, ((hx, cx), memory, last) = self.sequence_logits(support_x[None], support_y[None])
            q = query_x.shape[0]
            expand = lambda t: t.expand(q, *t.shape[1:])  # noqa: E731
            if memory is not None:
                memory = MemoryState(*map(expand, memory))
            state = ((expand(hx), expand(cx)), memory, expand(last))
            dummy = torch.zeros(q, 1, dtype=torch.long, device=query_x.device)
            logits, _ = self.sequence_logits(query_x[:, None], dummy, state)
            return logits[:, 0, : int(support_y.max()) + 1]  # only the labels the support has
