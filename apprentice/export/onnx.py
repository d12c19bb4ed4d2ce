"""ONNX export with integer weights: the QDQ (QuantizeLinear/DequantizeLinear) format.

Every quantized layer's weights are stored as an int8 initializer (the exact integer codes) with a
``DequantizeLinear`` in front of the Conv/Gemm: one float scale per tensor, or one per output
channel (``axis=0``, which needs opset >= 13). A quantized input activation becomes

    Clip(x, 0, c) -> QuantizeLinear(scale = c / (2**bits - 1), zero_point = uint8 0) -> DequantizeLinear

(LSQ: ``scale`` is the learned step s and ``c = s * (2**bits - 1)``, so ``round(clip(x, 0, c) / s)`` is
LSQ's ``round(clip(x / s, 0, 2**bits - 1))``; LSQ weights are their codes with the learned step as scale.)

ONNX rounds half to even, like ``torch.round``, so this is the fake quantizer's
``c * round(clip(x, 0, c) / c * (2**bits - 1)) / (2**bits - 1)``; the two differ only where
``x / scale`` and ``x / c * (2**bits - 1)`` round to different float32 values at an exact tie.

Route: the packed model is rebuilt (`apprentice.export.model_from_packed`), its quantized layers
are swapped for small modules whose weight and activation steps are ``torch.autograd.Function``s
with ONNX ``symbolic`` methods, and the TorchScript exporter (``torch.onnx.export(dynamo=False)``)
writes the graph. That exporter needs no package beyond ``onnx``; the newer torch.export-based one
would need ``onnxscript``. Opsets 11..20 are accepted (20 is the TorchScript exporter's maximum);
the default is 17. Float layers and BatchNorm export as usual (the exporter folds BatchNorm into
float convs; after a quantized conv it stays a BatchNormalization node unless the packed file was
written with ``fold_bn=True``).

``onnx`` and ``onnxruntime`` are the optional extra ``apprentice-kd[onnx]``.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from apprentice.errors import ApprenticeError
from apprentice.export.packed import (
    model_from_packed,
    packed_tensors,
    read_packed,
    write_export,
)
from apprentice.export.packing import unpack_codes
from apprentice.quant import (
    FLOAT_BITS,
    QConv2d,
    QLinear,
    replace_module,
)

DEFAULT_OPSET = 17
MIN_OPSET, MAX_OPSET = 11, 20  # Clip with min/max inputs needs 11; TorchScript exporter stops at 20
PER_AXIS_MIN_OPSET = 13  # DequantizeLinear's `axis` attribute

__all__ = ["DEFAULT_OPSET", "export_onnx"]


class _DequantizeWeight(torch.autograd.Function):
    """codes * scale in PyTorch; ``DequantizeLinear(codes, scale, 0)`` in the ONNX graph."""

    @staticmethod
    def forward(ctx: Any, codes: Tensor, scale: Tensor, zero_point: Tensor, axis: int | None) -> Tensor:
        shape = [] if axis is None else [-1] + [1] * (codes.dim() - 1)
        return codes.to(scale.dtype) * scale.reshape(shape)

    @staticmethod
    def symbolic(g: Any, codes: Any, scale: Any, zero_point: Any, axis: int | None) -> Any:
        extra = {} if axis is None else {"axis_i": axis}
        return g.op("DequantizeLinear", codes, scale, zero_point, **extra)


class _QuantizeActivation(torch.autograd.Function):
    """Clip -> QuantizeLinear -> DequantizeLinear in ONNX, and the same arithmetic in PyTorch."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, low: Tensor, high: Tensor, scale: Tensor, zero_point: Tensor,
                bits: int) -> Tensor:
        return torch.round(x.clamp(low, high) / scale) * scale

    @staticmethod
    def symbolic(g: Any, x: Any, low: Any, high: Any, scale: Any, zero_point: Any, bits: int) -> Any:
        clipped = g.op("Clip", x, low, high)
        return g.op("DequantizeLinear", g.op("QuantizeLinear", clipped, scale, zero_point), scale, zero_point)


class _OnnxLayer(nn.Module):
    """Inference-only Conv2d/Linear holding int8 codes (or float weights) and frozen activation settings."""

    def __init__(self, module: nn.Module, codes: Tensor | None, scale: Tensor | None) -> None:
        super().__init__()
        self.conv = module if isinstance(module, nn.Conv2d) else None
        if self.conv is not None and module.padding_mode != "zeros":
            raise ApprenticeError(f"ONNX export supports zero padding only, got {module.padding_mode!r}")
        self.bias = module.bias
        acts = module.act_quant
        self.act_bits = acts.bits
        levels = 2**acts.bits - 1
        # clip: step c/(2^b − 1) up to c; LSQ: its learned step s up to s·(2^b − 1).
        step = float(module.act_step.detach()) if module.act_step is not None else float(acts.clip) / levels
        high = step * levels if module.act_step is not None else float(acts.clip)
        # Activation constants become graph initializers; uint8 zero point as ONNX's QDQ convention.
        self.register_buffer("act_low", torch.tensor(0.0))
        self.register_buffer("act_high", torch.tensor(high))
        self.register_buffer("act_scale", torch.tensor(step))
        self.register_buffer("act_zero", torch.tensor(0, dtype=torch.uint8))
        if codes is None:
            self.weight = module.weight
            self.axis = None
        else:
            self.register_buffer("codes", codes)
            per_axis = scale.numel() > 1 or scale.dim() > 0
            self.axis = 0 if per_axis else None
            self.register_buffer("scale", scale.reshape(-1) if per_axis else scale.reshape(()))
            self.register_buffer("zero", torch.zeros(self.scale.shape, dtype=torch.int8))

    def forward(self, x: Tensor) -> Tensor:
        if self.act_bits != FLOAT_BITS:
            x = _QuantizeActivation.apply(x, self.act_low, self.act_high, self.act_scale, self.act_zero,
                                          self.act_bits)
        if hasattr(self, "codes"):
            w = _DequantizeWeight.apply(self.codes, self.scale, self.zero, self.axis)
        else:
            w = self.weight
        if self.conv is None:
            return F.linear(x, w, self.bias)
        c = self.conv
        return F.conv2d(x, w, self.bias, c.stride, c.padding, c.dilation, c.groups)


