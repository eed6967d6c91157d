"""Omniglot (Lake et al. 2015) from the official archives of the dataset's repository.

Images are decoded straight from the zip archives (never extracted, so no member can land outside
a folder), resized, inverted so that strokes are bright (255) on black (0), and cached per archive
as one uint8 array keyed by the archive's checksum and the preprocessing, with a digest of its
contents (:mod:`metarun.data.cache`). Later runs load and verify that array in well under a
second.

Splits (deterministic, ``split_seed``):

- ``lake``: the background alphabets meta-train, except ``val_alphabets`` of them (picked by
  ``split_seed``) that validate; the alphabets of ``evaluation`` meta-test: the official 20, or
  (``evaluation=small2`` beside ``background=small1``) those of small2 that small1 lacks
  (Japanese (katakana), Sanskrit, Tagalog). No test alphabet is ever a training one.
- ``random``: the characters of the archives in use are pooled and shuffled by ``split_seed``
  into ``split_sizes`` (default 1100/100/423, the MAML code's split of all 1623 characters); when
  the pool has another size the same proportions are used. With ``background=full`` the pool is
  background + evaluation (1623 characters); with the small sets it is the small sets alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from metarun.data.cache import cached, cached_selection
from metarun.data.download import DownloadFailed, cache_dir, fetch, searched, writable_dir
from metarun.data.episodes import EpisodicImages
from metarun.data.omniglot_archive import DRAWERS, decode_archive
from metarun.data.warps import NO_WARP
from metarun.errors import MetarunError

URL = "https://github.com/brendenlake/omniglot/raw/master/python/{name}"
ARCHIVES = {
    "background": ("images_background.zip", "68d2efa1b9178cc56df9314c21c6e718"),
    "evaluation": ("images_evaluation.zip", "6b91aef0f799c5bb55b94e3f2daec811"),
    "small1": ("images_background_small1.zip", "e704a628b5459e08445c13499850abc4"),
    "small2": ("images_background_small2.zip", "b75a71a51d3b13f821f212756fe481fd"),
}
BACKGROUNDS = {
    "full": ("background",),
    "small1": ("small1",),
    "small2": ("small2",),
    "small1+small2": ("small1", "small2"),
}
# split=lake's test alphabets: the official evaluation set, or a small set's new alphabets.
TEST_SETS = {"evaluation": ("evaluation",), **{k: v for k, v in BACKGROUNDS.items() if k != "full"}}
PREPROCESS_VERSION = 2  # bump when decoding changes: old cache files are then never read


def _cache_name(name: str, md5: str, image_size: int) -> str:
    return f"{Path(name).stem}-{md5[:8]}-{image_size}px-v{PREPROCESS_VERSION}.npy"


def load_archive(
    key: str, root: Path, image_size: int, download: bool
) -> tuple[np.ndarray, list[str]]:
    """Decoded characters of archive ``key``, from the verified array cache when it is there."""
    name, md5 = ARCHIVES[key]
    path = writable_dir(root, "omniglot-cache") / _cache_name(name, md5, image_size)

    def build() -> tuple[np.ndarray, dict]:
        archive = fetch(name, URL.format(name=name), md5, root, download)
        images, names = decode_archive(archive, image_size)
        return images, {"names": names, "archive": name, "md5": md5}

    def accept(images: np.ndarray, meta: dict) -> bool:
        names = meta.get("names")
        shape = images.shape[1:] == (DRAWERS, image_size, image_size)
        return shape and isinstance(names, list) and len(names) == len(images)

    images, meta = cached(path, build, accept, f"{name}'s characters at {image_size} px")
    return images, [str(n) for n in meta["names"]]


def needed_archives(background: str, split: str, evaluation: str = "evaluation") -> list[str]:
    """The archives (keys of :data:`ARCHIVES`) a background set, split and test set read."""
    keys = list(BACKGROUNDS[background])
    extra = TEST_SETS[evaluation] if split == "lake" else ()
    extra = ("evaluation",) if split == "random" and background == "full" else extra
    return keys + [k for k in extra if k not in keys]


def _missing(keys: list[str], root: Path, image_size: int) -> list[str]:
    """Those of ``keys`` that :func:`load_archive` would have to fetch: no decoded cache where it
    reads one, and the archive neither in ``root`` nor in the cache (a wrong checksum is told
    when the archive is read)."""
    try:
        decoded_in = writable_dir(root, "omniglot-cache")
    except MetarunError:  # nowhere to cache: the archives are read every time
        decoded_in = None
    out = []
    for key in keys:
        name, md5 = ARCHIVES[key]
        decoded = decoded_in is not None and (decoded_in / _cache_name(name, md5, image_size))
        if not (decoded and decoded.is_file()) and not any(
            (b / name).is_file() for b in (root, cache_dir())
        ):
            out.append(name)
    return out


def _offline_advice(background: str, split: str, evaluation: str) -> str:
    names = " and ".join(ARCHIVES[k][0] for k in needed_archives(background, split, evaluation))
    advice = f"background={background}, split={split} reads {names} ({URL.format(name='')})"
    if not background.startswith("small"):
        advice += (
            "; the small sets need only images_background_small{1,2}.zip: "
            "dataset.background=small1+small2 dataset.split=random, or new alphabets: "
            "dataset.background=small1 dataset.evaluation=small2 dataset.val_alphabets=1"
        )
    return advice


def _sizes(total: int, wanted: Sequence[int]) -> tuple[int, int, int]:
    """Train / val / test class counts: ``wanted``, or in its proportions for a smaller pool;
    every split gets at least one class."""
    if len(wanted) != 3:
        raise MetarunError(
            f"dataset.split_sizes={list(wanted)} needs three numbers: train, val and test classes"
        )
    if total < 3:
        raise MetarunError(f"the pool has {total} characters; a random split needs at least 3")
    if sum(wanted) == total:
        return tuple(wanted)
    train = min(max(1, round(total * wanted[0] / sum(wanted))), total - 2)
    val = min(max(1, round(total * wanted[1] / sum(wanted))), total - train - 1)
    return train, val, total - train - val


class Omniglot(EpisodicImages):
    """Omniglot episodes; see the module docstring for archives, caching and splits."""

    def __init__(
        self,
        root: str | None = None,
        background: str = "full",
        split: str = "lake",
        image_size: int = 28,
        rotations: bool = False,
        shift: int = 0,
        download: bool = True,
        split_sizes: Sequence[int] = (1100, 100, 423),
        val_alphabets: int = 5,
        split_seed: int = 0,
        warp=NO_WARP,
        evaluation: str = "evaluation",
    ) -> None:
        for key, value, choices in (
            ("background", background, BACKGROUNDS),
            ("evaluation", evaluation, TEST_SETS),
        ):
            if value not in choices:
                raise MetarunError(
                    f"dataset.{key}={value!r} is unknown; use one of {list(choices)}"
                )
        if split not in ("lake", "random"):
            raise MetarunError(f"dataset.split={split!r} is unknown; use lake or random")
        root_path = Path(root).expanduser() if root else cache_dir()
        missing = (
            []
            if download
            else _missing(needed_archives(background, split, evaluation), root_path, image_size)
        )
        if missing:  # every file at once, and what avoids needing them
            were = "was" if len(missing) == 1 else "were"
            raise MetarunError(
                f"{' and '.join(missing)} {were} not found in {searched(root_path)} and "
                f"dataset.download=false; put the files there (or point dataset.root at them) "
                f"or set dataset.download=true; {_offline_advice(background, split, evaluation)}"
            )

        def load(key: str) -> tuple[np.ndarray, list[str]]:
            try:
                return load_archive(key, root_path, image_size, download)
            except DownloadFailed as e:
                raise DownloadFailed(
                    f"{e}; offline: put the files in {root_path} (or dataset.root) with "
                    f"dataset.download=false; {_offline_advice(background, split, evaluation)}"
                ) from None

        background_chars = _merge([load(k) for k in BACKGROUNDS[background]])
        rng = np.random.default_rng(split_seed)
        if split == "lake":
            alphabets = sorted({n.split("/")[0] for n in background_chars})
            if not 0 < val_alphabets < len(alphabets):
                raise MetarunError(
                    f"dataset.val_alphabets={val_alphabets} must be between 1 and "
                    f"{len(alphabets) - 1} for background={background}"
                )
            held_out = set(rng.permutation(alphabets)[:val_alphabets].tolist())
            test = _merge([load(k) for k in TEST_SETS[evaluation]])
            test = {n: v for n, v in test.items() if n.split("/")[0] not in alphabets}
            if not test:
                raise MetarunError(
                    f"dataset.evaluation={evaluation} has no alphabet that background="
                    f"{background} lacks, so nothing is left to meta-test; use evaluation="
                    "evaluation (the official 20) or background=small1 evaluation=small2"
                )
            parts = {
                "train": {
                    n: v for n, v in background_chars.items() if n.split("/")[0] not in held_out
                },
                "val": {n: v for n, v in background_chars.items() if n.split("/")[0] in held_out},
                "test": test,
            }
        else:
            pool = dict(background_chars)
            if background == "full":
                pool.update(_merge([load("evaluation")]))
            names = sorted(pool)
            order = rng.permutation(len(names))
            n_train, n_val, _ = _sizes(len(names), split_sizes)
            chosen = [names[i] for i in order]
            cuts = {
                "train": chosen[:n_train],
                "val": chosen[n_train : n_train + n_val],
                "test": chosen[n_train + n_val :],
            }
            parts = {s: {n: pool[n] for n in sorted(c)} for s, c in cuts.items()}
        self.class_names = {s: sorted(p) for s, p in parts.items()}
        folder = writable_dir(root_path, "omniglot-cache")
        archives = "-".join(md5[:8] for _, md5 in ARCHIVES.values())  # the decoded sources
        source = f"omniglot-{archives}-{image_size}px-v{PREPROCESS_VERSION}"
        splits = {
            s: torch.from_numpy(
                cached_selection(
                    folder, source, names, lambda p=parts[s], n=names: np.stack([p[c] for c in n])
                )
            )
            for s, names in self.class_names.items()
        }
        alphabets = {s: [n.split("/")[0] for n in names] for s, names in self.class_names.items()}
        super().__init__(splits, rotations=rotations, shift=shift, warp=warp, alphabets=alphabets)
        # How a user's own image becomes an input like these (metarun-predict).
        self.preprocess = {"size": image_size, "mode": "L", "invert": True}


def _merge(loaded: list[tuple[np.ndarray, list[str]]]) -> dict[str, np.ndarray]:
    """Characters by ``alphabet/character``; one present in two archives is counted once."""
    out: dict[str, np.ndarray] = {}
    for images, names in loaded:
        for image, name in zip(images, names):
            out.setdefault(name, image)
    return out
