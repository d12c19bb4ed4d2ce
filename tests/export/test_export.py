"""Tests of apprentice.export.packed: the packed file, reload equality, BN folding.
Packing itself: tests/export/test_packing.py; the ONNX export: tests/export/test_onnx.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from apprentice.errors import ApprenticeError
from apprentice.export import (
    MAP_KEY,
    find_conv_bn_pairs,
    load_packed,
    model_from_packed,
    packed_tensors,
    read_packed,
    save_packed,
    unpack,
    unpack_ternary_base3,
)
from apprentice.models import MODELS, build_model
from apprentice.quant import (
    QConv2d,
    QLinear,
    parse_layer_rules,
    parse_precision,
    prepare,
    weight_codes,
)

# ----------------------------------------------------------------------------------------------
# Packed file: reload equals the fake-quant model
# ----------------------------------------------------------------------------------------------

TOL = 1e-5  # max |logits - reference| <= TOL * max |reference|

# (precision, parse_precision options, ternary packing): every quantizer, width and scale layout.
PRECISIONS = [
    ("2W/32A", {}, "base3"),
    ("2W/32A", {}, "2bit"),
    ("2W/32A", {"per_channel": True}, "base3"),
    ("2W/8A", {}, "base3"),
    ("2W/8A", {"per_channel": True, "learned": True}, "2bit"),
    ("4W/8A", {}, "base3"),
    ("4W/8A", {"per_channel": True, "learned": True}, "base3"),
    ("8W/8A", {}, "base3"),
    ("8W/8A", {"per_channel": True}, "base3"),
    ("3W/4A", {"learned": True}, "base3"),
    ("6W/8A", {"per_channel": True}, "base3"),
    ("4W/32A", {"quantizer": "dorefa"}, "base3"),
    ("4W/32A", {"quantizer": "dorefa", "per_channel": True}, "base3"),
    ("2W/32A", {"quantizer": "wrpn"}, "base3"),
    ("2W/8A", {"quantizer": "uniform"}, "2bit"),
    ("32W/8A", {"learned": True}, "base3"),
    # LSQ: learned weight steps become the scales, learned activation steps are frozen in the map.
    ("2W/2A", {"quantizer": "lsq"}, "base3"),
    ("2W/8A", {"quantizer": "lsq", "per_channel": True}, "2bit"),
    ("3W/3A", {"quantizer": "lsq", "per_channel": True}, "base3"),
    ("4W/4A", {"quantizer": "lsq"}, "base3"),
    ("8W/8A", {"quantizer": "lsq", "per_channel": True}, "base3"),
    ("4W/8A", {"quantizer": "lsq", "act_quantizer": "clip", "learned": True}, "base3"),
    ("32W/8A", {"act_quantizer": "lsq"}, "base3"),
]
IDS = [f"{p}-{'-'.join(f'{k}={v}' for k, v in o.items())}-{t}" for p, o, t in PRECISIONS]


def _student(name: str, precision: str, options: dict | None = None, *, seed: int = 0,
             size: int = 8, **arch) -> tuple[nn.Module, torch.Tensor]:
    """A quantized model with non-trivial BN statistics, affine and PACT clips, and a test batch."""
    torch.manual_seed(seed)
    arch.setdefault("num_classes", 10)
    model = build_model(name, **arch)
    w, a = parse_precision(precision, **(options or {}))
    prepare(model, weights=w, activations=a)
    channels = model.in_channels
    with torch.no_grad():
        model.train()
        for _ in range(2):  # train-mode forwards move the BN running statistics
            model(torch.randn(8, channels, size, size) * 2 + 0.5)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(-1.5, 1.5)  # negative gamma too: folding must handle it
                m.bias.uniform_(-0.3, 0.3)
            if getattr(m, "act_clip", None) is not None:
                m.act_clip.uniform_(0.8, 2.5)  # a learned clip away from its initial value
            for step in (getattr(m, "act_step", None), getattr(m, "weight_step", None)):
                if step is not None:  # learned LSQ steps away from their initial values
                    step.mul_(torch.empty_like(step).uniform_(0.7, 1.4))
    return model.eval(), torch.randn(4, channels, size, size)


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("name", ["resnet8", "resnet20"])
@pytest.mark.parametrize(("precision", "options", "ternary"), PRECISIONS, ids=IDS)
def test_reload_equals_fake_quant(tmp_path, name, precision, options, ternary) -> None:
    model, x = _student(name, precision, options, shortcut="B" if name == "resnet20" else "A")
    with torch.no_grad():
        ref = model(x)
    path = tmp_path / "model.safetensors"
    qmap = save_packed(model, path, ternary_packing=ternary)
    loaded = load_packed(path)
    assert not loaded.training
    with torch.no_grad():
        out = loaded(x)
    assert _rel_err(out, ref) <= TOL
    # Quantized layers come back holding codes * scale, never re-quantized, with a frozen clip.
    tensors, _ = read_packed(path)
    for lname, entry in qmap["layers"].items():
        orig, new = model.get_submodule(lname), loaded.get_submodule(lname)
        assert isinstance(new, (QConv2d, QLinear)) and new.weight_quant is None
        assert new.act_quant.bits == orig.act_quant.bits and not new.act_quant.learned
        if orig.act_clip is not None:
            assert entry["activations"]["clip"] == pytest.approx(orig.act_clip.item())
        if orig.act_step is not None:  # the learned LSQ step, exactly, and the reloaded layer uses it
            assert entry["activations"] == {"bits": orig.act_quant.bits, "quantizer": "lsq", "step": orig.act_step.item()}
            assert torch.equal(new.act_step, orig.act_step) and bool(new.act_step_initialized)
        assert entry["precision"] == precision
        if orig.weight_quant is None:
            assert entry["weights"] is None and f"{lname}.weight" in tensors
            continue
        codes, scale = orig.weight_codes()
        assert torch.equal(new.weight, codes * scale)
        assert f"{lname}.weight" not in tensors and tensors[f"{lname}.weight_codes"].dtype == torch.uint8
        w = entry["weights"]
        expected = ternary if orig.weight_quant.bits == 2 else ("4bit" if orig.weight_quant.bits <= 4 else "8bit")
        assert w["packing"] == expected and w["count"] == orig.weight.numel()
        assert w["shape"] == list(orig.weight.shape) and w["scale_shape"] == list(scale.shape)
    # The default exclusion keeps conv1 and fc float: plain float tensors in the file.
    assert "conv1" not in qmap["layers"] and "fc" not in qmap["layers"] and "fc.weight" in tensors


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_reloads(tmp_path, name) -> None:
    imagenet = int(name[6:]) in (18, 34, 50, 101, 152)
    arch = {"small_input": True, "width": 0.25} if imagenet else {"shortcut": "A"}
    model, x = _student(name, "4W/8A", {"per_channel": True, "learned": True}, size=8, **arch)
    with torch.no_grad():
        ref = model(x)
    save_packed(model, tmp_path / "m.safetensors")
    loaded = load_packed(tmp_path / "m.safetensors")
    assert loaded.arch == model.arch
    with torch.no_grad():
        assert _rel_err(loaded(x), ref) <= TOL


def test_mixed_precision_trains_exports_and_reloads_equal(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=1)
    rules = [("conv1", "8W/8A"), ("fc", "8W/8A"), ("layer3.*", "4W/4A"), ("*", "2W/8A")]
    plan = prepare(model, layers=parse_layer_rules(rules, quantizer="lsq", per_channel=True))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(16, 1, 12, 12), torch.randint(0, 10, (16,))
    model.train()
    steps = model.layer3[0].conv1.weight_step.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert not torch.equal(model.layer3[0].conv1.weight_step, steps)  # the steps did learn
    model.eval()
    with torch.no_grad():
        ref = model(x)
    qmap = save_packed(model, tmp_path / "m.safetensors")
    precisions = {n: e["precision"] for n, e in qmap["layers"].items()}
    assert precisions["conv1"] == precisions["fc"] == "8W/8A" and precisions["layer3.1.conv2"] == "4W/4A"
    assert precisions["layer1.0.conv1"] == "2W/8A" and set(precisions) == set(plan)
    assert qmap["layers"]["layer1.0.conv1"]["weights"]["packing"] == "base3"
    assert qmap["layers"]["fc"]["weights"]["packing"] == "8bit" and "fc.weight" not in read_packed(tmp_path / "m.safetensors")[0]
    with torch.no_grad():
        assert torch.equal(load_packed(tmp_path / "m.safetensors")(x), ref)


def test_dorefa_is_not_requantized(tmp_path) -> None:
    # Why load_packed swaps in weights=None: DoReFa of an already quantized weight changes it.
    model, _ = _student("resnet8", "4W/32A", {"quantizer": "dorefa"})
    layer = "layer1.0.conv1"
    save_packed(model, tmp_path / "m.safetensors")
    w = load_packed(tmp_path / "m.safetensors").get_submodule(layer).weight.detach()
    codes, scale = weight_codes(w, model.get_submodule(layer).weight_quant)
    assert not torch.equal(codes * scale, w)


def test_file_layout_map_and_metadata(tmp_path) -> None:
    from safetensors import safe_open

    from apprentice import export

    model, _ = _student("resnet8", "2W/8A", {"learned": True})
    path = tmp_path / "m.safetensors"
    save_packed(model, path, metadata={"accuracy": 0.91, "config": {"epochs": 3}})
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary file left
    with safe_open(path, framework="pt") as f:
        qmap = json.loads(f.metadata()[MAP_KEY])
    assert qmap["format_version"] == export.FORMAT_VERSION
    assert qmap["package_version"] == export.package_version() != ""
    assert qmap["arch"] == model.arch and qmap["metadata"] == {"accuracy": 0.91, "config": {"epochs": 3}}
    assert set(qmap["layers"]) == {n for n, m in model.named_modules() if isinstance(m, QConv2d)}
    assert qmap["layers"]["layer1.0.conv1"]["weights"]["quantizer"] == "ternary"
    # A failed save leaves the existing file untouched.
    before = path.read_bytes()
    with pytest.raises(ApprenticeError, match="JSON"):
        save_packed(model, path, metadata={"bad": object()})
    assert path.read_bytes() == before and len(list(tmp_path.iterdir())) == 1


def test_loading_never_unpickles(tmp_path, monkeypatch) -> None:
    model, _ = _student("resnet8", "2W/32A")
    save_packed(model, tmp_path / "m.safetensors")

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load must not be used")

    monkeypatch.setattr(torch, "load", refuse)
    load_packed(tmp_path / "m.safetensors")




# ----------------------------------------------------------------------------------------------
# BatchNorm folding
# ----------------------------------------------------------------------------------------------

FOLD_CASES = [("2W/8A", {}), ("4W/8A", {"per_channel": True, "learned": True}), ("8W/8A", {}),
              ("4W/32A", {"quantizer": "dorefa"}), ("2W/32A", {"quantizer": "wrpn"}), ("32W/8A", {})]


@pytest.mark.parametrize(("name", "arch"), [("resnet20", {"shortcut": "B"}), ("resnet8", {"shortcut": "A"}),
                                            ("resnet50", {"small_input": True, "width": 0.25})])
@pytest.mark.parametrize(("precision", "options"), FOLD_CASES)
def test_fold_bn_is_exact_in_float64(name, arch, precision, options) -> None:
    # In float64 the rounding of the folded arithmetic is far below the activation grid, so no
    # activation rounding can flip and the folded model must match to ~1e-15.
    model, x = _student(name, precision, options, **arch)
    model.double()
    with torch.no_grad():
        ref = model(x.double())
        tensors, qmap = packed_tensors(model, fold_bn=True)
        out = model_from_packed(tensors, qmap)(x.double())
    assert _rel_err(out, ref) <= 1e-9
    bns = {n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert set(qmap["folded_bn"]) == bns  # every BN in these ResNets follows a conv
    assert not any(k.startswith(tuple(f"{b}." for b in bns)) for k in tensors)
    for conv in qmap["folded_bn"].values():
        entry = qmap["layers"].get(conv)
        if entry and entry["weights"]:  # quantized conv: codes unchanged, per-channel scale
            codes, _ = model.get_submodule(conv).weight_codes()
            w = entry["weights"]
            unpacked = unpack_ternary_base3(tensors[f"{conv}.weight_codes"], w["count"]) if w["packing"] == "base3" \
                else unpack(tensors[f"{conv}.weight_codes"], int(w["packing"][0]), w["count"])
            assert torch.equal(unpacked.view_as(codes).to(codes.dtype), codes)
            assert w["scale_shape"] == [codes.shape[0], 1, 1, 1]


@pytest.mark.parametrize(("precision", "options"), [("2W/32A", {}), ("4W/32A", {"quantizer": "dorefa"}),
                                                    ("8W/32A", {"per_channel": True})])
def test_fold_bn_float32_file(tmp_path, precision, options) -> None:
    # With float activations float32 folding matches to rounding; the file has no BN left.
    model, x = _student("resnet20", precision, options)
    with torch.no_grad():
        ref = model(x)
    save_packed(model, tmp_path / "m.safetensors", fold_bn=True)
    loaded = load_packed(tmp_path / "m.safetensors")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in loaded.modules())
    with torch.no_grad():
        assert _rel_err(loaded(x), ref) <= TOL


def test_fold_bn_float32_with_quantized_activations() -> None:
    # In float32, folding changes the conv outputs by ~1 ulp, which can move an activation that
    # sits on a rounding tie of the 8-bit grid by one step: close, not bit-equal (see the float64 test).
    model, x = _student("resnet20", "4W/8A")
    with torch.no_grad():
        ref = model(x)
        out = model_from_packed(*packed_tensors(model, fold_bn=True))(x)
    assert _rel_err(out, ref) <= 2e-2
    assert torch.equal(out.argmax(1), ref.argmax(1))


def test_find_conv_bn_pairs_uses_the_graph() -> None:
    model = build_model("resnet8", shortcut="B")
    pairs = find_conv_bn_pairs(model)
    assert pairs["bn1"] == "conv1" and pairs["layer2.0.downsample.1"] == "layer2.0.downsample.0"
    assert len(pairs) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    # A BN that does not directly follow a conv is left alone.
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.BatchNorm2d(2))
    assert find_conv_bn_pairs(net) == {}


# ----------------------------------------------------------------------------------------------
# A user's own nn.Module (examples/my_models.py), grouped and depthwise convs included: the students
# the tests in tests/export/test_rebuild.py and tests/export/test_onnx.py reload
# ----------------------------------------------------------------------------------------------
# ----------------------------------------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
USER_CASES = [("tinyvgg", "B", "2W/32A", {}), ("tinyvgg", "C", "4W/8A", {"per_channel": True}),
              ("sepnet", "B", "2W/8A", {}), ("sepnet", "C", "2W/8A", {"quantizer": "lsq"})]


def distilled_user_student(name: str, scheme: str, precision: str, options: dict) -> nn.Module:
    """prepare -> a few distillation steps (scheme B or C, a ResNet-8 teacher) -> eval, on random images."""
    from apprentice.distill import Distiller, make_student

    torch.manual_seed(0)
    teacher = build_model("resnet8", num_classes=10, in_channels=1).eval()
    student = build_model(name, num_classes=10, in_channels=1, channels=8)
    init = build_model(name, num_classes=10, in_channels=1, channels=8).state_dict() if scheme == "C" else None
    w, a = parse_precision(precision, **options)
    make_student(student, scheme=scheme, weights=w, activations=a, init_state_dict=init)
    distiller = Distiller(student, teacher, scheme=scheme)
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        images, labels = torch.randn(16, 1, 16, 16), torch.randint(0, 10, (16,))
        _, losses = distiller(images, labels)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    return student.eval()
