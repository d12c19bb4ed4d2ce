"""Tests of apprentice.export.int8_onnx: a deployable model's ONNX file runs as integer kernels in
ONNX Runtime (checked on the optimized graph) and computes what the model as trained computes."""

from __future__ import annotations

import collections
import json

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from apprentice.errors import ApprenticeError
from apprentice.export import export_onnx, load_packed, save_packed
from apprentice.export.int8_onnx import describe_export, runtime_ops
from apprentice.models import build_model
from apprentice.quant import QAdd, QConv2d, integer_layers, pools_read_by, prepare

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

# (model, its arguments, image size): the zoo's two shortcut kinds and a depthwise user model (the
# CIFAR ResNets take any image size; 16 px keeps the test short).
CASES = [("resnet8", {"shortcut": "A"}, 16), ("resnet20", {"shortcut": "A"}, 16), ("resnet20", {"shortcut": "B"}, 16),
         ("sepnet", {"channels": 8}, 16)]
IDS = ["resnet8-A", "resnet20-A", "resnet20-B", "sepnet"]
FLOAT_CONVS = ("Conv", "FusedConv")


def _deployable(name: str, kwargs: dict, size: int, precision: str = "4W/8A", seed: int = 0, **options) -> nn.Module:
    """A deployable student with random weights, BatchNorm statistics and affine (negative scales too),
    calibrated by one train-mode batch."""
    torch.manual_seed(seed)
    model = build_model(name, num_classes=10, in_channels=1, **kwargs)
    prepare(model, precision, deploy="int8", **options)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(-1.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
        model.train()
        for _ in range(3):
            model(torch.randn(32, 1, size, size))
    return model.eval()


def _run(path, x: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


def _agreement(out: torch.Tensor, ref: torch.Tensor) -> float:
    return (out.argmax(1) == ref.argmax(1)).float().mean().item()


@pytest.mark.parametrize(("name", "kwargs", "size"), CASES, ids=IDS)
def test_every_quantized_conv_and_add_runs_as_an_integer_kernel(tmp_path, user_models, name, kwargs, size) -> None:
    model = _deployable(name, kwargs, size)
    qmap = export_onnx(model, tmp_path / "m.onnx", input_shape=(1, size, size))
    convs = [n for n, m in model.named_modules() if isinstance(m, QConv2d)]
    adds = [n for n, m in model.named_modules() if isinstance(m, QAdd)]
    stem = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    assert qmap["onnx"]["mode"] == "int8" and set(qmap["onnx"]["float_layers"]) == {stem, "fc"}
    check = runtime_ops(str(tmp_path / "m.onnx"), str(tmp_path / "optimized.onnx"))
    ops = check["ops"]
    # Every quantized conv is a QLinearConv, every add a QLinearAdd; the one float conv is the stem.
    assert ops["QLinearConv"] == len(convs) and ops["QLinearAdd"] == len(adds)
    assert sum(ops.get(op, 0) for op in FLOAT_CONVS) == 1 and "Add" not in ops
    assert set(check["float_layers"]) == {stem, "fc"}
    x = torch.randn(1000, 1, size, size, generator=torch.Generator().manual_seed(1))  # >= 99.9 %: one miss at most
    with torch.no_grad():
        ref = model(x)
    out = _run(tmp_path / "m.onnx", x)
    assert _agreement(out, ref) >= 0.999
    # Random weights: a code on a rounding tie (BatchNorm folded, int32 bias, ORT's requantization)
    # moves one step, and random nets pass the change on; trained ones far less (test below).
    assert (out - ref).abs().max() <= 0.05 * ref.abs().max()


def test_the_file_holds_int8_weights_int32_biases_and_quantizes_each_block_input_once(tmp_path) -> None:
    model = _deployable("resnet8", {"shortcut": "B"}, 28, precision="2W/8A")
    export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 28, 28))
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    inits = {i.name: i for i in graph.initializer}
    codes = {n: i for n, i in inits.items() if n.endswith(".codes")}
    assert len(codes) == sum(isinstance(m, QConv2d) for m in model.modules())
    assert all(i.data_type == onnx.TensorProto.INT8 for i in codes.values())
    values = {int(v) for i in codes.values() for v in onnx.numpy_helper.to_array(i).ravel()}
    # Ternary codes, stored as int8 (ONNX Runtime has no sub-8-bit kernel), times 63 with the scale
    # divided by 63: the same weights on a finer grid, for a 63x finer int32 bias.
    assert values == {-63, 0, 63}
    assert all(i.data_type == onnx.TensorProto.INT32 for n, i in inits.items() if n.endswith(".bias_codes"))
    # The block input of layer2.0 (a ReLU's output) has one QuantizeLinear; conv1, the projection
    # and (in layer1.x) the identity read its one DequantizeLinear.
    readers = collections.Counter(i for n in graph.node if n.op_type == "QuantizeLinear" for i in n.input[:1])
    assert readers and max(readers.values()) == 1
    relu_out = next(n.output[0] for n in graph.node if n.name == "/model/layer1/layer1.0/relu_1/Relu")
    (q,) = [n for n in graph.node if relu_out in n.input]
    dq = [n for n in graph.node if n.op_type == "DequantizeLinear" and q.output[0] in n.input]
    users = {n.name.split("/")[-2] for d in dq for n in graph.node if d.output[0] in n.input}
    assert q.op_type == "QuantizeLinear" and users == {"conv1", "downsample.0"}


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    """ResNet-8 (quarter width) trained deployable at 4W/8A on 1,024 synthetic images: 64 steps."""
    from apprentice.data import TensorLoader, load_tensors

    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=10, in_channels=1, width=0.25)
    prepare(model, "4W/8A", deploy="int8")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = TensorLoader(load_tensors("synthetic", "train", download=False, limit=1024), batch_size=32)
    model.train()
    for epoch in range(2):
        loader.set_epoch(epoch)
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def test_a_trained_deployable_model_equals_its_onnx_file_and_its_packed_reload(tmp_path, trained) -> None:
    from apprentice.data import TensorLoader, load_tensors

    test = torch.cat([x for x, _ in TensorLoader(load_tensors("synthetic", "test", download=False), batch_size=512,
                                                   shuffle=False)])
    x = torch.cat([test, torch.randn(1500, 1, 16, 16, generator=torch.Generator().manual_seed(2))])
    with torch.no_grad():
        ref = trained(x)
    labels = torch.cat([y for _, y in TensorLoader(load_tensors("synthetic", "test", download=False),
                                                   batch_size=512, shuffle=False)])
    assert (ref[: len(labels)].argmax(1) == labels).float().mean() > 0.2  # it learned something (chance: 0.1)
    save_packed(trained, tmp_path / "m.safetensors")
    with torch.no_grad():
        assert torch.equal(load_packed(tmp_path / "m.safetensors")(x), ref)
    export_onnx(trained, tmp_path / "a.onnx", input_shape=(1, 16, 16))
    export_onnx(tmp_path / "m.safetensors", tmp_path / "b.onnx", input_shape=(1, 16, 16))
    out = _run(tmp_path / "a.onnx", x)
    assert torch.equal(out, _run(tmp_path / "b.onnx", x))
    assert _agreement(out, ref) >= 0.999
    diff = (out - ref).abs()
    # Within integer rounding: an activation on a rounding tie may move one step (BatchNorm folded in
    # float, ORT's requantization). Measured: at most 0.6 % of the largest logit, 6e-6 of it on average.
    assert diff.max() <= 1e-2 * ref.abs().max() and diff.mean() <= 1e-4 * ref.abs().max()


