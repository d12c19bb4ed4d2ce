"""Per-channel normalisation statistics computed from training images (``data.mean``/``data.std`` null).

The mean and standard deviation are those of every pixel of every image, per channel, on the
[0, 1] scale (the population std, as torchvision's recipes quote them): accumulated in float64
over chunks, so 60,000 Fashion-MNIST images give 0.2860 / 0.3530 exactly as the table states.
They are computed once, when a run starts, and recorded in its config.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

from apprentice.errors import ApprenticeError

__all__ = ["channel_stats"]


def channel_stats(batches: Tensor | Iterable[Tensor], *, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` per channel of uint8 images N×C×H×W (one tensor, or an iterable of batches).

    Values are rounded to 4 decimals, so they read well in a config and are recorded exactly.
    A channel with no variation gets std 1 (nothing to scale), never 0.

    Example:
        >>> channel_stats(torch.tensor([[[[0, 255]]]], dtype=torch.uint8))
        ((0.5,), (0.5,))
    """
    if isinstance(batches, Tensor):
        batches = batches.split(chunk)
    count, total, squares = 0, None, None
    for x in batches:
        x = x.to(torch.float64).div_(255)
        s, q = x.sum((0, 2, 3)), x.square().sum((0, 2, 3))
        total, squares = (s, q) if total is None else (total + s, squares + q)
        count += x.shape[0] * x.shape[2] * x.shape[3]
    if not count:
        raise ApprenticeError("no training images to compute data.mean and data.std from")
    mean = total / count
    var = (squares / count - mean.square()).clamp_min(0)
    std = [math.sqrt(v) for v in var.tolist()]
    return tuple(round(m, 4) for m in mean.tolist()), tuple(round(s, 4) if s >= 1e-4 else 1.0 for s in std)
