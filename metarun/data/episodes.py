"""N-way K-shot episodes drawn straight from an in-memory uint8 image tensor.

Every classification dataset hands this class one tensor per split, ``[C, S, H, W]`` (grey) or
``[C, S, ch, H, W]``: C classes with S samples each. A task batch is a handful of index
operations on that tensor (on the target device), so sampling costs far less than a training step.

Two ways to draw an episode's classes (``protocol``): ``random``, any ``way`` classes of the
split; ``within_alphabet`` (Lake et al. 2015's one-shot protocol), all from one alphabet (a
dataset that names each class's alphabet, ``alphabets``), with the support and the query drawn by
different drawers: one permutation of the sample positions per episode, the first ``shot`` of it
the support's and the next ``query`` the queries' for every class (Omniglot's positions are its
20 drawers).
"""

from __future__ import annotations

import torch

from metarun.data.batch import TaskBatch, TaskShape
from metarun.data.image_batches import ImageBatches
from metarun.data.warps import Warp, apply_warps, draw_warps
from metarun.errors import MetarunError, warn

SPLITS = ("train", "val", "test")
PROTOCOLS = ("random", "within_alphabet")


def protocol_options(protocol: str) -> dict:
    """Keyword arguments of ``sample`` / ``check_shape`` for ``protocol``: none for ``random``,
    so that datasets whose ``sample`` has no ``protocol`` (sinusoid, user datasets) still work."""
    return {} if protocol == "random" else {"protocol": protocol}


def check_protocol(dataset, protocol: str, what: str) -> None:
    """Refuse, in one line, a protocol that ``dataset`` cannot draw (any dataset, not only
    these images)."""
    if protocol == "within_alphabet" and not getattr(dataset, "alphabets", None):
        raise MetarunError(
            f"{what}: the within_alphabet protocol needs a dataset whose classes belong to "
            f"alphabets (dataset=omniglot); {type(dataset).__name__} has none: use protocol=random"
        )


