"""Memory-augmented neural network (Santoro et al. 2016) and its memoryless LSTM baseline.

An episode is a sequence: the support set of an N-way, L-shot task in a shuffled order (the
trainer shuffles it, see :attr:`MetaLearner.sequential`). At step ``t`` the model sees image
``x_t`` and the one-hot label of step ``t - 1`` (zeros at ``t = 0``) and predicts the label of
``x_t``; the loss is the cross-entropy of every step. Since the class-to-label assignment is
re-drawn in every episode, the only way to do better than chance on a class's second
presentation is to bind images to labels within the episode: in the external memory.

One step, for a batch of episodes (``B``), ``H`` heads, ``S`` slots of width ``W`` (eqs. 2-8):

1. controller: ``h_t = LSTM([enc(x_t), onehot(y_{t-1}), r_{t-1}], h_{t-1})``
2. per head, a key ``k_t = tanh(K h_t)`` and a write gate ``a_t = sigmoid(A h_t)``
3. write weights (LRUA): ``ww_t = a_t * wr_{t-1} + (1 - a_t) * wlu_{t-1}``: the slots the head
   read last step, or its least-used slot (head ``j`` takes the ``j``-th least used, so heads
   never share one); those least-used slots are zeroed first, then ``M_t = M_{t-1} + ww_t^T k_t``
4. read weights: ``wr_t = softmax(cos(k_t, M_t))`` over slots; reads ``r_t = wr_t M_t``
5. usage: ``wu_t = gamma * wu_{t-1} + sum_heads(wr_t + ww_t)``; ``wlu_t`` marks its H smallest
6. logits ``= Linear([h_t, r_t])``

Reading after writing (item 4 uses ``M_t``) is what makes LRUA bind: a key written to a fresh
slot finds that slot, so the next step's write (gate towards ``wr_{t-1}``) can add the label
that arrives then to the same slot. The paper's content addressing is a plain softmax over
cosine similarities; a learned key strength (``key_strength: true``, as in the Neural Turing
Machine) sharpens it. Memory, usage and controller state start afresh in every episode.
``memory: none`` drops items 2-5 and the reads: the paper's LSTM baseline, same controller.

One reading of the paper for several heads: its ``wlu`` marks the n least-used slots (n = the
number of reads) and one slot is zeroed per step. Here head j writes only to the j-th
least-used slot, and all of those are zeroed, so each head's write lands in a clean slot and
heads never add their keys into the same place.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from metarun.algorithms.base import MetaLearner
from metarun.data.batch import TaskBatch, TaskShape
from metarun.errors import MetarunError

MEMORY_KINDS = ("lrua", "none")
WRITE_KINDS = ("key", "add")


class MemoryState(NamedTuple):
    """What LRUA carries from one step to the next, for a batch of B episodes."""

    memory: torch.Tensor  # [B, S, W]
    usage: torch.Tensor  # [B, S]
    read_weights: torch.Tensor  # [B, H, S], wr_{t-1}
    least_used: torch.Tensor  # [B, H, S], one-hot rows: wlu_{t-1}, head j's j-th least-used slot
    reads: torch.Tensor  # [B, H, W], r_{t-1}


def least_used(usage: torch.Tensor, heads: int) -> torch.Tensor:
    """One-hot ``[B, H, S]``: row ``j`` marks the ``j``-th least-used slot (ties: lowest index)."""
    order = torch.sort(usage, dim=-1, stable=True).indices[:, :heads]  # [B, H]
    return F.one_hot(order, usage.shape[-1]).to(usage.dtype)


def presentation_numbers(labels: torch.Tensor, way: int) -> torch.Tensor:
    """For labels ``[B, T]``: 1 where a class appears for the first time, 2 the second, ..."""
    return F.one_hot(labels, way).cumsum(1).gather(2, labels.unsqueeze(-1)).squeeze(-1)


class LRUAMemory(nn.Module):
    """Least Recently Used Access memory: content-based reads, LRUA writes (eqs. 2-8 of the paper).

    ``step`` takes the controller output and the previous state and returns the reads and the new
    state; it is a pure function of its inputs, so gradients reach the controller through both
    the keys that are written and the keys that read.
    """

    def __init__(
        self,
        controller_size: int,
        slots: int = 128,
        width: int = 40,
        heads: int = 4,
        gamma: float = 0.99,
        key_strength: bool = False,
        write: str = "key",
        init_value: float = 1e-6,
    ) -> None:
        super().__init__()
        if write not in WRITE_KINDS:
            raise MetarunError(f"algo.write={write!r} is unknown; use one of {WRITE_KINDS}")
        if heads > slots:
            raise MetarunError(
                f"algo.read_heads={heads} exceeds algo.memory_slots={slots}; LRUA writes each "
                "head to its own least-used slot, so use at most as many heads as slots"
            )
        if not 0.0 <= gamma <= 1.0:
            raise MetarunError(f"algo.gamma={gamma} must lie in [0, 1] (usage decay)")
        self.slots, self.width, self.heads, self.gamma = slots, width, heads, gamma
        self.init_value = init_value
        self.key = nn.Linear(controller_size, heads * width)
        self.gate = nn.Linear(controller_size, heads)
        self.strength = nn.Linear(controller_size, heads) if key_strength else None
        self.add = nn.Linear(controller_size, heads * width) if write == "add" else None

    def initial_state(self, batch: int, device, dtype) -> MemoryState:
        """Memory filled with a small constant (so cosines are defined), nothing used yet."""
        h, s, w = self.heads, self.slots, self.width
        usage = torch.zeros(batch, s, device=device, dtype=dtype)
        return MemoryState(
            memory=torch.full((batch, s, w), self.init_value, device=device, dtype=dtype),
            usage=usage,
            read_weights=torch.zeros(batch, h, s, device=device, dtype=dtype),
            least_used=least_used(usage, h),
            reads=torch.zeros(batch, h, w, device=device, dtype=dtype),
        )

    def address(self, keys: torch.Tensor, memory: torch.Tensor, beta=None) -> torch.Tensor:
        """Read weights ``[B, H, S]``: softmax over slots of the cosine similarity to each key."""
        sim = F.normalize(keys, dim=-1, eps=1e-8) @ F.normalize(memory, dim=-1, eps=1e-8).mT
        if beta is not None:
            sim = sim * beta.unsqueeze(-1)
        return sim.softmax(dim=-1)

    def write_weights(self, gate: torch.Tensor, state: MemoryState) -> torch.Tensor:
        """``sigmoid(alpha) * wr_{t-1} + (1 - sigmoid(alpha)) * wlu_{t-1}``, ``[B, H, S]``."""
        a = gate.sigmoid().unsqueeze(-1)
        return a * state.read_weights + (1 - a) * state.least_used

    def step(self, h: torch.Tensor, state: MemoryState) -> tuple[torch.Tensor, MemoryState]:
        b = h.shape[0]
        keys = torch.tanh(self.key(h)).view(b, self.heads, self.width)
        beta = F.softplus(self.strength(h)) + 1.0 if self.strength is not None else None
        if self.add is not None:  # NTM-style: a separate add vector; reads see past steps only
            values = torch.tanh(self.add(h)).view(b, self.heads, self.width)
            read = self.address(keys, state.memory, beta)
        else:
            values = keys
        write = self.write_weights(self.gate(h), state)
        # The least-used slots are cleared before they are written (the paper's M_t(lu) <- 0),
        # then each head adds its vector where its write weights point.
        keep = 1.0 - state.least_used.sum(1).clamp(max=1.0)  # [B, S]
        memory = state.memory * keep.unsqueeze(-1) + write.mT @ values
        if self.add is None:
            read = self.address(keys, memory, beta)
        reads = read @ memory  # [B, H, W]
        usage = self.gamma * state.usage + read.sum(1) + write.sum(1)
        new = MemoryState(memory, usage, read, least_used(usage, self.heads), reads)
        return reads, new


class MANN(MetaLearner):
    """Meta-learning with memory-augmented neural networks (Santoro et al., ICML 2016).

    ``backbone`` encodes each image (``backbone=flatten``: raw pixels, as in the paper; a conv
    backbone gives learned features). Reports the accuracy at the i-th presentation of a class
    (``acc_inst<i>`` for i in ``report_instances``, the paper's table columns) besides ``acc``.
    """

    sequential = True

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
                controller_size, memory_slots, memory_width, read_heads, gamma, key_strength, write
            )
            if memory == "lrua"
            else None
        )
        read_size = read_heads * memory_width if self.memory is not None else 0
        self.controller = nn.LSTMCell(features + way + read_size, controller_size)
        self.output = nn.Linear(controller_size + read_size, way)

    @classmethod
    def output_size(cls, dataset, way: int) -> None:
        if dataset.problem != "classification":
            raise MetarunError(
                "algo=mann classifies; it cannot run on a regression dataset "
                f"({type(dataset).__name__}); use algo=maml or a classification dataset"
            )
        return None  # the backbone encodes; the controller and output layer are MANN's

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
            memory = f"lrua {m.slots}x{m.width}, {heads}, write={write}"
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
