"""CIFAR-FS and FC100: few-shot splits of CIFAR-100's 100 classes, 600 32x32 RGB images each.

Both are built from CIFAR-100's official python archive (the 50,000 training and 10,000 test
images pooled: 500 + 100 per class), downloaded and md5-checked like Omniglot and read through
the restricted unpickler (the archive's batches are pickles). The archive is decoded once into
a uint8 cache keyed by its md5.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import torch

from metarun.data.cache import cached, cached_selection
from metarun.data.download import cache_dir, fetch, writable_dir
from metarun.data.episodes import SPLITS, EpisodicImages
from metarun.data.safe_pickle import load_pickle
from metarun.errors import MetarunError

URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
ARCHIVE = "cifar-100-python.tar.gz"
MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CACHE_VERSION = 2

# CIFAR-100's 20 superclasses and their 5 classes each, as in the archive's meta file (the
# superclasses in label order 0-19).
SUPERCLASSES = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
FINE_NAMES = sorted(c for classes in SUPERCLASSES.values() for c in classes)

# CIFAR-FS (Bertinetto et al., "Meta-learning with differentiable closed-form solvers", ICLR
# 2019): 64 / 16 / 20 classes, the split files of github.com/bertinetto/r2d2 (the same lists
# torchmeta ships as assets/cifar100/cifar-fs). Training takes the 64 classes not listed here.
CIFAR_FS_VAL = [
    "beaver", "otter", "flatfish", "shark", "lamp", "television", "beetle", "butterfly", "sea",
    "camel", "cattle", "crab", "crocodile", "maple_tree", "motorcycle", "tractor",
]  # fmt: skip
CIFAR_FS_TEST = [
    "whale", "poppy", "rose", "sweet_pepper", "telephone", "bed", "table", "wardrobe", "leopard",
    "plain", "chimpanzee", "fox", "snail", "worm", "baby", "man", "woman", "bicycle",
    "pickup_truck", "rocket",
]  # fmt: skip

# FC100 (Oreshkin et al., "TADAM", NeurIPS 2018): split by superclass, 12 / 4 / 4 (60 / 20 / 20
# classes), so test classes share no superclass with training ones. Superclass label indices
# train 1-6, 9, 10, 15, 17-19; val 8, 11, 13, 16; test 0, 7, 12, 14, as in the TADAM code
# (github.com/ElementAI/TADAM) and torchmeta's assets/cifar100/fc100.
FC100_VAL = ["large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates",
             "small_mammals"]  # fmt: skip
FC100_TEST = ["aquatic_mammals", "insects", "medium_mammals", "people"]


def cifar_fs_split() -> dict[str, list[str]]:
    held_out = set(CIFAR_FS_VAL) | set(CIFAR_FS_TEST)
    train = [c for c in FINE_NAMES if c not in held_out]
    return {"train": train, "val": sorted(CIFAR_FS_VAL), "test": sorted(CIFAR_FS_TEST)}


def fc100_split() -> dict[str, list[str]]:
    held_out = set(FC100_VAL) | set(FC100_TEST)
    groups = {
        "train": [s for s in SUPERCLASSES if s not in held_out],
        "val": FC100_VAL,
        "test": FC100_TEST,
    }
    return {split: sorted(c for s in sup for c in SUPERCLASSES[s]) for split, sup in groups.items()}


def decode_archive(archive: Path) -> tuple[np.ndarray, list[str]]:
    """``[100, 600, 3, 32, 32]`` uint8 (classes by name; training images, then test) and names."""
    batches = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for name in ("train", "test", "meta"):
                member = tar.extractfile(f"cifar-100-python/{name}")
                if member is None:
                    raise KeyError(name)
                batches[name] = load_pickle(member.read(), f"{archive.name}:{name}", "latin1")
    except (tarfile.TarError, KeyError, EOFError, OSError) as e:
        raise MetarunError(
            f"{archive} is not a complete CIFAR-100 python archive ({type(e).__name__}: {e}); "
            "delete it and download it again"
        ) from None
    names = list(batches["meta"].get("fine_label_names", []))
    if sorted(names) != FINE_NAMES:
        raise MetarunError(
            f"{archive}: its class names are not CIFAR-100's; delete it and download the "
            f"official archive from {URL}"
        )
    parts = ("train", "test")
    data = np.concatenate([np.asarray(batches[s]["data"], dtype=np.uint8) for s in parts])
    labels = np.concatenate([np.asarray(batches[s]["fine_labels"]) for s in parts])
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise MetarunError(f"{archive}: image data of shape {data.shape}, expected N x 3072")
    per_class = np.bincount(labels, minlength=100)
    if per_class.min() != per_class.max():
        raise MetarunError(f"{archive}: classes hold {per_class.min()}-{per_class.max()} images")
    order = np.argsort(labels, kind="stable")  # by class, training images first within each
    images = data[order].reshape(100, per_class[0], 3, 32, 32)
    by_name = np.argsort(names)  # rows in FINE_NAMES order
    return np.ascontiguousarray(images[by_name]), FINE_NAMES


def load_cifar100(root: Path, download: bool, url: str = URL, md5: str = MD5) -> np.ndarray:
    """All 100 classes, ``[100, 600, 3, 32, 32]`` uint8 in ``FINE_NAMES`` order, cached."""
    path = writable_dir(root, "cifar100-cache") / f"cifar100-{md5[:8]}-v{CACHE_VERSION}.npy"
    build = lambda: (decode_archive(fetch(ARCHIVE, url, md5, root, download))[0], {})  # noqa: E731
    accept = lambda images, meta: images.shape[0] == 100 and images.shape[2:] == (3, 32, 32)  # noqa: E731
    return cached(path, build, accept, what="CIFAR-100's 60,000 images as an array")[0]


class _CIFAR100Split(EpisodicImages):
    """A few-shot split of CIFAR-100 (subclasses set ``split`` and ``name``)."""

    name = "CIFAR-100"

    @staticmethod
    def split() -> dict[str, list[str]]:
        raise NotImplementedError

    def __init__(
        self,
        root: str | None = None,
        download: bool = True,
        url: str = URL,
        md5: str = MD5,
        rotations: bool = False,
        shift: int = 0,
    ) -> None:
        folder = Path(root).expanduser() if root else cache_dir() / "cifar100"
        images = load_cifar100(folder, download, url, md5)
        index = {name: i for i, name in enumerate(FINE_NAMES)}
        self.class_names = self.split()
        cache, source = writable_dir(folder, "cifar100-cache"), f"cifar100-{md5[:8]}"
        splits = {
            s: torch.from_numpy(
                cached_selection(
                    cache, source, names, lambda n=names: images[[index[c] for c in n]]
                )
            )
            for s, names in ((s, self.class_names[s]) for s in SPLITS)
        }
        super().__init__(splits, rotations=rotations, shift=shift)
        # How a user's own image becomes an input like these (metarun-predict).
        self.preprocess = {"size": 32, "mode": "RGB", "invert": False}


class CIFARFS(_CIFAR100Split):
    """CIFAR-FS (Bertinetto et al. 2019): 64 / 16 / 20 CIFAR-100 classes."""

    name = "CIFAR-FS"
    split = staticmethod(cifar_fs_split)


class FC100(_CIFAR100Split):
    """FC100 (Oreshkin et al. 2018): 12 / 4 / 4 CIFAR-100 superclasses, 60 / 20 / 20 classes."""

    name = "FC100"
    split = staticmethod(fc100_split)
