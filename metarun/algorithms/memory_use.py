"""Does a trained MANN use its memory? Read sharpness, retrieval and write gate per presentation.

Run it with ``python scripts/mann_memory_use.py RUN/checkpoints/best.pt [--episodes 500]
[--seed 1234]`` (``--seed 2002 --episodes 1000 --batch-size 100``: a run's own test episodes).

On fixed test episodes (held-out characters), for each presentation of a class it prints:
- ``entropy``: the read weights' entropy in nats; ``log(slots)`` is a uniform read (no content
  addressing at all), 0 a read of one slot;
- ``max w``: the largest read weight (uniform: ``1 / slots``);
- ``self w``: the read weight on the slot this step itself wrote most into (reads follow the
  write, so a key finds itself there);
- ``same x``: the read weight on slots last written at earlier steps of the *same* class,
  divided by what a uniform read puts there (1: reads ignore the class; retrieval is > 1);
- ``late x``: the same for slots last written at the step *after* an earlier presentation of the
  class, where that image's label (it arrives one step late) can be written with it;
- ``gate``: the mean write gate ``sigmoid(alpha)``: 0 writes to the least-used slot, 1 to the
  slots read at the previous step;
- ``acc``: the accuracy, as in the run's test table;
- ``uniform`` / ``0 reads`` / ``swapped``: the accuracy when every read is replaced by the mean
  of all slots (the same memory without content addressing), by zeros, or by the reads of
  another episode of the batch: how much the model relies on its memory, and on addressing it.
Read head 0 is reported when there are several.
"""

from __future__ import annotations

import math

import torch

from metarun.algorithms.mann import presentation_numbers
from metarun.errors import MetarunError
from metarun.evaluate import fixed_episodes

# What replaces the reads (see ``record_steps``) -> its column in the table.
ABLATIONS = {"uniform": "uniform", "zero": "0 reads", "swap": "swapped"}


def record_steps(memory, ablation: list[str]):
    """Record (read weights, write weights, gate) of head 0 at each step of ``memory`` (through
    its ``observer`` hook); returns the list the steps are appended to.

    ``ablation[0]`` alters the reads that the controller and output layer get: ``"uniform"``:
    the mean of the memory's slots (a read that ignores the key), ``"zero"``, or ``"swap"``: the
    reads of another episode of the batch (another episode's memory); ``"none"`` leaves them."""
    steps = []

    def recording(gate, write, reads, new):
        steps.append((new.read_weights[:, 0], write[:, 0], gate[:, 0].sigmoid()))
        if ablation[0] == "uniform":  # the same memory, read without content addressing
            reads = new.memory.mean(1, keepdim=True).expand_as(reads)
        elif ablation[0] == "zero":
            reads = torch.zeros_like(reads)
        elif ablation[0] == "swap":
            reads = reads.roll(1, 0)
        new = new._replace(reads=reads)
        return reads, new

    memory.observer = recording
    return steps


def share(read: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Read weight ``[B]`` on the masked slots over what a uniform read puts there (NaN: none)."""
    expected = mask.sum(-1) / read.shape[-1]
    mass = (read * mask).sum(-1)
    return torch.where(expected > 0, mass / expected.clamp_min(1e-12), torch.nan)


def memory_use(exp, episodes: int, batch_size: int, seed: int) -> tuple[list[str], list]:
    """The table of the module docstring for a trained MANN experiment: column names and rows
    ``[presentation, values...]`` averaged over ``episodes`` fixed test episodes (drawn
    ``batch_size`` at a time from ``seed``), with a header line about the memory."""
    learner = exp.learner
    if getattr(learner, "memory", None) is None:
        raise MetarunError("not a MANN with a memory (algo.memory=lrua)")
    if batch_size < 2:
        raise MetarunError("--batch-size must be at least 2 (the swap ablation needs two episodes)")
    ablation = ["none"]
    steps = record_steps(learner.memory, ablation)
    rows, instances, ablated = [], [], []
    episodes = (episodes, batch_size, seed)
    for batch in fixed_episodes(exp.dataset, "test", exp.eval_shape, *episodes, exp.device, True):
        x, y = batch.support_x, batch.support_y
        with torch.no_grad():
            acc = []
            for ablation[0] in (*ABLATIONS, "none"):  # "none" last: steps keeps the intact run
                steps.clear()
                logits, _ = learner.sequence_logits(x, y)
                acc.append((logits.argmax(-1) == y).T.reshape(-1).to(x.dtype))
        ablated.append(torch.stack(acc[:-1], 1))  # [T * B, len(ABLATIONS)], ordered like rows
        read = torch.stack([s[0] for s in steps], 1)  # [B, T, S]
        owner = torch.stack([s[1] for s in steps], 1).argmax(-1)  # [B, T]: slot written most
        gate = torch.stack([s[2] for s in steps], 1)  # [B, T]
        slots = read.shape[-1]
        last = torch.full((y.shape[0], slots), -1, dtype=torch.long)  # step that last wrote
        for t in range(y.shape[1]):
            # Slots last written by an earlier step of this step's class, or by the step after one.
            same = (last >= 0) & (y.gather(1, last.clamp_min(0)) == y[:, t : t + 1])
            late = (last >= 1) & (y.gather(1, (last - 1).clamp_min(0)) == y[:, t : t + 1])
            ratio, late_ratio = (share(read[:, t], mask) for mask in (same, late))
            entropy = -(read[:, t] * read[:, t].clamp_min(1e-12).log()).sum(-1)
            correct = (logits[:, t].argmax(-1) == y[:, t]).to(read.dtype)
            own = read[:, t].gather(1, owner[:, t : t + 1]).squeeze(1)
            top = read[:, t].max(-1).values
            rows.append(torch.stack([entropy, top, own, ratio, late_ratio, gate[:, t], correct], 1))
            last.scatter_(1, owner[:, t : t + 1], t)
        instances.append(presentation_numbers(y, learner.way).T.reshape(-1))
    table, instance = torch.cat([torch.cat(rows), torch.cat(ablated)], 1), torch.cat(instances)
    learner.memory.observer = None
    names = ["entropy", "max w", "self w", "same x", "late x", "gate", "acc", *ABLATIONS.values()]
    header = (
        f"read head 0 of {learner.memory.heads}; a uniform read has entropy "
        f"{math.log(slots):.3f} and max w {1 / slots:.4f}"
    )
    rows = [[i, *table[instance == i].nanmean(0).tolist()] for i in sorted(set(instance.tolist()))]
    return [header, *names], rows
