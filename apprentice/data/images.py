"""One image file to one uint8 tensor: decoding with Pillow, channels, the evaluation resize and crop.

Every path that turns a file into model input goes through here, so a folder's evaluation
images, its tensor cache and ``apprentice predict`` see the same pixels: decode, convert to
``channels`` (1: greyscale "L", 3: "RGB"), resize the shorter side to ``resize`` (bilinear), crop
the centre ``size``×``size`` square.

Class folders are listed in natural order (`natural_key`: "2" before "10", "class9" before
"class10"); hidden folders (".ipynb_checkpoints", ".apprentice") are never classes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from apprentice.errors import ApprenticeError

__all__ = ["IMAGE_SUFFIXES", "center_tensor", "class_folders", "image_files", "natural_key", "pil", "read_image",
           "to_tensor"]

#: File name endings taken as images (case-insensitive); other files in a folder are ignored.
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".pgm", ".webp", ".tif", ".tiff", ".gif")

_MODES = {1: "L", 3: "RGB"}


def pil() -> Any:
    """The Pillow ``Image`` module, or one clear line saying how to install it."""
    try:
        from PIL import Image
    except ImportError:
        raise ApprenticeError("image folders need Pillow: pip install pillow") from None
    return Image


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: ``sorted(["10", "2", "1"], key=natural_key) == ["1", "2", "10"]``.

    Case is ignored first and decides ties, so the order is total and the same on every machine.
    """
    parts = re.split(r"(\d+)", name)
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in parts), name


def class_folders(folder: Path) -> list[str]:
    """The class names of a split folder: its visible sub-folders, in natural order."""
    if not folder.is_dir():
        raise ApprenticeError(f"image folder {str(folder)!r} not found")
    return sorted((d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")), key=natural_key)


def image_files(paths: Iterable[Path], *, missing_ok: bool = False) -> list[Path]:
    """The image files among ``paths`` and inside those that are folders (recursively), each folder's in
    sorted order; a path that is neither is an error naming it, or with ``missing_ok`` kept in place
    (`read_image` then names it: ``apprentice predict`` reports it and predicts the others)."""
    out = []
    for p in paths:
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()
                          and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.is_file() or missing_ok:
            out.append(p)
        else:
            raise ApprenticeError(f"{str(p)!r} does not exist (expected an image file or a folder of images)")
    return out


def read_image(path: str | Path, channels: int) -> Any:
    """The image at ``path`` fully decoded and converted to ``channels`` (1 or 3), as a Pillow image.

    Raises:
        ApprenticeError: the file cannot be read or is not a complete image; names the file.
    """
    image_mod = pil()
    if not Path(path).exists():
        raise ApprenticeError(f"cannot read image {str(path)!r}: it does not exist")
    try:
        with image_mod.open(path) as im:
            return im.convert(_MODES[channels])  # convert decodes: a truncated file fails here, not later
    except KeyError:
        raise ApprenticeError(f"channels must be 1 or 3, got {channels}") from None
    except (OSError, ValueError, SyntaxError, image_mod.DecompressionBombError) as e:
        reason = " ".join(str(e).replace(repr(str(path)), "").replace(str(path), "").split()) or type(e).__name__
        raise ApprenticeError(f"cannot read image {str(path)!r}: {reason}") from None


def to_tensor(im: Any) -> Tensor:
    """A Pillow image ("L" or "RGB") as a uint8 tensor C×H×W."""
    a = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(a.reshape(a.shape[0], a.shape[1], -1).copy()).permute(2, 0, 1).contiguous()


def center_tensor(im: Any, *, size: int, resize: int) -> Tensor:
    """The evaluation view of ``im``: shorter side resized to ``resize``, centre ``size``×``size`` crop, uint8 C×S×S.

    Example: a 40×30 image with resize 16 becomes 21×16, then its centre 16×16 is cut.
    """
    image_mod = pil()
    w, h = im.size
    scale = resize / min(w, h)
    w, h = max(size, round(w * scale)), max(size, round(h * scale))
    if (w, h) != im.size:
        im = im.resize((w, h), image_mod.BILINEAR)
    left, top = (w - size) // 2, (h - size) // 2
    if (w, h) != (size, size):
        im = im.crop((left, top, left + size, top + size))
    return to_tensor(im)
