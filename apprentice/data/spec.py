"""What a data set's images are and how they are prepared: `DataSpec`, resolved once per run.

`resolve_spec` fills every fact a run needs from three places, in this order: the ``data.*``
settings a user gave, the data set's `DATASETS` row, and the files themselves. For your own
folders and arrays the files decide what nobody said:

- classes: the class folders of ``train/``, naturally sorted ("2" before "10"), or the ``classes``
  array of ``train.npz``; ``val/`` and ``test/`` must have exactly the same class folders.
- channels: 1 if the first training image is greyscale, else 3 (folders); the array's (npz).
- image size: the first training image's shorter side (folders); the array's (npz).
- mean and std: computed from the training images (`apprentice.data.normalise.channel_stats`): all
  of them when the folder is decoded into a tensor cache or held as arrays, an evenly spread
  sample of `STATS_SAMPLE` images when a large folder is streamed.
- augmentation: the row's (pad-crop-flip with flips; ImageNet random-resized-crop), pad
  ``image_size // 8`` for pad-crop-flip on your own images.
- tensor cache: on when the augmentation runs on tensors and the decoded training images fit in
  `apprentice.data.folder_cache.AUTO_CACHE_BYTES`.

`apprentice.run.build` writes the resolved facts of a folder or npz data set into the run's config, so
evaluation, export and ``apprentice predict`` reuse them exactly and never recompute them.
`load_split` turns a spec into a `TensorData` for every data set held as tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from apprentice.data.arrays import load_npz
from apprentice.data.augment import AUGMENTATIONS, eval_resize
from apprentice.data.catalog import DATASETS, FOLDER_SPLITS, DatasetInfo
from apprentice.data.folder_cache import AUTO_CACHE_BYTES, folder_tensors
from apprentice.data.folders import ImageFolder, check_classes, probe_image
from apprentice.data.images import class_folders
from apprentice.data.normalise import channel_stats
from apprentice.data.preprocess import Preprocess
from apprentice.data.tensors import TensorData, load_tensors, take_split
from apprentice.errors import ApprenticeError, lookup

__all__ = ["STATS_SAMPLE", "DataSpec", "folder_split", "load_split", "open_folder", "resolve_spec"]

#: Images decoded to compute the mean and std of a streamed folder (spread evenly over it).
STATS_SAMPLE = 2000


@dataclass(frozen=True)
class DataSpec:
    """Every fact about a data set a run needs, resolved (`resolve_spec`).

    Attributes:
        name, dir: the `DATASETS` key (`info`: its row, kind included) and the data folder (None: the
            standard place).
        preprocess: what the model sees (channels, image size), how an image file is resized and
            cropped to it, the normalisation and the class names in label order.
        augmentation: the training augmentation in effect (an `AUGMENTATIONS` key; "none" when off).
        pad, flip: its settings.
        tensor_cache: the training images are held as tensors (always, but for streamed folders).
        erase: the probability of random erasing after the augmentation (0: off; tensors only).
    """

    name: str
    dir: str | None
    preprocess: Preprocess
    augmentation: str
    pad: int
    flip: bool
    tensor_cache: bool
    erase: float = 0.0

    @property
    def num_classes(self) -> int:
        return len(self.preprocess.classes)

    @property
    def training_erase(self) -> float:
        """The random erasing training applies: ``erase``, or 0 with the augmentation off."""
        return self.erase if self.augmentation != "none" else 0.0

    @property
    def info(self) -> DatasetInfo:
        """The data set's `DATASETS` row: its kind (`DatasetInfo.is_folder`, ...) and table facts."""
        return DATASETS[self.name]


def folder_split(root: str | Path, split: str) -> str:
    """The sub-folder of a split: "test" is ``test/`` when the folder has one, else ``val/``."""
    sub = lookup({s: s for s in FOLDER_SPLITS}, split, "image-folder split")
    return "val" if sub == "test" and not (Path(root) / "test").is_dir() else sub


def open_folder(spec: DataSpec, split: str, *, train: bool) -> ImageFolder:
    """The `ImageFolder` of ``split`` with the spec's settings (its classes required in that split)."""
    if spec.dir is None:
        raise ApprenticeError(f"data.dir must name the {spec.name} folder (with train/ and val/ inside)")
    pre = spec.preprocess
    return ImageFolder(spec.dir, folder_split(spec.dir, split), image_size=pre.image_size, resize=pre.resize,
                       train=train, channels=pre.channels, classes=pre.classes, augmentation=spec.augmentation,
                       pad=spec.pad, flip=spec.flip)


