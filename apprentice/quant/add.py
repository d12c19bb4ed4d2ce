"""The residual add apprentice provides (`Add`), and its deployable 8-bit form (`QAdd`).

A model writes its residual adds as ``self.add = Add()`` ... ``self.add(out, identity)``: a float
``a + b`` with no parameters or buffers, so adding it to a model changes neither its results nor its
state dict. With ``quant.deploy: int8`` `apprentice.quant.prepare` swaps it for a `QAdd`, which
fake-quantizes what ONNX Runtime's ``QLinearAdd`` computes: both inputs and (where no later layer
quantizes it) the output are 8-bit uint8 tensors,

    QLinearAdd:  C_q = saturate(round((s_A·(A_q − z_A) + s_B·(B_q − z_B)) / s_C) + z_C),

so the integer graph of the export equals the model as trained. An input of the add is quantized
either by the input quantizer of a layer that reads the same tensor (the block's input: the
identity shares ``conv1``'s quantizer, ``AddInput.source``) or by an asymmetric uint8 quantizer of its
own (a conv's output before the add, where values are signed):

    x̂ = s · (clamp(round(x / s) + z, 0, 255) − z) = s · round(clip(x / s, −z, 255 − z))

with step s and integer zero point z (Jacob et al., "Quantization and Training of Neural Networks
for Efficient Integer-Arithmetic-Only Inference", CVPR 2018; ONNX QuantizeLinear/DequantizeLinear).
The first training batch calibrates it: [lo, hi] = [min(x, 0), max(x, 0)] (the range holds 0 so
that z is an integer, as Jacob et al. require), s = (hi − lo)/255, z = round(−lo/s). z is then
frozen; s keeps learning with LSQ's gradient (Esser et al. 2020; it is LSQ with Q_N = z,
Q_P = 255 − z). The buffer ``act_step_initialized`` records the calibration and is saved with the
state dict, so a resumed run or a reloaded model never calibrates again (as LSQ's activation step).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from apprentice.errors import ApprenticeError
from apprentice.quant.lsq import (
    calibrate_zero_point,
    effective_step,
    zero_point_activation,
)

__all__ = ["UINT8_MAX", "Add", "AddInput", "AddPlan", "QAdd", "Uint8Quantizer", "calibrate_uint8", "uint8_fake_quant"]

#: The largest uint8 code: ORT's QLinearConv/QLinearAdd read and write uint8 tensors.
UINT8_MAX = 255


def uint8_fake_quant(x: Tensor, step: Tensor, zero_point: Tensor) -> Tensor:
    """Asymmetric uint8 fake quantization: ``s·(clamp(round(x/s) + z, 0, 255) − z)``.

    Equal to ONNX's ``DequantizeLinear(QuantizeLinear(x, s, z), s, z)`` (both round half to even, and
    z is an integer, so rounding before or after adding it is the same): `zero_point_activation` at
    8 bits, LSQ's gradients with Q_N = z, Q_P = 255 − z.

    Example:
        >>> x = torch.tensor([-2.0, -0.3, 0.0, 0.6, 100.0])
        >>> uint8_fake_quant(x, torch.tensor(0.25), torch.tensor(4.0)).tolist()   # range [-1, 62.75]
        [-1.0, -0.25, 0.0, 0.5, 62.75]
    """
    return zero_point_activation(x, 8, step, zero_point)


def calibrate_uint8(x: Tensor) -> tuple[Tensor, Tensor]:
    """(step, zero point) of a uint8 quantizer from the range of ``x`` widened to hold 0 (`calibrate_zero_point`).

    Example:
        >>> [round(t.item(), 4) for t in calibrate_uint8(torch.tensor([-1.0, 0.5, 1.55]))]
        [0.01, 100.0]
    """
    return calibrate_zero_point(x, 8)


@dataclass(frozen=True)
class AddInput:
    """How one tensor of a `QAdd` (an input, or the output) is quantized.

    Args:
        source: the layer whose input quantizer quantizes this tensor (the tensor is that layer's
            input, or selected or zero-padded from it); None: a uint8 quantizer of the add's own.
        step, zero_point: the own quantizer's values; None until the first training batch.
    """

    source: str | None = None
    step: float | None = None
    zero_point: int | None = None

    def __post_init__(self) -> None:
        if self.source is not None and (self.step is not None or self.zero_point is not None):
            raise ApprenticeError(f"an add input quantized by layer {self.source!r} has no step or zero point")
        if (self.step is None) != (self.zero_point is None):
            raise ApprenticeError("a uint8 quantizer's step and zero point are given together")
        if self.step is not None and not (isinstance(self.step, (int, float)) and 0 < self.step < math.inf):
            raise ApprenticeError(f"a uint8 quantizer's step must be a positive finite number, got {self.step!r}")
        zp = self.zero_point
        if zp is not None and (isinstance(zp, bool) or not isinstance(zp, int) or not 0 <= zp <= UINT8_MAX):
            raise ApprenticeError(f"a uint8 quantizer's zero point must be an integer in 0..{UINT8_MAX}, got {zp!r}")

    def describe(self) -> str:
        if self.source is not None:
            return f"as {self.source}'s input"
        return "uint8 (first batch)" if self.step is None else f"uint8 s={self.step:.4g} z={self.zero_point}"


@dataclass(frozen=True)
class AddPlan:
    """How one `Add` is quantized: its two inputs, and its output (None: the layers reading it quantize it)."""

    inputs: tuple[AddInput, AddInput]
    output: AddInput | None
    deploy: str = "int8"
    kind: str = "add"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "deploy": self.deploy, "inputs": [asdict(i) for i in self.inputs],
                "output": None if self.output is None else asdict(self.output)}

    @classmethod
    def from_dict(cls, d: Mapping) -> AddPlan:
        try:
            inputs = tuple(AddInput(**i) for i in d["inputs"])
            output = None if d.get("output") is None else AddInput(**d["output"])
            if len(inputs) != 2:
                raise TypeError(f"an add has 2 inputs, the plan gives {len(inputs)}")
            return cls(inputs, output, d.get("deploy", "int8"))  # type: ignore[arg-type]
        except (KeyError, TypeError) as e:
            raise ApprenticeError(f"malformed add plan {dict(d)!r}: {e}") from None

    def describe(self) -> str:
        out = "quantized by the next layers" if self.output is None else self.output.describe()
        return f"add: inputs {self.inputs[0].describe()}, {self.inputs[1].describe()}; output {out}"


class Add(nn.Module):
    """``a + b``: the residual add to use in a model, so that ``quant.deploy: int8`` can quantize it.

    No parameters or buffers: putting it in a model changes neither its results nor its state dict.

    Example:
        >>> Add()(torch.ones(2), torch.ones(2)).tolist()
        [2.0, 2.0]
    """

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return a + b


class Uint8Quantizer(nn.Module):
    """One asymmetric uint8 fake quantizer (`uint8_fake_quant`): a learned ``act_step``, a frozen
    ``zero_point``, and ``act_step_initialized`` (set by calibration on the first training batch)."""

    def __init__(self, step: float | None = None, zero_point: int | None = None) -> None:
        super().__init__()
        given = step is not None
        self.act_step = nn.Parameter(torch.tensor(float(step) if given else 1.0))
        self.register_buffer("zero_point", torch.tensor(float(zero_point) if given else 0.0))
        self.register_buffer("act_step_initialized", torch.tensor(given))

    def forward(self, x: Tensor) -> Tensor:
        if self.training and not bool(self.act_step_initialized):
            step, zero_point = calibrate_uint8(x)
            with torch.no_grad():
                self.act_step.copy_(step)
                self.zero_point.copy_(zero_point)
                self.act_step_initialized.fill_(True)
        if not bool(self.act_step_initialized):
            return x  # evaluated before any training batch: nothing to quantize with yet
        return uint8_fake_quant(x, self.act_step, self.zero_point)

    def quantize_output(self, module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
        """A forward hook: quantize ``module``'s output (a deployable layer's BatchNorm, `LayerPlan.output`)."""
        return self(output)

    def setting(self) -> AddInput:
        """Its values now, as numbers (None before calibration)."""
        if not bool(self.act_step_initialized):
            return AddInput()
        return AddInput(step=float(effective_step(self.act_step)), zero_point=int(self.zero_point))


class QAdd(nn.Module):
    """The deployable add: quantized inputs and output as `AddPlan` says (module notes).

    An input quantized by a layer's input quantizer calls that layer's ``quantize_input``; the layer
    is held as a plain reference (not a submodule), so the state dict holds its quantizer once.
    """

    def __init__(self, plan: AddPlan, layers: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.deploy = plan.deploy
        self.sources = tuple(i.source for i in plan.inputs)
        missing = [s for s in self.sources if s is not None and s not in layers]
        if missing:
            raise ApprenticeError(f"add plan names layer {missing[0]!r}, which is not a quantized layer of the model")
        # object.__setattr__: a module stored as an attribute would become a second parent of the layer.
        object.__setattr__(self, "_source_layers", tuple(None if s is None else layers[s] for s in self.sources))
        self.quant_a = None if plan.inputs[0].source is not None else Uint8Quantizer(plan.inputs[0].step, plan.inputs[0].zero_point)
        self.quant_b = None if plan.inputs[1].source is not None else Uint8Quantizer(plan.inputs[1].step, plan.inputs[1].zero_point)
        self.quant_out = None if plan.output is None else Uint8Quantizer(plan.output.step, plan.output.zero_point)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        a, b = (self._quantize_input(i, t) for i, t in enumerate((a, b)))
        out = a + b
        return out if self.quant_out is None else self.quant_out(out)

    def _quantize_input(self, i: int, x: Tensor) -> Tensor:
        layer = self._source_layers[i]
        if layer is not None:
            return layer.quantize_input(x)
        return (self.quant_a, self.quant_b)[i](x)

    def plan(self) -> AddPlan:
        own = (self.quant_a, self.quant_b)
        inputs = tuple(AddInput(source=s) if s is not None else own[i].setting() for i, s in enumerate(self.sources))
        return AddPlan(inputs, None if self.quant_out is None else self.quant_out.setting(), self.deploy)  # type: ignore[arg-type]

    def to_float(self) -> Add:
        return Add().train(self.training)

    def extra_repr(self) -> str:
        return self.plan().describe()
