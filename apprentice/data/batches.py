"""Training and evaluation batches of one data set, for one process of possibly several.

`train_batches` gives the shuffled, augmented training batches with a resumable position
(`TrainBatches`: ``set_epoch``, ``state_dict``, ``load_state_dict``, ``step``); `eval_batches` gives the
unaugmented batches of one split. Both take plain arguments; `apprentice.run.build` maps the config
onto them.

Decisions:

- ``batch_size`` of `train_batches` is the *global* batch. With N processes each takes
  ``batch_size / N`` images per step from its share of the same seeded permutation, so global
  batch k holds the same images for any N and the learning rate means the same thing.
- Evaluation is sharded without padding: process ``rank`` takes images ``rank, rank + N, ...``,
  so counts summed over processes are exact.
- The holdout images are drawn with `HOLDOUT_SEED`, never the training seed: every seed tunes on
  the same images, and ``apprentice eval --split holdout`` finds them again.
- Small data sets are tensors augmented on the device (`apprentice.TensorLoader`), and so are
  image folders decoded once into a tensor cache and ``.npz`` arrays; large folders (ImageNet)
  stream through a DataLoader wrapped to the same interface (`FolderBatches`). Which one a data set
  takes, and its normalisation and augmentation, come from its resolved `DataSpec`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor

from apprentice.data.cache_build import cache_batch
from apprentice.data.catalog import DATASETS
from apprentice.data.crop_cache import (
    CropCache,
    build_crop_cache,
    crop_loader,
    folder_source,
    open_crop_cache,
)
from apprentice.data.folders import folder_loader, worker_safe
from apprentice.data.spec import DataSpec, load_split, open_folder, resolve_spec
from apprentice.data.teacher_cache import (
    CachedBatches,
    CacheSource,
    build_teacher_cache,
    open_teacher_cache,
    tensor_source,
)
from apprentice.data.tensors import TensorLoader, normalize
from apprentice.errors import ApprenticeError, lookup

__all__ = ["HOLDOUT_SEED", "FolderBatches", "TrainBatches", "TrainSet", "cache_teacher", "eval_batches",
           "train_batches"]

HOLDOUT_SEED = 0


@runtime_checkable
class TrainBatches(Protocol):
    """What training iterates, whichever loader gives it (`TensorLoader`, `CachedBatches`, `FolderBatches`,
    with or without a streamed folder's crop cache): one epoch's batches at a time, at a position
    ``(epoch, step)`` that a checkpoint saves and a resume restores.

    Iterating yields the rest of the current epoch's batches, ``(images, labels)`` or, with a teacher
    cache, ``(images, labels, teacher_logits)``; ``set_epoch(e)`` moves to the start of epoch ``e``
    unless the position is already in it, so a resumed loop calls it as a fresh one does.
    """

    @property
    def step(self) -> int:
        """Batches of the current epoch already handed out."""

    def __len__(self) -> int:
        """Batches an epoch on this process."""

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        """The rest of the current epoch's batches."""

    def set_epoch(self, epoch: int) -> None:
        """Move to the start of ``epoch`` (no change if already in it)."""

    def state_dict(self) -> dict[str, int]:
        """The position, ``{"epoch": e, "step": s}``."""

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Resume at a position `state_dict` saved."""


class TrainSet(NamedTuple):
    """What `train_batches` returns: the batches and what the model needs to know of the data."""

    batches: TrainBatches
    num_classes: int
    channels: int
    images: int


class FolderBatches:
    """A streamed image folder's training DataLoader as `TrainBatches` (set_epoch, position, normalised
    batches), as `TensorLoader` gives them.

    With ``cache`` (a `CropCache`; the loader from `crop_loader`) batches are ``(images, labels,
    teacher_logits)``, the crops and teacher logits both taken from the cache.
    """

    def __init__(self, loader: torch.utils.data.DataLoader, *, device: torch.device, seed: int,
                 mean: Sequence[float], std: Sequence[float], cache: CropCache | None = None) -> None:
        self.loader, self.device, self.seed, self.epoch, self.step = loader, device, seed, 0, 0
        self.mean, self.std, self.cache = tuple(mean), tuple(std), cache

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.step = epoch, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "step": self.step}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.epoch, self.step = int(state["epoch"]), int(state["step"])

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch, loader = self.epoch, self.loader
        loader.sampler.set_epoch(epoch)
        if self.step:  # resume mid-epoch: the rest of this epoch's order, without decoding the skipped images
            loader = torch.utils.data.DataLoader(
                loader.dataset, batch_size=loader.batch_size, sampler=list(loader.sampler)[self.step * loader.batch_size:],
                num_workers=loader.num_workers, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
                generator=torch.Generator().manual_seed(self.seed + 1000003 * epoch + self.step))
        for batch in (_normalized(loader, self.device, self.mean, self.std) if self.cache is None
                      else _with_cache(loader, self.device, self.mean, self.std, self.cache)):
            self.step += 1
            yield batch
        if self.epoch == epoch:
            self.epoch, self.step = epoch + 1, 0


def _normalized(loader: Iterable[tuple[Tensor, Tensor]], device: torch.device, mean: Sequence[float],
                std: Sequence[float]) -> Iterator[tuple[Tensor, Tensor]]:
    for images, labels in worker_safe(loader):
        yield normalize(images.to(device, non_blocking=True), mean, std), labels.to(device, non_blocking=True)


def _with_cache(loader: Iterable[tuple[Tensor, ...]], device: torch.device, mean: Sequence[float],
                std: Sequence[float], cache: CropCache) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    for images, labels, index, slot in worker_safe(loader):
        yield (normalize(images.to(device, non_blocking=True), mean, std),
               labels.to(device, non_blocking=True), cache.lookup(index, slot, device))


class _Reiterable:
    """Makes a generator function iterable more than once (one evaluation per epoch)."""

    def __init__(self, make: Callable[[], Iterator]) -> None:
        self.make = make

    def __iter__(self) -> Iterator:
        return self.make()


def _spec(spec: DataSpec | None, name: str, data_dir: str | None, image_size: int | None,
          augment: bool = True) -> DataSpec:
    """The caller's resolved spec, or the data set's defaults (what the plain arguments ask for)."""
    if spec is not None:
        return spec
    info = lookup(DATASETS, name, "data set")
    if info.is_folder and data_dir is None:
        raise ApprenticeError(f"data.dir must name the {name} folder (with train/ and val/ inside)")
    return resolve_spec(name, data_dir, image_size=image_size if info.is_folder else None, augment=augment)


def _streamed(spec: DataSpec) -> bool:
    return spec.info.is_folder and not spec.tensor_cache


def eval_batches(name: str, split: str = "test", *, batch_size: int, data_dir: str | None = None,
                 download: bool = False, holdout: int = 0, limit: int | None = None, image_size: int | None = None,
                 workers: int = 0, device: str | torch.device = "cpu", rank: int = 0,
                 world_size: int = 1, spec: DataSpec | None = None) -> Iterable[tuple[Tensor, Tensor]]:
    """Unaugmented, normalised batches of one split, re-iterable (one pass per evaluation).

    Args:
        name: data set, an `apprentice.DATASETS` key.
        split: "test", "holdout", "train" or "val" (folders: ``val/``; "test" is ``test/`` when the
            folder has one, else ``val/``).
        batch_size: images per batch (per process).
        data_dir: folder of the data files (None: the standard place; required for folders).
        download: fetch missing files of a small data set.
        holdout: training images the run set aside (drawn with `HOLDOUT_SEED`).
        limit: the run's training-set limit; applies to the "train" split only.
        image_size: crop size of a folder data set (None: the data set's).
        workers: DataLoader worker processes of a folder data set.
        device: where the batches go.
        rank: this process's share is images ``rank, rank + world_size, ...``.
        world_size: number of processes sharing the split.
        spec: the resolved data set (`resolve_spec`); given, it replaces name, data_dir and image_size.
    """
    device = torch.device(device)
    spec = _spec(spec, name, data_dir, image_size)
    if _streamed(spec):
        images = open_folder(spec, split, train=False)
        loader = torch.utils.data.DataLoader(images, batch_size=batch_size, sampler=list(range(rank, len(images), world_size)),
                                             num_workers=workers, pin_memory=device.type == "cuda")
        return _Reiterable(lambda: _normalized(loader, device, spec.preprocess.mean, spec.preprocess.std))
    if split == "holdout" and holdout <= 0:
        raise ApprenticeError("this run held out no training images (data.holdout=0); use the test or train split")
    if split == "val" and not spec.info.from_files:
        raise ApprenticeError(f"{spec.name} has no 'val' split; use test, holdout or train")
    split_data = load_split(spec, split, download=download, holdout=holdout, seed=HOLDOUT_SEED,
                            limit=limit if split == "train" else None, workers=workers)
    share = split_data.subset(torch.arange(rank, len(split_data), world_size)) if world_size > 1 else split_data
    return TensorLoader(share, batch_size=batch_size, shuffle=False, device=device)


def train_batches(name: str, *, batch_size: int, seed: int, data_dir: str | None = None, download: bool = False,
                  holdout: int = 0, limit: int | None = None, augment: bool = True, image_size: int | None = None,
                  workers: int = 0, device: str | torch.device = "cpu", rank: int = 0,
                  world_size: int = 1, teacher_cache: str | None = None, teacher_hash: str | None = None,
                  spec: DataSpec | None = None) -> TrainSet:
    """This process's shuffled (and augmented) training batches, resumable mid-epoch.

    With ``teacher_cache`` every batch is ``(images, labels, teacher_logits)``: the frozen teacher's
    float32 logits for exactly the view of each image in the batch, read from the cache file
    (memory-mapped; each process reads only its own rows). The cache is checked against this data
    (images, labels, split, normalisation, augmentation) and ``teacher_hash`` first.

    Args:
        name: data set, an `apprentice.DATASETS` key.
        batch_size: the global batch; each of the ``world_size`` processes takes an equal share.
        seed: shuffling and augmentation seed.
        data_dir: folder of the data files (None: the standard place; required for folders).
        download: fetch missing files of a small data set.
        holdout: training images set aside (drawn with `HOLDOUT_SEED`); not for folders.
        limit: keep the first ``limit`` images left after the holdout; not for folders.
        augment: the data set's training augmentation (off: every image as evaluated).
        image_size: crop size of a folder data set (None: the data set's).
        workers: DataLoader worker processes of a folder data set.
        device: where the batches go.
        rank: this process's index.
        world_size: number of processes.
        teacher_cache: a cache file (`build_teacher_cache`, or `build_crop_cache` for streamed folders).
        teacher_hash: `teacher_hash` of the run's teacher; required with ``teacher_cache``.
        spec: the resolved data set (`resolve_spec`); given, it replaces name, data_dir, image_size
            and augment.
    """
    device = torch.device(device)
    if (teacher_cache is None) != (teacher_hash is None):
        raise ApprenticeError("a teacher cache is checked against the run's teacher: give teacher_cache and "
                              "teacher_hash together")
    if batch_size % world_size:
        raise ApprenticeError(f"data.batch_size={batch_size} (the global batch) must be divisible by the "
                              f"{world_size} processes")
    per_rank = batch_size // world_size
    spec = _spec(spec, name, data_dir, image_size, augment)
    if _streamed(spec):
        if holdout or limit:
            raise ApprenticeError(f"data.holdout and data.limit are not supported for {name}; set them to 0 and null")
        if teacher_cache is not None:
            return _cached_folder(spec, teacher_cache, teacher_hash, batch_size=per_rank, workers=workers,
                                  seed=seed, rank=rank, world_size=world_size, device=device)
        folder = open_folder(spec, "train", train=True)
        loader = folder_loader(folder, batch_size=per_rank, workers=workers, shuffle=True, seed=seed, rank=rank,
                               world_size=world_size, drop_last=True)
        return TrainSet(FolderBatches(loader, device=device, seed=seed, mean=spec.preprocess.mean,
                                      std=spec.preprocess.std), spec.num_classes, spec.preprocess.channels, len(folder))
    train = load_split(spec, "train", download=download, holdout=holdout, seed=HOLDOUT_SEED, limit=limit,
                       workers=workers)
    if len(train) < batch_size:
        held = f" after data.holdout={holdout}" if holdout else ""
        limited = f" (data.limit={limit})" if limit is not None and limit <= len(train) else ""
        raise ApprenticeError(f"data.batch_size={batch_size} is larger than the {len(train)} training images{held}"
                              f"{limited}: an epoch would have no step; lower data.batch_size")
    erase = spec.training_erase
    loader = TensorLoader(train, batch_size=per_rank, shuffle=True, augment=spec.augmentation != "none",
                          device=device, seed=seed, drop_last=True, rank=rank, world_size=world_size,
                          keys=teacher_cache is not None, erase=erase)
    if teacher_cache is not None:
        source = tensor_source(train, teacher=teacher_hash, holdout=holdout, limit=limit, views=None, erase=erase)
        loader = CachedBatches(loader, open_teacher_cache(teacher_cache, source))
    return TrainSet(loader, train.num_classes, int(train.images.shape[1]), len(train))


def _crops_only(spec: DataSpec) -> None:
    """A streamed folder's teacher cache stores random-resized crops: the only augmentation it can serve."""
    if spec.augmentation != "random-resized-crop":
        raise ApprenticeError(f"a teacher cache of a streamed image folder stores random-resized crops, but "
                              f"data.augmentation is {spec.augmentation!r}: use random-resized-crop, or decode the "
                              f"folder into tensors (data.tensor_cache=true) for an exact cache of every view")


def _cached_folder(spec: DataSpec, path: str, teacher: str, *, batch_size: int, workers: int, seed: int,
                   rank: int, world_size: int, device: torch.device) -> TrainSet:
    _crops_only(spec)
    folder, pre = open_folder(spec, "train", train=True), spec.preprocess
    cache = open_crop_cache(path, folder_source(folder, teacher=teacher, dataset=spec.name, mean=pre.mean,
                                                std=pre.std))
    loader = crop_loader(folder, cache, batch_size=batch_size, workers=workers, seed=seed, rank=rank,
                         world_size=world_size)
    return TrainSet(FolderBatches(loader, device=device, seed=seed, mean=pre.mean, std=pre.std, cache=cache),
                    spec.num_classes, pre.channels, len(folder))


def cache_teacher(path: str, teacher: torch.nn.Module, name: str, *, data_dir: str | None = None,
                  download: bool = False, holdout: int = 0, limit: int | None = None, image_size: int | None = None,
                  dtype: str = "float16", views: int | None = None, topk: int = 10, seed: int = 0, batch_size: int | None = None,
                  report: Callable[[str], None] | None = None, spec: DataSpec | None = None) -> CacheSource:
    """Build the teacher cache of data set ``name``'s training split as `train_batches` loads it.

    Data sets held as tensors (folders decoded into a tensor cache too) get every view, or ``views``
    of them an image, drawn with ``seed`` (`build_teacher_cache`; ``topk`` unused); streamed image
    folders ``views`` (default 10) random-resized crops an image with the top-``topk`` logits
    (`build_crop_cache`, crops seeded by ``seed``). Resumable, atomic, reports progress.

    Args:
        path: the cache file to write.
        teacher: the trained teacher, in eval mode, on the device to run it on.
        name, data_dir, download, holdout, limit, image_size: the training data, as for `train_batches`.
        dtype: "float16" or "float32" logits.
        views, seed: K views an image (tensors: None = every view; folders: None = 10); topk: folders only.
            Tensors with ``spec.erase``: each view erased as the students' loader erases it (`keyed_erase`).
        batch_size: inputs a teacher forward (None: `CACHE_BATCH` for the teacher's device).
        report: called with progress lines.
        spec: the resolved data set (`resolve_spec`), as the students' runs resolve it.
    """
    spec = _spec(spec, name, data_dir, image_size)
    batch_size = cache_batch(teacher, batch_size)
    if _streamed(spec):
        if holdout or limit:
            raise ApprenticeError(f"data.holdout and data.limit are not supported for {name}; set them to 0 and null")
        _crops_only(spec)
        folder = open_folder(spec, "train", train=True)
        return build_crop_cache(path, teacher, folder, dataset=spec.name, mean=spec.preprocess.mean,
                                std=spec.preprocess.std, views=views or 10, topk=topk, seed=seed, dtype=dtype,
                                batch_size=batch_size, report=report)
    train = load_split(spec, "train", download=download, holdout=holdout, seed=HOLDOUT_SEED, limit=limit)
    return build_teacher_cache(path, teacher, train, holdout=holdout, limit=limit, dtype=dtype, batch_size=batch_size,
                               report=report, views=views, seed=seed, erase=spec.training_erase)
