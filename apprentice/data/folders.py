"""Image folders (ImageNet layout: ``<root>/<split>/<class>/<image>``) decoded by DataLoader workers.

Items are uint8 tensors; batches are normalised on the device (`apprentice.data.tensors.normalize`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from apprentice.data.catalog import DATASETS
from apprentice.data.tensors import check_shard
from apprentice.errors import ApprenticeError

__all__ = ["ImageFolder", "imagenet_loader"]


_IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".webp"}


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise ApprenticeError("ImageNet folders need Pillow: pip install pillow") from None
    return Image


class ImageFolder(torch.utils.data.Dataset):
    """Images in ``root/<split>/<class>/*``, classes in sorted order, decoded with Pillow.

    Training: random-resized crop to ``image_size`` (area ``scale``, aspect ``ratio``) and a random
    horizontal flip; otherwise resize the short side to ``resize`` and centre-crop ``image_size``.
    Items are ``(uint8 tensor 3×S×S, label)``; normalise batches on the device with `normalize`.
    Random draws use torch's RNG, which the DataLoader seeds per worker.
    """

    def __init__(self, root: str | Path, split: str, *, image_size: int = 224, resize: int = 256,
                 train: bool | None = None, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> None:
        folder = Path(root) / split
        if not folder.is_dir():
            raise ApprenticeError(f"ImageNet folder {folder} not found; {DATASETS['imagenet'].hint}")
        self.classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
        self.samples = [(p, label) for label, c in enumerate(self.classes)
                        for p in sorted((folder / c).rglob("*")) if p.suffix.lower() in _IMAGE_SUFFIXES]
        if not self.samples:
            raise ApprenticeError(f"no images in {folder}/<class>/; {DATASETS['imagenet'].hint}")
        self.train = split == "train" if train is None else train
        self.image_size, self.resize, self.scale, self.ratio = image_size, resize, scale, ratio

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
        """Image ``index`` decoded to an RGB Pillow image."""
        with _pil().open(self.samples[index][0]) as im:
            return im.convert("RGB")

    def render(self, im: Any, box: tuple[int, int, int, int], flip: bool) -> Tensor:
        """The crop ``box`` of Pillow image ``im`` resized to ``image_size``, mirrored if ``flip``: uint8 3×S×S."""
        image_mod = _pil()
        im = im.resize((self.image_size, self.image_size), image_mod.BILINEAR, box=box)
        if flip:
            im = im.transpose(image_mod.FLIP_LEFT_RIGHT)
        return torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1).contiguous()

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image_mod = _pil()
        im, label = self.open(index), self.samples[index][1]
        s = self.image_size
        if self.train:
            box = self.crop_box(*im.size)
            return self.render(im, box, torch.rand(()).item() < 0.5), label
        else:
            w, h = im.size
            scale = self.resize / min(w, h)
            w, h = max(s, round(w * scale)), max(s, round(h * scale))
            im = im.resize((w, h), image_mod.BILINEAR)
            im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        return torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1).contiguous(), label


def imagenet_loader(root: str | Path, split: str, *, batch_size: int, workers: int, shuffle: bool,
                    seed: int, rank: int = 0, world_size: int = 1, image_size: int = 224,
                    resize: int = 256) -> torch.utils.data.DataLoader:
    """A DataLoader over `ImageFolder` ``root/<split>`` yielding ``(uint8 B×3×S×S, int64 B)``.

    Each rank reads a disjoint share through a DistributedSampler (also for one rank, so the
    permutation is seeded by ``(seed, epoch)``): call ``loader.sampler.set_epoch(epoch)`` every epoch.
    "train" drops the last partial batch; for "val" with several ranks the sampler pads with repeated
    images (use a plain slice per rank for exact counts). Memory is pinned when CUDA is available.
    Normalise on the device: ``normalize(x.to(device), info.mean, info.std)``, ``info = DATASETS["imagenet"]``.
    """
    if split not in ("train", "val"):
        raise ApprenticeError(f"unknown ImageNet split {split!r}; choose from ['train', 'val']")
    check_shard(rank, world_size)
    dataset = ImageFolder(root, split, image_size=image_size, resize=resize)
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world_size, rank=rank,
                                                  shuffle=shuffle, seed=seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
        pin_memory=torch.cuda.is_available(), drop_last=split == "train",
        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed))
