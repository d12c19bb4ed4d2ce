"""Training augmentations by name: the `AUGMENTATIONS` table (``data.augmentation``).

- ``none``: the evaluation view (shorter side resized, centre crop) of every image, every epoch.
- ``pad-crop-flip``: zero-pad by ``pad`` pixels, take a random crop of the original size, mirror
  with probability 1/2 when ``flip`` (He et al. 2016 on CIFAR). Runs on whole uint8 batches on the
  device (`apprentice.data.tensors.augment_batch`), so tensor data sets and image folders decoded
  into a tensor cache train at tensor speed; streamed folders apply it per image.
- ``random-resized-crop``: a crop of 8-100 % of the image's area at aspect 3/4..4/3, resized to the
  image size, mirrored when ``flip`` (Szegedy et al. 2015; the fb.resnet.torch ImageNet recipe). It
  needs the original image files, so folders with it are streamed; evaluation then resizes the
  shorter side to size / 0.875 before the centre crop, as that recipe does.

``data.augment=false`` turns any of them off (``none``); ``data.flip`` turns the mirroring off.
``data.erase`` adds random erasing (`random_erase`) after the crop and flip, on tensors only; beside a
teacher cache it is keyed by each sample's (image, view) (`keyed_erase`), so the cache holds the erased views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from apprentice.errors import lookup

__all__ = ["AUGMENTATIONS", "ERASE_AREA", "ERASE_ASPECT", "Augmentation", "eval_resize", "keyed_erase",
           "keyed_uniforms", "pad_crop_flip", "random_erase"]


#: Random erasing's rectangle: its share of the image's area and its aspect ratio (log-uniform), the
#: paper's s_l, s_h and r_1 (Zhong et al. 2020, sec. 3.1).
ERASE_AREA = (0.02, 0.4)
ERASE_ASPECT = (0.3, 1 / 0.3)


@dataclass(frozen=True)
class Augmentation:
    """One row of `AUGMENTATIONS`.

    Attributes:
        on_tensors: it runs on decoded uint8 tensors (tensor data sets, a folder's tensor cache);
            otherwise it needs the image files (folders are streamed).
        eval_crop: the centre crop's share of the resized shorter side at evaluation
            (0.875: resize to size / 0.875, then crop size).
        pads: it uses ``data.pad``.
    """

    on_tensors: bool
    eval_crop: float
    pads: bool


AUGMENTATIONS: dict[str, Augmentation] = {
    "none": Augmentation(on_tensors=True, eval_crop=1.0, pads=False),
    "pad-crop-flip": Augmentation(on_tensors=True, eval_crop=1.0, pads=True),
    "random-resized-crop": Augmentation(on_tensors=False, eval_crop=0.875, pads=False),
}


def eval_resize(augmentation: str, image_size: int) -> int:
    """The shorter side an image is resized to before its centre ``image_size`` crop at evaluation.

    Example:
        >>> eval_resize("random-resized-crop", 224), eval_resize("pad-crop-flip", 28)
        (256, 28)
    """
    return round(image_size / lookup(AUGMENTATIONS, augmentation, "augmentation").eval_crop)


def pad_crop_flip(image: Tensor, *, pad: int, flip: bool, generator: torch.Generator | None = None) -> Tensor:
    """One uint8 image C×H×W zero-padded by ``pad``, randomly cropped back to H×W and mirrored with
    probability 1/2 if ``flip`` (the per-image form of `apprentice.data.tensors.augment_batch`)."""
    _, h, w = image.shape
    if pad > 0:
        dy, dx = (int(v) for v in torch.randint(2 * pad + 1, (2,), generator=generator))
        image = torch.nn.functional.pad(image, (pad, pad, pad, pad))[:, dy:dy + h, dx:dx + w]
    if flip and bool(torch.rand((), generator=generator) < 0.5):
        image = image.flip(2)
    return image.contiguous()


def random_erase(images: Tensor, p: float, *, generator: torch.Generator) -> Tensor:
    """Random erasing (Zhong et al., "Random Erasing Data Augmentation", AAAI 2020) on a uint8 batch B×C×H×W.

    Each image, with probability ``p``, gets one rectangle of area ``s·H·W`` (s uniform in
    `ERASE_AREA`) and aspect ``r`` (log-uniform in `ERASE_ASPECT`), height ``√(s·H·W·r)`` and width
    ``√(s·H·W/r)`` clipped to the image, at a uniform position, filled with uniform random values
    (the paper's choice). All draws come from ``generator``, in a fixed order, whatever ``p``.

    Example:
        >>> x = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
        >>> bool((random_erase(x, 0.0, generator=torch.Generator().manual_seed(0)) == x).all())
        True
    """
    draw = torch.rand(5, images.shape[0], generator=generator)
    fill = torch.randint(0, 256, images.shape, generator=generator, dtype=torch.uint8)
    return _erase(images, draw, fill, p)


def keyed_erase(images: Tensor, index: Tensor, views: Tensor, p: float) -> Tensor:
    """`random_erase` whose draws are a fixed function of each sample's key ``(image index, view id)``.

    The same rectangle, fill and yes/no (probability ``p``) for an image's view every time it is
    drawn, in any run, on any rank: so a teacher cache can hold the logits of exactly the erased view
    a student sees (Beyer et al., CVPR 2022: the teacher and the student see the same view). The
    draws are splitmix64 hashes of the key (`keyed_uniforms`), so nothing is stored per view, and
    they do not depend on the run's seed. Erased caches hold this function's images: a change to it
    (pinned by a golden test) must come with a new cache format version.

    Example:
        >>> x = torch.zeros(3, 1, 8, 8, dtype=torch.uint8)
        >>> a = keyed_erase(x, torch.tensor([0, 1, 2]), torch.tensor([5, 5, 5]), 1.0)
        >>> torch.equal(a, keyed_erase(x, torch.tensor([0, 1, 2]), torch.tensor([5, 5, 5]), 1.0)), bool(a.any())
        (True, True)
    """
    _, c, h, w = images.shape
    keys = _keys(index, views)
    erased = _rectangles(torch.from_numpy(keyed_uniforms(keys, 5).T.copy()), h, w, p)
    rows, ys, xs = (t.numpy() for t in erased.nonzero(as_tuple=True))
    if len(rows) == 0:
        return images
    # The fill of pixel (channel, y, x) is byte 7 of hash(key + 5 + its index in the C×H×W image), made
    # only where a rectangle is: hashing every pixel costs 10x more on 224-px images.
    at = (np.arange(c, dtype=np.uint64)[None, :] * np.uint64(h * w) + (ys * w + xs).astype(np.uint64)[:, None])
    fill = (_splitmix64(keys[rows][:, None] + np.uint64(5) + at) >> np.uint64(56)).astype(np.uint8)
    out = images.clone()
    at_rows, at_ys, at_xs = (torch.from_numpy(a).to(images.device) for a in (rows, ys, xs))
    out[at_rows, :, at_ys, at_xs] = torch.from_numpy(fill).to(images.device)
    return out


def _erase(images: Tensor, draw: Tensor, fill: Tensor, p: float) -> Tensor:
    """Fill with ``fill`` (uint8, the images' shape) the rectangles `_rectangles` draws."""
    mask = _rectangles(draw, images.shape[2], images.shape[3], p)[:, None].to(images.device)
    return torch.where(mask, fill.to(images.device), images)


def _rectangles(draw: Tensor, h: int, w: int, p: float) -> Tensor:
    """B×H×W: the erased pixels that each column of ``draw`` (5 × B uniforms in [0, 1): area, aspect,
    top, left, and yes when below ``p``) says, per Zhong et al.'s rectangle (`random_erase`)."""
    area = (ERASE_AREA[0] + draw[0] * (ERASE_AREA[1] - ERASE_AREA[0])) * h * w
    log_lo, log_hi = math.log(ERASE_ASPECT[0]), math.log(ERASE_ASPECT[1])
    aspect = torch.exp(log_lo + draw[1] * (log_hi - log_lo))
    eh = (area * aspect).sqrt().round().clamp(1, h).long()
    ew = (area / aspect).sqrt().round().clamp(1, w).long()
    top = (draw[2] * (h - eh + 1)).long()
    left = (draw[3] * (w - ew + 1)).long()
    rows = torch.arange(h)[None, :]
    cols = torch.arange(w)[None, :]
    inside = (((rows >= top[:, None]) & (rows < (top + eh)[:, None]))[:, :, None]
              & ((cols >= left[:, None]) & (cols < (left + ew)[:, None]))[:, None, :])
    return inside & (draw[4] < p)[:, None, None]


# splitmix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014):
# a bijection of 64-bit integers whose outputs, fed a counter, pass BigCrush. numpy's uint64 arrays wrap
# on overflow, which is the arithmetic it needs.
_GAMMA, _M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = z + _GAMMA
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _keys(index: Tensor, views: Tensor) -> np.ndarray:
    """One well-mixed uint64 per sample from its ``(image index, view id)``."""
    i = torch.as_tensor(index).cpu().numpy().astype(np.uint64)
    v = torch.as_tensor(views).cpu().numpy().astype(np.uint64)
    return _splitmix64(_splitmix64(i) ^ v)


def keyed_uniforms(keys: np.ndarray, n: int) -> np.ndarray:
    """``n`` uniforms in [0, 1) for each key (B × n, float32): the top 24 bits of hash(key + j), exact in
    float32 (so never 1.0)."""
    bits = _splitmix64(keys[:, None] + np.arange(n, dtype=np.uint64)[None, :]) >> np.uint64(40)
    return (bits.astype(np.float64) * 2.0**-24).astype(np.float32)
