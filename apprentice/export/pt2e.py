"""The PT2E graph of a deployable student: what ExecuTorch (XNNPACK) and LiteRT lower to int8 kernels.

Phones and small boards reach PyTorch models through ``torch.export`` and the PT2E quantized graph
(the form ``torchao``'s ``convert_pt2e`` writes): each quantized tensor a
``quantize_per_tensor -> dequantize_per_tensor`` int8 pair, int8 weights behind
``dequantize_per_channel``, float ops between. ExecuTorch's XNNPACK partitioner and LiteRT's
converter turn a ``dq -> conv -> q`` pattern into an int8 convolution and ``dq, dq -> add -> q`` into
an int8 add.

This module writes that graph from the student itself, not from a fresh calibration: it is the
integer graph of the int8 ONNX export (`apprentice.export.int8_onnx.int8_module`, BatchNorm folded
into per-channel weight scales, the bias as b_q·s_x·s_w) with PyTorch's ``quantized_decomposed``
ops in place of ONNX's QDQ pair. Codes are the uint8 codes of the trained quantizers shifted to int8
(q − 128 with zero point z − 128: the same values), so the runtime computes (Jacob et al., CVPR 2018,
eq. 7) what the trained student computes, within integer rounding of the bias and requantization.

One change of form for ExecuTorch, no change of value: the parameter-free zero-pad shortcut (option A,
``x[..., ::2, ::2]`` then zero channels) becomes a 1×1 stride-2 int8 conv whose weights place
channel i at i + before with code 1 and scale 1 (XNNPACK has no strided slice; its input and output
share one quantization grid, so the conv copies codes exactly and writes the zero point in the
padded channels).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from apprentice.errors import ApprenticeError, lookup
from apprentice.export.int8_onnx import int8_module, pt2e_weights, quantized_layers
from apprentice.export.onnx import _input_shape, _OnnxLayer
from apprentice.export.packed import packed_tensors, read_packed
from apprentice.models import ZeroPadShortcut
from apprentice.quant import replace_module

__all__ = ["RUNTIMES", "describe_runtime_export", "example_input", "pt2e_module"]


class _ShortcutConv(nn.Module):
    """A zero-pad shortcut as an int8 1×1 conv on its block input's grid (module notes)."""

    def __init__(self, shortcut: ZeroPadShortcut, channels: int, quantize: Any, unfolded: bool) -> None:
        super().__init__()
        self.stride = shortcut.stride
        before, out = shortcut.extra // 2, channels + shortcut.extra
        codes = torch.zeros(out, channels, 1, 1, dtype=torch.int8)
        codes[before:before + channels, :, 0, 0] = torch.eye(channels, dtype=torch.int8)
        self.register_buffer("codes", codes)
        if unfolded:
            self.register_buffer("weight", codes.float())
        self.register_buffer("scale", torch.ones(out))
        self.register_buffer("zero", torch.zeros(out, dtype=torch.int64))
        object.__setattr__(self, "_quantize", quantize)  # the add's quantizer of this input: not a child module

    def forward(self, x: Tensor) -> Tensor:
        w = pt2e_weights(self)
        return F.conv2d(self._quantize(x), w, None, self.stride)


def _swap_shortcuts(root: nn.Module, unfolded: bool) -> None:
    """Each zero-pad shortcut whose block adds it as the second operand, as a `_ShortcutConv`."""
    model = root.model
    for name, module in list(model.named_modules()):
        if not isinstance(module, ZeroPadShortcut):
            continue
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        add = getattr(parent, "add", None)
        quantize = getattr(add, "_quantize", None)
        if quantize is None:
            continue  # not a block of ours: the portable slice stays outside the delegate, still exact
        channels = getattr(parent, "conv1", None)
        codes = next((b for n, b in channels.named_buffers() if n.endswith("codes")), None) if channels else None
        if codes is None:
            continue
        replace_module(model, name, _ShortcutConv(module, codes.shape[1], quantize[1], unfolded))


