"""The one straight-through estimator (Bengio et al., "Estimating or Propagating Gradients Through
Stochastic Neurons", 2013) that every quantizer in `apprentice.quant` uses.

Its own module so that the quantizer families (`apprentice.quant.quantizers`, `apprentice.quant.lsq`)
share it without importing each other.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["ste"]


class _StraightThrough(torch.autograd.Function):
    """Forward: ``q``. Backward: the incoming gradient to ``x`` (times ``mask`` where one is given)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, q: Tensor, mask: Tensor | None) -> Tensor:
        if mask is not None:
            ctx.save_for_backward(mask)
        ctx.has_mask = mask is not None
        return q

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        if ctx.has_mask:
            (mask,) = ctx.saved_tensors
            return grad * mask, None, None
        return grad, None, None


def ste(x: Tensor, q: Tensor, mask: Tensor | None = None) -> Tensor:
    """Straight-through estimator: exactly the value of ``q``, the gradient of ``x``.

    The gradient reaching ``x`` is the incoming one, multiplied by ``mask`` (0/1 values shaped like
    ``x``, best in its dtype) where a mask is given: a clip can say where it passes the gradient without a
    clamp of its own in the graph. One autograd node, and ``q`` is returned as is: neither
    ``q + (x − x.detach())`` (two extra full-size passes forward and backward) nor
    ``x + (q − x).detach()`` (off by float rounding: a ternary layer shows more than three
    values). ``q`` must not need a gradient.
    """
    if not (torch.is_grad_enabled() and x.requires_grad):
        return q.detach()
    return _StraightThrough.apply(x, q.detach(), mask)
