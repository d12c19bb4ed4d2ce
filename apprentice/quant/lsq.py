"""LSQ: quantizers whose step size is learned (Esser et al., "Learned Step Size Quantization", ICLR 2020).

With step s (a trainable parameter of the layer) and an integer range [−Q_N, Q_P]:

    v̂ = s · round(clip(v / s, −Q_N, Q_P))

* weights are signed with a symmetric range, Q_N = Q_P = 2^(b−1) − 1, so the codes are those of
  every other weight quantizer here (packing and export unchanged; at 2 bits: ternary codes with a
  learned scale), per layer or per output channel;
* activations (a layer's input, after a ReLU) are unsigned: Q_N = 0, Q_P = 2^b − 1.

Gradients (the paper's eqs. 3-5; rounding passes straight through):

    ∂v̂/∂v = 1 if −Q_N ≤ v/s ≤ Q_P, else 0
    ∂v̂/∂s = g · { round(v/s) − v/s   if −Q_N ≤ v/s ≤ Q_P
                 { −Q_N                if v/s < −Q_N
                 { Q_P                 if v/s > Q_P
    g = 1/√(N·Q_P)

N is the number of values the step covers: the layer's weights (per layer) or one output channel's
weights (per channel) for a weight step, and the features of the layer's input, the elements of one
sample (C·H·W), for an activation step ("N_F is the number of features in a layer", sec. 2.2).
The paper initialises s = 2·mean|v|/√Q_P; weight steps from the weights when the layer is prepared,
activation steps from the first training batch (`apprentice.quant.modules`).

The forward follows the paper's reference code (its appendix): the gradient scale and the round are
each one call of the house's straight-through estimator `ste`. A floor keeps the step the forward
uses at ≥ ``MIN_LEARNED_STEP``; the gradient still reaches the step below it, so a step pushed under
the floor can climb back.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.distributed as dist
from torch import Tensor

from apprentice.errors import ApprenticeError
from apprentice.quant.ste import ste

__all__ = [
    "MIN_LEARNED_STEP",
    "calibrate_zero_point",
    "effective_step",
    "lsq_activation",
    "lsq_grad_scale",
    "lsq_init_step",
    "lsq_quantize",
    "lsq_step_shape",
    "lsq_weight",
    "zero_point_activation",
]


class _Spec(Protocol):
    """What LSQ reads of a weight quantizer's settings (`apprentice.quant.quantizers.WeightQuant`)."""

    bits: int
    per_channel: bool


# Small against any real step (8-bit weights of a 512-channel 3x3 conv start near 3e-3), positive so
# v / s stays defined however far a large update pushes the parameter.
MIN_LEARNED_STEP = 1e-6


def lsq_grad_scale(count: int, q_p: int) -> float:
    """g = 1/√(N·Q_P), the step's gradient scale for a step covering ``count`` values.

    Example:
        >>> round(lsq_grad_scale(6, 3), 4)    # 1/√18
        0.2357
    """
    return 1.0 / math.sqrt(max(count, 1) * q_p)


def effective_step(step: Tensor) -> Tensor:
    """The step the forward uses, max(s, MIN_LEARNED_STEP), as a plain (detached) tensor.

    Example:
        >>> effective_step(torch.tensor([0.25, -1.0])).tolist()
        [0.25, 9.999999974752427e-07]
    """
    return step.detach().clamp(min=MIN_LEARNED_STEP)


