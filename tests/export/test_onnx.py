"""Tests of apprentice.export.onnx: ONNX Runtime runs the exported graph as the fake-quant model does."""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from apprentice.errors import ApprenticeError
from apprentice.export import save_packed
from apprentice.quant import QConv2d, prepare

from test_export import TOL, USER_CASES, _rel_err, _student, distilled_user_student

# ----------------------------------------------------------------------------------------------
# ONNX
# ----------------------------------------------------------------------------------------------


def _onnx_student(precision: str, options: dict | None = None) -> nn.Module:
    model, _ = _student("resnet8", precision, options, size=28, in_channels=1)
    return model


def _export_and_compare(model: nn.Module, tmp_path: Path, input_shape: tuple[int, ...], *, source: str = "file",
                        images: int, agreement: float, **options) -> Path:
    """Export ``model`` to ``tmp_path / "m.onnx"`` (``source`` "model": from the model itself with a
    batch dimension; "file": from its packed file) and check that ONNX Runtime gives its logits on
    ``images`` random inputs: close, and the same class on at least ``agreement`` of them (ORT's
    convolutions sum in another order, so an activation on an 8-bit rounding tie may land one step
    away). ``options`` go to `export_onnx`. Returns the ONNX file."""
    ort = pytest.importorskip("onnxruntime")
    from apprentice.export import export_onnx

    path = tmp_path / "m.onnx"
    if source == "file":
        save_packed(model, tmp_path / "m.safetensors")
        export_onnx(tmp_path / "m.safetensors", path, input_shape=input_shape, **options)
    else:
        export_onnx(model, path, input_shape=(1, *input_shape), **options)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(images, *input_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)
    out = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    assert _rel_err(out, ref) <= 5e-3
    assert (out.argmax(1) == ref.argmax(1)).float().mean().item() >= agreement
    return path


@pytest.mark.parametrize(("precision", "options", "source"),
                         [("2W/8A", {}, "model"), ("4W/8A", {}, "file"),
                          ("4W/8A", {"per_channel": True, "learned": True}, "file"),
                          ("3W/3A", {"quantizer": "lsq", "per_channel": True}, "file"),
                          ("2W/8A", {"quantizer": "lsq"}, "model")])
def test_onnx_runtime_matches_fake_quant(tmp_path, precision, options, source) -> None:
    onnx = pytest.importorskip("onnx")
    model = _onnx_student(precision, options)
    path = _export_and_compare(model, tmp_path, (1, 28, 28), source=source, images=1000, agreement=0.999,
                               **({"opset": 13} if source == "file" else {}))
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["apprentice"])["arch"] == model.arch
    assert int(meta["opset"]) == {p.domain: p.version for p in proto.opset_import}[""]
    # Quantized weights are int8 initializers (the codes); no float copy of them is stored.
    inits = {i.name: i for i in proto.graph.initializer}
    int8 = [i for i in inits.values() if i.data_type == onnx.TensorProto.INT8 and len(i.dims) > 1]
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, QConv2d)}
    assert sorted(tuple(i.dims) for i in int8) == sorted(tuple(m.weight.shape) for m in quantized.values())
    float_weights = sum(math.prod(i.dims) for i in inits.values() if i.data_type == onnx.TensorProto.FLOAT)
    assert float_weights < 0.1 * sum(m.weight.numel() for m in quantized.values())
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") == len(quantized) and ops.count("Clip") == len(quantized)
    assert ops.count("DequantizeLinear") == 2 * len(quantized)


