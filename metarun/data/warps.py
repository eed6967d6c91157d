"""Random image warps: affine (rotation, shear, scale, translation, as in Lake et al. 2015 and
Koch et al. 2015) plus an optional smooth elastic field, applied to a batch in one
``grid_sample``.

Two users: meta-training augmentation (``dataset.warp``, every training image its own warp) and
test-time augmentation (``test.views`` / ``val.views``: extra warped views of every support and
query image, :mod:`metarun.views`). Everything runs on the images' device from a caller's
``torch.Generator``, so episodes stay reproducible.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from types import MappingProxyType

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Warp:
    """Warp strengths; each is the half-width of a uniform draw (0 turns that part off).

    ``rotate``: degrees; ``shear``: shear factor along each axis; ``scale``: relative change
    along each axis (0.2: 0.8-1.2); ``translate``: fraction of the image side; ``elastic``:
    amplitude of a smooth displacement field, as a fraction of the side (its smoothness is
    ``elastic_grid`` control points per side, bicubically interpolated)."""

    rotate: float = 0.0
    shear: float = 0.0
    scale: float = 0.0
    translate: float = 0.0
    elastic: float = 0.0
    elastic_grid: int = 4

    @property
    def active(self) -> bool:
        return any((self.rotate, self.shear, self.scale, self.translate, self.elastic))

    @classmethod
    def of(cls, node) -> "Warp":
        """From a config node (``dataset.warp``, ``test.view_warp``) or ``None`` (no warp)."""
        if node is None:
            return cls()
        keys = ("rotate", "shear", "scale", "translate", "elastic", "elastic_grid")
        return cls(**{k: node[k] for k in keys if k in node})


NO_WARP = MappingProxyType(asdict(Warp()))  # a dataset's default ``warp`` (the schema's too)


def _uniform(generator: torch.Generator, n: int, half: float) -> torch.Tensor:
    return (torch.rand(n, generator=generator) * 2 - 1) * half


def _matrices(warp: Warp, n: int, generator: torch.Generator) -> torch.Tensor:
    """``[n, 2, 3]`` affine maps of output coordinates to input ones (``affine_grid``'s)."""
    angle = _uniform(generator, n, math.radians(warp.rotate))
    shear = _uniform(generator, 2 * n, warp.shear).view(n, 2)
    scale = 1 + _uniform(generator, 2 * n, warp.scale).view(n, 2)
    shift = _uniform(generator, 2 * n, 2 * warp.translate).view(n, 2)  # [-1, 1] spans the side
    cos, sin = angle.cos(), angle.sin()
    rotation = torch.stack([cos, -sin, sin, cos], -1).view(n, 2, 2)
    shearing = torch.eye(2).repeat(n, 1, 1)
    shearing[:, 0, 1], shearing[:, 1, 0] = shear[:, 0], shear[:, 1]
    linear = rotation @ shearing @ torch.diag_embed(1 / scale)  # sampling: the inverse scale
    return torch.cat([linear, shift.unsqueeze(-1)], dim=-1)


def draw_warps(
    warp: Warp, count: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The random numbers of ``count`` warps, drawn on the CPU from ``generator``: affine maps
    ``[count, 2, 3]`` and the elastic fields' control points ``[count, 2, g, g]`` (or None)."""
    theta = _matrices(warp, count, generator)
    if not warp.elastic:
        return theta, None
    g = max(2, warp.elastic_grid)
    return theta, _uniform(generator, count * 2 * g * g, 2 * warp.elastic).view(count, 2, g, g)


def apply_warps(
    images: torch.Tensor, theta: torch.Tensor, field: torch.Tensor | None = None
) -> torch.Tensor:
    """Float images ``[..., ch, H, W]``, one warp each (:func:`draw_warps`); zeros fill the
    border (the background of inverted Omniglot strokes)."""
    *lead, ch, h, w = images.shape
    flat = images.reshape(-1, ch, h, w)
    n = flat.shape[0]
    grid = F.affine_grid(theta.to(flat), [n, ch, h, w], align_corners=False)
    if field is not None:
        field = F.interpolate(field.to(flat), size=(h, w), mode="bicubic", align_corners=True)
        grid = grid + field.permute(0, 2, 3, 1)
    out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(*lead, ch, h, w)


def warp_images(images: torch.Tensor, warp: Warp, generator: torch.Generator) -> torch.Tensor:
    """Each float image of ``[..., ch, H, W]`` under its own random warp."""
    if not warp.active:
        return images
    count = images[..., 0, 0, 0].numel()
    return apply_warps(images, *draw_warps(warp, count, generator))
