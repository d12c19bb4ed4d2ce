"""Sampled-view teacher caches for image folders: K stored random-resized crops an image (FKD's design).

A random-resized crop has no finite set of views, so the exact mode of
`apprentice.data.teacher_cache` cannot hold them all. Instead the cache stores, for every training
image, ``K`` crops drawn once (crop box in the image's pixels and flip), and for each the teacher's
top-``k`` logits plus the probability mass of the other classes; a student with this cache takes
its crops *from the cache* (Shen & Xing, "A Fast Knowledge Distillation Framework for Visual
Recognition", ECCV 2022), so teacher outputs and student inputs always belong together.

Rebuilding the distribution (`dense_logits`): with top-k logits ``z_j`` (j in S), rest mass ``r``
(at τ = 1) and C classes, the full softmax's normaliser is ``L = logsumexp(z_S) − log(1 − r)``; each
class outside S gets the logit ``L + log(r / (C − k))``. The softmax of these C logits gives the
top-k classes exactly their probabilities and spreads ``r`` uniformly over the others. At τ ≠ 1
the top-k logits keep their exact differences; the others stay tied (an approximation). ``r`` is
clamped to 1e-30 so no logit is −inf.

Which stored crop a sample uses in epoch ``e``: ``(e + s_i) mod K`` with ``s_i`` a per-image
offset drawn from the run's seed, so K epochs use every crop once and any epoch can be rebuilt
(resume). The (index, slot) pairs come from the sampler (`CropSampler`), so DataLoader workers
need no epoch state.

File tensors: ``boxes`` I32 N×K×4 (left, top, right, bottom), ``flips`` U8 N×K, ``values`` F16/F32
N×K×k (top-k logits, descending), ``classes`` I16 (I32 beyond 32,767 classes) N×K×k, ``rest`` F32
N×K, and ``done``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from apprentice.data.cache_build import check_logits, fill_chunks, run_teacher
from apprentice.data.cache_file import Layout
from apprentice.data.folders import ImageFolder
from apprentice.data.teacher_cache import (
    CACHE_DTYPES,
    FORMAT,
    VERSION,
    CacheSource,
    open_checked,
    teacher_hash,
)
from apprentice.data.tensors import mix_seeds, normalize
from apprentice.errors import ApprenticeError, lookup

__all__ = ["CachedCropFolder", "CropCache", "CropSampler", "build_crop_cache", "crop_loader", "dense_logits",
           "folder_fingerprint", "folder_source", "open_crop_cache"]

_REST_FLOOR = 1e-30


def folder_fingerprint(folder: ImageFolder) -> str:
    """SHA-256 of an image folder's classes, files (path relative to the split, byte size) and labels.

    File contents are not read (ImageNet's train split is 140 GB): a renamed, resized, added,
    removed or relabelled image changes it; an image rewritten in place at the same size does not.
    """
    h = hashlib.sha256(json.dumps(folder.classes).encode())
    root = Path(folder.samples[0][0]).parents[1]
    for path, label in folder.samples:
        h.update(f"{Path(path).relative_to(root).as_posix()}|{Path(path).stat().st_size}|{label}\n".encode())
    return h.hexdigest()


def _crop_text(folder: ImageFolder, seed: int) -> str:
    return f"random-resized scale {tuple(folder.scale)} ratio {tuple(round(r, 6) for r in folder.ratio)} seed {seed}"


def folder_source(folder: ImageFolder, *, teacher: str, dataset: str, mean: tuple[float, ...],
                  std: tuple[float, ...], dtype: str | None = None, views: int | None = None,
                  topk: int | None = None, crop: str | None = None) -> CacheSource:
    """The `CacheSource` of a sampled cache of ``folder`` (its training split); None: any."""
    return CacheSource("sampled", teacher, dataset, folder_fingerprint(folder), 0, None, len(folder.classes),
                       tuple(mean), tuple(std), 0, True, int(folder.image_size), dtype, views, topk, crop)


def dense_logits(values: Tensor, classes: Tensor, rest: Tensor, num_classes: int) -> Tensor:
    """Full float32 logits B×C from top-k logits ``values`` B×k, their ``classes`` B×k and the rest mass B.

    See the module docstring: softmax of the result is the top-k probabilities exactly and the rest
    mass spread uniformly over the other classes.

    Example:
        >>> z = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
        >>> p = z.softmax(1)
        >>> dense_logits(z[:, :2], torch.tensor([[0, 1]]), p[:, 2:].sum(1), 4).softmax(1)
        tensor([[0.6439, 0.2369, 0.0596, 0.0596]])
    """
    values = values.float()
    k = values.shape[1]
    rest = rest.float().clamp(_REST_FLOOR, 1 - _REST_FLOOR)
    norm = values.logsumexp(1) - torch.log1p(-rest)
    other = norm + torch.log(rest / max(num_classes - k, 1))
    out = other[:, None].expand(-1, num_classes).clone()
    return out.scatter_(1, classes.long(), values)


class CropCache:
    """A sampled-mode cache opened for reading (`open_crop_cache`).

    Attributes:
        path, source: the file and what it was made from.
        images, views, topk, num_classes: N, K, k and C.
    """

    def __init__(self, path: Path, mapped, source: CacheSource) -> None:
        self.path, self.source, self._file = path, source, mapped
        self.images, self.views, self.topk = mapped.layout.entries["values"].shape
        self.num_classes = source.num_classes

    def crop(self, index: int, slot: int) -> tuple[tuple[int, int, int, int], bool]:
        """The stored crop ``slot`` of image ``index``: box (left, top, right, bottom) and flip."""
        box = tuple(int(v) for v in self._file["boxes"][index, slot])
        return box, bool(self._file["flips"][index, slot])  # type: ignore[return-value]

    def top(self, index: Tensor, slot: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Stored ``(values, classes, rest)`` of crops ``slot`` of images ``index`` (int64 B each)."""
        i, s = index.cpu().numpy(), slot.cpu().numpy()
        try:
            return tuple(torch.from_numpy(np.asarray(self._file[n][i, s])) for n in ("values", "classes", "rest"))
        except IndexError:
            raise ApprenticeError(f"crop cache {str(self.path)!r} holds {self.images} images × {self.views} "
                                  f"crops; asked for ids beyond that") from None

    def lookup(self, index: Tensor, slot: Tensor, device: str | torch.device | None = None) -> Tensor:
        """Float32 teacher logits B×C rebuilt with `dense_logits` for crops ``slot`` of images ``index``."""
        out = dense_logits(*self.top(index, slot), self.num_classes)
        return out.to(device, non_blocking=True) if device is not None else out


def open_crop_cache(path: str | os.PathLike, expected: CacheSource, *, verify: bool = True) -> CropCache:
    """Open a sampled-mode cache for the folder and teacher of ``expected`` (`folder_source`), memory-mapped.

    Raises:
        ApprenticeError: as `apprentice.data.teacher_cache.open_teacher_cache`.
    """
    p, mapped, source = open_checked(path, expected, verify)
    return CropCache(p, mapped, source)


def build_crop_cache(path: str | os.PathLike, teacher: nn.Module, folder: ImageFolder, *, dataset: str,
                     mean: tuple[float, ...], std: tuple[float, ...], views: int = 10, topk: int = 10,
                     seed: int = 0, dtype: str = "float16", batch_size: int = 256, chunk_images: int = 256,
                     report: Callable[[str], None] | None = None) -> CacheSource:
    """Draw ``views`` random-resized crops of every image of ``folder`` and store the teacher's top-``topk``.

    Crops of image i are drawn from a generator seeded by ``(seed, i)`` with the folder's scale
    and ratio, so the file does not depend on chunking or interruption. Resumable and atomic as
    `apprentice.data.teacher_cache.build_teacher_cache`.

    Args:
        path: the cache file to write.
        teacher: the trained teacher, on the device to run it on.
        folder: the training split (`ImageFolder`; its ``image_size``, ``scale``, ``ratio`` are used).
        dataset: data set name (recorded).
        mean, std: normalisation of the teacher's input.
        views: K, crops stored an image.
        topk: k, logits kept a crop (1..classes).
        seed: seeds the crops.
        dtype: precision of the stored logits (`CACHE_DTYPES`).
        batch_size: crops a teacher forward.
        chunk_images: images per chunk.
        report: called with progress lines.
    """
    stored = lookup(CACHE_DTYPES, dtype, "teacher cache dtype")
    n, classes = len(folder), len(folder.classes)
    if views < 1 or not 1 <= topk <= classes:
        raise ApprenticeError(f"a crop cache needs views >= 1 and 1 <= topk <= {classes} classes, got {views} and {topk}")
    source = folder_source(folder, teacher=teacher_hash(teacher), dataset=dataset, mean=mean, std=std, dtype=dtype,
                           views=views, topk=topk, crop=_crop_text(folder, seed))
    cls_dtype = "I16" if classes <= np.iinfo(np.int16).max else "I32"
    layout = Layout.make({"boxes": ("I32", (n, views, 4)), "flips": ("U8", (n, views)),
                          "values": (stored, (n, views, topk)), "classes": (cls_dtype, (n, views, topk)),
                          "rest": ("F32", (n, views)), "done": ("U8", (-(-n // chunk_images),))},
                         {"format": FORMAT, "version": VERSION, "source": source.to_json(),
                          "build": json.dumps({"batch_size": batch_size, "chunk_images": chunk_images})})
    m, s = torch.tensor(mean), torch.tensor(std)

    def compute(start: int, stop: int) -> dict[str, np.ndarray]:
        boxes, flips, crops = [], [], []
        for i in range(start, stop):
            g, im = torch.Generator().manual_seed(mix_seeds(seed, 4, i)), folder.open(i)
            for _ in range(views):
                box = folder.crop_box(*im.size, generator=g)
                flip = bool(torch.rand((), generator=g) < 0.5)
                boxes.append(box)
                flips.append(flip)
                crops.append(folder.render(im, box, flip))
        logits = run_teacher(teacher, normalize(torch.stack(crops), m, s), batch_size)
        values, idx = logits.topk(topk, dim=1)
        rest = logits.double().softmax(1).scatter(1, idx, 0.0).sum(1).float()
        with np.errstate(over="ignore"):
            out = values.numpy().astype(np.float16 if dtype == "float16" else np.float32)
        check_logits(logits, out, dtype, lambda r: f"image {start + r // views} crop {r % views}")
        shape = (stop - start, views)
        return {"boxes": np.array(boxes, np.int32).reshape(*shape, 4), "flips": np.array(flips, np.uint8).reshape(shape),
                "values": out.reshape(*shape, topk), "classes": idx.numpy().reshape(*shape, topk),
                "rest": rest.numpy().reshape(shape)}

    fill_chunks(Path(path), layout, items=n, chunk=chunk_images, work=n * views, compute=compute, report=report)
    return source


class CropSampler:
    """Wraps a sampler of image indices (e.g. DistributedSampler) to yield ``(index, slot)`` pairs.

    Slot of image i in epoch e: ``(e + offset_i) mod views``, offsets drawn from ``seed``. ``set_epoch``
    is passed on to the wrapped sampler.
    """

    def __init__(self, sampler, *, images: int, views: int, seed: int) -> None:
        self.sampler, self.views, self.epoch = sampler, views, 0
        self.offsets = torch.randint(views, (images,), generator=torch.Generator().manual_seed(mix_seeds(seed, 5)))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i in self.sampler:
            yield int(i), int((self.epoch + self.offsets[i]) % self.views)


class CachedCropFolder(torch.utils.data.Dataset):
    """An `ImageFolder`'s training images cut as a `CropCache` says: item ``(index, slot)`` is
    ``(uint8 3×S×S crop, label, index, slot)``."""

    def __init__(self, folder: ImageFolder, cache: CropCache) -> None:
        if len(folder) != cache.images:
            raise ApprenticeError(f"crop cache {str(cache.path)!r} holds {cache.images} images, the folder {len(folder)}")
        self.folder, self.cache = folder, cache

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, int, int, int]:
        index, slot = key
        box, flip = self.cache.crop(index, slot)
        return self.folder.render(self.folder.open(index), box, flip), self.folder.samples[index][1], index, slot


def crop_loader(folder: ImageFolder, cache: CropCache, *, batch_size: int, workers: int, seed: int, rank: int = 0,
                world_size: int = 1) -> torch.utils.data.DataLoader:
    """A training DataLoader over ``folder`` whose crops come from ``cache``; batches are
    ``(uint8 B×3×S×S, labels, index, slot)``. Shuffled and sharded as `imagenet_loader` (drop_last);
    call ``loader.sampler.set_epoch(epoch)`` every epoch."""
    base = torch.utils.data.DistributedSampler(folder, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    return torch.utils.data.DataLoader(
        CachedCropFolder(folder, cache), batch_size=batch_size,
        sampler=CropSampler(base, images=len(folder), views=cache.views, seed=seed), num_workers=workers,
        pin_memory=torch.cuda.is_available(), drop_last=True, persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed))