def resolve_spec(name: str, data_dir: str | None = None, *, channels: int | None = None,
                 image_size: int | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, classes: Sequence[str] | None = None,
                 augmentation: str | None = None, pad: int | None = None, flip: bool | None = None,
                 augment: bool = True, tensor_cache: bool | None = None, erase: float = 0.0, workers: int = 0,
                 prepare: bool = True, report: Callable[[str], None] | None = None) -> DataSpec:
    """Resolve the facts of data set ``name`` (see the module docstring); None means "the default".

    Tensor data sets (Fashion-MNIST, CIFAR, ...) take their channels, size and classes from the
    table and ignore those arguments. A folder is scanned (and, when cached, decoded once: an
    unreadable image fails here, naming the file, before any run folder exists).

    ``prepare``: decode a folder's tensor cache now (else when `load_split` first needs it).

    Raises:
        ApprenticeError: a missing folder, classes that differ between splits or from ``classes``,
            mean/std of the wrong length, an augmentation that needs image files with a tensor cache.
    """
    info = lookup(DATASETS, name, "data set")
    given = {"channels": channels, "image_size": image_size, "mean": mean, "std": std, "classes": classes,
             "augmentation": augmentation, "pad": pad, "flip": flip, "augment": augment,
             "tensor_cache": tensor_cache, "erase": erase}
    if info.is_folder:
        return _folder_spec(name, info, data_dir, given, workers, report, prepare)
    if info.is_npz:
        return _npz_spec(name, info, data_dir, given)
    classes = info.classes or tuple(str(i) for i in range(info.num_classes))
    return _finish(name, info, data_dir, given, info.channels, info.image_size, classes, True, lambda: ((), ()))


