"""Image folders (``<root>/<split>/<class>/<image>``) decoded by DataLoader workers.

One class serves every folder data set: a user's own images (``data.name=folder``) and ImageNet
(``data.name=imagenet``: the same folder with ImageNet's facts). Its settings: channels (1 or 3),
image size, the evaluation resize, the class list and the training augmentation by name
(`apprentice.data.augment.AUGMENTATIONS`). Items are uint8 tensors; batches are normalised on the
device (`apprentice.data.tensors.normalize`).

Class folders are sorted naturally ("2" before "10"); every split must have the same classes as the
training split (or as an explicit class list), or construction fails naming the missing or extra
class, so a label always means the same class in every split.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from apprentice.data.augment import pad_crop_flip
from apprentice.data.images import (
    IMAGE_SUFFIXES,
    center_tensor,
    class_folders,
    pil,
    read_image,
    to_tensor,
)
from apprentice.data.tensors import check_shard
from apprentice.errors import ApprenticeError

__all__ = ["ImageFolder", "check_classes", "folder_loader", "imagenet_loader", "probe_image", "worker_safe"]

# Kept for code that imported it from here.
_pil = pil

# Pillow modes of single-channel images (greyscale, 1-bit, 16/32-bit integer, float, grey + alpha).
_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


def check_classes(found: list[str], expected: list[str], where: str, reference: str) -> None:
    """Fail with one line naming the classes ``where`` lacks or has beyond ``reference``'s."""
    missing = [c for c in expected if c not in set(found)]
    extra = [c for c in found if c not in set(expected)]
    if missing or extra:
        parts = ([f"missing {', '.join(map(repr, missing))}"] if missing else []) + (
            [f"extra {', '.join(map(repr, extra))}"] if extra else [])
        raise ApprenticeError(f"{where} does not have the classes of {reference}: {'; '.join(parts)} "
                              f"(every split needs the same class folders)")


def probe_image(path: str | Path) -> tuple[int, int]:
    """``(channels, shorter side)`` of an image file, read from its header: 1 for greyscale modes, else 3."""
    try:
        with pil().open(path) as im:
            return (1 if im.mode in _GREY_MODES else 3), min(im.size)
    except (OSError, ValueError, SyntaxError) as e:
        raise ApprenticeError(f"cannot read image {str(path)!r}: {' '.join(str(e).split())}") from None


