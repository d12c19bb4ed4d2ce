"""Writers of the real on-disk data formats (IDX, CIFAR python pickles, image folders), for tests that
load them through the real code: tests/data/test_datafiles.py, tests/data/test_data.py, tests/data/test_folders.py."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np


def write_idx(path: Path, array, magic: int | None = None, gz: bool = False) -> Path:
    array = np.asarray(array, dtype=np.uint8)
    magic = magic if magic is not None else (2051 if array.ndim == 3 else 2049)
    raw = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def idx_arrays(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = np.arange(n)  # pixel (0, 0) identifies the image
    return images, (np.arange(n) % 10).astype(np.uint8)


def make_idx_folder(folder: Path, n_train: int = 50, n_test: int = 20, gz: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, n in (("train", n_train), ("t10k", n_test)):
        images, labels = idx_arrays(n, seed=n)
        write_idx(folder / f"{stem}-images-idx3-ubyte", images, gz=gz)
        write_idx(folder / f"{stem}-labels-idx1-ubyte", labels, gz=gz)
    return folder


class Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python-2 strings (BINSTRING), as the real CIFAR files are."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str


def cifar_batch(n: int, num_classes: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), [int(v) for v in rng.integers(0, num_classes, n)]


def write_pickle(path: Path, obj, py2: bool = False) -> None:
    with open(path, "wb") as f:
        (Py2Pickler(f, protocol=2) if py2 else pickle.Pickler(f, protocol=2)).dump(obj)


def make_cifar10(root: Path, n: int = 8, py2: bool = False) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        images, labels = cifar_batch(n, 10, i)
        write_pickle(folder / name, {b"batch_label": b"batch", b"data": images, b"labels": labels}, py2)
    write_pickle(folder / "batches.meta", {b"label_names": [b"airplane"] * 10}, py2)
    return folder


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_image_folder(root: Path, classes=("a", "b"), counts=(("train", 8), ("val", 4)), channels: int = 1,
                       size: tuple[int, int] = (20, 16), seed: int = 0) -> Path:
    """An image folder ``root/<split>/<class>/<i>.png``: class k is brightness 40 + 170·k/(K-1) plus
    noise (RGB: the channels differ), ``size`` = (width, height). Learnable in a few steps."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in counts:
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            level = 40 + 170 * k / max(len(classes) - 1, 1)
            for i in range(n):
                shape = (size[1], size[0]) if channels == 1 else (size[1], size[0], 3)
                pixels = level + rng.normal(0, 20, shape) + (np.array([0, 15, -15]) if channels == 3 else 0)
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root
