"""LiteRT (TFLite): a deployable student as an int8 ``.tflite`` model.

The student's own PT2E graph (`apprentice.export.pt2e`, weights "unfolded": float weights behind
``quantize_per_channel -> dequantize_per_channel``, as ``convert_pt2e(fold_quantize=False)`` writes
them) goes through ``litert_torch.convert`` in its static-quantization mode: the converter turns each
``dq -> conv -> q`` into an int8 CONV_2D or DEPTHWISE_CONV_2D and each ``dq, dq -> add -> q`` into an
int8 ADD, keeping the graph's scales and zero points (it calibrates nothing: the PT2E quantizer it is
given only tells it that the graph is statically quantized). The model takes a batch of 1.

The metadata (``apprentice export`` records the run's config, preprocessing and class names) is a
TFLite metadata entry, ``apprentice``, holding JSON text.

``litert-torch`` (converter) and ``ai-edge-litert`` (interpreter) are the optional extra
``apprentice-kd[litert]``.
"""

from __future__ import annotations

import collections
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from apprentice.errors import ApprenticeError
from apprentice.export.int8_onnx import quantized_layers
from apprentice.export.packed import write_export
from apprentice.export.pt2e import example_input, pt2e_module

__all__ = ["METADATA_NAME", "LiteRTModel", "export_litert", "kernel_layers", "kernel_ops"]

METADATA_NAME = "apprentice"
_EXTRA = "LiteRT export needs the optional extra: pip install 'apprentice-kd[litert]'"
#: The TFLite ops counted by `kernel_ops`: the layers' kernels.
KERNELS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD")


