"""The phone runtimes the speed benchmark compares, ExecuTorch (XNNPACK delegate) and LiteRT: each one's
own FP32 file and own int8 file of a float network (the anchors), and a lean runner for any file.

* `executorch_fp32`, `executorch_anchor`: ``torch.export`` at batch 1 and
  ``to_edge_transform_and_lower(partitioner=[XnnpackPartitioner()])``; the anchor is PyTorch's PT2E
  post-training quantization first (``prepare_pt2e`` with ExecuTorch's ``XNNPACKQuantizer``,
  symmetric per-channel int8 weights, static int8 activations, calibrated on random images,
  ``convert_pt2e``): what ExecuTorch's documentation does to get an int8 model.
* `litert_fp32`, `litert_anchor`: ``litert_torch.convert``; the anchor is LiteRT's own PT2E flow
  (``litert_torch``'s ``PT2EQuantizer``, symmetric per-channel, static, calibrated likewise, passed to
  the converter as its ``quant_config``).
* `executorch_runner`, `litert_runner`: call a file on one batch-1 input; ExecuTorch's XNNPACK thread
  pool is process-wide (`executorch_threads`), LiteRT's interpreter takes its own thread count.
* `executorch_kernels` (`counted`), `litert_kernels`: what runs where: the convs/linears XNNPACK runs in
  int8 or float and the ops left to ExecuTorch's portable kernels; LiteRT's conv/FC/add kernels by input type.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from apprentice.export.pte import delegated_layers
from apprentice.export.tflite import kernel_ops


def _calibrated(model: nn.Module, quantizer: Any, shape: tuple[int, ...], batches: int, seed: int, *,
                fold: bool = True) -> nn.Module:
    """PT2E post-training quantization of ``model`` with ``quantizer``, observers fed random images;
    ``fold=False`` keeps float weights behind quantize ops (LiteRT's converter needs that form, as its own
    tests convert; ExecuTorch's partitioner wants the folded int8 constants)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    example = (torch.zeros(1, *shape),)
    graph = torch.export.export(model.eval(), example).module()
    prepared = prepare_pt2e(graph, quantizer)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(batches):
            prepared(torch.randn(1, *shape, generator=g))
    return convert_pt2e(prepared, fold_quantize=fold)


def _lower_executorch(module: nn.Module, shape: tuple[int, ...], path: str) -> dict[str, Any]:
    logging.getLogger("torchao").setLevel(logging.ERROR)
    from executorch import exir
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
        XnnpackPartitioner,
    )

    with torch.no_grad():
        program = torch.export.export(module, (torch.zeros(1, *shape),))
    edge = exir.to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    kernels = executorch_kernels(edge.exported_program().graph_module)  # before to_executorch adds memory ops
    with open(path, "wb") as f:
        f.write(edge.to_executorch().buffer)
    return kernels


def executorch_fp32(model: nn.Module, shape: tuple[int, ...], path: str) -> dict[str, Any]:
    """The float network as an XNNPACK-lowered ``.pte``; returns where its ops run."""
    return _lower_executorch(model.eval(), shape, path)


def executorch_anchor(model: nn.Module, shape: tuple[int, ...], path: str, *, batches: int = 8,
                      seed: int = 0) -> dict[str, Any]:
    """ExecuTorch's own int8 model of the float network (PT2E PTQ, XNNPACKQuantizer), lowered to XNNPACK."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    return _lower_executorch(_calibrated(model, quantizer, shape, batches, seed), shape, path)


def executorch_kernels(graph_module: torch.fx.GraphModule) -> dict[str, Any]:
    """Convs/linears XNNPACK runs in int8 and in float, and the ops left to the portable kernels, by name."""
    return counted(delegated_layers(graph_module))


def counted(report: dict[str, Any]) -> dict[str, Any]:
    """A `delegated_layers` report (also an ExecuTorch export's) as counts: the table's kernel column."""
    return {"xnnpack": {k: len(v) for k, v in report["delegated"].items()}, "portable": report["portable"],
            "delegate_calls": report.get("delegate_calls")}


def _litert_write(converted: Any, path: str) -> dict[str, Any]:
    converted.export(path)
    with open(path, "rb") as f:
        return litert_kernels(f.read())


def litert_fp32(model: nn.Module, shape: tuple[int, ...], path: str) -> dict[str, Any]:
    """The float network converted by ``litert_torch``; returns its kernels by input type."""
    import litert_torch

    with torch.no_grad():
        return _litert_write(litert_torch.convert(model.eval(), (torch.zeros(1, *shape),)), path)


def litert_anchor(model: nn.Module, shape: tuple[int, ...], path: str, *, batches: int = 8,
                  seed: int = 0) -> dict[str, Any]:
    """LiteRT's own int8 model of the float network (its PT2E quantizer, static, per-channel)."""
    import litert_torch
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )
    from litert_torch.quantize.quant_config import QuantConfig

    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    quantized = _calibrated(model, quantizer, shape, batches, seed, fold=False)
    with torch.no_grad():
        converted = litert_torch.convert(quantized, (torch.zeros(1, *shape),),
                                         quant_config=QuantConfig(pt2e_quantizer=quantizer))
    return _litert_write(converted, path)


def litert_kernels(data: bytes) -> dict[str, Any]:
    return {"ops": kernel_ops(data)}


def executorch_threads(threads: int) -> None:
    """ExecuTorch's XNNPACK thread pool is one per process: resize it (every .pte variant shares it)."""
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

    _unsafe_reset_threadpool(threads)


def executorch_runner(path: str) -> Callable[[np.ndarray], np.ndarray]:
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(path).load_method("forward")
    return lambda x: method.execute([torch.from_numpy(x)])[0].numpy()


def litert_runner(path: str, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=threads)  # default delegate: XNNPACK, as on phones
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    (s_in, z_in), (s_out, z_out) = inp["quantization"], out["quantization"]

    def run(x: np.ndarray) -> np.ndarray:
        if inp["dtype"] != np.float32:  # an int8 input (LiteRT's own quantizer may make one): the app quantizes
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / s_in) + z_in, info.min, info.max).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])
        return (y.astype(np.float32) - z_out) * s_out if out["dtype"] != np.float32 else y.copy()
    return run


def count_ops(counts: dict[str, Any]) -> str:
    """One line of a kernel report for a results table."""
    if "xnnpack" in counts:
        portable = collections.Counter(counts["portable"])
        x = counts["xnnpack"]
        calls = counts.get("delegate_calls")
        return f"XNNPACK convs/linears: {x['int8']} int8, {x['float']} float" + (
            f" in {calls} delegate call{'s' if calls != 1 else ''}" if calls else "") + (
            f"; portable: {', '.join(f'{n} {k}' for k, n in portable.most_common())}" if portable else "")
    ops = counts["ops"]
    return "; ".join(f"{kind}: {', '.join(f'{n} {k}' for k, n in sorted(ops[kind].items()))}"
                     for kind in ("int8", "float") if ops.get(kind))