def test_a_layer_that_cannot_be_integer_is_named_exported_exactly_and_stays_float(tmp_path) -> None:
    model = _deployable("resnet8", {"shortcut": "B"}, 28, precision=None,
                        layers={"conv1": "8W/32A", "layer2.0.conv2": "4W/4A", "fc": "8W/8A", "*": "4W/8A"})
    qmap = export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 28, 28))
    reasons = qmap["onnx"]["float_layers"]
    # A 4-bit input fits uint8 codes (conv2 runs as QLinearConv); conv1 before it cannot write them.
    assert set(reasons) == {"conv1", "layer2.0.conv1"}
    assert "float (32A)" in reasons["conv1"] and "4-bit input quantizer" in reasons["layer2.0.conv1"]
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert json.loads(meta["apprentice"])["onnx"]["float_layers"] == reasons
    check = runtime_ops(str(tmp_path / "m.onnx"), str(tmp_path / "optimized.onnx"))
    assert set(check["float_layers"]) == set(reasons) and "QGemm" in check["ops"]  # an 8W/8A classifier: QGemm
    x = torch.randn(500, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(x)
    out = _run(tmp_path / "m.onnx", x)
    assert _agreement(out, ref) >= 0.99 and (out - ref).abs().max() <= 0.05 * ref.abs().max()


def test_modes_are_chosen_by_how_the_model_was_trained(tmp_path) -> None:
    deployable = _deployable("resnet8", {"shortcut": "B"}, 28)
    with pytest.raises(ApprenticeError, match="trained deployable.*mode 'int8'"):
        export_onnx(deployable, tmp_path / "m.onnx", input_shape=(1, 28, 28), mode="qdq")
    with pytest.raises(ApprenticeError, match="opset >= 13"):
        export_onnx(deployable, tmp_path / "m.onnx", input_shape=(1, 28, 28), opset=12)
    with pytest.raises(ApprenticeError, match="unknown ONNX export mode 'int4'"):
        export_onnx(deployable, tmp_path / "m.onnx", input_shape=(1, 28, 28), mode="int4")
    plain = build_model("resnet8", num_classes=10, in_channels=1)
    prepare(plain, "4W/8A")
    assert export_onnx(plain.eval(), tmp_path / "p.onnx", input_shape=(1, 28, 28))["onnx"] == {"mode": "qdq"}
    with pytest.raises(ApprenticeError, match=r"needs a model trained deployable \(quant.deploy=int8\)"):
        export_onnx(plain, tmp_path / "p.onnx", input_shape=(1, 28, 28), mode="int8")
    fresh = build_model("resnet8", num_classes=10, in_channels=1)
    prepare(fresh, "4W/8A", deploy="int8")
    with pytest.raises(ApprenticeError, match="add 'layer1.0.add': its quantizers are not calibrated"):
        export_onnx(fresh.eval(), tmp_path / "f.onnx", input_shape=(1, 28, 28))
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "f.onnx").exists()


