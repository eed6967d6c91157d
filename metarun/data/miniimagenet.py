"""miniImageNet (Vinyals et al. 2016) with the Ravi & Larochelle (2017) split: 64 / 16 / 20
classes of 600 84x84 RGB images.

There is no official download. metarun reads the two layouts people have on disk, found under
``dataset.root`` automatically:

1. ``images/*.jpg`` and ``train.csv``, ``val.csv``, ``test.csv`` (header ``filename,label``), as
   Ravi & Larochelle's split files describe them;
2. ``mini-imagenet-cache-{train,val,test}.pkl``: dicts with ``image_data`` (N x 84 x 84 x 3 uint8)
   and ``class_dict`` (class -> list of row indices), read by a restricted unpickler that
   refuses anything but arrays and plain containers.

Each split is decoded once into a uint8 ``.npy`` cache (about 1.3 GB for all three) that later
runs memory-map, so they start in seconds and only the pages episodes touch are read.
``dataset.download=true`` fetches the files listed in ``dataset.files`` (name -> url and md5,
given by the user: we invent no mirror), md5-checked; archives among them are unpacked safely.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from metarun.data.cache import cached
from metarun.data.download import cache_dir, extract, fetch, writable_dir
from metarun.data.episodes import SPLITS, EpisodicImages
from metarun.data.safe_pickle import load_pickle, looks_like_html
from metarun.errors import MetarunError

CACHE_VERSION = 2
PICKLE = "mini-imagenet-cache-{split}.pkl"
LAYOUTS = (
    "images/ with train.csv, val.csv and test.csv (header filename,label), or "
    "mini-imagenet-cache-train.pkl, -val.pkl and -test.pkl"
)


def detect_layout(root: Path) -> str:
    """``"csv"`` or ``"pickle"``: the layout whose files are all under ``root``."""
    csvs = [root / f"{s}.csv" for s in SPLITS]
    pickles = [root / PICKLE.format(split=s) for s in SPLITS]
    if (root / "images").is_dir() and all(p.is_file() for p in csvs):
        return "csv"
    if all(p.is_file() for p in pickles):
        return "pickle"
    found = [p.name for p in [*csvs, *pickles, root / "images"] if p.exists()]
    partly = f" (found only {', '.join(found)})" if found else ""
    raise MetarunError(
        f"no miniImageNet files in {root}{partly}; put there either {LAYOUTS}, set "
        "dataset.root to their folder, or list download URLs in dataset.files (docs/datasets.md)"
    )


def _fingerprint(paths: list[Path]) -> str:
    """Changes when a source file is replaced (size, modification time), without reading it."""
    stats = [(p.name, st.st_size, st.st_mtime_ns) for p in paths for st in [p.stat()]]
    return hashlib.sha1(json.dumps(stats).encode()).hexdigest()[:12]


def _to_chw(array: np.ndarray, size: int) -> np.ndarray:
    """``[N, H, W, 3]`` uint8 to ``[N, 3, size, size]``, resized where needed."""
    if array.shape[1:3] != (size, size):
        box = Image.Resampling.BOX
        array = np.stack([np.asarray(Image.fromarray(a).resize((size, size), box)) for a in array])
    return np.ascontiguousarray(array.transpose(0, 3, 1, 2))


def _equal_counts(source: str, counts: dict[str, int]) -> int:
    if len(set(counts.values())) != 1:
        low = min(counts, key=counts.get)
        raise MetarunError(
            f"{source}: classes hold different numbers of images ({low}: {counts[low]}, "
            f"others up to {max(counts.values())}); not the miniImageNet split files"
        )
    return next(iter(counts.values()))


def decode_pickle(path: Path, size: int) -> tuple[np.ndarray, list[str]]:
    """``[C, S, 3, size, size]`` uint8 and the class names, from one pickle cache file."""
    data = load_pickle(path, path.name, encoding="latin1")
    if not isinstance(data, dict) or not {"image_data", "class_dict"} <= set(data):
        raise MetarunError(
            f"{path} is a pickle but not a miniImageNet cache (expected a dict with image_data "
            "and class_dict)"
        )
    images, class_dict = data["image_data"], data["class_dict"]
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4
            and images.shape[3] == 3):  # fmt: skip
        shape = getattr(images, "shape", type(images).__name__)
        raise MetarunError(
            f"{path}: image_data has shape {shape} ({getattr(images, 'dtype', '?')}), expected "
            "N x 84 x 84 x 3 uint8"
        )
    names = sorted(class_dict)
    per_class = _equal_counts(path.name, {c: len(class_dict[c]) for c in names})
    rows = np.asarray([class_dict[c] for c in names], dtype=np.int64)
    if rows.min() < 0 or rows.max() >= len(images):
        raise MetarunError(f"{path}: class_dict points past image_data's {len(images)} rows")
    out = np.empty((len(names), per_class, 3, size, size), dtype=np.uint8)
    for c in range(len(names)):
        out[c] = _to_chw(images[rows[c]], size)
    return out, names


def _read_image(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BOX)
            return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
    except FileNotFoundError:
        raise MetarunError(f"{path} is listed in the split's csv but missing") from None
    except (UnidentifiedImageError, OSError) as e:
        why = "not an image Pillow can read" if isinstance(e, UnidentifiedImageError) else e
        raise MetarunError(f"{path} is not a readable image ({why}); replace it") from None


def decode_csv(root: Path, split: str, size: int) -> tuple[np.ndarray, list[str]]:
    """``[C, S, 3, size, size]`` uint8 and the class names, from ``<split>.csv`` and images/."""
    path = root / f"{split}.csv"
    text = path.read_bytes()
    if looks_like_html(text[:512]):
        raise MetarunError(f"{path} is an HTML page, not the split file; download it again")
    rows = list(csv.reader(io.StringIO(text.decode("utf-8", errors="replace"))))
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise MetarunError(f"{path} must start with the header filename,label")
    by_class: dict[str, list[str]] = {}
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != 2:
            raise MetarunError(f"{path}, line {i}: expected filename,label; the file is damaged")
        by_class.setdefault(row[1], []).append(row[0])
    if not by_class:
        raise MetarunError(f"{path} lists no images")
    names = sorted(by_class)
    per_class = _equal_counts(path.name, {c: len(v) for c, v in by_class.items()})
    files = [root / "images" / f for c in names for f in by_class[c]]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # Pillow decodes in C
        decoded = list(pool.map(lambda p: _read_image(p, size), files))
    images = np.stack(decoded).reshape(len(names), per_class, 3, size, size)
    return images, names


def load_split(root: Path, layout: str, split: str, size: int) -> tuple[np.ndarray, list[str]]:
    """One split, decoded once into a verified, memory-mapped cache keyed by its source files."""
    sources = [root / f"{split}.csv"] if layout == "csv" else [root / PICKLE.format(split=split)]
    key = f"{split}-{layout}-{size}px-{_fingerprint(sources)}-v{CACHE_VERSION}"
    path = writable_dir(root, "miniimagenet-cache") / f"{key}.npy"

    def build() -> tuple[np.ndarray, dict]:
        if layout == "csv":
            images, names = decode_csv(root, split, size)
        else:
            images, names = decode_pickle(sources[0], size)
        return images, {"names": names}

    def accept(images: np.ndarray, meta: dict) -> bool:
        names = meta.get("names")
        shape = images.ndim == 5 and images.shape[2:] == (3, size, size)
        return shape and isinstance(names, list) and len(names) == len(images)

    images, meta = cached(path, build, accept, f"the {split} split of {root} at {size} px")
    return images, meta["names"]


class MiniImageNet(EpisodicImages):
    """miniImageNet, Ravi & Larochelle split, from either layout (see the module docstring)."""

    def __init__(
        self,
        root: str | None = None,
        image_size: int = 84,
        download: bool = False,
        files: Mapping[str, Mapping[str, Any]] = MappingProxyType({}),
        rotations: bool = False,
        shift: int = 0,
    ) -> None:
        folder = Path(root).expanduser() if root else cache_dir() / "miniimagenet"
        if download and files:
            self._fetch(folder, files)
        layout = detect_layout(folder)
        loaded = {s: load_split(folder, layout, s, image_size) for s in SPLITS}
        self.class_names = {s: names for s, (_, names) in loaded.items()}
        overlap = set(self.class_names["train"]) & set(self.class_names["test"])
        if overlap:
            raise MetarunError(
                f"{folder}: the train and test splits share classes ({sorted(overlap)[:3]}...); "
                "these are not the Ravi & Larochelle split files"
            )
        splits = {s: torch.from_numpy(images) for s, (images, _) in loaded.items()}
        super().__init__(splits, rotations=rotations, shift=shift)
        self.layout = layout
        # How a user's own image becomes an input like these (metarun-predict).
        self.preprocess = {"size": image_size, "mode": "RGB", "invert": False}

    @staticmethod
    def _fetch(folder: Path, files: Mapping[str, Mapping[str, Any]]) -> None:
        """Download each listed file (md5-checked); unpack the archives among them once."""
        for name, spec in files.items():
            if not spec or "url" not in spec or "md5" not in spec:
                raise MetarunError(
                    f"dataset.files.{name} needs a url and an md5 (the file's checksum, so that "
                    "a wrong or HTML download is caught)"
                )
            path = fetch(name, spec["url"], spec["md5"], folder, download=True)
            if name.endswith((".tar", ".tar.gz", ".tgz", ".zip")):
                extract(path, folder)
