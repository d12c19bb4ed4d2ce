"""Tests of apprentice.export.pt2e: the PT2E graph of a deployable student computes what the student
computes, with the student's own scales and zero points (no calibration), in each runtime's form."""

from __future__ import annotations

import pytest
import torch
from test_int8_onnx import _deployable

from apprentice.errors import ApprenticeError
from apprentice.export.pt2e import RUNTIMES, describe_runtime_export, pt2e_module
from apprentice.models import ZeroPadShortcut, build_model
from apprentice.quant import prepare


def _ops(module: torch.nn.Module, x: torch.Tensor) -> list[str]:
    graph = torch.export.export(module, (x[:1],)).graph
    return [str(n.target) for n in graph.nodes if n.op == "call_function"]


@pytest.mark.parametrize("runtime", list(RUNTIMES))
def test_the_graph_equals_the_student_and_carries_its_scales(runtime) -> None:
    model = _deployable("resnet8", {"shortcut": "A"}, 16)
    module, qmap = pt2e_module(model, runtime=runtime)
    x = torch.randn(256, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref, out = model(x), module(x)
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.99
    assert (out - ref).abs().max() <= 0.05 * ref.abs().max()  # the bias rounded to int32 codes, as in the int8 ONNX
    ops = _ops(module, x)
    quantize = [o for o in ops if "quantize_per_tensor" in o and "dequantize" not in o]
    # every activation quantizer of the student is one q node with its own scale: conv1's input,
    # each add's own quantizers, ... (the count is the integer graph's, the scales the trained ones)
    scale = model.layer1[0].conv1.activation_scale()
    graph = torch.export.export(module, (x[:1],)).graph
    scales = {n.args[1] for n in graph.nodes if "quantize_per_tensor" in str(n.target)}
    assert quantize and any(abs(s - scale) < 1e-9 for s in scales)
    folded = RUNTIMES[runtime]["weights"] == "folded"
    assert any("quantize_per_channel" in o and "dequantize" not in o for o in ops) != folded
    assert qmap["float_layers"] == {"conv1": "not quantized (kept float by the recipe's exclude or layers)",
                                    "fc": "not quantized (kept float by the recipe's exclude or layers)"}


def test_a_zero_pad_shortcut_becomes_an_exact_int8_conv_for_executorch() -> None:
    model = _deployable("resnet8", {"shortcut": "A"}, 16)
    executorch, _ = pt2e_module(model, runtime="executorch")
    litert, _ = pt2e_module(model, runtime="litert")
    assert not any(isinstance(m, ZeroPadShortcut) for m in executorch.modules())
    assert any(isinstance(m, ZeroPadShortcut) for m in litert.modules())  # LiteRT has an int8 strided slice
    x = torch.randn(64, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(executorch(x), litert(x))  # the same values: the conv copies codes on one grid


def test_a_student_that_is_not_deployable_is_refused() -> None:
    model = build_model("resnet8", num_classes=10, in_channels=1)
    prepare(model, "4W/8A")
    with pytest.raises(ApprenticeError, match=r"needs a student trained deployable \(quant.deploy=int8\)"):
        pt2e_module(model, runtime="executorch")
    with pytest.raises(ApprenticeError, match=r"unknown PT2E runtime 'tvm'"):
        pt2e_module(_deployable("resnet8", {"shortcut": "A"}, 16), runtime="tvm")


def test_describe_names_the_kernels_and_the_float_layers() -> None:
    qmap = {"layers": {"a": {"kind": "conv"}, "b": {"kind": "conv"}, "add": {"kind": "add"}},
            "executorch": {"float_layers": {"fc": "not quantized"}, "portable": {"slice_copy": 2},
                           "delegated": {"int8": ["a", "b"], "float": ["fc"]}},
            "litert": {"float_layers": {}, "ops": {"int8": {"CONV_2D": 1, "ADD": 1}, "float": {"CONV_2D": 1}},
                       "layers": {"int8": ["a"], "float": ["b"]}}}
    lines = describe_runtime_export(qmap, "executorch")
    assert lines[0] == "int8 program: 2 of 2 quantized layers run as XNNPACK int8 kernels; float in XNNPACK: fc"
    assert "2 slice_copy" in lines[1] and lines[2] == "  float: fc: not quantized"
    assert describe_runtime_export(qmap, "litert") == [
        "int8 model: 1 of 2 quantized layers run as int8 kernels; float kernels: b",
        "  kernels: int8 1 CONV_2D, 1 ADD; float 1 CONV_2D"]
