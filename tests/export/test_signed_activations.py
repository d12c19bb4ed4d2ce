"""Signed inputs, quantized with a zero point ("asym"), exactly through training, the packed file, the QDQ
ONNX export and the integer ONNX graph, on a tiny network built like the stock ones (SiLU, hard-swish,
squeeze-excitation, a depthwise conv and a linear bottleneck without a ReLU)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from apprentice.export import export_onnx, load_packed, save_packed
from apprentice.export.int8_onnx import runtime_ops
from apprentice.models import build_model
from apprentice.quant import prepare, quantized_layers
from apprentice.quant.report import activation_report, summarize_report

ort = pytest.importorskip("onnxruntime")


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(channels, 4, 1), nn.Conv2d(4, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.expand(nn.functional.silu(self.reduce(x.mean((2, 3), keepdim=True)))))


def stocklike() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU(),             # 0-2: stem, SiLU
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8),               # 3-4: depthwise, no ReLU
        nn.Hardswish(), SqueezeExcite(8),                                         # 5-6
        nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16),                                  # 7-8: linear bottleneck
        nn.Conv2d(16, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 1),                       # 9-11: 11 reads a ReLU's output
        nn.Flatten(), nn.Linear(8 * 64, 3))


def three_steps(net: nn.Module, batch: int = 16) -> nn.Module:
    """Three SGD steps on random images (the first calibrates the zero points), then eval mode."""
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    for _ in range(3):
        loss = net.train()(torch.randn(batch, 1, 8, 8)).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def trained(**options) -> nn.Sequential:
    net = stocklike()
    prepare(net, "4W/8A", **options)
    return three_steps(net)


def test_each_layer_takes_a_zero_point_where_its_input_is_signed_and_none_after_a_relu():
    net = trained()
    plan = quantized_layers(net)
    assert {p.activations.quantizer for p in plan.values()} == {"asym"}
    zero = {n: p.activations.zero_point for n, p in plan.items()}
    assert zero["11"] == 0 and all(zero[n] > 0 for n in ("3", "7", "9", "6.reduce", "6.expand"))
    report = activation_report(net, torch.randn(64, 1, 8, 8))
    assert report["3"].negative > 0.2 and report["3"].below < 0.05  # signed input, kept
    assert "5 of 6 layers signed" in summarize_report(report)[0]


def test_an_unsigned_quantizer_on_a_signed_input_is_reported_and_a_rule_can_choose_it():
    net = trained(layers=[("3", "4W/8A clip"), ("*", "4W/8A")])
    assert quantized_layers(net)["3"].activations.quantizer == "clip"
    report = activation_report(net, torch.randn(64, 1, 8, 8))
    assert report["3"].below == report["3"].negative > 0.2
    assert any("layer '3'" in line and "unsigned 'clip' quantizer makes it 0" in line for line in summarize_report(report))


def test_the_papers_resnets_keep_unsigned_activations():
    plan = prepare(build_model("resnet8"), "2W/8A")
    assert {p.activations.quantizer for p in plan.values()} == {"clip"}


def test_signed_layers_are_exact_through_the_packed_file_and_the_qdq_onnx(tmp_path):
    net, x = trained(), torch.randn(64, 1, 8, 8)
    with torch.no_grad():
        ref = net(x)
    save_packed(net, tmp_path / "m.safetensors")
    with torch.no_grad():
        assert torch.equal(load_packed(tmp_path / "m.safetensors", model=stocklike())(x), ref)
    export_onnx(net, tmp_path / "m.onnx", input_shape=(1, 8, 8))
    out = torch.from_numpy(ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
                           .run(None, {"input": x.numpy()})[0])
    # Float ops in another order flip a few roundings; an unsigned range would lose every negative input.
    assert (out.argmax(1) == ref.argmax(1)).float().mean().item() >= 0.98
    assert (out - ref).abs().max().item() <= 1e-2 * ref.abs().max().item()


def test_a_signed_input_runs_as_an_integer_kernel_with_its_zero_point_in_the_int8_graph(tmp_path):
    """MobileNet's linear bottleneck: a depthwise conv and BatchNorm with no activation, read by a 1x1 conv."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8),   # 3: reads a ReLU's output
                        nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16), nn.ReLU(),            # 5: reads a signed tensor
                        nn.Conv2d(16, 8, 1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    prepare(net, "4W/8A", deploy="int8")
    for _ in range(3):
        net.train()(torch.randn(32, 1, 8, 8))
    net.eval()
    zero = {n: p.activations.zero_point for n, p in quantized_layers(net).items() if n in ("3", "5")}
    assert zero["3"] == 0 and zero["5"] > 0
    export_onnx(net, tmp_path / "m.onnx", input_shape=(1, 8, 8))
    check = runtime_ops(str(tmp_path / "m.onnx"), str(tmp_path / "opt.onnx"))
    # 8 too: its ReLU's output goes to a float pooling, so it quantizes its own output
    assert check["ops"]["QLinearConv"] == 3 and not {"model.3", "model.5", "model.8"} & set(check["float_layers"])
    x = torch.randn(500, 1, 8, 8)
    with torch.no_grad():
        ref = net(x)
    out = torch.from_numpy(ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
                           .run(None, {"input": x.numpy()})[0])
    assert (out.argmax(1) == ref.argmax(1)).float().mean().item() >= 0.99
    assert (out - ref).abs().max().item() <= 0.05 * ref.abs().max().item()


def _integer_and_exact(net: nn.Sequential, tmp_path) -> None:
    """Trained three steps, the deployable ``net`` equals its packed reload and its deep copy, and its int8
    ONNX runs 5 QLinearConv (every conv but the float stem) agreeing with it within 1e-3 of the logits' range."""
    three_steps(net, batch=32)
    x = torch.randn(500, 1, 8, 8)
    with torch.no_grad():
        ref = net(x)
        save_packed(net, tmp_path / "m.safetensors")
        assert torch.equal(load_packed(tmp_path / "m.safetensors", model=net)(x), ref)
        assert torch.equal(copy.deepcopy(net)(x), ref)  # the copy's BatchNorm hooks the copy's quantizer
    export_onnx(net, tmp_path / "m.onnx", input_shape=(1, 8, 8))
    check = runtime_ops(str(tmp_path / "m.onnx"), str(tmp_path / "opt.onnx"))
    assert check["ops"]["QLinearConv"] == 5 and check["float_layers"] == ["model.0", "model.14"]  # stem, classifier
    out = torch.from_numpy(ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
                           .run(None, {"input": x.numpy()})[0])
    assert (out.argmax(1) == ref.argmax(1)).float().mean().item() >= 0.999
    assert (out - ref).abs().max().item() <= 1e-3 * ref.abs().max().item()


def test_every_quantized_conv_of_a_silu_network_runs_as_an_integer_kernel(tmp_path):
    """A conv whose output no 8-bit quantizer reads (SiLU, hard-swish, squeeze-excitation's sigmoid, a
    pooling) quantizes its output itself in a deployable graph, so ONNX Runtime runs it as QLinearConv."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU(),
                        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.Hardswish(), SqueezeExcite(8),
                        nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16), nn.Conv2d(16, 8, 1), nn.BatchNorm2d(8), nn.SiLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    plan = prepare(net, "4W/8A", deploy="int8")
    own = {n for n, p in plan.items() if p.output is not None}
    assert own == {"3", "6.reduce", "6.expand", "9"}  # "7" feeds the 8-bit input of "9" through a BatchNorm
    _integer_and_exact(net, tmp_path)


def test_a_conv_whose_relu_output_goes_to_squeeze_excitation_runs_as_an_integer_kernel(tmp_path):
    """MobileNetV3's first block: depthwise conv, BatchNorm, ReLU, then squeeze-excitation's float pooling and
    product. The conv quantizes its output after the BatchNorm (the ReLU runs on the codes' values), so ONNX
    Runtime runs it as QLinearConv; a ReLU that 8-bit layers alone read keeps its readers' quantizer."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                        SqueezeExcite(8), nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 1),
                        nn.BatchNorm2d(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    plan = prepare(net, "4W/8A", deploy="int8")
    assert {n for n, p in plan.items() if p.output is not None} == {"3", "6.reduce", "6.expand", "10"}
    _integer_and_exact(net, tmp_path)


def test_a_packed_output_quantizer_that_is_not_finite_is_refused():
    from apprentice.errors import ApprenticeError
    from apprentice.export.packed import packed_tensors
    from apprentice.export.rebuild import model_from_packed

    def small() -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                             nn.BatchNorm2d(4), nn.SiLU(), nn.Flatten(), nn.Linear(4 * 64, 3))

    torch.manual_seed(0)
    net = small()
    prepare(net, "4W/8A", deploy="int8")
    net.train()(torch.randn(8, 1, 8, 8))
    tensors, qmap = packed_tensors(net.eval())
    assert qmap["layers"]["2"]["output"]["step"] > 0 and not [k for k in tensors if ".out_quant." in k]
    qmap["layers"]["2"]["output"]["step"] = float("inf")
    with pytest.raises(ApprenticeError, match="layer '2': output quantizer: a uint8 quantizer's step must be a "
                                              "positive finite number, got inf"):
        model_from_packed(tensors, qmap, small())