def _onnx_module(tensors: dict[str, Tensor], qmap: dict[str, Any], opset: int,
                 template: nn.Module | None) -> nn.Module:
    """The packed model with every quantized layer swapped for an `_OnnxLayer`."""
    model = model_from_packed(tensors, qmap, template).float()
    for name, entry in qmap["layers"].items():
        module = model.get_submodule(name)
        assert isinstance(module, (QConv2d, QLinear))  # model_from_packed put it there
        codes = scale = None
        w = entry["weights"]
        if w is not None:
            codes = unpack_codes(tensors[f"{name}.weight_codes"], w["packing"], w["count"]).view(w["shape"])
            scale = tensors[f"{name}.weight_scale"].to(torch.float32)
            if scale.numel() > 1 and opset < PER_AXIS_MIN_OPSET:
                raise ApprenticeError(
                    f"layer {name!r} has per-channel scales, which need opset >= {PER_AXIS_MIN_OPSET}, got {opset}"
                )
        replace_module(model, name, _OnnxLayer(module, codes, scale))
    return model.eval()


def export_onnx(
    model_or_packed_path: nn.Module | str | os.PathLike,
    path: str | os.PathLike,
    *,
    input_shape: Sequence[int],
    opset: int = DEFAULT_OPSET,
    fold_bn: bool = False,
    model: nn.Module | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write an ONNX file whose quantized weights are int8 initializers behind DequantizeLinear.

    Args:
        model_or_packed_path: a (fake-)quantized model (any ``nn.Module`` prepared by
            `apprentice.quant.prepare`), or the path of a file written by `apprentice.export.save_packed`.
        path: destination ``.onnx`` file (written atomically).
        input_shape: ``(C, H, W)`` or ``(N, C, H, W)``; the batch axis is dynamic either way.
        opset: ONNX opset, 11..20 (default 17); per-channel weight scales need >= 13.
        fold_bn: fold BatchNorm into the preceding convs first (models only; a packed file keeps
            the folding it was saved with).
        model: for a packed file of a model built by hand (no registered name), its float
            architecture, as for `apprentice.export.load_packed`.
        metadata: extra ``metadata_props``, each value stored as JSON text (``apprentice export``
            records ``"classes"`` and ``"preprocess"`` here, for ``apprentice predict``).

    Returns:
        The quantization map, which is also stored in the file's ``metadata_props["apprentice"]``
        next to ``metadata_props["opset"]``.

    Raises:
        ApprenticeError: ONNX not installed ("pip install 'apprentice-kd[onnx]'"), bad opset or
            input shape, or an invalid packed file.
    """
    try:
        import onnx
    except ImportError:
        raise ApprenticeError("ONNX export needs the optional extra: pip install 'apprentice-kd[onnx]'") from None
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ApprenticeError(f"opset must be an integer in {MIN_OPSET}..{MAX_OPSET}, got {opset!r}")
    shape = tuple(input_shape)
    if len(shape) == 3:
        shape = (1,) + shape
    if len(shape) != 4 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise ApprenticeError(f"input_shape must be (C, H, W) or (N, C, H, W) positive ints, got {input_shape!r}")
    if isinstance(model_or_packed_path, nn.Module):
        tensors, qmap = packed_tensors(model_or_packed_path, fold_bn=fold_bn)
        model = model_or_packed_path
    elif isinstance(model_or_packed_path, (str, os.PathLike)):
        tensors, qmap = read_packed(model_or_packed_path)
    else:
        raise ApprenticeError(f"export_onnx takes a model or a packed file path, got {type(model_or_packed_path).__name__}")
    module = _onnx_module(tensors, qmap, opset, model)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is deprecated in favour of torch.export (needs onnxscript).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (torch.zeros(shape),), buffer, dynamo=False, opset_version=opset,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    proto = onnx.load_from_string(buffer.getvalue())
    extra = [(str(k), json.dumps(v, separators=(",", ":"))) for k, v in (metadata or {}).items()]
    for key, value in (("apprentice", json.dumps(qmap, separators=(",", ":"))), ("opset", str(opset)), *extra):
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    write_export(os.fspath(path), proto.SerializeToString())
    return qmap
