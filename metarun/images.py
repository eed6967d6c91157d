"""A user's own image files as a trained model's inputs (``metarun-predict``)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from metarun.errors import MetarunError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def load_image(path: Path, preprocess: dict) -> torch.Tensor:
    """A user's image file as the model saw its training images (size, channels, polarity).

    A camera's EXIF orientation is applied; 16-bit and float greyscale images are scaled to
    8 bits by their range (Pillow's plain conversion clips them, mostly to white); transparency
    is composited onto white (a drawing app's usual export has a transparent background, which
    would otherwise turn black and blank the image); images larger than Pillow's
    decompression-bomb limit are refused."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img = _on_white(_eight_bit(ImageOps.exif_transpose(img)))
                img = img.convert(preprocess["mode"])
                img = img.resize((preprocess["size"], preprocess["size"]), Image.Resampling.BOX)
                array = np.asarray(img, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise MetarunError(
            f"{path} is larger than {Image.MAX_IMAGE_PIXELS:,} pixels (a decompression bomb, "
            "or an image far larger than the model needs); resize it first"
        ) from None
    except UnidentifiedImageError:
        raise MetarunError(f"{path} is not an image Pillow can read; remove it") from None
    except OSError as e:
        raise MetarunError(f"{path} is not a readable image ({e.strerror or e})") from None
    if preprocess.get("invert"):
        array = 255 - array
    x = torch.from_numpy(array.copy()).float() / 255
    return x.unsqueeze(0) if x.dim() == 2 else x.permute(2, 0, 1)


def _eight_bit(img: Image.Image) -> Image.Image:
    """16-bit or float greyscale as 8 bits, scaled by the format's range."""
    if img.mode not in ("I;16", "I;16B", "I;16L", "I", "F"):
        return img
    values = np.asarray(img, dtype=np.float64)
    top = 65535.0 if img.mode.startswith("I;16") or values.max() > 255 else 255.0
    if img.mode == "F" and values.max() <= 1.0:
        top = 1.0
    return Image.fromarray(np.clip(values / top * 255 + 0.5, 0, 255).astype(np.uint8), "L")


def _on_white(img: Image.Image) -> Image.Image:
    """``img`` with any transparency composited onto a white background."""
    if img.mode == "P" and "transparency" in img.info or img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img


def images_in(folder: Path) -> list[Path]:
    """Image files in ``folder`` and its sub-folders (hidden files and folders left out)."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
