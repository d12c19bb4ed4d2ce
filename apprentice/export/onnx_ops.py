"""The quantization ops of the exported ONNX graphs, as ``torch.autograd.Function``s with ONNX symbolics.

Each computes in PyTorch exactly what its ONNX nodes compute, so the module that the TorchScript
exporter traces runs like the file it writes:

* `DequantizeConst`: an integer initializer times its scale, ``DequantizeLinear(codes, scale, 0)``
  (int8 weights, int32 biases; one scale per tensor, or per output channel with ``axis=0``);
* `ClipQuantize`: ``Clip(x, 0, c) -> QuantizeLinear -> DequantizeLinear`` (the QDQ export's k-bit
  activations: the Clip bounds the codes at 2^k − 1);
* `QuantizeUint8`: ``QuantizeLinear -> DequantizeLinear`` with a uint8 zero point (the int8 export:
  y = (saturate(round(x / s) + z) − z) · s, codes 0..255, no Clip).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["ClipQuantize", "DequantizeConst", "QuantizeUint8"]


class DequantizeConst(torch.autograd.Function):
    """codes * scale in PyTorch; ``DequantizeLinear(codes, scale, zero_point)`` in the ONNX graph."""

    @staticmethod
    def forward(ctx: Any, codes: Tensor, scale: Tensor, zero_point: Tensor, axis: int | None) -> Tensor:
        shape = [] if axis is None else [-1] + [1] * (codes.dim() - 1)
        return codes.to(scale.dtype) * scale.reshape(shape)

    @staticmethod
    def symbolic(g: Any, codes: Any, scale: Any, zero_point: Any, axis: int | None) -> Any:
        extra = {} if axis is None else {"axis_i": axis}
        return g.op("DequantizeLinear", codes, scale, zero_point, **extra)


class ClipQuantize(torch.autograd.Function):
    """Clip -> QuantizeLinear -> DequantizeLinear in ONNX, and the same arithmetic in PyTorch."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, low: Tensor, high: Tensor, scale: Tensor, zero_point: Tensor,
                bits: int) -> Tensor:
        return torch.round(x.clamp(low, high) / scale) * scale

    @staticmethod
    def symbolic(g: Any, x: Any, low: Any, high: Any, scale: Any, zero_point: Any, bits: int) -> Any:
        clipped = g.op("Clip", x, low, high)
        return g.op("DequantizeLinear", g.op("QuantizeLinear", clipped, scale, zero_point), scale, zero_point)


class QuantizeUint8(torch.autograd.Function):
    """QuantizeLinear -> DequantizeLinear with a uint8 zero point in ONNX; the same arithmetic in PyTorch."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
        z = zero_point.to(x.dtype)
        return ((torch.round(x / scale) + z).clamp(0, 255) - z) * scale

    @staticmethod
    def symbolic(g: Any, x: Any, scale: Any, zero_point: Any) -> Any:
        return g.op("DequantizeLinear", g.op("QuantizeLinear", x, scale, zero_point), scale, zero_point)
