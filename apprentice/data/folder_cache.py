"""A small image folder decoded once into a uint8 tensor file, so it trains at tensor speed.

Decoding a PNG costs far more than a training step of a small network on it, so a folder that fits
in memory (`AUTO_CACHE_BYTES`; ``data.tensor_cache`` decides) is decoded once, to its evaluation
view (channels, shorter side resized, centre crop), into one safetensors file, and from then on it
is a `TensorData` like Fashion-MNIST: batches live on the device and are augmented there.

Where the file goes: ``<data dir>/.apprentice/<split>-<C>x<S>-r<resize>.safetensors`` beside the
data; if the data folder is read-only, ``$APPRENTICE_CACHE/folders/<hash of the folder's path>/``
(`apprentice.data.files.cache_dir`). The report line says which.

When it is rebuilt: the file records a fingerprint of what it was decoded from (the settings, the
class list, and every image's path, byte size, modification time and label). Any added, removed,
renamed, relabelled or rewritten image changes it, and the file is decoded again (atomically
replaced). Nothing else is trusted: the file is safetensors, never unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from apprentice.atomic import atomic_write_bytes
from apprentice.data.files import cache_dir
from apprentice.data.folders import ImageFolder, worker_safe

__all__ = ["AUTO_CACHE_BYTES", "FORMAT", "cache_location", "folder_fingerprint", "folder_tensors"]

FORMAT, VERSION = "apprentice folder tensors", "1"
#: ``data.tensor_cache: null`` caches a folder whose decoded training images take at most this many bytes.
AUTO_CACHE_BYTES = 2 * 2**30
_ANNOUNCE = 10_000  # folders with more images say so before decoding, not only after


def folder_fingerprint(folder: ImageFolder) -> str:
    """SHA-256 of the decoding settings, the class list and every image's (path, size, mtime, label)."""
    settings = [VERSION, folder.channels, folder.image_size, folder.resize, folder.classes]
    h = hashlib.sha256(json.dumps(settings).encode())
    base = folder.root / folder.split
    for path, label in folder.samples:
        st = Path(path).stat()
        h.update(f"{Path(path).relative_to(base).as_posix()}|{st.st_size}|{st.st_mtime_ns}|{label}\n".encode())
    return h.hexdigest()


def cache_location(folder: ImageFolder) -> tuple[Path, str]:
    """``(file, where)``: beside the data when its folder is writable, else in the user's cache folder."""
    name = f"{folder.split}-{folder.channels}x{folder.image_size}-r{folder.resize}.safetensors"
    beside = folder.root / ".apprentice"
    try:
        beside.mkdir(exist_ok=True)
        if os.access(beside, os.W_OK):
            return beside / name, "beside the data"
    except OSError:
        pass
    key = hashlib.sha256(str(folder.root.resolve()).encode()).hexdigest()[:16]
    return cache_dir("folders") / key / name, "in the cache folder (the data folder is read-only)"


def _read(path: Path, fingerprint: str) -> tuple[Tensor, Tensor] | None:
    """The cached tensors if ``path`` holds a cache of exactly this folder, else None."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT or meta.get("fingerprint") != fingerprint:
                return None
            # Copied out of the mapping: a file replaced or cut later must not take these tensors with it.
            return f.get_tensor("images").clone(), f.get_tensor("labels").clone()
    except Exception:  # noqa: BLE001 - a missing, truncated or foreign file is rebuilt, whatever it raises
        return None


def _decode(folder: ImageFolder, workers: int) -> tuple[Tensor, Tensor]:
    """Every image's evaluation view (``folder.train`` must be false), decoded by ``workers`` processes."""
    n, c, s = len(folder), folder.channels, folder.image_size
    images = torch.empty(n, c, s, s, dtype=torch.uint8)
    labels = torch.tensor([label for _, label in folder.samples], dtype=torch.int64)
    # A generator of its own: a DataLoader otherwise draws its workers' base seed from the global RNG,
    # and a run that decoded its folder would then initialise its model unlike one that found the cache.
    loader = torch.utils.data.DataLoader(folder, batch_size=256, shuffle=False, num_workers=workers,
                                         generator=torch.Generator())
    start = 0
    for x, _ in worker_safe(loader):
        images[start:start + len(x)] = x
        start += len(x)
    return images, labels


def folder_tensors(folder: ImageFolder, *, workers: int = 0,
                   report: Callable[[str], None] | None = None) -> tuple[Tensor, Tensor]:
    """The folder's images (uint8 N×C×S×S, evaluation view) and labels, from its tensor cache.

    Decodes and writes the cache first when it is missing or the folder changed. A cache that
    cannot be written (a full disk) is reported and the decoded tensors are used anyway.

    Raises:
        ApprenticeError: an image cannot be read (names the file); nothing is written then.
    """
    if folder.train:
        raise ValueError("folder_tensors decodes evaluation views: build the ImageFolder with train=False")
    path, where = cache_location(folder)
    fingerprint = folder_fingerprint(folder)
    cached = _read(path, fingerprint)
    if cached is not None:
        return cached
    say = report or (lambda line: None)
    what = (f"the {len(folder)} images of {folder.root / folder.split} once into a tensor cache {where}: {path}"
            + (" (the folder changed since it was written)" if path.exists() else ""))
    if len(folder) > _ANNOUNCE:  # long enough to wait for; small folders report only when done (or one error line)
        say(f"decoding {what}")
    t0 = time.perf_counter()
    images, labels = _decode(folder, workers)
    from safetensors.torch import save

    meta = {"format": FORMAT, "version": VERSION, "fingerprint": fingerprint, "classes": json.dumps(folder.classes)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, save({"images": images, "labels": labels}, metadata=meta))
    except OSError as e:
        say(f"could not write the tensor cache {path} ({e.strerror or e}); the images will be decoded again next time")
    say(f"decoded {what} ({time.perf_counter() - t0:.1f} s, {images.numel() / 2**20:.1f} MiB)")
    return images, labels
