"""The integer arithmetic of the int8 graph: BatchNorm folded into int8 weights, and the int32 bias.

An integer kernel (ONNX QLinearConv/QGemm; Jacob et al., CVPR 2018, sec. 2.3-2.4) adds its bias in
the accumulator, in units of s_x·s_w:

    acc = Σ (x_q − z_x)·w_q + b_q,   b_q = round(b / (s_x·s_w)),   y = acc · s_x·s_w

so the bias it adds is b rounded to that unit. The export writes this graph
(`apprentice.export.int8_onnx`) and a deployable model in eval mode adds the same rounding to its
float bias (`apprentice.quant.modules`), so the two agree; this module is the one place both compute
it, with the same float operations in the same order.

* BatchNorm (eval) is y = x·α + shift, α = γ/√(σ² + ε), shift = β − μ·α; folded into the layer
  before it, the weight scale becomes s_w·α per output channel and the bias α·b + shift.
* A negative α flips the sign of that channel's codes (every scale positive).
* The codes are multiplied by the largest integer m with m·max|codes| ≤ ``CODE_LIMIT`` (per output
  channel where the scale is) and the scale divided by it: the same weights on an m-times finer
  integer grid, so the accumulator unit, and with it the rounding of the bias, is m times smaller
  (ternary codes: m = 63). 63, not 127: u8·s8 pair sums then stay inside int16 on CPUs without VNNI
  (the bound of ONNX Runtime's ``reduce_range``); 8-bit codes above it are kept as trained.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["CODE_LIMIT", "bn_affine", "folded_bias", "integer_weights", "rounded_bias"]

CODE_LIMIT = 63
_INT32 = torch.iinfo(torch.int32)


def bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """(α, shift) of an eval-mode BatchNorm: y = x·α + shift."""
    alpha = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        alpha = alpha * bn.weight
    shift = -bn.running_mean * alpha
    if bn.bias is not None:
        shift = shift + bn.bias
    return alpha.detach(), shift.detach()


def folded_bias(bias: Tensor | None, alpha: Tensor | None, shift: Tensor | None) -> Tensor | None:
    """The layer's bias after folding its BatchNorm: α·b + shift (b alone without one; None if neither)."""
    if alpha is None:
        return None if bias is None else bias.detach()
    return shift if bias is None else shift + bias.detach() * alpha


def _per_channel(t: Tensor, like: Tensor) -> Tensor:
    return t.reshape([-1] + [1] * (like.dim() - 1))


@torch.no_grad()
def integer_weights(codes: Tensor, scale: Tensor, alpha: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(codes', unit) with codes'·unit = codes·scale·α: α folded in, positive units, codes scaled by m.

    ``scale`` is a scalar (per layer) or one value per output channel (any shape holding C_out values);
    ``unit`` is a scalar when both the scale is per layer and there is no α, else shape [C_out]. A
    channel whose weights are all zero gets unit 1 (its bias then needs no finer grid).

    Example:
        >>> c, u = integer_weights(torch.tensor([[1.0, 0.0], [-1.0, 1.0]]), torch.tensor(0.5),
        ...                        torch.tensor([2.0, -1.0]))
        >>> c.tolist(), [round(v, 6) for v in u.tolist()]     # m = 63; α < 0 flips channel 1's codes
        ([[63.0, 0.0], [63.0, -63.0]], [0.015873, 0.007937])
    """
    out = codes.shape[0]
    per_channel = alpha is not None or scale.numel() > 1
    s = scale.reshape(-1).expand(out).to(torch.float32) if per_channel else scale.reshape(()).to(torch.float32)
    if alpha is not None:
        s = s * alpha.to(torch.float32)
    codes = codes * (_per_channel(torch.where(s < 0, -1.0, 1.0), codes) if per_channel else torch.where(s < 0, -1.0, 1.0))
    s = s.abs()
    peak = codes.abs().reshape(out, -1).amax(dim=1) if per_channel else codes.abs().amax()
    zero = (peak == 0) | (s == 0)
    mult = torch.where(zero, 1.0, torch.div(CODE_LIMIT, peak.clamp(min=1), rounding_mode="floor").clamp(min=1))
    keep = ~zero
    if per_channel:
        codes = codes * _per_channel(mult * keep, codes)
    else:
        codes = codes * mult * keep
    return codes, torch.where(zero, 1.0, s / mult)


def rounded_bias(bias: Tensor, act_scale: float, unit: Tensor) -> tuple[Tensor, Tensor]:
    """(b_q, s_b): the int32 bias codes (as float) and their scale s_b = s_x·unit, b_q = round(b / s_b).

    The bias the integer kernel adds is b_q·s_b.

    Example:
        >>> q, s = rounded_bias(torch.tensor([0.30, -0.26]), 0.1, torch.tensor(0.5))
        >>> q.tolist(), round(float(s[0]), 6)         # units of 0.05
        ([6.0, -5.0], 0.05)
    """
    scale = (torch.tensor(act_scale, dtype=torch.float32) * unit.to(torch.float32)).expand(bias.shape)
    return torch.round(bias.to(torch.float32) / scale).clamp(_INT32.min, _INT32.max), scale
