"""Least Recently Used Access memory (Santoro et al. 2016, eqs. 2-8): MANN's external memory.

One step, for a batch of episodes (``B``), ``H`` heads, ``S`` slots of width ``W``, given the
controller output ``h_t``:

1. per head, a key ``k_t = tanh(K h_t)`` and a write gate ``a_t = sigmoid(A h_t)``
2. write weights: ``ww_t = a_t * wr_{t-1} + (1 - a_t) * wlu_{t-1}``: the slots the head read
   last step, or its least-used slot (head ``j`` takes the ``j``-th least used, so heads never
   share one); those least-used slots are zeroed first, then ``M_t = M_{t-1} + ww_t^T k_t``
3. read weights: ``wr_t = softmax(cos(k_t, M_t))`` over slots; reads ``r_t = wr_t M_t``
4. usage: ``wu_t = gamma * wu_{t-1} + sum_heads(wr_t + ww_t)``; ``wlu_t`` marks its H smallest

Reading after writing (item 3 uses ``M_t``) is what makes LRUA bind by design: a key written to
a fresh slot finds that slot, so the next step's write (gate towards ``wr_{t-1}``) can add the
label that arrives then to the same slot. (The models trained on Omniglot keep the gate shut and
read almost uniformly, yet rely on those reads: ``scripts/mann_memory_use.py`` and docs/results.md.)
The paper's content addressing is a plain softmax over cosine similarities; a learned key
strength (``key_strength: true``, as in the Neural Turing Machine) sharpens it. Two variants:
``write: add`` writes a separate NTM-style add vector (the key only reads), and ``read_order:
before_write`` addresses the memory as it was before this step's write (the default for
``add``), so a step never finds its own write.

One reading of the paper for several heads: its ``wlu`` marks the n least-used slots (n = the
number of reads) and one slot is zeroed per step. Here head j writes only to the j-th
least-used slot, and all of those are zeroed, so each head's write lands in a clean slot and
heads never add their keys into the same place.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from metarun.errors import MetarunError

WRITE_KINDS = ("key", "add")
READ_ORDERS = ("after_write", "before_write")


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
        read_order: str | None = None,
        init_value: float = 1e-6,
    ) -> None:
        super().__init__()
        if write not in WRITE_KINDS:
            raise MetarunError(f"algo.write={write!r} is unknown; use one of {WRITE_KINDS}")
        if read_order is None:
            read_order = "after_write" if write == "key" else "before_write"
        if read_order not in READ_ORDERS:
            raise MetarunError(
                f"algo.read_order={read_order!r} is unknown; use one of {READ_ORDERS} (or null: "
                "after_write for write=key, before_write for write=add)"
            )
        self.read_order = read_order
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

    #: ``observer(gate, write, reads, new) -> (reads, new)``, called at the end of every step
    #: when set: it sees the step's write gate and weights and may replace what the step hands on
    #: (:mod:`metarun.algorithms.memory_use` records and ablates reads). None: nothing.
    observer = None

    def step(self, h: torch.Tensor, state: MemoryState) -> tuple[torch.Tensor, MemoryState]:
        b = h.shape[0]
        keys = torch.tanh(self.key(h)).view(b, self.heads, self.width)
        beta = F.softplus(self.strength(h)) + 1.0 if self.strength is not None else None
        values = keys if self.add is None else torch.tanh(self.add(h)).view(b, -1, self.width)
        if self.read_order == "before_write":  # reads see past steps' writes only
            read = self.address(keys, state.memory, beta)
        gate = self.gate(h)
        write = self.write_weights(gate, state)
        # The least-used slots are cleared before they are written (the paper's M_t(lu) <- 0),
        # then each head adds its vector where its write weights point.
        keep = 1.0 - state.least_used.sum(1).clamp(max=1.0)  # [B, S]
        memory = state.memory * keep.unsqueeze(-1) + write.mT @ values
        if self.read_order == "after_write":
            read = self.address(keys, memory, beta)
        reads = read @ memory  # [B, H, W]
        usage = self.gamma * state.usage + read.sum(1) + write.sum(1)
        new = MemoryState(memory, usage, read, least_used(usage, self.heads), reads)
        if self.observer is not None:  # diagnostics (metarun.algorithms.memory_use)
            reads, new = self.observer(gate, write, reads, new)
        return reads, new
