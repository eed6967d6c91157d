"""N-way K-shot episodes drawn straight from an in-memory uint8 image tensor.

Every classification dataset hands this class one tensor per split, ``[C, S, H, W]`` (grey) or
``[C, S, ch, H, W]``: C classes with S samples each. A task batch is a handful of index
operations on that tensor (on the target device), so sampling costs far less than a training step.
"""

from __future__ import annotations

import torch

from metarun.data.batch import TaskBatch, TaskShape
from metarun.errors import MetarunError

SPLITS = ("train", "val", "test")


class EpisodicImages:
    """Episodic sampler shared by every image dataset.

    With ``rotations`` each class also appears rotated by 90, 180 and 270 degrees as three more
    classes (the MAML / ProtoNet Omniglot protocol), within its own split. With ``shift`` every
    meta-training image is translated by a random whole number of pixels in ``[-shift, shift]``
    along each axis (zeros, the background, fill the border): the per-sample augmentation of
    Santoro et al. (2016); validation and test images are never shifted.
    """

    problem = "classification"

    def __init__(
        self, splits: dict[str, torch.Tensor], rotations: bool = False, shift: int = 0
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
        self._device_copies: dict[tuple[str, str], torch.Tensor] = {}

    def output_size(self, way: int) -> int:
        return way

    def num_classes(self, split: str) -> int:
        return self.splits[split].shape[0] * self.rotations

    def samples_per_class(self, split: str) -> int:
        return self.splits[split].shape[1]

    def check_shape(self, split: str, shape: TaskShape, what: str = "task") -> None:
        """Raise a one-line error if ``shape`` cannot be drawn from ``split``."""
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
    ) -> TaskBatch:
        """``num_tasks`` episodes; each draws its classes and samples without replacement.

        Labels are the classes' positions in a random draw, so the class-to-label assignment is
        a fresh random permutation in every episode. ``part`` keeps only those episodes of the
        ``num_tasks`` drawn (a data-parallel rank's share): the random draws are those of all
        ``num_tasks``, only the images of ``part`` are gathered.
        """
        device = torch.device(device)
        self.check_shape(split, shape)
        data = self._data(split, device)
        n, k, q = shape.way, shape.shot, shape.query
        classes = torch.rand(num_tasks, self.num_classes(split), generator=generator)
        classes = classes.argsort(dim=1)[:, :n]  # [B, N], a random permutation prefix
        picks = torch.rand(num_tasks, n, self.samples_per_class(split), generator=generator)
        picks = picks.argsort(dim=2)[:, :, : k + q]  # [B, N, K+Q]
        offsets = None
        if self.shift and split == "train":  # drawn for every image of every episode
            s = self.shift
            offsets = torch.randint(0, 2 * s + 1, (num_tasks, n * (k + q), 2), generator=generator)
            offsets = offsets[part].reshape(-1, 2)
        classes, picks = classes[part], picks[part]
        num_tasks = classes.shape[0]
        base, turns = classes // self.rotations, classes % self.rotations
        images = data[base.to(device)[..., None], picks.to(device)]  # [B, N, K+Q, ch, H, W]
        if self.rotations > 1:
            turns = turns.to(device)
            for r in range(1, 4):
                mask = turns == r
                images[mask] = torch.rot90(images[mask], r, dims=(-2, -1))
        if offsets is not None:
            images = self._shifted(images, offsets)
        x = images.float().div_(255.0)
        labels = torch.arange(n, device=device).view(1, n, 1)
        support_y = labels.expand(num_tasks, n, k).reshape(num_tasks, n * k)
        query_y = labels.expand(num_tasks, n, q).reshape(num_tasks, n * q)
        support_x = x[:, :, :k].reshape(num_tasks, n * k, *self.input_shape)
        query_x = x[:, :, k:].reshape(num_tasks, n * q, *self.input_shape)
        return TaskBatch(support_x, support_y, query_x, query_y)

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
