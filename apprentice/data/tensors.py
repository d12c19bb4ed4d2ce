"""Small data sets as tensors: loading a split into memory, normalisation, and `TensorLoader`, which
keeps the set on the device as one uint8 tensor and augments whole batches with tensor ops (the
airbench way: no per-image Python work).

Normalisation is always ``(x / 255 - mean) / std`` per channel on the device (`normalize`), for the
tensor path and for image-folder batches alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from apprentice.data.augment import keyed_erase, random_erase
from apprentice.data.catalog import DATASETS, TENSOR_SPLITS
from apprentice.data.files import load_cifar, load_idx
from apprentice.errors import ApprenticeError, lookup

__all__ = ["Batch", "TensorData", "TensorLoader", "apply_views", "augment_batch", "center_views", "draw_views",
           "load_tensors", "normalize", "synthetic", "take_split", "view_count", "view_ids", "view_params"]


@dataclass(frozen=True, eq=False)
class TensorData:
    """A small data set held in memory: uint8 images N×C×H×W, int64 labels N, and the facts the
    loader needs (normalisation and training augmentation)."""

    images: Tensor
    labels: Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    pad: int = 0
    flip: bool = False

    def __post_init__(self) -> None:
        im, lab, what = self.images, self.labels, f"TensorData {self.name!r}"
        if im.dtype != torch.uint8 or im.dim() != 4:
            raise ApprenticeError(f"{what}: images must be uint8 N×C×H×W, got {im.dtype} {tuple(im.shape)}")
        if lab.dtype != torch.int64 or lab.shape != (im.shape[0],):
            raise ApprenticeError(f"{what}: labels must be int64 of shape ({im.shape[0]},), "
                                  f"got {lab.dtype} {tuple(lab.shape)}")
        if len(self.mean) != im.shape[1] or len(self.std) != im.shape[1]:
            raise ApprenticeError(f"{what}: mean/std need {im.shape[1]} values, got {self.mean}/{self.std}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: Tensor) -> TensorData:
        """The images at ``index`` (int64 indices), same facts."""
        return replace(self, images=self.images[index], labels=self.labels[index])


def normalize(images: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> Tensor:
    """Float32 ``(images / 255 - mean) / std`` per channel, on the images' device.

    Example:
        >>> normalize(torch.tensor([[[[0, 255]]]], dtype=torch.uint8), [0.5], [0.5])
        tensor([[[[-1.,  1.]]]])
    """
    mean = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return images.float().sub_(mean * 255).div_(std * 255)  # in place: one float batch allocated


def load_tensors(name: str, split: str, *, data_dir: str | None = None, download: bool = True,
                 holdout: int = 0, seed: int = 0, limit: int | None = None) -> TensorData:
    """Load a small data set (fashion_mnist, mnist, cifar10, cifar100, synthetic) into memory.

    Files are searched in ``data_dir`` (and ``data_dir/<subdir>``), the distribution package folder,
    then `cache_dir`; if absent and ``download`` is true they are fetched into the cache with
    checksum verification. Every file is validated (headers, sizes, label range).

    Args:
        name: key of `DATASETS`.
        split: "train", "test", or "holdout" (needs ``holdout > 0``).
        data_dir: a folder to look in first.
        download: fetch missing files from the official mirrors.
        holdout: number of training images set aside by a permutation seeded with ``seed``;
            "train" is the rest (in file order), "holdout" exactly those images (in file order).
        seed: seed of the holdout permutation.
        limit: keep only the first ``limit`` images (after the holdout split), for quick runs.

    Returns:
        The `TensorData` of that split.
    """
    info = lookup(DATASETS, name, "dataset")
    if split not in TENSOR_SPLITS:
        raise ApprenticeError(f"unknown split {split!r}; choose from {sorted(TENSOR_SPLITS)}")
    if split == "holdout" and holdout <= 0:
        raise ApprenticeError("split 'holdout' needs holdout > 0 (training images to set aside)")
    if limit is not None and limit <= 0:
        raise ApprenticeError(f"limit must be a positive number of images, got {limit}")
    base = "test" if split == "test" else "train"
    if info.kind == "idx":
        images, labels = load_idx(name, info, base, data_dir, download)
    elif info.kind == "cifar":
        images, labels = load_cifar(name, info, base, data_dir, download)
    elif info.kind == "synthetic":
        return take_split(synthetic(info.sizes[base == "test"], split=base), split, holdout, seed, limit)
    else:
        raise ApprenticeError(f"dataset {name!r} is not a file set load_tensors reads: use apprentice.data.load_split"
                              f"(resolve_spec({name!r}, data_dir), split), or imagenet_loader to stream a folder")
    data = TensorData(images, labels, info.num_classes, info.mean, info.std, name, info.pad, info.flip)
    return take_split(data, split, holdout, seed, limit)


def take_split(data: TensorData, split: str, holdout: int, seed: int, limit: int | None) -> TensorData:
    """The ``split`` share of a loaded training (or test) set: ``holdout`` images set aside by a
    permutation seeded with ``seed`` ("holdout": those, "train": the rest), then the first ``limit``."""
    if holdout > 0 and split != "test":
        if holdout >= len(data):
            raise ApprenticeError(f"holdout {holdout} must be smaller than the {len(data)} training images")
        perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
        keep = perm[:holdout] if split == "holdout" else perm[holdout:]
        data = data.subset(keep.sort().values)
    return data.subset(torch.arange(min(limit, len(data)))) if limit is not None else data


def synthetic(n: int = 2048, *, channels: int = 1, image_size: int = 16, num_classes: int = 10,
              seed: int = 0, split: str = "train", noise: float = 3.0) -> TensorData:
    """A deterministic labelled set with no files: each class is a smooth random pattern (fixed by
    ``seed``), each image its class pattern plus Gaussian noise (drawn from ``seed`` and ``split``,
    so train and test share the patterns but not the images). With the default noise a tiny CNN
    reaches about 50 % test accuracy after 10 Adam steps and over 90 % after 30 (chance 10 %).

    Args:
        n: number of images.
        channels, image_size, num_classes: shape of the set.
        seed: fixes the class patterns and the images.
        split: "train" or "test" (different images, same patterns).
        noise: noise standard deviation relative to the pattern's (1); pixel std stays about 0.25.
    """
    if split not in ("train", "test"):
        raise ApprenticeError(f"unknown synthetic split {split!r}; choose from ['test', 'train']")
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(num_classes, channels, 4, 4, generator=g)
    patterns = torch.nn.functional.interpolate(coarse, size=image_size, mode="bilinear", align_corners=False)
    patterns = (patterns - patterns.mean((1, 2, 3), keepdim=True)) / patterns.std((1, 2, 3), keepdim=True)
    g = torch.Generator().manual_seed(mix_seeds(seed, 2, split == "test"))
    labels = torch.randint(num_classes, (n,), generator=g)
    x = patterns[labels] + noise * torch.randn(n, channels, image_size, image_size, generator=g)
    images = (127.5 + 64 / math.sqrt(1 + noise**2) * x).round().clamp(0, 255).to(torch.uint8)  # std ≈ 0.25
    info = DATASETS["synthetic"]
    return TensorData(images, labels, num_classes, (0.5,) * channels, (0.25,) * channels, "synthetic",
                      info.pad, info.flip)


def mix_seeds(*keys: int) -> int:
    """One 63-bit seed from several integers, well mixed (neighbouring epochs get unrelated streams)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> 1)


