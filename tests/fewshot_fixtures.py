"""Tiny files in the real formats of miniImageNet and CIFAR-100, generated for the tests.

Pixel (0, 0) of every image holds its class number within its split (or CIFAR-100 label) times
two, pixel (0, 1) its sample number, so a test can tell which image an episode drew.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shlex
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from metarun.data.cifar import FINE_NAMES, SUPERCLASSES

MINI_CLASSES = {"train": 8, "val": 5, "test": 5}


def mini_images(classes: int, per_class: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (classes, per_class, size, size, 3), dtype=np.uint8)
    images[:, :, 0, 0, :] = (np.arange(classes) * 2)[:, None, None]
    images[:, :, 0, 1, :] = np.arange(per_class)[None, :, None]
    return images


def mini_class_names(split: str) -> list[str]:
    offset = {"train": 0, "val": 100, "test": 200}[split]
    return [f"n{offset + c:08d}" for c in range(MINI_CLASSES[split])]


def write_mini_pickles(root: Path, per_class: int = 8, size: int = 84) -> Path:
    """The pickle-cache layout: ``mini-imagenet-cache-<split>.pkl`` with rows of each class
    interleaved (so the loader must follow class_dict, not assume blocks)."""
    root.mkdir(parents=True, exist_ok=True)
    for i, split in enumerate(("train", "val", "test")):
        names = mini_class_names(split)
        images = mini_images(len(names), per_class, size, seed=i)
        rows = images.transpose(1, 0, 2, 3, 4).reshape(-1, size, size, 3)  # sample-major
        class_dict = {
            n: [s * len(names) + c for s in range(per_class)] for c, n in enumerate(names)
        }
        with open(root / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
            pickle.dump({"image_data": rows, "class_dict": class_dict}, f, protocol=4)
    return root


def write_mini_csv(root: Path, per_class: int = 4, size: int = 100) -> Path:
    """The images + csv layout, with JPEGs of another size than 84 (they get resized)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i, split in enumerate(("train", "val", "test")):
        names = mini_class_names(split)
        lines = ["filename,label"]
        for c, name in enumerate(names):
            for s in range(per_class):
                colour = (40 * c % 256, 10 * s, 128)
                file = f"{name}{s:08d}.jpg"
                Image.new("RGB", (size, size), colour).save(root / "images" / file, quality=95)
                lines.append(f"{file},{name}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


class Payload:
    """Unpickling this runs a shell command that creates ``marker``: a malicious pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


def cifar_batches(train: int = 6, test: int = 2) -> dict[str, dict]:
    """CIFAR-100's python batches (``train``, ``test``, ``meta``) with ``train`` + ``test``
    images per class, in the archive's own layout (rows of 3072 uint8, labels as lists)."""
    coarse_names = list(SUPERCLASSES)
    coarse_of = {f: coarse_names.index(s) for s, fs in SUPERCLASSES.items() for f in fs}
    batches = {}
    for part, n, seed in (("train", train, 0), ("test", test, 1)):
        labels = np.repeat(np.arange(100), n)
        np.random.default_rng(seed).shuffle(labels)
        data = np.random.default_rng(seed).integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        data[:, 0] = labels * 2  # red channel, pixel (0, 0)
        batches[part] = {
            "filenames": [f"img{i}.png" for i in range(len(labels))],
            "batch_label": f"{part} batch",
            "fine_labels": labels.tolist(),
            "coarse_labels": [coarse_of[FINE_NAMES[label]] for label in labels],
            "data": data,
        }
    batches["meta"] = {"fine_label_names": FINE_NAMES, "coarse_label_names": coarse_names}
    return batches


def write_cifar_archive(path: Path, batches: dict | None = None, extra: dict | None = None) -> str:
    """A ``cifar-100-python.tar.gz`` holding the batches (pickled); returns its md5."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        members = {
            f"cifar-100-python/{name}": pickle.dumps(batch, protocol=2)
            for name, batch in (batches or cifar_batches()).items()
        }
        for name, data in {**members, **(extra or {})}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.md5(path.read_bytes()).hexdigest()
