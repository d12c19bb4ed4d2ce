"""The inference runtimes the ONNX benchmarks compare: ONNX Runtime and (optional extra ``openvino``) OpenVINO.

* `ort_session`: ONNX Runtime, CPUExecutionProvider, all graph optimizations, ``threads`` intra-op
  threads and one inter-op thread (sequential execution); the optimized graph can be saved.
* `ort_ops`: op types of the graph ONNX Runtime runs (its optimized model, counted).
* `ort_anchor`: ONNX Runtime's own static int8 quantization of a float ONNX file (`quantize_static`:
  QDQ format, uint8 activations, int8 per-channel weights, calibrated on random inputs), the
  reference an integer graph should match in speed.
* `openvino_model`, `openvino_convs`: the same file compiled by OpenVINO for the CPU, and the
  precision each of its convolutions runs in.
"""

from __future__ import annotations

import collections
import os
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np


def ort_session(path: str, threads: int, *, optimized: str | None = None, config: dict[str, str] | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3  # the NCHWc "hardware specific" note when saving the optimized graph
    for k, v in (config or {}).items():
        so.add_session_config_entry(k, v)
    if optimized:
        so.optimized_model_filepath = optimized
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def ort_ops(path: str, threads: int) -> dict[str, int]:
    """Op counts of the graph ONNX Runtime runs for ``path`` (its saved optimized model)."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        optimized = os.path.join(tmp, "optimized.onnx")
        ort_session(path, threads, optimized=optimized)
        nodes = onnx.load(optimized).graph.node
    return dict(collections.Counter(n.op_type for n in nodes).most_common())


def ort_runner(path: str, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    sess = ort_session(path, threads)
    return lambda x: sess.run(None, {"input": x})[0]


class _RandomReader:
    """Calibration inputs for `quantize_static`: ``count`` random batches (the weights are random too)."""

    def __init__(self, shape: tuple[int, ...], count: int, seed: int) -> None:
        g = np.random.default_rng(seed)
        self._batches = iter([{"input": g.standard_normal(shape, dtype=np.float32)} for _ in range(count)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def ort_anchor(float_path: str, out_path: str, input_shape: tuple[int, ...], *, batches: int = 8, seed: int = 0) -> None:
    """ONNX Runtime's own int8 model of a float ONNX file (QDQ, uint8 activations, int8 per-channel weights)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        prepared = os.path.join(tmp, "prepared.onnx")
        quant_pre_process(float_path, prepared, skip_symbolic_shape=True)
        quantize_static(prepared, out_path, _RandomReader(input_shape, batches, seed), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def openvino_model(path: str, threads: int) -> Any:
    """``path`` compiled by OpenVINO for the CPU: ``threads`` inference threads, latency hint."""
    import openvino as ov

    core = ov.Core()
    return core.compile_model(core.read_model(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                             "PERFORMANCE_HINT": "LATENCY"})


def openvino_runner(path: str, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    request = openvino_model(path, threads).create_infer_request()
    return lambda x: request.infer({0: x})[0]


def openvino_convs(path: str, threads: int) -> dict[str, int]:
    """``{precision: count}`` of the convolutions (and fully connected layers) OpenVINO runs."""
    counts: dict[str, int] = collections.Counter()
    for op in openvino_model(path, threads).get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str)
        if kind in ("Convolution", "FullyConnected"):
            counts[f"{kind} {info['runtimePrecision'].astype(str)}"] += 1
    return dict(counts)