def check_shard(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ApprenticeError(f"rank {rank} / world_size {world_size}: need 0 <= rank < world_size")


def view_count(pad: int, flip: bool) -> int:
    """How many views `augment_batch` can give an image: ``(2·pad + 1)² · (2 if flip else 1)``
    (Fashion-MNIST, pad 2 with flips: 50; CIFAR, pad 4 with flips: 162)."""
    return (2 * pad + 1) ** 2 * (2 if flip else 1)


def view_ids(dy: Tensor, dx: Tensor, flipped: Tensor, *, pad: int, flip: bool) -> Tensor:
    """The integer id of each view: ``(dy·(2·pad + 1) + dx)·F + flipped`` with F = 2 with flips, else 1.

    ``dy``, ``dx`` are the crop's offsets into the zero-padded image (0..2·pad; ``pad`` is the
    unshifted image); ``flipped`` says the crop was mirrored. Ids run over 0..`view_count` − 1.

    Example:
        >>> view_ids(torch.tensor([2]), torch.tensor([2]), torch.tensor([True]), pad=2, flip=True)
        tensor([25])
    """
    f = 2 if flip else 1
    return (dy.long() * (2 * pad + 1) + dx.long()) * f + flipped.long()


def view_params(views: Tensor, *, pad: int, flip: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(dy, dx, flipped)`` of each view id; the inverse of `view_ids`."""
    views = torch.as_tensor(views).long()
    if views.numel() and not bool(((views >= 0) & (views < view_count(pad, flip))).all()):
        raise ApprenticeError(f"view ids must lie in 0..{view_count(pad, flip) - 1} (pad {pad}, flip {flip})")
    f = 2 if flip else 1
    offset = views // f
    return offset // (2 * pad + 1), offset % (2 * pad + 1), (views % f).bool()


def center_views(n: int, *, pad: int, flip: bool) -> Tensor:
    """The id of the unaugmented view (no shift, no flip), ``n`` times: what an unaugmented batch shows."""
    p = torch.full((n,), pad, dtype=torch.long)
    return view_ids(p, p, torch.zeros(n, dtype=torch.bool), pad=pad, flip=flip)


def draw_views(n: int, *, pad: int, flip: bool, generator: torch.Generator) -> Tensor:
    """The views `augment_batch` draws for ``n`` images from ``generator`` (CPU int64 ids).

    The draws are those `augment_batch` has always made, in the same order: the offsets
    ``randint(2·pad + 1, (2, n))`` (only if ``pad``), then ``rand(n) < 0.5`` for the flips (only if
    ``flip``); so a run that reports its views sees exactly the images it saw before.
    """
    if pad > 0:
        dy, dx = torch.randint(2 * pad + 1, (2, n), generator=generator)
    else:
        dy = dx = torch.zeros(n, dtype=torch.long)
    flipped = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return view_ids(dy, dx, flipped, pad=pad, flip=flip)


def apply_views(images: Tensor, views: Tensor, *, pad: int, flip: bool) -> Tensor:
    """Each uint8 image cropped after zero padding by ``pad`` at its view's offset, then mirrored if the
    view says so (one gather for the whole batch, no loop over images)."""
    b, c, h, w = images.shape
    dy, dx, flipped = (t.to(images.device) for t in view_params(views, pad=pad, flip=flip))
    if pad > 0:
        padded = torch.nn.functional.pad(images, (pad, pad, pad, pad)).view(b, c, -1)
        rows = dy[:, None] + torch.arange(h, device=images.device)  # B×H rows of the padded image
        cols = dx[:, None] + torch.arange(w, device=images.device)  # B×W
        flat = (rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]).view(b, 1, h * w)
        images = padded.gather(2, flat.expand(b, c, h * w)).view(b, c, h, w)
    if flip:
        images = torch.where(flipped[:, None, None, None], images.flip(3), images)
    return images.contiguous()


def augment_batch(images: Tensor, *, pad: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Random crop after zero padding by ``pad`` pixels and random horizontal flip, for a whole uint8
    batch at once (one gather, no loop over images). Random draws come from the CPU ``generator``
    so results do not depend on the device. The same as
    ``apply_views(images, draw_views(len(images), ...))``; the loader uses those two to report views."""
    views = draw_views(images.shape[0], pad=pad, flip=flip, generator=generator)
    return apply_views(images, views, pad=pad, flip=flip)


class Batch(NamedTuple):
    """A training batch that says where each sample came from (`TensorLoader` with ``keys=True``).

    Attributes:
        images: normalised float images B×C×H×W on the loader's device.
        labels: int64 labels B on the loader's device.
        index: int64 B (CPU), each sample's index in the loader's `TensorData`.
        view: int64 B (CPU), each sample's view id (`view_ids`; the centre view when not augmenting).
    """

    images: Tensor
    labels: Tensor
    index: Tensor
    view: Tensor


class TensorLoader:
    """Batches of a `TensorData` kept whole on ``device``; yields ``(normalised float images, labels)``.

    The loader is a position ``(epoch, step)`` in a reproducible stream of epochs. Epoch ``e`` is
    the permutation seeded by ``(seed, e)`` (or file order without ``shuffle``), cut into equal
    shares for ``world_size`` ranks (``drop_last``: trim to a multiple of world_size, shares
    disjoint; otherwise pad with the first indices like DistributedSampler). Batch ``s``'s
    augmentation is seeded by ``(seed, e, s, rank)``, so any batch can be rebuilt alone.

    Iterating yields batches ``step, step+1, ...`` of the current epoch; ``step`` counts batches
    handed out (saved before each batch is yielded). When the epoch's batches are used up the next
    request moves the position to ``(epoch + 1, 0)``. ``state_dict()`` is ``{"epoch", "step"}``;
    after ``load_state_dict`` iteration continues with exactly the batches (and augmentations) that
    would have followed. ``set_epoch(e)`` moves to the start of epoch ``e`` unless the loader is
    already in epoch ``e``, so ``for e in range(start, E): loader.set_epoch(e); for b in loader: ...``
    works both fresh and after ``load_state_dict``. Use one iterator at a time.

    Args:
        data: the images; ``data.pad`` and ``data.flip`` say how to augment.
        batch_size: images per batch on this rank.
        shuffle: permute every epoch (else file order).
        augment: random crop after zero padding (``data.pad``) and flips (``data.flip``).
        erase: with ``augment``, the probability of random erasing (`random_erase`) after them; its
            draws have their own seed, so the crops and flips are those of a run without it. With
            ``keys`` the erasing is `keyed_erase`: a fixed function of each sample's (index, view), the
            erased view a teacher cache built with the same probability holds.
        device: where the uint8 set and the batches live (e.g. "cuda").
        seed: seeds the permutations and the augmentation.
        drop_last: drop the last partial batch (and trim, rather than pad, the rank shares).
        rank, world_size: this process's share of each epoch.
        keys: yield a `Batch` ``(images, labels, index, view)`` instead of ``(images, labels)``:
            each sample's index in ``data`` and its view id (`view_ids`), what a teacher cache is
            keyed by. The images and the random draws are the same either way (random erasing aside:
            keyed, see ``erase``).
    """

    def __init__(self, data: TensorData, *, batch_size: int, shuffle: bool = True, augment: bool = False,
                 device: str | torch.device = "cpu", seed: int = 0, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1, keys: bool = False, erase: float = 0.0) -> None:
        if batch_size < 1:
            raise ApprenticeError(f"batch_size must be >= 1, got {batch_size}")
        check_shard(rank, world_size)
        self.data, self.batch_size, self.shuffle, self.augment = data, batch_size, shuffle, augment
        self.seed, self.drop_last, self.rank, self.world_size = seed, drop_last, rank, world_size
        self.keys, self.erase = keys, erase
        #: a K-view teacher cache's views (images × K view ids): each sample's view is drawn among its image's
        self.view_table: Tensor | None = None
        self.device = torch.device(device)
        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device)
        self._mean = torch.tensor(data.mean, device=self.device)
        self._std = torch.tensor(data.std, device=self.device)
        n = len(data)
        self.per_rank = n // world_size if drop_last else -(-n // world_size)
        if self.per_rank == 0 or (drop_last and self.per_rank < batch_size):
            raise ApprenticeError(f"{n} images give no batch of {batch_size} on each of {world_size} ranks")
        self.epoch, self.step = 0, 0

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return self.per_rank // self.batch_size if self.drop_last else -(-self.per_rank // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Move to the start of ``epoch`` (no change if already in that epoch)."""
        if epoch != self.epoch:
            self.epoch, self.step = epoch, 0

    def state_dict(self) -> dict[str, int]:
        """The position: ``{"epoch": e, "step": batches of epoch e already handed out}``."""
        return {"epoch": self.epoch, "step": self.step}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Resume at a position saved by `state_dict`."""
        epoch, step = int(state["epoch"]), int(state["step"])
        if epoch < 0 or not 0 <= step <= len(self):
            raise ApprenticeError(f"loader state epoch {epoch} step {step}: need epoch >= 0 and "
                                  f"step in 0..{len(self)}")
        self.epoch, self.step = epoch, step

    def indices(self, epoch: int) -> Tensor:
        """This rank's sample indices for ``epoch`` (CPU int64), in order."""
        n = len(self.data)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seeds(self.seed, 0, epoch)))
        else:
            order = torch.arange(n)
        total = self.per_rank * self.world_size  # trim, or pad by wrapping around (DistributedSampler)
        return order.repeat(-(-total // n))[:total][self.rank::self.world_size]

    def _batch(self, order: Tensor, epoch: int, step: int) -> tuple[Tensor, Tensor] | Batch:
        cpu_idx = order[step * self.batch_size:(step + 1) * self.batch_size]
        idx = cpu_idx.to(self.device)
        images = self.images.index_select(0, idx)
        pad, flip = self.data.pad, self.data.flip
        if self.augment and (pad or flip):
            g = torch.Generator().manual_seed(mix_seeds(self.seed, 1, epoch, step, self.rank))
            if self.view_table is None:
                views = draw_views(len(cpu_idx), pad=pad, flip=flip, generator=g)
            else:
                slot = torch.randint(self.view_table.shape[1], (len(cpu_idx),), generator=g)
                views = self.view_table[cpu_idx, slot]
            images = apply_views(images, views, pad=pad, flip=flip)
        else:
            views = center_views(len(cpu_idx), pad=pad, flip=flip)
        if self.augment and self.erase and self.keys:  # what a teacher cache saw of this (image, view)
            images = keyed_erase(images, cpu_idx, views, self.erase)
        elif self.augment and self.erase:
            g = torch.Generator().manual_seed(mix_seeds(self.seed, 2, epoch, step, self.rank))
            images = random_erase(images, self.erase, generator=g)
        x, y = normalize(images, self._mean, self._std), self.labels.index_select(0, idx)
        return Batch(x, y, cpu_idx, views) if self.keys else (x, y)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor] | Batch]:
        epoch, order = self.epoch, None
        while self.epoch == epoch and self.step < len(self):
            if order is None:
                order = self.indices(epoch)  # one permutation per pass, not per batch
            step = self.step
            batch = self._batch(order, epoch, step)
            self.step = step + 1  # before yielding: a checkpoint taken while training on it counts it
            yield batch
        if self.epoch == epoch:
            self.epoch, self.step = epoch + 1, 0