class EpisodicImages(ImageBatches):
    """Episodic sampler shared by every image dataset (and its mini-batches of images over a
    split's whole label space for supervised pre-training, :mod:`~metarun.data.image_batches`).

    With ``rotations`` each class also appears rotated by 90, 180 and 270 degrees as three more
    classes (the MAML / ProtoNet Omniglot protocol), within its own split. With ``shift`` every
    meta-training image is translated by a random whole number of pixels in ``[-shift, shift]``
    along each axis (zeros, the background, fill the border): the per-sample augmentation of
    Santoro et al. (2016). With ``warp`` (:class:`~metarun.data.warps.Warp`) every
    meta-training image gets its own random affine / elastic warp. Validation and test images are
    never shifted or warped. ``alphabets`` names each class's alphabet per split (the
    ``within_alphabet`` protocol); under that protocol the rotated copies of an alphabet are
    alphabets of their own in meta-training, and validation and test episodes use the characters
    as drawn (rotation is a training augmentation there).
    """

    problem = "classification"

    def __init__(
        self,
        splits: dict[str, torch.Tensor],
        rotations: bool = False,
        shift: int = 0,
        warp: Warp | None = None,
        alphabets: dict[str, list[str]] | None = None,
    ) -> None:
        for name in SPLITS:
            if name not in splits:
                raise ValueError(f"missing split {name!r}")
        self.splits = {k: (v if v.dim() == 5 else v.unsqueeze(2)) for k, v in splits.items()}
        self.rotations = 4 if rotations else 1
        first = self.splits["train"]
        self.input_shape = tuple(first.shape[2:])  # (channels, H, W)
        if not 0 <= shift < min(self.input_shape[1:]):
            raise MetarunError(
                f"dataset.shift={shift} must be between 0 and {min(self.input_shape[1:]) - 1} "
                "(pixels of random translation for meta-training images; 0 turns it off)"
            )
        self.shift = shift
        self.warp = warp if isinstance(warp, Warp) else Warp.of(warp)
        self.alphabets = alphabets
        self._groups: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._device_copies: dict[tuple[str, str], torch.Tensor] = {}

    def output_size(self, way: int) -> int:
        return way

    def num_classes(self, split: str) -> int:
        return self.splits[split].shape[0] * self.rotations

    def samples_per_class(self, split: str) -> int:
        return self.splits[split].shape[1]

    def check_shape(
        self, split: str, shape: TaskShape, what: str = "task", protocol: str = "random"
    ) -> None:
        """Raise a one-line error if ``shape`` cannot be drawn from ``split`` by ``protocol``."""
        if protocol == "within_alphabet":
            self._alphabet_groups(split, shape.way, what)
        classes, per_class = self.num_classes(split), self.samples_per_class(split)
        if shape.way > classes:
            raise MetarunError(
                f"{what}: {shape.way}-way tasks need {shape.way} classes but the {split} split "
                f"has {classes}; lower task.way / task.train_way or choose a larger split"
            )
        if shape.shot + shape.query > per_class:
            raise MetarunError(
                f"{what}: shot {shape.shot} + query {shape.query} needs {shape.shot + shape.query}"
                f" samples per class but the {split} split has {per_class}; lower task.shot or "
                "task.query"
            )

    def _alphabet_groups(self, split: str, way: int, what: str) -> tuple[torch.Tensor, list]:
        """The alphabet group of every class of ``split`` (-1: not drawn) and the groups with at
        least ``way`` classes; says in one line which alphabets are too small to draw from."""
        key = (split, way)
        if key in self._groups:
            return self._groups[key]
        check_protocol(self, "within_alphabet", what)
        names = self.alphabets[split]
        order = sorted(set(names))
        base = torch.tensor([order.index(a) for a in names])
        turns = self.rotations if split == "train" else 1
        groups = torch.full((len(names), self.rotations), -1, dtype=torch.long)
        groups[:, :turns] = base[:, None] * turns + torch.arange(turns)
        groups = groups.flatten()  # class c = base * rotations + turn, as in sample()
        sizes = torch.bincount(groups[groups >= 0], minlength=len(order) * turns)
        eligible = (sizes >= way).nonzero().flatten()
        small = sorted({order[g // turns] for g in range(len(sizes)) if sizes[g] < way})
        if not len(eligible):
            biggest = int(sizes.max())
            raise MetarunError(
                f"{what}: {way}-way within-alphabet tasks need an alphabet of {way} characters "
                f"but the largest of the {split} split has {biggest}; lower task.way (or "
                "task.train_way) or use protocol=random"
            )
        if small:
            counts = {order[g // turns]: int(sizes[g]) for g in range(len(sizes))}
            listed = ", ".join(f"{a} ({counts[a]})" for a in small)
            warn(
                f"{what}: {way}-way within-alphabet episodes leave out the {split} alphabets "
                f"with fewer characters: {listed}"
            )
        self._groups[key] = groups, eligible
        return groups, eligible

    def _within_alphabet(
        self, split: str, num_tasks: int, shape: TaskShape, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Classes ``[B, N]`` of one alphabet per episode (uniform over the alphabets that have
        ``way`` classes) and sample positions ``[B, N, K+Q]`` shared by the episode's classes."""
        groups, eligible = self._alphabet_groups(split, shape.way, f"{split} episodes")
        chosen = eligible[torch.randint(len(eligible), (num_tasks,), generator=generator)]
        scores = torch.rand(num_tasks, groups.numel(), generator=generator)
        scores[groups[None, :] != chosen[:, None]] = 2.0  # other alphabets sort last
        classes = scores.argsort(dim=1)[:, : shape.way]
        picks = torch.rand(num_tasks, 1, self.samples_per_class(split), generator=generator)
        picks = picks.argsort(dim=2)[:, :, : shape.shot + shape.query]
        return classes, picks.expand(-1, shape.way, -1)

    def _data(self, split: str, device: torch.device) -> torch.Tensor:
        key = (split, str(device))
        if key not in self._device_copies:  # moved once, then reused by every episode
            self._device_copies[key] = self.splits[split].to(device)
        return self._device_copies[key]

    def sample(
        self,
        split: str,
        num_tasks: int,
        shape: TaskShape,
        generator: torch.Generator,
        device: torch.device | str = "cpu",
        part: slice = slice(None),
        protocol: str = "random",
    ) -> TaskBatch:
        """``num_tasks`` episodes; each draws its classes and samples without replacement
        (``protocol``: how, see the module docstring).

        Labels are the classes' positions in a random draw, so the class-to-label assignment is
        a fresh random permutation in every episode. ``part`` keeps only those episodes of the
        ``num_tasks`` drawn (a data-parallel rank's share): the random draws are those of all
        ``num_tasks``, only the images of ``part`` are gathered.
        """
        device = torch.device(device)
        self.check_shape(split, shape, protocol=protocol)
        data = self._data(split, device)
        n, k, q = shape.way, shape.shot, shape.query
        if protocol == "within_alphabet":
            classes, picks = self._within_alphabet(split, num_tasks, shape, generator)
        else:
            classes = torch.rand(num_tasks, self.num_classes(split), generator=generator)
            classes = classes.argsort(dim=1)[:, :n]  # [B, N], a random permutation prefix
            picks = torch.rand(num_tasks, n, self.samples_per_class(split), generator=generator)
            picks = picks.argsort(dim=2)[:, :, : k + q]  # [B, N, K+Q]
        offsets = None
        if self.shift and split == "train":  # drawn for every image of every episode
            s = self.shift
            offsets = torch.randint(0, 2 * s + 1, (num_tasks, n * (k + q), 2), generator=generator)
            offsets = offsets[part].reshape(-1, 2)
        warps = None
        if self.warp.active and split == "train":  # drawn for all tasks too, then this part's
            theta, field = draw_warps(self.warp, num_tasks * n * (k + q), generator)
            per_task = lambda t: t.view(num_tasks, -1, *t.shape[1:])[part].flatten(0, 1)  # noqa
            warps = (per_task(theta), None if field is None else per_task(field))
        classes, picks = classes[part], picks[part]
        num_tasks = classes.shape[0]
        base, turns = classes // self.rotations, classes % self.rotations
        images = data[base.to(device)[..., None], picks.to(device)]  # [B, N, K+Q, ch, H, W]
        x = self._prepared(images, turns, offsets, warps)
        labels = torch.arange(n, device=device).view(1, n, 1)
        support_y = labels.expand(num_tasks, n, k).reshape(num_tasks, n * k)
        query_y = labels.expand(num_tasks, n, q).reshape(num_tasks, n * q)
        support_x = x[:, :, :k].reshape(num_tasks, n * k, *self.input_shape)
        query_x = x[:, :, k:].reshape(num_tasks, n * q, *self.input_shape)
        return TaskBatch(support_x, support_y, query_x, query_y)

    def _prepared(self, images: torch.Tensor, turns: torch.Tensor, offsets, warps) -> torch.Tensor:
        """uint8 images ``[..., ch, H, W]`` as floats in [0, 1]: each rotated by its class's
        ``turns`` (quarter turns), then shifted (``offsets``) and warped (``warps``) where
        training draws them (None: not)."""
        if self.rotations > 1:
            turns = turns.to(images.device)
            for r in range(1, 4):
                mask = turns == r
                images[mask] = torch.rot90(images[mask], r, dims=(-2, -1))
        if offsets is not None:
            images = self._shifted(images, offsets)
        x = images.float().div_(255.0)
        return x if warps is None else apply_warps(x, *warps)

    def _shifted(self, images: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Each image of ``[..., ch, H, W]`` moved by its own offset ``[M, 2]`` (in
        ``[0, 2 * shift]``, ``shift`` meaning none), zero-filled."""
        *lead, ch, h, w = images.shape
        flat = images.reshape(-1, ch, h, w)
        s = self.shift
        padded = torch.nn.functional.pad(flat, (s, s, s, s))  # [M, ch, H + 2s, W + 2s]
        offsets = offsets.to(images.device)
        rows = offsets[:, :1] + torch.arange(h, device=images.device)  # [M, H]
        cols = offsets[:, 1:] + torch.arange(w, device=images.device)  # [M, W]
        m = torch.arange(flat.shape[0], device=images.device)[:, None, None]
        out = padded.permute(0, 2, 3, 1)[m, rows[:, :, None], cols[:, None, :]]  # [M, H, W, ch]
        return out.permute(0, 3, 1, 2).reshape(*lead, ch, h, w)
