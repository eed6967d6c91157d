"""Mini-batches of images over a split's whole label space, for supervised pre-training.

A split of an image dataset holds ``C`` classes (times 4 with ``rotations``) of ``S`` samples:
``C * S`` images, the image ``i`` being sample ``i % S`` of class ``i // S``. Training reads them
in epochs, each a random permutation of every image of the split, ``size`` images per step: the
images of step ``t`` are positions ``t * size ... (t + 1) * size - 1`` of the concatenated
epochs. Epoch ``e``'s permutation is drawn from a generator seeded with the run's seed and ``e``
alone, so a step's images depend on its number, not on the steps before (a resumed run reads the
same ones). The dataset's training augmentation (shift, warps) is drawn from the run's task
generator, as for episodes.
"""

from __future__ import annotations

import functools

import torch

from metarun.data.batch import LabelledImages
from metarun.data.warps import draw_warps
from metarun.errors import MetarunError


def check_image_batches(learner, dataset) -> None:
    """Refuse, in one line, to train a learner on images (``image_batch``) from a dataset that
    draws only episodes."""
    if learner.image_batch and not hasattr(dataset, "sample_images"):
        raise MetarunError(
            f"{type(learner).__name__} trains on mini-batches of a split's images, and "
            f"{type(dataset).__name__} draws only episodes; give it sample_images "
            "(metarun/data/image_batches.py) or use an image dataset"
        )


@functools.lru_cache(maxsize=2)  # the epoch being read (and the next, at its boundary)
def epoch_order(images: int, epoch: int, seed: int) -> torch.Tensor:
    """The order in which epoch ``epoch`` of a run seeded ``seed`` reads ``images`` images
    (drawn once per epoch, not at every step; read only)."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)
    return torch.randperm(images, generator=generator)


def image_positions(images: int, size: int, step: int, seed: int) -> torch.Tensor:
    """Indices ``[size]`` into a split's ``images`` images of training step ``step``."""
    positions = step * size + torch.arange(size)
    epochs = positions // images
    picked = torch.empty(size, dtype=torch.long)
    for epoch in epochs.unique().tolist():
        mask = epochs == epoch
        picked[mask] = epoch_order(images, epoch, seed)[positions[mask] % images]
    return picked


class ImageBatches:
    """``sample_images`` for :class:`~metarun.data.episodes.EpisodicImages` (its splits,
    rotations, shift and warps)."""

    def images_in(self, split: str) -> int:
        """The images one epoch of ``split`` reads (rotated copies are images of their own)."""
        return self.num_classes(split) * self.samples_per_class(split)

    def sample_images(
        self,
        split: str,
        size: int,
        step: int,
        seed: int,
        generator: torch.Generator,
        device: torch.device | str = "cpu",
        part: slice = slice(None),
    ) -> LabelledImages:
        """Training step ``step``'s ``size`` images of ``split`` with their classes (see the
        module docstring); ``part`` keeps those of a data-parallel rank's share (every rank
        draws the augmentation of all ``size`` and keeps its own)."""
        device = torch.device(device)
        per_class = self.samples_per_class(split)
        index = image_positions(self.images_in(split), size, step, seed)
        offsets = warps = None
        if self.shift and split == "train":
            offsets = torch.randint(0, 2 * self.shift + 1, (size, 2), generator=generator)[part]
        if self.warp.active and split == "train":
            theta, field = draw_warps(self.warp, size, generator)
            warps = (theta[part], None if field is None else field[part])
        index = index[part]
        classes, samples = index // per_class, index % per_class
        base, turns = classes // self.rotations, classes % self.rotations
        data = self._data(split, device)
        images = data[base.to(device), samples.to(device)]  # [n, ch, H, W]
        return LabelledImages(self._prepared(images, turns, offsets, warps), classes.to(device))
