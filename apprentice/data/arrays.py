"""Your own arrays: ``.npz`` files (``data.name=npz``, ``data.dir`` = the folder holding them).

``train.npz`` and ``test.npz`` (or ``val.npz``) each hold ``images``: uint8 N×H×W (one channel) or
N×C×H×W, ``labels``: N integers from 0, and optionally ``classes``: the class names in label
order (a string array). Files are read with ``allow_pickle=False``, so a file can hold arrays
only, never code. Without ``classes`` the classes are numbered 0..max label of the training split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from apprentice.data.catalog import DATASETS
from apprentice.errors import ApprenticeError, lookup

__all__ = ["load_npz", "npz_file"]

_SPLIT_FILES = {"train": ("train.npz",), "test": ("test.npz", "val.npz"), "val": ("val.npz", "test.npz")}


def npz_file(data_dir: str | None, split: str) -> Path:
    """The file of ``split`` in ``data_dir`` ("test" falls back to val.npz, "val" to test.npz)."""
    names = lookup(_SPLIT_FILES, split, "npz split")
    if data_dir is None:
        raise ApprenticeError(f"data.dir must name the folder holding the .npz files; {DATASETS['npz'].hint}")
    folder = Path(data_dir)
    if not folder.is_dir():
        raise ApprenticeError(f"data folder {data_dir!r} (data.dir or --data-dir) does not exist")
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise ApprenticeError(f"{' or '.join(names)} not found in {data_dir!r}; {DATASETS['npz'].hint}")


def _images(array: np.ndarray, path: Path) -> Tensor:
    if array.dtype != np.uint8 or array.ndim not in (3, 4):
        raise ApprenticeError(f"{path}: 'images' must be uint8 N×H×W or N×C×H×W, got {array.dtype} {array.shape}")
    if array.ndim == 4 and array.shape[1] > 4 and array.shape[3] in (1, 3):
        raise ApprenticeError(f"{path}: 'images' of shape {array.shape} look like N×H×W×C; store them as N×C×H×W "
                              f"(np.transpose(images, (0, 3, 1, 2)))")
    images = torch.from_numpy(np.ascontiguousarray(array))
    return images.unsqueeze(1) if array.ndim == 3 else images


def _labels(array: np.ndarray, n: int, path: Path) -> Tensor:
    if array.dtype.kind not in "iu" or array.shape != (n,):
        raise ApprenticeError(f"{path}: 'labels' must be {n} integers (one per image), got {array.dtype} {array.shape}")
    if n and array.min() < 0:
        raise ApprenticeError(f"{path}: 'labels' holds the negative value {int(array.min())}; labels count from 0")
    return torch.from_numpy(array.astype(np.int64))


def _classes(archive: np.lib.npyio.NpzFile, path: Path) -> tuple[str, ...] | None:
    if "classes" not in archive.files:
        return None
    names = archive["classes"]
    if names.dtype.kind not in "US" or names.ndim != 1 or not len(names):
        raise ApprenticeError(f"{path}: 'classes' must be a non-empty 1-d array of strings, got {names.dtype} {names.shape}")
    out = tuple(str(c.decode() if isinstance(c, bytes) else c) for c in names)
    if len(set(out)) != len(out):
        raise ApprenticeError(f"{path}: 'classes' names a class twice")
    return out


def load_npz(data_dir: str | None, split: str) -> tuple[Tensor, Tensor, tuple[str, ...] | None]:
    """``(images uint8 N×C×H×W, labels int64 N, class names or None)`` of one split's ``.npz`` file.

    Raises:
        ApprenticeError: a missing or unreadable file, a missing array, or arrays of the wrong type
            or shape (names the file and the array).
    """
    path = npz_file(data_dir, split)
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in ("images", "labels") if k not in archive.files]
            if missing:
                raise ApprenticeError(f"{path} has no array {missing[0]!r} (it holds {sorted(archive.files)})")
            images = _images(archive["images"], path)
            return images, _labels(archive["labels"], images.shape[0], path), _classes(archive, path)
    except ApprenticeError:
        raise
    except (OSError, ValueError, EOFError) as e:  # not a zip, a truncated member, an object array
        raise ApprenticeError(f"cannot read {path} as .npz arrays: {' '.join(str(e).split())}") from None
