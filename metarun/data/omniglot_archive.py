"""Reading an official Omniglot zip archive: every character's 20 drawings, decoded, resized
and inverted (strokes bright on black), without extracting anything to disk."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from metarun.errors import MetarunError

DRAWERS = 20


def _safe_member(archive: Path, name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name:
        raise MetarunError(
            f"{archive.name} holds the member {name!r}, which points outside the archive's "
            "folder; refusing it: delete the file and download the official archive again"
        )
    return path


def decode_archive(archive: Path, image_size: int) -> tuple[np.ndarray, list[str]]:
    """All characters of one archive: ``[C, 20, size, size]`` uint8 and ``alphabet/character``."""
    groups: dict[str, list[tuple[str, zipfile.ZipInfo]]] = {}
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                path = _safe_member(archive, info.filename)
                if info.is_dir() or path.suffix != ".png" or len(path.parts) < 3:
                    continue
                groups.setdefault(f"{path.parts[-3]}/{path.parts[-2]}", []).append(
                    (path.name, info)
                )
            names = sorted(groups)
            images = np.empty((len(names), DRAWERS, image_size, image_size), dtype=np.uint8)
            for c, name in enumerate(names):
                members = sorted(groups[name], key=lambda m: m[0])
                if len(members) != DRAWERS:
                    raise MetarunError(
                        f"{archive.name}: character {name} has {len(members)} images, expected "
                        f"{DRAWERS}; not an official Omniglot archive: download it again"
                    )
                for d, (_, info) in enumerate(members):
                    images[c, d] = _decode(archive, zf, info, image_size)
    except zipfile.BadZipFile as e:
        raise MetarunError(
            f"{archive} is not a readable zip archive ({e}); it may be truncated: delete it and "
            "download it again"
        ) from e
    if not names:
        raise MetarunError(f"{archive} holds no Omniglot character images; download it again")
    return images, names


def _decode(archive: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, size: int) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(zf.read(info))) as img:
            grey = img.convert("L").resize((size, size), Image.Resampling.BOX)
            return 255 - np.asarray(grey, dtype=np.uint8)  # strokes bright on black
    except (OSError, zipfile.BadZipFile, ValueError) as e:
        why = "not an image format Pillow knows" if isinstance(e, UnidentifiedImageError) else e
        raise MetarunError(
            f"{archive.name}: {info.filename} is not a readable image ({why}); the archive "
            "passed its md5 check, so this Pillow cannot decode it: upgrade it (pip install -U "
            "pillow); the archive is not at fault"
        ) from e
