"""Channels-last memory layout for a model, with the convolutions a CPU kernel mishandles left in NCHW.

Channels-last makes this project's CPU training steps faster (`train.channels_last`, the default). On
the CPUs of this project with AVX2 and no AVX-512, torch 2.13's oneDNN path corrupts the heap in the
weight gradient of a channels-last 1x1 convolution with a stride above 1 and 2 to 7 input channels
(a projection shortcut of a narrow ResNet, e.g. ResNet-8 at width 0.25): the process dies with
"corrupted size vs. prev_size", a bus error or a segmentation fault, or, worse, goes on with corrupted
memory. Measured 2026-12-07 (batch 32, 28 px, one thread): input channels 2-7 failed at strides 2 and
4, 1 and 8-16 passed, stride 3 passed, and the same layer in NCHW, or with oneDNN off, passed. Such a
layer (tiny, so its layout costs nothing measurable) keeps NCHW weights and gets its input in NCHW;
every other layer goes channels-last.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["kept_nchw", "to_memory_format"]

#: the input channels below which a strided 1x1 convolution stays in NCHW on a CPU (see above)
_MIN_CHANNELS_LAST_INPUTS = 8


def kept_nchw(model: nn.Module) -> list[str]:
    """The names of ``model``'s convolutions that `to_memory_format` keeps in NCHW on a CPU."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and max(m.stride) > 1
            and m.in_channels < _MIN_CHANNELS_LAST_INPUTS]


def _nchw_input(_module: nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(), *args[1:]) if args and isinstance(args[0], Tensor) else args


def to_memory_format(model: nn.Module, device: torch.device, channels_last: bool) -> list[str]:
    """Move ``model`` to ``device`` in channels-last (or NCHW) layout; returns the convolutions kept
    in NCHW (on a CPU, those of `kept_nchw`: their weights stay NCHW and their input is made NCHW)."""
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if not channels_last or device.type != "cpu":
        return []
    kept = kept_nchw(model)
    modules = dict(model.named_modules())
    for name in kept:
        conv = modules[name]
        conv.weight.data = conv.weight.data.contiguous()
        conv.register_forward_pre_hook(_nchw_input)
    return kept