class ImageFolder(torch.utils.data.Dataset):
    """Images in ``root/<split>/<class>/*``, decoded with Pillow to ``channels``.

    Training items (``train``): the named ``augmentation`` — ``random-resized-crop`` (area
    ``scale``, aspect ``ratio``, resized to ``image_size``, mirrored if ``flip``), ``pad-crop-flip``
    (the evaluation view, zero-padded by ``pad``, randomly cropped back, mirrored if ``flip``) or
    ``none``. Otherwise the evaluation view: shorter side resized to ``resize``, centre
    ``image_size`` crop. Items are ``(uint8 tensor C×S×S, label)``; random draws use torch's RNG,
    which the DataLoader seeds per worker.

    Args:
        root: the data set folder.
        split: its sub-folder ("train", "val", "test").
        classes: the class names in label order; None: the split's class folders, naturally sorted.
            Given, the split's folders must be exactly these (one error names the difference).
    """

    def __init__(self, root: str | Path, split: str, *, image_size: int = 224, resize: int = 256,
                 train: bool | None = None, channels: int = 3, classes: list[str] | tuple[str, ...] | None = None,
                 augmentation: str = "random-resized-crop", pad: int = 0, flip: bool = True,
                 scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> None:
        folder = Path(root) / split
        if not folder.is_dir():
            raise ApprenticeError(f"image folder {str(folder)!r} not found; data.dir must hold train/<class>/<image> "
                                  f"and val/<class>/<image>")
        found = class_folders(folder)
        if classes is not None:
            check_classes(found, list(classes), f"{split}/ of {str(root)!r}", "the run (data.classes)")
        self.root, self.split, self.classes = Path(root), split, list(classes) if classes is not None else found
        self.samples = [(p, label) for label, c in enumerate(self.classes) for p in _images(folder / c)]
        if not self.samples:
            raise ApprenticeError(f"no images in {folder!s}/<class>/ (looked for {', '.join(IMAGE_SUFFIXES)})")
        empty = sorted(set(self.classes) - {self.classes[label] for _, label in self.samples})
        if empty:
            raise ApprenticeError(f"class folder(s) {', '.join(repr(c) for c in empty)} of {str(folder)!r} hold no images")
        self.train = split == "train" if train is None else train
        self.image_size, self.resize, self.scale, self.ratio = image_size, resize, scale, ratio
        self.channels, self.augmentation, self.pad, self.flip = channels, augmentation, pad, flip

    def __len__(self) -> int:
        return len(self.samples)

    def crop_box(self, w: int, h: int, generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
        """A random-resized crop ``(left, top, right, bottom)`` of a ``w``×``h`` image (torch's global RNG
        unless ``generator``)."""
        area, g = w * h, generator
        for _ in range(10):
            target = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * torch.rand((), generator=g).item())
            log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
            aspect = math.exp(log_lo + (log_hi - log_lo) * torch.rand((), generator=g).item())
            cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < cw <= w and 0 < ch <= h:
                x = int(torch.randint(w - cw + 1, (), generator=g).item())
                y = int(torch.randint(h - ch + 1, (), generator=g).item())
                return x, y, x + cw, y + ch
        # Fallback (as in fb.resnet.torch / torchvision): centre crop with the aspect clamped to ratio.
        aspect = min(max(w / h, self.ratio[0]), self.ratio[1])
        cw, ch = (w, round(w / aspect)) if w / h < aspect else (round(h * aspect), h)
        cw, ch = min(cw, w), min(ch, h)
        return (w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch

    def open(self, index: int) -> Any:
        """Image ``index`` decoded and converted to the folder's channels (a Pillow image)."""
        return read_image(self.samples[index][0], self.channels)

    def render(self, im: Any, box: tuple[int, int, int, int], flip: bool) -> Tensor:
        """The crop ``box`` of Pillow image ``im`` resized to ``image_size``, mirrored if ``flip``: uint8 C×S×S."""
        image_mod = pil()
        im = im.resize((self.image_size, self.image_size), image_mod.BILINEAR, box=box)
        if flip:
            im = im.transpose(image_mod.FLIP_LEFT_RIGHT)
        return to_tensor(im)

    def view(self, im: Any) -> Tensor:
        """The evaluation view of a decoded image (`apprentice.data.images.center_tensor`)."""
        return center_tensor(im, size=self.image_size, resize=self.resize)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        im, label = self.open(index), self.samples[index][1]
        if not self.train or self.augmentation == "none":
            return self.view(im), label
        if self.augmentation == "random-resized-crop":
            box = self.crop_box(*im.size)
            return self.render(im, box, self.flip and torch.rand(()).item() < 0.5), label
        return pad_crop_flip(self.view(im), pad=self.pad, flip=self.flip), label


def _images(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]


def worker_safe(loader: Iterable[Any]) -> Iterator[Any]:
    """Iterate a DataLoader; an ApprenticeError raised in a worker process (an unreadable image) comes
    back as its own one line, not as the worker's traceback that torch wraps it in."""
    try:
        yield from loader
    except ApprenticeError as e:
        text = str(e)
        if "\nOriginal Traceback" not in text:
            raise
        raise ApprenticeError(text.strip().splitlines()[-1].split("ApprenticeError: ", 1)[-1]) from None


def folder_loader(dataset: ImageFolder, *, batch_size: int, workers: int, shuffle: bool, seed: int, rank: int = 0,
                  world_size: int = 1, drop_last: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader over ``dataset`` yielding ``(uint8 B×C×S×S, int64 B)``.

    Each rank reads a disjoint share through a DistributedSampler (also for one rank, so the
    permutation is seeded by ``(seed, epoch)``): call ``loader.sampler.set_epoch(epoch)`` every epoch.
    With several ranks and no ``drop_last`` the sampler pads with repeated images (use a plain slice
    per rank for exact counts). Memory is pinned when CUDA is available.
    """
    check_shard(rank, world_size)
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world_size, rank=rank,
                                                  shuffle=shuffle, seed=seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
        pin_memory=torch.cuda.is_available(), drop_last=drop_last,
        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed))


def imagenet_loader(root: str | Path, split: str, *, batch_size: int, workers: int, shuffle: bool,
                    seed: int, rank: int = 0, world_size: int = 1, image_size: int = 224,
                    resize: int = 256) -> torch.utils.data.DataLoader:
    """`folder_loader` over the ImageNet-style folder ``root/<split>`` (RGB, random-resized crops when
    training). "train" drops the last partial batch. Normalise on the device:
    ``normalize(x.to(device), info.mean, info.std)``, ``info = DATASETS["imagenet"]``."""
    if split not in ("train", "val"):
        raise ApprenticeError(f"unknown ImageNet split {split!r}; choose from ['train', 'val']")
    dataset = ImageFolder(root, split, image_size=image_size, resize=resize)
    return folder_loader(dataset, batch_size=batch_size, workers=workers, shuffle=shuffle, seed=seed, rank=rank,
                         world_size=world_size, drop_last=split == "train")
