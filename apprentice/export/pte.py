"""ExecuTorch: a deployable student as a ``.pte`` program lowered to XNNPACK's int8 kernels.

The student's own PT2E graph (`apprentice.export.pt2e`: its trained codes, scales and zero points,
BatchNorm folded) is exported with ``torch.export`` at batch 1 (what a phone runs) and lowered with
``to_edge_transform_and_lower(partitioner=[XnnpackPartitioner()])``: every ``dq -> conv -> q`` becomes an
XNNPACK int8 convolution, every ``dq, dq -> add -> q`` an int8 add; what the partitioner leaves out
runs as ExecuTorch's portable kernels (the float first conv and classifier are delegated as float
ops). The metadata (``apprentice export`` records the run's config, preprocessing and class names) is
a constant method of the program, ``apprentice_metadata``, returning JSON text.

``executorch`` is the optional extra ``apprentice-kd[executorch]``.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from apprentice.errors import ApprenticeError
from apprentice.export.packed import write_export
from apprentice.export.pt2e import example_input, pt2e_module

__all__ = ["METADATA_METHOD", "ExecuTorchModel", "delegated_layers", "export_executorch"]

METADATA_METHOD = "apprentice_metadata"
_EXTRA = "ExecuTorch export needs the optional extra: pip install 'apprentice-kd[executorch]'"


def _executorch() -> Any:
    # torchao (imported by executorch) warns once per CUDA kernel library a CPU build cannot load
    logging.getLogger("torchao").setLevel(logging.ERROR)
    try:
        import executorch.kernels.quantized  # noqa: F401  (out variants of the q/dq ops left to portable kernels)
        from executorch import exir
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
            XnnpackPartitioner,
        )
    except ImportError:
        raise ApprenticeError(_EXTRA) from None
    return exir, XnnpackPartitioner


def export_executorch(model_or_packed_path: nn.Module | str | os.PathLike, path: str | os.PathLike, *,
                      input_shape: Sequence[int], model: nn.Module | None = None,
                      metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write a deployable student as an ExecuTorch ``.pte`` file whose convs run as XNNPACK int8 kernels.

    Args:
        model_or_packed_path: a deployable student (``quant.deploy=int8``) or its packed file.
        path: destination ``.pte`` (written atomically).
        input_shape: ``(C, H, W)`` of one image; the program takes a batch of 1.
        model: for a packed file of a model built by hand, its float architecture.
        metadata: stored as JSON text behind the program's ``apprentice_metadata`` method.

    Returns:
        The quantization map with ``"executorch": {"float_layers": {layer: why},
        "delegated": {"int8": [...], "float": [...]}, "portable": {op: count}, "delegate_calls": n}``: the
        quantized layers that stay float (as in the int8 ONNX export), the layers whose conv/linear XNNPACK
        runs in int8 or in float, the ops left to the portable kernels, and the XNNPACK calls per inference.
    """
    exir, partitioner = _executorch()
    module, qmap = pt2e_module(model_or_packed_path, runtime="executorch", model=model)
    with torch.no_grad():
        program = torch.export.export(module, example_input(input_shape))
    meta = {**(metadata or {}), "apprentice": qmap}
    edge = exir.to_edge_transform_and_lower(program, partitioner=[partitioner()],
                                            constant_methods={METADATA_METHOD: json.dumps(meta, default=str)})
    report = delegated_layers(edge.exported_program().graph_module, set(qmap["layers"]))
    qmap["executorch"] = {"float_layers": qmap.pop("float_layers"), **report}
    write_export(os.fspath(path), edge.to_executorch().buffer)
    return qmap