def export_litert(model_or_packed_path: nn.Module | str | os.PathLike, path: str | os.PathLike, *,
                  input_shape: Sequence[int], model: nn.Module | None = None,
                  metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write a deployable student as an int8 LiteRT ``.tflite`` model.

    Args:
        model_or_packed_path: a deployable student (``quant.deploy=int8``) or its packed file.
        path: destination ``.tflite`` (written atomically).
        input_shape: ``(C, H, W)`` of one image; the model takes a batch of 1.
        model: for a packed file of a model built by hand, its float architecture.
        metadata: stored as JSON text in the model's ``apprentice`` metadata entry.

    Returns:
        The quantization map with ``"litert": {"float_layers": {layer: why}, "ops": {"int8": {op: n},
        "float": {op: n}}}``: the quantized layers that stay float (as in the int8 ONNX export) and the
        kernels of the written model by the type of their input.
    """
    try:
        import litert_torch
        from litert_torch.quantize.pt2e_quantizer import (
            PT2EQuantizer,
            get_symmetric_quantization_config,
        )
        from litert_torch.quantize.quant_config import QuantConfig
    except ImportError:
        raise ApprenticeError(_EXTRA) from None
    module, qmap = pt2e_module(model_or_packed_path, runtime="litert", model=model)
    # Read as "this graph is statically quantized" only; the graph's own q/dq ops carry the values.
    flag = QuantConfig(pt2e_quantizer=PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True)))
    with torch.no_grad():
        converted = litert_torch.convert(module.eval(), example_input(input_shape), quant_config=flag)
    with tempfile.TemporaryDirectory() as tmp:
        converted.export(os.path.join(tmp, "model.tflite"))
        with open(os.path.join(tmp, "model.tflite"), "rb") as f:
            data = f.read()
    meta = {**(metadata or {}), "apprentice": qmap}
    data = with_metadata(data, METADATA_NAME, json.dumps(meta, default=str))
    qmap["litert"] = {"float_layers": qmap.pop("float_layers"), "ops": kernel_ops(data),
                      "layers": kernel_layers(data, quantized_layers(qmap))}
    write_export(os.fspath(path), data)
    return qmap


def with_metadata(model: bytes, name: str, text: str) -> bytes:
    """A ``.tflite`` flatbuffer with one more metadata entry, ``name`` -> ``text`` (UTF-8) in a new buffer."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    tree = schema.ModelT.InitFromPackedBuf(model, 0)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(text.encode(), dtype=np.uint8)
    tree.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = name, len(tree.buffers) - 1
    tree.metadata = [m for m in (tree.metadata or []) if m.name != name.encode()] + [entry]
    builder = flatbuffers.Builder(len(model) + len(text) + 1024)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def read_metadata(model: bytes, name: str) -> str | None:
    """The text of metadata entry ``name`` of a ``.tflite`` flatbuffer, or None."""
    from ai_edge_litert import schema_py_generated as schema

    tree = schema.Model.GetRootAsModel(model, 0)
    for i in range(tree.MetadataLength()):
        entry = tree.Metadata(i)
        if entry.Name() == name.encode():
            return tree.Buffers(entry.Buffer()).DataAsNumpy().tobytes().decode()
    return None


def _interpreter(model: bytes, *, delegates: bool = True) -> Any:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.AUTO if delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = Interpreter(model_content=model, experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    return interpreter


def _layer_pattern(layer: str) -> re.Pattern[str]:
    """How ``litert_torch`` names an op's output after the module it ran in: "Class_attr" segments of the
    module path joined by "/" under the export root's ``model`` (several fused ops joined by ";;")."""
    path = "/".join(rf"[^/;]*_{re.escape(part)}" for part in layer.split("."))
    return re.compile(rf"_model/{path}(;|$)")


def _kernels(model: bytes) -> Iterator[tuple[str, str, list[str]]]:
    """``(op, "int8" | "float", tensor names)`` of each `KERNELS` op, by its input's type, the names those of
    its outputs and weights (read without the default XNNPACK delegate, which would hide the ops in one
    DELEGATE node)."""
    interpreter = _interpreter(model, delegates=False)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    for op in interpreter._get_ops_details():
        if op["op_name"] in KERNELS:
            kind = "int8" if tensors[op["inputs"][0]]["dtype"] == np.int8 else "float"
            yield op["op_name"], kind, [tensors[i]["name"] for i in (*op["outputs"], *op["inputs"][1:2]) if i >= 0]


def kernel_layers(model: bytes, layers: Sequence[str]) -> dict[str, list[str]]:
    """``{"int8": [layer], "float": [layer]}``: which of ``layers`` (module names) run as an int8 or a float
    conv / fully-connected kernel, read from the names of each kernel's output and weights tensors."""
    patterns = {name: _layer_pattern(name) for name in layers}
    found: dict[str, list[str]] = {"int8": [], "float": []}
    for op, kind, names in _kernels(model):
        layer = next((n for n, pat in patterns.items() if any(pat.search(t) for t in names)), None)
        if op != "ADD" and layer is not None:
            found[kind].append(layer)
    return found


def kernel_ops(model: bytes) -> dict[str, dict[str, int]]:
    """``{"int8": {op: n}, "float": {op: n}}``: the `KERNELS` of a ``.tflite`` model by their input's type."""
    counts: dict[str, collections.Counter] = {"int8": collections.Counter(), "float": collections.Counter()}
    for op, kind, _ in _kernels(model):
        counts[kind][op] += 1
    return {k: dict(v) for k, v in counts.items()}


class LiteRTModel(nn.Module):
    """A ``.tflite`` file as a module: ``forward(N×C×H×W) -> logits``, one image at a time through the
    LiteRT interpreter (the model takes a batch of 1), and its ``metadata`` (``{}`` when it has none)."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ApprenticeError(f"LiteRT file {path!r} does not exist")
        try:
            import ai_edge_litert  # noqa: F401
        except ImportError:
            raise ApprenticeError(_EXTRA) from None
        with open(path, "rb") as f:
            data = f.read()
        try:
            self._interpreter = _interpreter(data)
            text = read_metadata(data, METADATA_NAME)
        except Exception as e:  # noqa: BLE001 - the interpreter raises ValueError/RuntimeError for bad files
            raise ApprenticeError(f"{path!r} is not a loadable LiteRT model: {str(e).splitlines()[0]}") from None
        self.metadata: dict[str, Any] = json.loads(text) if text else {}
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self.path = path

    def forward(self, x: Tensor) -> Tensor:
        out = []
        for image in x.float().numpy():
            self._interpreter.set_tensor(self._input, image[None])
            self._interpreter.invoke()
            out.append(torch.from_numpy(self._interpreter.get_tensor(self._output).copy()))
        return torch.cat(out)