#: Each runtime's form of the graph: how its int8 weights stand (`apprentice.export.int8_onnx.pt2e_weights`:
#: "folded" int8 codes behind dequantize_per_channel, as convert_pt2e writes them; "unfolded" float weights
#: behind quantize_per_channel -> dequantize_per_channel, as convert_pt2e(fold_quantize=False) writes them),
#: and whether a zero-pad shortcut becomes an int8 conv (XNNPACK has no strided slice; LiteRT has an int8 one).
RUNTIMES: dict[str, dict[str, Any]] = {
    "executorch": {"weights": "folded", "shortcut_conv": True},
    "litert": {"weights": "unfolded", "shortcut_conv": False},
}


def pt2e_module(model_or_packed_path: nn.Module | str | os.PathLike, *, runtime: str,
                model: nn.Module | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The PT2E-form module of a deployable student (``torch.export`` it), and its quantization map.

    Args:
        model_or_packed_path: a deployable student (`apprentice.quant.prepare` with ``deploy="int8"``)
            or the path of its packed file.
        runtime: a `RUNTIMES` name, the graph's form.
        model: for a packed file of a model built by hand, its float architecture.

    The map gains ``"float_layers": {layer: why}``, the quantized layers that stay float ops (as the
    int8 ONNX export reports them: a float first conv and classifier, activations below 8 bits, ...).

    Raises:
        ApprenticeError: a student not trained deployable (``quant.deploy=int8``), or an invalid packed file.
    """
    form = lookup(RUNTIMES, runtime, "PT2E runtime")
    if isinstance(model_or_packed_path, nn.Module):
        tensors, qmap = packed_tensors(model_or_packed_path)
        model = model_or_packed_path
    else:
        tensors, qmap = read_packed(model_or_packed_path)
    if qmap.get("deploy") != "int8":
        raise ApprenticeError("an int8 ExecuTorch or LiteRT file needs a student trained deployable "
                              "(quant.deploy=int8): this one's residual adds and block inputs are float, so an "
                              "integer graph would differ from it; train or fine-tune it with quant.deploy=int8")
    module, reasons = int8_module(tensors, qmap, model, fallback=_OnnxLayer, pt2e=form["weights"])
    if form["shortcut_conv"]:
        _swap_shortcuts(module, form["weights"] == "unfolded")
    qmap["float_layers"] = {n: r for n, r in reasons.items() if r is not None}
    return module, qmap


def example_input(input_shape: Sequence[int]) -> tuple[Tensor]:
    """A batch of one image of ``(C, H, W)`` (checked as the ONNX export checks it; the files take batch 1)."""
    return (torch.zeros((1, *_input_shape(input_shape)[1:])),)


def describe_runtime_export(qmap: dict[str, Any], runtime: str) -> list[str]:
    """Lines saying what `export_executorch` or `export_litert` wrote: how many quantized layers run as
    int8 kernels, which stay float and why, and (ExecuTorch) the ops left to the portable kernels."""
    info = qmap.get(runtime, {})
    quantized = quantized_layers(qmap)
    floats = info.get("float_layers", {})
    lines = []
    if runtime == "executorch":
        int8 = set(info["delegated"]["int8"])
        lines.append(f"int8 program: {len([n for n in quantized if n in int8])} of {len(quantized)} quantized layers "
                     f"run as XNNPACK int8 kernels; float in XNNPACK: {', '.join(info['delegated']['float']) or 'none'}")
        portable = info.get("portable", {})
        if portable:
            lines.append("  outside XNNPACK (portable kernels): " + ", ".join(f"{n} {op}" for op, n in portable.items()))
    else:
        ops, named = info.get("ops", {}), info.get("layers", {"int8": [], "float": []})
        lines.append(f"int8 model: {len([n for n in quantized if n in set(named['int8'])])} of {len(quantized)} "
                     f"quantized layers run as int8 kernels; float kernels: {', '.join(named['float']) or 'none'}")
        lines.append("  kernels: int8 " + ", ".join(f"{n} {op}" for op, n in ops.get("int8", {}).items())
                     + "; float " + (", ".join(f"{n} {op}" for op, n in ops.get("float", {}).items()) or "none"))
    return lines + [f"  float: {name}: {why}" for name, why in floats.items()]