def _layer(node: torch.fx.Node, layers: set[str]) -> str:
    """The model layer a node was traced in: the innermost module path, less the export's wrappers (the
    root, an integer layer's conv, a layer's output quantizer), the nearest named one of ``layers``."""
    stack = list((node.meta.get("nn_module_stack") or {}).values())
    path = (stack[-1][0] if stack else node.name).removeprefix("L['self'].").removeprefix("model.")
    parts = path.split(".")
    return next((".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in layers), path)


#: a delegated conv/linear op -> the positions of its input and its weights
_OPERANDS = {"convolution": (0, 1), "linear": (0, 1), "addmm": (1, 2), "mm": (0, 1)}


def _is_dequantize(node: Any) -> bool:
    while isinstance(node, torch.fx.Node) and _op_name(node) in ("permute_copy", "permute", "t_copy", "t"):
        node = node.args[0]  # a linear's transposed weights
    return isinstance(node, torch.fx.Node) and "dequantize_per" in str(node.target)


def delegated_layers(graph_module: torch.fx.GraphModule, layers: set[str] = frozenset()) -> dict[str, Any]:
    """Which convs and linears XNNPACK runs in int8 (input and weights dequantized int8) or float, by layer,
    the ops left outside the delegates (the portable kernels), and how many delegate calls the program
    makes (each a separate XNNPACK runtime call: one is what a fully lowered network takes)."""
    int8, floats, portable, delegates = [], [], collections.Counter(), 0
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        if "executorch_call_delegate" in str(node.target):
            delegates += 1
            lowered = getattr(graph_module, node.args[0].target)
            for inner in lowered.original_module.graph.nodes:
                if inner.op == "call_function" and _op_name(inner) in _OPERANDS:
                    x, w = _OPERANDS[_op_name(inner)]
                    quantized = _is_dequantize(inner.args[x]) and _is_dequantize(inner.args[w])
                    (int8 if quantized else floats).append(_layer(inner, layers))
        elif "getitem" not in str(node.target):
            portable[_op_name(node)] += 1
    return {"delegated": {"int8": int8, "float": floats}, "portable": dict(portable), "delegate_calls": delegates}


def _op_name(node: torch.fx.Node) -> str:
    """``aten.convolution.default`` -> ``convolution``; an edge op's name the same way."""
    text = str(getattr(node.target, "_name", None) or node.target)
    return text.split("::")[-1].split(".")[0] if "::" in text else text.split(".")[-2 if text.count(".") >= 2 else -1]


@contextlib.contextmanager
def _native_stderr_dropped() -> Iterator[None]:
    """File descriptor 2 pointed at /dev/null while the block runs (C++ logging bypasses sys.stderr)."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


class ExecuTorchModel(nn.Module):
    """A ``.pte`` file as a module: ``forward(N×C×H×W) -> logits``, one image at a time through ExecuTorch's
    runtime (the program takes a batch of 1), and its ``metadata`` (``{}`` when the file has none)."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        try:
            from executorch.runtime import Runtime
        except ImportError:
            raise ApprenticeError(_EXTRA) from None
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ApprenticeError(f"ExecuTorch file {path!r} does not exist")
        with open(path, "rb") as f:
            header = f.read(8)
        if header[4:6] != b"ET":  # the flatbuffer's file identifier (ET12, ...): the runtime would log to stderr first
            raise ApprenticeError(f"{path!r} is not a loadable ExecuTorch program: no ExecuTorch header")
        try:
            with _native_stderr_dropped():  # the runtime's C++ log lines (cpuinfo probes) on every load
                program = Runtime.get().load_program(path)
                self._method = program.load_method("forward")
        except Exception as e:  # noqa: BLE001 - the runtime raises RuntimeError/ValueError for bad files
            raise ApprenticeError(f"{path!r} is not a loadable ExecuTorch program: {str(e).splitlines()[0]}") from None
        self.metadata: dict[str, Any] = {}
        if METADATA_METHOD in program.method_names:
            self.metadata = json.loads(program.load_method(METADATA_METHOD).execute([])[0])
        self.path = path

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self._method.execute([x[i:i + 1].float().contiguous()])[0] for i in range(len(x))])
