"""The one straight-through estimator (Bengio et al., "Estimating or Propagating Gradients Through
Stochastic Neurons", 2013) that every quantizer in `apprentice.quant` uses.

Its own module so that the quantizer families (`apprentice.quant.quantizers`, `apprentice.quant.lsq`)
share it without importing each other.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

__all__ = ["ste"]


@functools.lru_cache(maxsize=256)  # per layer and backward pass otherwise: a few tiny ops each time
def _outward(bound: float, dtype: torch.dtype, direction: float) -> float:
    """The next value of ``dtype`` beyond ``bound`` (towards ``direction``), at least one smallest
    normal away: a strict comparison with it is the inclusive comparison with ``bound`` for every
    value of that dtype (bar denormals within a tiny of the bound, which denormal flushing would
    blur anyway)."""
    ahead = torch.nextafter(torch.tensor(bound, dtype=dtype), torch.tensor(direction, dtype=dtype)).item()
    tiny = torch.finfo(dtype).tiny
    return min(ahead, bound - tiny) if direction < 0 else max(ahead, bound + tiny)


class _StraightThrough(torch.autograd.Function):
    """Forward: ``q``. Backward: the incoming gradient to ``x`` (zero where ``x`` lies outside
    ``window``, where one is given)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, q: Tensor, window: tuple[float, float] | None) -> Tensor:
        ctx.window = window
        if window is not None:
            ctx.save_for_backward(x)
        return q

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        if ctx.window is None:
            return grad, None, None
        (x,) = ctx.saved_tensors
        low, high = ctx.window
        # hardtanh's backward: the gradient where low' < x < high', one fused pass over grad and x (a
        # 0/1 mask made in the forward costs a comparison pass there and a multiply here); the
        # bounds one value outwards make it low <= x <= high, clamp's own backward.
        lo, hi = _outward(low, x.dtype, float("-inf")), _outward(high, x.dtype, float("inf"))
        return torch.ops.aten.hardtanh_backward(grad, x, lo, hi), None, None


def ste(x: Tensor, q: Tensor, window: tuple[float, float] | None = None) -> Tensor:
    """Straight-through estimator: exactly the value of ``q``, the gradient of ``x``.

    The gradient reaching ``x`` is the incoming one, set to zero where ``x`` lies outside
    ``window = (low, high)`` (``low <= x <= high`` passes, as a clamp's backward) where a window is
    given: a clip can say where it passes the gradient without a clamp of its own in the graph. One
    autograd node, and ``q`` is returned as is: neither ``q + (x − x.detach())`` (two extra full-size
    passes forward and backward) nor ``x + (q − x).detach()`` (off by float rounding: a ternary
    layer shows more than three values). ``q`` must not need a gradient; with a window, ``x`` is
    kept for the backward (a ReLU before it keeps the same tensor anyway) and must not be changed in
    place afterwards (autograd says so if it is).
    """
    if not (torch.is_grad_enabled() and x.requires_grad):
        return q.detach()
    return _StraightThrough.apply(x, q.detach(), window)