def test_onnx_activation_quantizer_rounds_and_clips_like_torch(tmp_path) -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from apprentice.export.onnx import _QuantizeActivation
    from apprentice.quant import fake_quant_activation

    class Act(nn.Module):
        def __init__(self, bits: int, clip: float) -> None:
            super().__init__()
            self.bits = bits
            for name, value in (("low", 0.0), ("high", clip), ("scale", clip / (2**bits - 1))):
                self.register_buffer(name, torch.tensor(value))
            self.register_buffer("zero", torch.tensor(0, dtype=torch.uint8))

        def forward(self, x):
            return _QuantizeActivation.apply(x, self.low, self.high, self.scale, self.zero, self.bits)

    # clip = 2**bits - 1 makes the step exactly 1, so x.5 are exact ties: half to even both ways.
    for bits in (2, 4, 8):
        clip = float(2**bits - 1)
        x = torch.tensor([-3.0, -0.5, 0.0, 0.5, 1.5, 2.5, clip - 0.5, clip, clip + 0.5, 1e4])
        path = tmp_path / f"act{bits}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(Act(bits, clip), (x,), str(path), dynamo=False, opset_version=13,
                              input_names=["x"])
        out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
        expected = torch.round(x.clamp(0, clip))
        assert torch.equal(torch.from_numpy(out), expected)
        assert torch.equal(fake_quant_activation(x, bits, clip), expected)


def test_onnx_argument_checks(tmp_path, monkeypatch) -> None:
    pytest.importorskip("onnx")
    from apprentice.export import export_onnx

    model = _onnx_student("4W/8A", {"per_channel": True})
    with pytest.raises(ApprenticeError, match="opset >= 13"):
        export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 28, 28), opset=12)
    with pytest.raises(ApprenticeError, match="opset"):
        export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 28, 28), opset=99)
    with pytest.raises(ApprenticeError, match="input_shape"):
        export_onnx(model, tmp_path / "m.onnx", input_shape=(28, 28))
    with pytest.raises(ApprenticeError, match="does not exist"):
        export_onnx(tmp_path / "missing.safetensors", tmp_path / "m.onnx", input_shape=(1, 28, 28))
    assert not (tmp_path / "m.onnx").exists()
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the extra were not installed
    with pytest.raises(ApprenticeError, match=r"pip install 'apprentice-kd\[onnx\]'"):
        export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 28, 28))


def test_onnx_folded_bn_and_negative_scales(tmp_path) -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from apprentice.export import export_onnx

    # gamma < 0 for some channels gives negative per-channel scales after folding.
    model = _onnx_student("2W/32A")
    export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 28, 28), fold_bn=True)
    x = torch.randn(64, 1, 28, 28)
    out = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert _rel_err(torch.from_numpy(out), model(x)) <= TOL


@pytest.mark.parametrize(("name", "scheme", "precision", "options"), USER_CASES)
def test_user_models_run_in_onnx_runtime(tmp_path, user_models, name, scheme, precision, options) -> None:
    pytest.importorskip("onnx")
    student = distilled_user_student(name, scheme, precision, options)
    _export_and_compare(student, tmp_path, (1, 16, 16), images=500, agreement=0.99)


def test_hand_built_model_exports_to_onnx(tmp_path) -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from apprentice.export import export_onnx

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=4), nn.ReLU(), nn.Conv2d(4, 8, 1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    prepare(model, "4W/8A")
    model.train()(torch.randn(16, 1, 10, 10))  # the first batch sets the asym activation steps and zero points
    model.eval()
    export_onnx(model, tmp_path / "a.onnx", input_shape=(1, 10, 10))
    save_packed(model, tmp_path / "m.safetensors")
    with pytest.raises(ApprenticeError, match="built by hand"):
        export_onnx(tmp_path / "m.safetensors", tmp_path / "b.onnx", input_shape=(1, 10, 10))
    export_onnx(tmp_path / "m.safetensors", tmp_path / "b.onnx", input_shape=(1, 10, 10), model=model)
    x = torch.randn(64, 1, 10, 10)
    with torch.no_grad():
        ref = model(x)
    for f in ("a.onnx", "b.onnx"):
        out = ort.InferenceSession(str(tmp_path / f), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
        assert _rel_err(torch.from_numpy(out), ref) <= 5e-3
