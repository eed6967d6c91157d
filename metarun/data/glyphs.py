"""glyphs: a procedurally generated, Omniglot-like character set that needs no download.

A class is a random composition of 1-4 pen strokes (quadratic Bezier curves through random
control points); each sample is a new "drawer" of it: jittered control points, another pen width,
and a small random affine warp (rotation, scale, shear, shift). Rendered anti-aliased at 4x and
reduced to ``image_size``, strokes bright on black as metarun's Omniglot. Everything derives from
``seed``: class ``c`` of split ``s`` is the same image set on every machine, and the three splits
draw from disjoint seed streams, so their classes are disjoint. Rendered once and cached.
"""

from __future__ import annotations

import hashlib
import json
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from metarun.data.cache import cached
from metarun.data.download import cache_dir
from metarun.data.episodes import SPLITS, EpisodicImages
from metarun.data.warps import NO_WARP
from metarun.errors import MetarunError

SUPERSAMPLE = 4
VERSION = 2  # bump when rendering changes: cached sets are then re-rendered


def _bezier(p0, p1, p2, n: int = 16) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _class_strokes(rng: np.random.Generator) -> list[np.ndarray]:
    """Control points (3 x 2, in the unit square) of each stroke of one character class."""
    strokes = []
    for _ in range(rng.integers(1, 5)):
        start = rng.uniform(0.15, 0.85, 2)
        end = np.clip(start + rng.normal(0, 0.35, 2), 0.1, 0.9)
        bend = (start + end) / 2 + rng.normal(0, 0.2, 2)
        strokes.append(np.stack([start, np.clip(bend, 0.05, 0.95), end]))
    return strokes


def _render(strokes: list[np.ndarray], rng: np.random.Generator, size: int) -> np.ndarray:
    """One drawer's rendition of a class: jitter, pen width and an affine warp."""
    big = size * SUPERSAMPLE
    angle, shear = np.deg2rad(rng.normal(0, 12)), rng.normal(0, 0.12)
    scale, shift = rng.uniform(0.85, 1.15), rng.normal(0, 0.05, 2)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    warp = scale * rot @ np.array([[1.0, shear], [0.0, 1.0]])
    width = max(1, round(rng.uniform(1.4, 2.6) * SUPERSAMPLE))
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    for control in strokes:
        control = control + rng.normal(0, 0.055, control.shape)
        points = (_bezier(*control) - 0.5) @ warp.T + 0.5 + shift
        draw.line([tuple(p) for p in points * big], fill=255, width=width, joint="curve")
    return np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.uint8)


def render_split(seed: int, split: str, classes: int, samples: int, size: int) -> np.ndarray:
    """``[classes, samples, size, size]`` uint8 images of one split."""
    split_id = SPLITS.index(split)
    out = np.empty((classes, samples, size, size), dtype=np.uint8)
    for c in range(classes):
        strokes = _class_strokes(np.random.default_rng([seed, split_id, c]))
        for s in range(samples):
            out[c, s] = _render(strokes, np.random.default_rng([seed, split_id, c, s + 1]), size)
    return out


class Glyphs(EpisodicImages):
    """Procedural Omniglot-like characters; see the module docstring."""

    def __init__(
        self,
        classes: Sequence[int] = (1000, 200, 400),
        samples_per_class: int = 20,
        image_size: int = 28,
        rotations: bool = False,
        shift: int = 0,
        seed: int = 0,
        warp=NO_WARP,
    ) -> None:
        if len(classes) != 3 or min(classes) < 1:
            raise MetarunError(
                f"dataset.classes={list(classes)} must give three positive class counts "
                "(train, val, test), e.g. [1000,200,400]"
            )
        if samples_per_class < 2 or image_size < 8:
            raise MetarunError("dataset.samples_per_class must be >= 2 and dataset.image_size >= 8")
        splits = {
            s: torch.from_numpy(self._load(seed, s, n, samples_per_class, image_size))
            for s, n in zip(SPLITS, classes)
        }
        super().__init__(splits, rotations=rotations, shift=shift, warp=warp)
        # How a user's own image becomes an input like these (metarun-predict).
        self.preprocess = {"size": image_size, "mode": "L", "invert": True}

    @staticmethod
    def _load(seed: int, split: str, classes: int, samples: int, size: int) -> np.ndarray:
        spec = json.dumps([VERSION, seed, split, classes, samples, size])
        key = hashlib.sha1(spec.encode()).hexdigest()[:12]
        path = cache_dir() / "glyphs" / f"glyphs-{split}-{key}.npy"
        build = lambda: (render_split(seed, split, classes, samples, size), {"spec": spec})  # noqa: E731
        what = f"the glyphs {split} split ({classes:,} classes x {samples} images, {size} px)"
        accept = lambda images, meta: meta.get("spec") == spec  # noqa: E731
        return cached(path, build, accept, what)[0]