def _finish(name: str, info: DatasetInfo, data_dir: str | None, given: dict[str, Any], channels: int, size: int,
            classes: tuple[str, ...], cached: bool, stats: Callable[[], tuple[tuple[float, ...], tuple[float, ...]]]
            ) -> DataSpec:
    """The spec from the resolved shape and classes: augmentation, pad, flip, resize and normalisation."""
    named = given["augmentation"] or info.augmentation
    row = lookup(AUGMENTATIONS, named, "augmentation")
    if not row.on_tensors and not info.is_folder:
        raise ApprenticeError(f"data.augmentation={named!r} needs image files; {name} is held as tensors "
                              f"(choose from {[k for k, v in AUGMENTATIONS.items() if v.on_tensors]})")
    if cached and not row.on_tensors and info.is_folder:
        raise ApprenticeError(f"data.tensor_cache=true: {named!r} crops the original image files, which a tensor "
                              f"cache does not keep; set data.augmentation=pad-crop-flip or none, or data.tensor_cache=false")
    # your own images: pad in proportion to their size (CIFAR: 4 of 32)
    pad = given["pad"] if given["pad"] is not None else (max(1, size // 8) if info.from_files else info.pad)
    flip = given["flip"] if given["flip"] is not None else info.flip
    mean, std = given["mean"], given["std"]
    if info.mean:  # the data set's table states them
        mean, std = mean if mean is not None else info.mean, std if std is not None else info.std
    if mean is None or std is None:
        computed = stats()
        mean, std = mean if mean is not None else computed[0], std if std is not None else computed[1]
    for key, values in (("data.mean", mean), ("data.std", std)):
        if len(values) != channels:
            raise ApprenticeError(f"{key} has {len(values)} values but the images have {channels} channel(s)")
    pre = Preprocess(channels, size, eval_resize(named, size), tuple(mean), tuple(std), tuple(classes))
    if given["erase"] and not (row.on_tensors and cached):
        raise ApprenticeError(f"data.erase={given['erase']} erases on tensors; {named!r} on a streamed folder "
                              f"cannot: set data.erase=0, or decode the folder (data.tensor_cache=true)")
    return DataSpec(name, data_dir, pre, named if given["augment"] else "none", pad, flip, cached,
                    float(given["erase"]))


def _folder_spec(name: str, info: DatasetInfo, data_dir: str | None, given: dict[str, Any], workers: int,
                 report: Callable[[str], None] | None, prepare: bool) -> DataSpec:
    if data_dir is None:
        raise ApprenticeError(f"data.dir must name the {name} folder (with train/ and val/ inside); {info.hint}")
    if not Path(data_dir).is_dir():
        raise ApprenticeError(f"data folder {data_dir!r} (data.dir) does not exist; {info.hint}")
    train = ImageFolder(data_dir, "train", classes=given["classes"], train=False)
    for split in ("val", "test"):
        if split == "val" or (Path(data_dir) / split).is_dir():
            check_classes(class_folders(Path(data_dir) / split), train.classes, f"{split}/ of {data_dir!r}", "train/")
    first_channels, first_side = probe_image(train.samples[0][0])
    channels = given["channels"] or info.channels or first_channels
    size = given["image_size"] or info.image_size or first_side
    named = given["augmentation"] or info.augmentation
    cached = given["tensor_cache"]
    if cached is None:
        cached = AUGMENTATIONS[named].on_tensors and len(train) * channels * size * size <= AUTO_CACHE_BYTES
    folder = ImageFolder(data_dir, "train", image_size=size, resize=eval_resize(named, size), train=False,
                         channels=channels, classes=train.classes)

    def stats() -> tuple[tuple[float, ...], tuple[float, ...]]:
        if cached:
            return channel_stats(folder_tensors(folder, workers=workers, report=report)[0])
        step = max(1, len(folder) // STATS_SAMPLE)
        views = [folder.view(folder.open(i)) for i in range(0, len(folder), step)[:STATS_SAMPLE]]
        return channel_stats(torch.stack(views))

    spec = _finish(name, info, data_dir, given, channels, size, tuple(train.classes), cached, stats)
    if cached and prepare:  # decode (or check) the cache now: an unreadable image fails before the run starts
        folder_tensors(folder, workers=workers, report=report)
    return spec


def _npz_spec(name: str, info: DatasetInfo, data_dir: str | None, given: dict[str, Any]) -> DataSpec:
    images, labels, names = load_npz(data_dir, "train")
    if images.shape[-1] != images.shape[-2]:
        raise ApprenticeError(f"train.npz holds {images.shape[-2]}×{images.shape[-1]} images; apprentice trains on "
                              f"square images (crop or pad them)")
    for key, have in (("channels", int(images.shape[1])), ("image_size", int(images.shape[-1]))):
        if given[key] not in (None, have):
            raise ApprenticeError(f"data.{key}={given[key]} but train.npz holds images of {key.replace('_', ' ')} {have} "
                                  f"(arrays are not converted; set null)")
    classes = _npz_classes(given["classes"], names, labels)
    return _finish(name, info, data_dir, given, int(images.shape[1]), int(images.shape[-1]), classes, True,
                   lambda: channel_stats(images))


def _npz_classes(given: Sequence[str] | None, stored: tuple[str, ...] | None, labels: torch.Tensor) -> tuple[str, ...]:
    if given is not None and stored is not None and tuple(given) != stored:
        raise ApprenticeError(f"data.classes {list(given)} differ from the 'classes' array of train.npz {list(stored)}")
    classes = tuple(given or stored or (str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0)))
    if len(labels) and int(labels.max()) >= len(classes):
        raise ApprenticeError(f"train.npz has label {int(labels.max())} but only {len(classes)} classes")
    return classes


def load_split(spec: DataSpec, split: str, *, download: bool = False, holdout: int = 0, seed: int = 0,
               limit: int | None = None, workers: int = 0, report: Callable[[str], None] | None = None) -> TensorData:
    """One split of a data set held as tensors, with the spec's normalisation and augmentation settings.

    Args:
        spec: the resolved data set (not a streamed folder).
        split: "train", "test", "val" or "holdout" (as `apprentice.data.tensors.load_tensors`; "val" and
            "test" of a folder are its ``val/`` and ``test/``, "test" falling back to ``val/``).
        download, holdout, seed, limit: as `load_tensors`.
        workers: processes decoding a folder the first time.
        report: called with a line when a folder is decoded.
    """
    if spec.info.is_folder:
        if not spec.tensor_cache:
            raise ApprenticeError(f"{spec.name} is streamed from its files (data.tensor_cache=false), not held as tensors")
        images, labels = folder_tensors(open_folder(spec, split, train=False), workers=workers, report=report)
        data = TensorData(images, labels, spec.num_classes, spec.preprocess.mean, spec.preprocess.std, spec.name,
                          spec.pad, spec.flip)
    elif spec.info.is_npz:
        data = _npz_split(spec, split)
    else:
        data = load_tensors(spec.name, split, data_dir=spec.dir, download=download, holdout=holdout, seed=seed,
                            limit=limit)
        return replace(data, mean=spec.preprocess.mean, std=spec.preprocess.std, pad=spec.pad, flip=spec.flip)
    return _holdout_and_limit(data, split, holdout, seed, limit)


def _npz_split(spec: DataSpec, split: str) -> TensorData:
    images, labels, names = load_npz(spec.dir, "train" if split == "holdout" else split)
    pre = spec.preprocess
    if names is not None and names != pre.classes:
        raise ApprenticeError(f"the 'classes' of the {split} .npz file differ from the run's: {list(names)} vs "
                              f"{list(pre.classes)}")
    if tuple(images.shape[1:]) != (pre.channels, pre.image_size, pre.image_size):
        raise ApprenticeError(f"the {split} .npz images are {tuple(images.shape[1:])}, the training images "
                              f"{(pre.channels, pre.image_size, pre.image_size)}")
    if len(labels) and int(labels.max()) >= spec.num_classes:
        raise ApprenticeError(f"the {split} .npz file has label {int(labels.max())} but only {spec.num_classes} classes")
    return TensorData(images, labels, spec.num_classes, pre.mean, pre.std, spec.name, spec.pad, spec.flip)


def _holdout_and_limit(data: TensorData, split: str, holdout: int, seed: int, limit: int | None) -> TensorData:
    if split == "holdout" and holdout <= 0:
        raise ApprenticeError("split 'holdout' needs holdout > 0 (training images to set aside)")
    return take_split(data, "test" if split in ("test", "val") else split, holdout, seed, limit)