def lsq_quantize(v: Tensor, step: Tensor, q_n: int, q_p: int, grad_scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """LSQ fake quantization: ``(v̂, codes, s)`` with v̂ = s·codes, codes = round(clip(v/s, −Q_N, Q_P)).

    ``v̂`` carries the gradients of the module notes to ``v`` and ``step``; ``codes`` (integers
    stored as floats) and ``s`` (the floored step) are detached. ``step`` broadcasts against ``v``.

    Example (3-bit weights, Q_N = Q_P = 3, s = 0.25, N = 6, g = 1/√18):
        >>> v = torch.tensor([-1.0, -0.3, 0.0, 0.2, 0.45, 2.0])
        >>> s = torch.tensor(0.25, requires_grad=True)
        >>> vhat, codes, _ = lsq_quantize(v, s, 3, 3, lsq_grad_scale(6, 3))
        >>> codes.tolist(), vhat.tolist()                 # v/s = [-4, -1.2, 0, 0.8, 1.8, 8]
        ([-3.0, -1.0, 0.0, 1.0, 2.0, 3.0], [-0.75, -0.25, 0.0, 0.25, 0.5, 0.75])
        >>> vhat.sum().backward(); round(s.grad.item(), 4)   # g·(−3 + 0.2 + 0 + 0.2 + 0.2 + 3)
        0.1414
    """
    s = ste(step * grad_scale, effective_step(step))  # value: the floored step; gradient: g·(∂/∂s)
    y = (v / s).clamp(-q_n, q_p)
    codes = y.detach().round()
    return ste(y, codes) * s, codes, s.detach()


def lsq_step_shape(w: Tensor, per_channel: bool) -> tuple[int, ...]:
    """Shape of a weight step: ``()`` per layer, ``(C_out, 1, ...)`` per output channel (like every scale here)."""
    return (w.shape[0],) + (1,) * (w.dim() - 1) if per_channel else ()


@torch.no_grad()
def lsq_init_step(v: Tensor, q_p: int, *, per_channel: bool = False) -> Tensor:
    """The paper's initial step 2·mean|v|/√Q_P (per output channel if asked), at least MIN_LEARNED_STEP.

    Example:
        >>> lsq_init_step(torch.tensor([0.5, -1.5, 1.0, 0.0]), 4).item()   # 2·0.75/2
        0.75
    """
    rows = v.reshape(v.shape[0] if per_channel else 1, -1).abs().float().mean(dim=1)
    step = (2 * rows / math.sqrt(q_p)).clamp(min=MIN_LEARNED_STEP)
    return step.reshape(lsq_step_shape(v, per_channel)).to(v.dtype)


def lsq_weight(w: Tensor, spec: _Spec, step: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """LSQ weights: ``(surrogate, codes, scale)`` as the other weight quantizers, the scale being the learned step.

    Symmetric codes in [−n, n], n = Q_N = Q_P = 2^(b−1) − 1; g = 1/√(N·n) with N the weights one
    step covers. ``step`` is the layer's ``weight_step`` parameter, shaped by :func:`lsq_step_shape`.

    Example:
        >>> from apprentice.quant import WeightQuant
        >>> _, codes, scale = lsq_weight(torch.tensor([-1.0, -0.3, 0.0, 0.2, 0.45, 2.0]),
        ...                              WeightQuant("lsq", 3), torch.tensor(0.25))
        >>> codes.tolist(), scale.item()
        ([-3.0, -1.0, 0.0, 1.0, 2.0, 3.0], 0.25)
    """
    if step is None:
        raise ApprenticeError("the 'lsq' weight quantizer learns its step: pass step= (a QConv2d/QLinear "
                              "holds it as weight_step)")
    expected = lsq_step_shape(w, spec.per_channel)
    if tuple(step.shape) != expected:
        raise ApprenticeError(f"lsq weight step has shape {list(step.shape)}, the weight {list(w.shape)} "
                              f"needs {list(expected)} ({'per channel' if spec.per_channel else 'per layer'})")
    n = spec.levels
    count = w.numel() // (w.shape[0] if spec.per_channel else 1)
    return lsq_quantize(w, step, n, n, lsq_grad_scale(count, n))


def lsq_activation(x: Tensor, bits: int, step: Tensor) -> Tensor:
    """LSQ unsigned activations: s·round(clip(x/s, 0, 2^b − 1)), g = 1/√(N_F·Q_P), N_F = C·H·W of one sample.

    Example:
        >>> lsq_activation(torch.tensor([-0.4, 0.05, 0.3, 0.55, 3.0]), 2, torch.tensor(0.25)).tolist()
        [0.0, 0.0, 0.25, 0.5, 0.75]
    """
    q_p = 2**bits - 1
    features = x[0].numel() if x.dim() > 1 else x.numel()
    return lsq_quantize(x, step, 0, q_p, lsq_grad_scale(features, q_p))[0]


def zero_point_activation(x: Tensor, bits: int, step: Tensor, zero_point: Tensor) -> Tensor:
    """Asymmetric k-bit activations with a zero point: ``s·round(clip(x/s, −z, 2^b − 1 − z))``.

    The integer codes ``round(x/s) + z`` lie in [0, 2^b − 1]: the uint8 tensor (below 8 bits, its
    low range) with zero point z that ONNX's QuantizeLinear and the integer kernels of ONNX Runtime
    and XNNPACK take (Jacob et al., CVPR 2018, sec. 2.1). For inputs that can be negative (SiLU,
    hard-swish, GELU, a linear bottleneck, a depthwise output without a ReLU); with z = 0 it is
    LSQ's unsigned quantizer. Gradients are LSQ's with Q_N = z, Q_P = 2^b − 1 − z (Esser et al.
    2020), g = 1/√(N_F·(2^b − 1)); z is an integer buffer set once (`calibrate_zero_point`), s learns.

    Example:
        >>> x = torch.tensor([-2.0, -0.3, 0.0, 0.6, 100.0])
        >>> zero_point_activation(x, 4, torch.tensor(0.25), torch.tensor(4.0)).tolist()   # range [-1, 2.75]
        [-1.0, -0.25, 0.0, 0.5, 2.75]
    """
    levels = 2**bits - 1
    features = x[0].numel() if x.dim() > 1 else x.numel()
    z = zero_point.to(x.dtype)
    return lsq_quantize(x, step, z, levels - z, lsq_grad_scale(features, levels))[0]  # type: ignore[arg-type]


@torch.no_grad()
def calibrate_zero_point(x: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """(step, zero point) from the range of ``x`` widened to hold 0 (Jacob et al. 2018, sec. 3.1).

    [lo, hi] = [min(x, 0), max(x, 0)], s = (hi − lo)/(2^b − 1), z = round(−lo/s): z = 0 for an input
    with no negative values. Over processes (torchrun) the range is the union of every rank's, so all
    ranks agree.

    Example:
        >>> [round(t.item(), 4) for t in calibrate_zero_point(torch.tensor([-1.0, 0.5, 1.55]), 8)]
        [0.01, 100.0]
    """
    lo, hi = x.detach().float().amin().clamp(max=0), x.detach().float().amax().clamp(min=0)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    levels = 2**bits - 1
    step = ((hi - lo) / levels).clamp(min=MIN_LEARNED_STEP)
    return step, torch.round(-lo / step).clamp(0, levels)
