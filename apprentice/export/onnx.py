"""ONNX export with integer weights: the QDQ (QuantizeLinear/DequantizeLinear) format.

`export_onnx` writes one of two graphs (`ONNX_MODES`). A model trained with ``quant.deploy=int8``
gets ONNX Runtime's integer graph (`apprentice.export.int8_onnx`: every quantized conv a
QLinearConv, every residual add a QLinearAdd). Any other quantized model gets the "qdq" graph this
module describes, which equals it but leaves ONNX Runtime most convs in float (a block's identity and
its adds are float in such a model, so an integer graph could not equal it).

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

from apprentice.errors import ApprenticeError, lookup
from apprentice.export.int8_onnx import int8_module, share_quantized
from apprentice.export.onnx_ops import ClipQuantize, DequantizeConst
from apprentice.export.packed import packed_tensors, read_packed, write_export
from apprentice.export.packing import unpack_codes
from apprentice.export.rebuild import model_from_packed
from apprentice.quant import (
    FLOAT_BITS,
    QConv2d,
    QLinear,
    replace_module,
)

DEFAULT_OPSET = 17
MIN_OPSET, MAX_OPSET = 11, 20  # Clip with min/max inputs needs 11; TorchScript exporter stops at 20
PER_AXIS_MIN_OPSET = 13  # DequantizeLinear's `axis` attribute

__all__ = ["DEFAULT_OPSET", "ONNX_MODES", "export_onnx"]


# The QDQ export's names for the shared ops (tests and older callers import them from here).
_DequantizeWeight = DequantizeConst
_QuantizeActivation = ClipQuantize


class _OnnxLayer(nn.Module):
    """Inference-only Conv2d/Linear holding int8 codes (or float weights) and frozen activation settings."""

    def __init__(self, module: nn.Module, codes: Tensor | None, scale: Tensor | None) -> None:
        super().__init__()
        self.conv = module if isinstance(module, nn.Conv2d) else None
        if self.conv is not None and module.padding_mode != "zeros":
            raise ApprenticeError(f"ONNX export supports zero padding only, got {module.padding_mode!r}")
        self.bias = module.bias
        quantizer = module if module.input_layer is None else module.input_layer[1]  # whose input quantizer it uses
        acts = quantizer.act_quant
        self.act_bits = acts.bits
        levels = 2**acts.bits - 1
        # clip: step c/(2^b − 1) from 0 up to c; LSQ: its learned step s up to s·(2^b − 1); asym: s from
        # −z·s up to (2^b − 1 − z)·s. The codes are round(x/s) + z in 0..2^b − 1 either way.
        lsq = quantizer.act_step is not None
        step = float(quantizer.act_step.detach()) if lsq else float(acts.clip) / levels
        zero = quantizer.activation_zero_point()
        high = step * (levels - zero) if lsq else float(acts.clip)
        # Activation constants become graph initializers; a uint8 zero point as ONNX's QDQ convention.
        self.register_buffer("act_low", torch.tensor(-zero * step))
        self.register_buffer("act_high", torch.tensor(high))
        self.register_buffer("act_scale", torch.tensor(step))
        self.register_buffer("act_zero", torch.tensor(zero, dtype=torch.uint8))
        # A deployable layer's own output quantizer, when its forward applies it (no BatchNorm hook after it).
        self.out_quant = module.out_quant if module.out_quant is not None and module._out_hook is None else None
        if codes is None:
            self.weight = module.weight
            self.axis = None
        else:
            self.register_buffer("codes", codes)
            per_axis = scale.numel() > 1 or scale.dim() > 0
            self.axis = 0 if per_axis else None
            self.register_buffer("scale", scale.reshape(-1) if per_axis else scale.reshape(()))
            self.register_buffer("zero", torch.zeros(self.scale.shape, dtype=torch.int8))

    def quantize_input(self, x: Tensor) -> Tensor:
        if self.act_bits == FLOAT_BITS:
            return x
        return ClipQuantize.apply(x, self.act_low, self.act_high, self.act_scale, self.act_zero, self.act_bits)

    def forward(self, x: Tensor) -> Tensor:
        x = self.quantize_input(x)
        if hasattr(self, "codes"):
            w = DequantizeConst.apply(self.codes, self.scale, self.zero, self.axis)
        else:
            w = self.weight
        if self.conv is None:
            y = F.linear(x, w, self.bias)
        else:
            c = self.conv
            y = F.conv2d(x, w, self.bias, c.stride, c.padding, c.dilation, c.groups)
        return y if self.out_quant is None else self.out_quant(y)


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


#: What ``export_onnx(mode=...)`` writes.
ONNX_MODES: dict[str, str] = {
    "auto": "int8 for a model trained deployable (quant.deploy=int8), else qdq",
    "int8": "ONNX Runtime's integer graph (QLinearConv/QLinearAdd), equal to a deployable model as trained",
    "qdq": "int8 weights and k-bit activations as QDQ pairs around float ops, equal to any quantized model",
}


def _resolve_mode(mode: str, qmap: dict[str, Any], opset: int) -> str:
    lookup(ONNX_MODES, mode, "ONNX export mode")
    deployable = qmap.get("deploy") == "int8"
    if mode == "auto":
        mode = "int8" if deployable else "qdq"
    if mode == "int8" and not deployable:
        raise ApprenticeError("the int8 ONNX graph needs a model trained deployable (quant.deploy=int8): this one's "
                              "residual adds and block inputs are float, so an integer graph would differ from it; "
                              "train or fine-tune it with quant.deploy=int8, or export mode 'qdq'")
    if mode == "qdq" and deployable:
        raise ApprenticeError("this model was trained deployable (quant.deploy=int8); its quantized adds are exported "
                              "by mode 'int8' (the default)")
    if mode == "int8" and opset < PER_AXIS_MIN_OPSET:
        raise ApprenticeError(f"the int8 ONNX graph has per-channel scales, which need opset >= {PER_AXIS_MIN_OPSET}, "
                              f"got {opset}")
    return mode


def _to_onnx(module: nn.Module, shape: tuple[int, ...], opset: int) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is deprecated in favour of torch.export (needs onnxscript).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (torch.zeros(shape),), buffer, dynamo=False, opset_version=opset,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return buffer.getvalue()


def _input_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if len(shape) == 3:
        shape = (1,) + shape
    if len(shape) != 4 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise ApprenticeError(f"input_shape must be (C, H, W) or (N, C, H, W) positive ints, got {input_shape!r}")
    return shape


def export_onnx(
    model_or_packed_path: nn.Module | str | os.PathLike,
    path: str | os.PathLike,
    *,
    input_shape: Sequence[int],
    opset: int = DEFAULT_OPSET,
    fold_bn: bool = False,
    model: nn.Module | None = None,
    mode: str = "auto",
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write an ONNX file whose quantized weights are int8 initializers behind DequantizeLinear.

    Two graphs (`ONNX_MODES`): "int8", for a model trained with ``quant.deploy=int8``, is ONNX Runtime's
    integer graph (`apprentice.export.int8_onnx`: every quantized conv a QLinearConv, every
    `apprentice.quant.Add` a QLinearAdd, BatchNorm folded, int32 biases), equal to the model within
    integer rounding; "qdq" (any other quantized model) quantizes each layer's input and weights
    around float ops (module notes). "auto" (default) picks "int8" for a deployable model.

    Args:
        model_or_packed_path: a (fake-)quantized model (any ``nn.Module`` prepared by
            `apprentice.quant.prepare`), or the path of a file written by `apprentice.export.save_packed`.
        path: destination ``.onnx`` file (written atomically).
        input_shape: ``(C, H, W)`` or ``(N, C, H, W)``; the batch axis is dynamic either way.
        opset: ONNX opset, 11..20 (default 17); per-channel weight scales and "int8" need >= 13.
        fold_bn: "qdq": fold BatchNorm into the preceding convs first (models only; a packed file keeps
            the folding it was saved with). "int8" always folds it into the integer layers.
        model: for a packed file of a model built by hand (no registered name), its float
            architecture, as for `apprentice.export.load_packed`.
        mode: "auto", "int8" or "qdq".
        metadata: extra ``metadata_props``, each value stored as JSON text (``apprentice export``
            records ``"classes"`` and ``"preprocess"`` here, for ``apprentice predict``).

    Returns:
        The quantization map, which is also stored in the file's ``metadata_props["apprentice"]``
        next to ``metadata_props["opset"]``, with ``"onnx": {"mode": ..., "float_layers": {layer: why}}``:
        the quantized layers that ONNX Runtime cannot run as integer kernels, and why ("int8").

    Raises:
        ApprenticeError: ONNX not installed ("pip install 'apprentice-kd[onnx]'"), bad opset, input
            shape or mode, a mode the model was not trained for, or an invalid packed file.
    """
    try:
        import onnx
    except ImportError:
        raise ApprenticeError("ONNX export needs the optional extra: pip install 'apprentice-kd[onnx]'") from None
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ApprenticeError(f"opset must be an integer in {MIN_OPSET}..{MAX_OPSET}, got {opset!r}")
    shape = _input_shape(input_shape)
    if isinstance(model_or_packed_path, nn.Module):
        tensors, qmap = packed_tensors(model_or_packed_path, fold_bn=fold_bn and mode != "int8")
        model = model_or_packed_path
    elif isinstance(model_or_packed_path, (str, os.PathLike)):
        tensors, qmap = read_packed(model_or_packed_path)
    else:
        raise ApprenticeError(f"export_onnx takes a model or a packed file path, got {type(model_or_packed_path).__name__}")
    mode = _resolve_mode(mode, qmap, opset)
    if mode == "int8":
        module, reasons = int8_module(tensors, qmap, model, fallback=_OnnxLayer)
        qmap["onnx"] = {"mode": mode, "float_layers": {n: r for n, r in reasons.items() if r is not None}}
    else:
        module = _onnx_module(tensors, qmap, opset, model)
        qmap["onnx"] = {"mode": mode}
    proto = onnx.load_from_string(_to_onnx(module, shape, opset))
    if mode == "int8":
        share_quantized(proto.graph)
    extra = [(str(k), json.dumps(v, separators=(",", ":"))) for k, v in (metadata or {}).items()]
    for key, value in (("apprentice", json.dumps(qmap, separators=(",", ":"))), ("opset", str(opset)), *extra):
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    write_export(os.fspath(path), proto.SerializeToString())
    return qmap