def test_a_stem_before_a_max_pool_runs_as_an_integer_kernel(tmp_path) -> None:
    # ResNet-18's stem: conv -> BN -> ReLU -> max-pool -> layer1. ONNX Runtime fuses the conv only when a
    # QuantizeLinear follows it, so the export quantizes the pool's input (exact: the two commute). 7-bit
    # stem weights: 8-bit ones can saturate ORT's u8s8 kernel on x86 without VNNI (SAFE_U8S8_BITS).
    model = _deployable("resnet18", {"width": 0.125}, 32, layers=[("@first", "7W/8A"), ("@last", "8W/8A")])
    # The block's identity reads layer1.0.conv1's quantizer through the pool, as the export does.
    assert model.layer1[0].add.plan().inputs[1].source == "layer1.0.conv1"
    assert pools_read_by(model) == {"maxpool": ("conv1", "layer1.0.conv1")}
    assert integer_layers(model)["conv1"] is None
    qmap = export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 32, 32))
    assert qmap["onnx"]["float_layers"] == {}
    check = runtime_ops(str(tmp_path / "m.onnx"), str(tmp_path / "optimized.onnx"))
    convs = [n for n, m in model.named_modules() if isinstance(m, QConv2d)]
    assert check["float_layers"] == [] and check["ops"]["QLinearConv"] == len(convs)
    assert not any(op in check["ops"] for op in FLOAT_CONVS)
    x = torch.randn(500, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(x)
    out = _run(tmp_path / "m.onnx", x)
    assert _agreement(out, ref) >= 0.999 and (out - ref).abs().max() <= 0.05 * ref.abs().max()


@pytest.mark.parametrize(("layers", "quantized_before_pool"), [(None, False), ([("@first", "7W/8A")], True)],
                         ids=["float-stem", "integer-stem"])
def test_the_pool_input_is_quantized_only_after_an_integer_conv(tmp_path, layers, quantized_before_pool) -> None:
    # After a float stem the pool stays float and the block's identity gets the add's own quantizer, so
    # the pool's output has two readers and ONNX Runtime does not move a QuantizeLinear before the pool:
    # quantizing the 4x larger tensor there gains no integer kernel (measured: ResNet-18 at 224 px, one
    # thread, quiet: 31 ms with the pool float, 39 ms with it quantized).
    model = _deployable("resnet18", {"width": 0.125}, 32, **({"layers": layers} if layers else {}))
    identity = model.layer1[0].add.plan().inputs[1].source
    assert identity == ("layer1.0.conv1" if quantized_before_pool else None)
    export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 32, 32))
    nodes = onnx.load(str(tmp_path / "m.onnx")).graph.node
    made_by = {out: n.op_type for n in nodes for out in n.output}
    pool = next(n for n in nodes if n.op_type == "MaxPool")
    assert (made_by[pool.input[0]] == "DequantizeLinear") is quantized_before_pool


def test_8_bit_weights_in_an_integer_layer_are_named_in_the_report(tmp_path) -> None:
    model = _deployable("resnet8", {"shortcut": "B"}, 16, layers=[("@first", "8W/8A"), ("layer1.0.conv1", "8W/8A")])
    qmap = export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 16, 16))
    note = [line for line in describe_export(qmap, tmp_path / "m.onnx") if "note:" in line]
    assert len(note) == 1 and "conv1, layer1.0.conv1 have 8-bit weights" in note[0] and "VNNI" in note[0]


def test_a_max_pool_the_export_cannot_reach_keeps_its_conv_float() -> None:
    class Functional(nn.Module):  # the same stem with a functional max-pool: no module to quantize before
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.conv2, self.fc = nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
            return self.fc(self.conv2(x).mean((2, 3)))

    model = Functional()
    prepare(model, "8W/8A", deploy="int8", exclude=["fc"])
    assert pools_read_by(model) == {}
    assert "nn.MaxPool2d module" in integer_layers(model)["conv1"]
