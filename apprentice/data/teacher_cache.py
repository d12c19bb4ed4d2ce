"""The teacher-output cache: a frozen teacher's logits for every view of every training image, stored once.

In schemes B and C the teacher never changes, yet every run (and every run of a grid) pays its
forward pass again: 27-32 % of a scheme-B step. A cache stores the logits once; a student run
looks them up by the key of each sample, so distillation costs about what plain training costs
(FKD, Shen & Xing, ECCV 2022). The key is ``(image, view)``, never the image alone: under random
augmentation a cache keyed by index returns another view's outputs after the first epoch.

Exact mode (tensor data sets, this module): the augmentation of `TensorLoader` is a crop after zero
padding by ``pad`` plus an optional flip, so an image has `view_count` views (Fashion-MNIST, pad 2:
50; CIFAR, pad 4: 162) and the cache holds all of them, ``logits[image, view, class]``. A student
draws its augmentation exactly as without the cache (`TensorLoader` with ``keys=True`` reports
``(index, view)``), so a cached run equals a live-teacher run up to the stored precision.

K views an image (``views=K``, for a big teacher or a long schedule): the cache holds K of an
image's views, drawn once (seeded) and stored beside the logits (``view_ids``); a student's loader
then draws each sample's view among its image's K (`TensorLoader.view_table`), so the student still
sees exactly the view its teacher saw, at K/`view_count` of the forwards (Fashion-MNIST, pad 2:
K = 8 is 16 % of the 50-view build). Beyer et al. (CVPR 2022) call this "consistent" distillation;
what K costs in accuracy is measured in benchmarks/README.md. Random erasing (``data.erase``) is
cached too: beside a cache a loader erases each (image, view) by a fixed function of that key
(`apprentice.data.augment.keyed_erase`), so the file holds the logits of the erased view and records
the probability (``erase``). Sampled mode (image folders, random-resized crops): `apprentice.data.crop_cache`.

Decisions:

- Logits, not probabilities, so the temperature stays free; float16 by default (Fashion-MNIST,
  50 views, 10 classes: 60 MB), float32 on request. A float16 cache holds |logit| ≤ 65504; a
  teacher beyond that (or one giving NaN) is refused while building, naming image and view.
- The file is safetensors (`apprentice.data.cache_file`): nothing in it runs when read; it is
  memory-mapped, so torchrun ranks share one copy and each reads only its own rows.
- Never stale: the file records its `CacheSource` (teacher weights hash, data set, fingerprint of
  the exact images and labels, holdout and limit, normalisation, augmentation, classes, dtype).
  `open_teacher_cache` compares it with what the run uses and refuses any difference in one line.
- The build runs the teacher in eval mode without gradients, in fixed batches chunk by chunk; the
  same teacher and settings give the same bytes whether or not the build was interrupted.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from apprentice.data.augment import keyed_erase
from apprentice.data.cache_build import check_logits, fill_chunks, run_teacher
from apprentice.data.cache_file import Layout, MappedFile
from apprentice.data.tensors import (
    TensorData,
    TensorLoader,
    apply_views,
    normalize,
    view_count,
)
from apprentice.errors import ApprenticeError, lookup

__all__ = ["CACHE_DTYPES", "CacheSource", "CachedBatches", "TeacherCache", "build_teacher_cache", "held_views",
           "open_teacher_cache", "teacher_hash", "tensor_fingerprint", "tensor_source"]

# Stored logit precision: name -> safetensors dtype.
CACHE_DTYPES = {"float16": "F16", "float32": "F32"}
FORMAT = "apprentice teacher cache"
VERSION = "1"


def teacher_hash(teacher: nn.Module | Mapping[str, Tensor]) -> str:
    """SHA-256 of a model's state dict (names, dtypes, shapes and values, in sorted order), in hex.

    The same weights give the same hash whether they came from a run folder, a checkpoint or an
    exported ``.pt`` file; any changed value, BatchNorm statistic included, changes it.
    """
    sd = teacher.state_dict() if isinstance(teacher, nn.Module) else teacher
    h = hashlib.sha256()
    for name in sorted(sd):
        t = sd[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def tensor_fingerprint(data: TensorData) -> str:
    """SHA-256 of the exact images and labels of a `TensorData` (shapes included), in hex."""
    h = hashlib.sha256(f"{tuple(data.images.shape)}|{tuple(data.labels.shape)}|".encode())
    h.update(data.images.contiguous().numpy().tobytes())
    h.update(data.labels.contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class CacheSource:
    """What a cache was made from; a cache is used only where every recorded field matches.

    Attributes:
        mode: "exact" (every view, tensor data sets) or "sampled" (K views an image, folders).
        teacher: `teacher_hash` of the teacher's weights.
        dataset: data set name.
        fingerprint: hash of the exact training images and labels (`tensor_fingerprint`; for
            folders, of the file list, sizes and labels).
        holdout: training images set aside before the cache's split.
        limit: the training-set limit (None: none).
        num_classes: classes the teacher predicts.
        mean, std: normalisation the teacher saw.
        pad, flip: augmentation (exact mode; sampled mode: pad 0 and whether crops may flip).
        image_size: side of the images the teacher saw.
        dtype, views, topk, crop: how the cache stores them (a key of `CACHE_DTYPES`; views an
            image; logits kept per view (all classes in exact mode); sampled mode's crop settings).
            Properties of the file, not requirements of a run: None in an expected source means any.
        erase: the random-erasing probability of the views the teacher saw (exact mode, `keyed_erase`;
            0: none); a cache written before it was recorded reads as 0.
    """

    mode: str
    teacher: str
    dataset: str
    fingerprint: str
    holdout: int
    limit: int | None
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pad: int
    flip: bool
    image_size: int
    dtype: str | None = None
    views: int | None = None
    topk: int | None = None
    crop: str | None = None
    erase: float = 0.0

    @classmethod
    def from_json(cls, text: str) -> CacheSource:
        d = json.loads(text)
        names = {f.name for f in fields(cls)}
        if isinstance(d, dict) and "erase" not in d:
            d["erase"] = 0.0  # written before erasing could be cached: its views were not erased
        if not isinstance(d, dict) or set(d) != names:
            raise ValueError("fields")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def differences(self, expected: CacheSource) -> list[str]:
        """One phrase per field where ``self`` (the file) differs from ``expected`` (None there: any)."""
        out = []
        for f in fields(self):
            have, want = getattr(self, f.name), getattr(expected, f.name)
            if (want is not None or f.name in _ALWAYS) and have != want:
                out.append(f"{_FIELD_NAMES.get(f.name, f.name)}: file {_short(have)}, here {_short(want)}")
        return out


_ALWAYS = {"limit"}  # None is a value here (no limit), not "any"
_FIELD_NAMES = {"teacher": "teacher weights (hash)", "fingerprint": "training images and labels (fingerprint)",
                "mean": "normalisation mean", "std": "normalisation std", "pad": "augmentation pad",
                "flip": "augmentation flip", "num_classes": "number of classes", "views": "views an image",
                "topk": "logits kept per view",
                "erase": "random erasing (data.erase)"}


def _short(v: Any) -> str:
    return f"{v[:12]}…" if isinstance(v, str) and len(v) == 64 else repr(v)


def tensor_source(data: TensorData, *, teacher: str, holdout: int = 0, limit: int | None = None,
                  dtype: str | None = None, views: int | None = -1, erase: float = 0.0) -> CacheSource:
    """The `CacheSource` of an exact cache for ``data`` (the training split after holdout and limit).

    Args:
        data: the training images, as `load_tensors` gives them.
        teacher: `teacher_hash` of the teacher.
        holdout, limit: the split settings that produced ``data`` (recorded, and compared).
        dtype: the stored precision to require (None: any).
        views: views an image the cache holds (-1: every view, `view_count`; None: any, as a student's
            run opens a cache: all views or K of them serve it alike).
        erase: the random-erasing probability of the views (`keyed_erase`).
    """
    held = view_count(data.pad, data.flip) if views == -1 else views
    return CacheSource("exact", teacher, data.name, tensor_fingerprint(data), int(holdout), limit,
                       data.num_classes, tuple(data.mean), tuple(data.std), int(data.pad), bool(data.flip),
                       int(data.images.shape[-1]), dtype, held, data.num_classes, "", float(erase))


def check_source(path: Path, mapped: MappedFile, expected: CacheSource) -> CacheSource:
    """The recorded source of an opened cache, if it fits ``expected``; else one ApprenticeError line."""
    meta = mapped.layout.metadata
    if meta.get("format") != FORMAT:
        raise ApprenticeError(f"{str(path)!r} is a safetensors file but not an apprentice teacher cache")
    if meta.get("version") != VERSION:
        raise ApprenticeError(f"teacher cache {str(path)!r} has format version {meta.get('version')!r}; "
                              f"this version reads {VERSION!r}: rebuild it with apprentice cache-teacher")
    try:
        source = CacheSource.from_json(meta["source"])
    except (KeyError, ValueError, TypeError):
        raise ApprenticeError(f"teacher cache {str(path)!r} has a corrupt source record") from None
    if source.mode != expected.mode:
        raise ApprenticeError(f"teacher cache {str(path)!r} was built in {source.mode} mode; this data set needs "
                              f"{expected.mode} mode")
    diffs = source.differences(expected)
    if diffs:
        erase = f" ... data.erase={expected.erase}" if source.erase != expected.erase else ""
        raise ApprenticeError(f"teacher cache {str(path)!r} was made for something else; "
                              f"{'; '.join(diffs)}. Rebuild it with apprentice cache-teacher{erase}")
    return source


def check_finite_rows(path: Path, array: np.ndarray, rows: int = 4096) -> None:
    """Refuse a cache holding NaN or inf, naming the first bad image (reads the map block by block)."""
    for start in range(0, array.shape[0], rows):
        block = np.asarray(array[start:start + rows])
        if not np.isfinite(block).all():
            bad = start + int(np.argwhere(~np.isfinite(block))[0][0])
            raise ApprenticeError(f"teacher cache {str(path)!r} holds non-finite values (NaN or inf), first at "
                                  f"image {bad}; rebuild it")


class TeacherCache:
    """An exact-mode cache opened for reading (`open_teacher_cache`): ``lookup(index, view)`` gives logits.

    Attributes:
        path: the file.
        source: what it was made from.
        images, views, num_classes: its shape.
    """

    def __init__(self, path: Path, mapped: MappedFile, source: CacheSource) -> None:
        self.path, self.source, self._file = path, source, mapped
        self.images, self.views, self.num_classes = mapped.layout.entries["logits"].shape
        held = "view_ids" in mapped.layout.entries  # K views an image, not all of them
        #: K-view caches: the view id of each stored slot, images × K (int64); None when every view is held
        self.view_table = torch.from_numpy(np.asarray(mapped["view_ids"]).astype(np.int64)) if held else None

    def lookup(self, index: Tensor, view: Tensor, device: str | torch.device | None = None) -> Tensor:
        """Float32 teacher logits B×classes of images ``index`` seen in views ``view`` (int64 B each).

        Only those rows are read from the file; the result goes to ``device`` (default: CPU). A K-view
        cache serves only the views it holds: any other is an error naming the first such sample.
        """
        index, slot = index.cpu(), view.cpu()
        if self.view_table is not None and index.numel() and bool((index < self.images).all()):
            slot = self._slots(index, slot)  # ids beyond the file: the read below names them
        try:
            rows = self._file["logits"][index.numpy(), slot.numpy()]
        except IndexError:
            raise ApprenticeError(f"teacher cache {str(self.path)!r} holds {self.images} images × {self.views} "
                                  f"views; asked for image/view ids beyond that") from None
        out = torch.from_numpy(rows).float()
        return out.to(device, non_blocking=True) if device is not None else out

    def _slots(self, index: Tensor, view: Tensor) -> Tensor:
        """Where a K-view cache stores each sample's (image, view); a view it does not hold is an error."""
        held = self.view_table[index] == view[:, None]  # type: ignore[index]
        found = held.any(dim=1)
        if not bool(found.all()):
            first = int((~found).nonzero()[0, 0])
            raise ApprenticeError(f"teacher cache {str(self.path)!r} holds {self.views} views an image; image "
                                  f"{int(index[first])} view {int(view[first])} is not one of them")
        return held.long().argmax(dim=1)


def open_checked(path: str | os.PathLike, expected: CacheSource, verify: bool) -> tuple[Path, MappedFile, CacheSource]:
    p = Path(path)
    mapped = MappedFile(p)
    source = check_source(p, mapped, expected)
    if not np.asarray(mapped["done"]).all():
        raise ApprenticeError(f"teacher cache {str(p)!r} is incomplete; build it again to finish it")
    if verify:
        for name, e in mapped.layout.entries.items():
            if e.dtype.startswith("F"):
                check_finite_rows(p, mapped[name])
    return p, mapped, source


def open_teacher_cache(path: str | os.PathLike, expected: CacheSource, *, verify: bool = True) -> TeacherCache:
    """Open an exact-mode cache for the data and teacher of ``expected``, memory-mapped.

    Args:
        path: the cache file.
        expected: what this run uses (`tensor_source`); ``dtype`` None accepts either precision.
        verify: scan the file once for NaN/inf (sequential read; pages stay shared).

    Raises:
        ApprenticeError: no such file, not a cache, incomplete, non-finite, or made from another
            teacher, data set, split, normalisation, augmentation, class count or dtype (one line
            naming every field that differs).
    """
    p, mapped, source = open_checked(path, expected, verify)
    shape = mapped.layout.entries["logits"].shape  # the fingerprint pins the image count
    ids = mapped.layout.entries.get("view_ids")
    views = source.views if ids is not None and tuple(ids.shape) == tuple(shape[:2]) else view_count(expected.pad,
                                                                                                     expected.flip)
    if shape[1:] != (views, expected.num_classes) or source.views != views:
        raise ApprenticeError(f"teacher cache {str(p)!r} holds logits {list(shape)}, expected "
                              f"{views} views × {expected.num_classes} classes")
    return TeacherCache(p, mapped, source)


class CachedBatches:
    """A training `TensorLoader` (made with ``keys=True``) whose batches carry the cached teacher logits.

    Yields ``(images, labels, teacher_logits)`` (float32 B×classes on the loader's device); position,
    ``set_epoch``, ``state_dict`` and ``load_state_dict`` are the loader's, so resuming is unchanged.
    """

    def __init__(self, loader: TensorLoader, cache: TeacherCache) -> None:
        if not loader.keys:
            raise ApprenticeError("CachedBatches needs a TensorLoader made with keys=True")
        every = view_count(loader.data.pad, loader.data.flip)
        if cache.view_table is not None and cache.images == len(loader.data) and int(cache.view_table.max()) < every:
            loader.view_table = cache.view_table  # the student draws among the views the cache holds
        elif cache.images != len(loader.data) or cache.views != every:
            raise ApprenticeError(f"teacher cache {str(cache.path)!r} holds {cache.images} images × {cache.views} "
                                  f"views; the loader has {len(loader.data)} images × "
                                  f"{view_count(loader.data.pad, loader.data.flip)}")
        self.loader, self.cache = loader, cache

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def step(self) -> int:
        return self.loader.step

    @property
    def epoch(self) -> int:
        return self.loader.epoch

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def state_dict(self) -> dict[str, int]:
        return self.loader.state_dict()

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.loader.load_state_dict(state)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        for images, labels, index, view in self.loader:
            yield images, labels, self.cache.lookup(index, view, images.device)


# ---------------------------------------------------------------- building


def build_teacher_cache(path: str | os.PathLike, teacher: nn.Module, data: TensorData, *, holdout: int = 0,
                        limit: int | None = None, dtype: str = "float16", batch_size: int = 500,
                        chunk_images: int | None = None, report: Callable[[str], None] | None = None,
                        views: int | None = None, seed: int = 0, erase: float = 0.0) -> CacheSource:
    """Run ``teacher`` over every view of every image of ``data`` and store the logits at ``path``.

    Resumable: the work goes to ``.<name>.partial`` beside ``path`` chunk by chunk; calling again
    with the same teacher and settings continues where an interrupted call stopped (other settings
    start again). The finished file replaces ``path`` atomically.

    Args:
        path: the cache file to write (safetensors).
        teacher: the trained teacher, on the device to run it on; put in eval mode for the build.
        data: the training split (`load_tensors` with the run's holdout and limit).
        holdout, limit: the settings that gave ``data`` (recorded, checked when a run opens the cache).
        dtype: stored precision, a key of `CACHE_DTYPES`.
        batch_size: images a teacher forward.
        chunk_images: images per chunk (default: about 16,384 views a chunk).
        report: called with progress lines (size and work first, then a time estimate and ETA).
        views: K, the views an image to hold (drawn without replacement, seeded by ``seed``); None
            (or `view_count` or more): every view.
        seed: the draw of the K views.
        erase: random erasing's probability (`keyed_erase`: each (image, view) erased as a student's
            loader with ``data.erase`` at this value erases it); 0: none.

    Returns:
        The recorded `CacheSource`.
    """
    stored = lookup(CACHE_DTYPES, dtype, "teacher cache dtype")
    if batch_size < 1 or (chunk_images is not None and chunk_images < 1):
        raise ApprenticeError(f"batch_size and chunk_images must be >= 1, got {batch_size} and {chunk_images}")
    n, classes, table = len(data), data.num_classes, held_views(len(data), data.pad, data.flip, views, seed)
    views = view_count(data.pad, data.flip) if table is None else table.shape[1]
    if not 0.0 <= erase <= 1.0:
        raise ApprenticeError(f"erase must be in [0, 1], got {erase}")
    source = tensor_source(data, teacher=teacher_hash(teacher), holdout=holdout, limit=limit, dtype=dtype, views=views,
                           erase=erase)
    chunk = chunk_images or max(1, 16384 // views)
    entries = {"logits": (stored, (n, views, classes)), "done": ("U8", (-(-n // chunk),)),
               **({} if table is None else {"view_ids": ("I32", (n, views))})}
    layout = Layout.make(entries, {"format": FORMAT, "version": VERSION, "source": source.to_json(),
                                   "build": json.dumps({"batch_size": batch_size, "chunk_images": chunk,
                                                        **({} if table is None else {"seed": seed})})})
    mean, std = torch.tensor(data.mean), torch.tensor(data.std)

    def compute(start: int, stop: int) -> dict[str, np.ndarray]:
        index = torch.arange(start, stop).repeat_interleave(views)
        view = torch.arange(views).repeat(stop - start) if table is None else table[start:stop].reshape(-1)
        logits = torch.cat([run_teacher(teacher, normalize(_views(data, index[i:i + batch_size], view[i:i + batch_size],
                                                                  erase), mean, std), batch_size)
                            for i in range(0, len(index), batch_size)])
        with np.errstate(over="ignore"):  # a float16 overflow is reported below, naming the image
            out = logits.numpy().astype(np.float16 if dtype == "float16" else np.float32)
        check_logits(logits, out, dtype, lambda r: f"image {int(index[r])} view {int(view[r])}")
        held = {} if table is None else {"view_ids": table[start:stop].numpy().astype(np.int32)}
        return {"logits": out.reshape(stop - start, views, classes), **held}

    fill_chunks(Path(path), layout, items=n, chunk=chunk, work=n * views, compute=compute, report=report)
    return source


def _views(data: TensorData, index: Tensor, view: Tensor, erase: float) -> Tensor:
    """The uint8 images of ``(index, view)`` as `TensorLoader` (``keys=True``) gives them."""
    images = apply_views(data.images[index], view, pad=data.pad, flip=data.flip)
    return keyed_erase(images, index, view, erase) if erase else images


def held_views(images: int, pad: int, flip: bool, views: int | None, seed: int) -> Tensor | None:
    """The view ids a K-view cache holds, images × K (sorted in each row), or None for every view.

    Example:
        >>> held_views(2, 1, True, 3, seed=0).shape, held_views(2, 1, True, None, seed=0)
        (torch.Size([2, 3]), None)
    """
    every = view_count(pad, flip)
    if views is None or views >= every:
        return None
    if views < 1:
        raise ApprenticeError(f"views an image must be >= 1, got {views}")
    order = torch.rand(images, every, generator=torch.Generator().manual_seed(seed)).argsort(dim=1)
    return order[:, :views].sort(dim=1).values


def cache_size(images: int, views: int, values: int, dtype: str = "float16") -> int:
    """Approximate bytes of a cache of ``images`` × ``views`` × ``values`` logits (header not counted)."""
    return images * views * values * (2 if lookup(CACHE_DTYPES, dtype, "teacher cache dtype") == "F16" else 4)
