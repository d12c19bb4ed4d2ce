"""Tests of apprentice.export.rebuild: a packed file read back into a model, validated against the
tensors and the model it is loaded into; any model (a user's own, one built by hand), deployable ones.
Writing the file and the reload of every quantizer: tests/export/test_export.py."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from apprentice.errors import ApprenticeError
from apprentice.export import (
    MAP_KEY,
    load_packed,
    packed_tensors,
    read_packed,
    save_packed,
)
from apprentice.models import build_model
from apprentice.quant import (
    AddPlan,
    QConv2d,
    parse_precision,
    prepare,
    quantized_layers,
)

from test_export import EXAMPLES, USER_CASES, _rel_err, _student, distilled_user_student

# ----------------------------------------------------------------------------------------------
# Validation of packed files
# ----------------------------------------------------------------------------------------------


def _rewrite(path, tensors, qmap) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={MAP_KEY: json.dumps(qmap)})


def _corrupt(tensors: dict, qmap: dict, how: str) -> str:
    """Damage a packed model in place; return a text the error message must contain."""
    conv = qmap["layers"]["layer1.0.conv1"]
    if how == "missing tensor":
        del tensors["bn1.running_var"]
        return "bn1.running_var"
    if how == "extra tensor":
        tensors["layer9.weight"] = torch.zeros(3)
        return "layer9.weight"
    if how == "float shape":
        tensors["fc.bias"] = torch.zeros(11)
        return "fc.bias"
    if how == "missing codes":
        del tensors["layer1.0.conv1.weight_codes"]
        return "layer1.0.conv1"
    if how == "codes length":
        tensors["layer1.0.conv1.weight_codes"] = tensors["layer1.0.conv1.weight_codes"][:-1].clone()
        return "layer1.0.conv1"
    if how == "codes out of range":
        tensors["layer1.0.conv1.weight_codes"][0] = 255
        return "layer1.0.conv1"
    if how == "scale shape":
        tensors["layer1.0.conv1.weight_scale"] = torch.ones(16, 1, 1, 1)
        return "layer1.0.conv1"
    if how == "map shape":
        conv["weights"]["shape"] = [16, 16, 3, 1]
        return "layer1.0.conv1"
    if how == "map count":
        conv["weights"]["count"] += 1
        return "layer1.0.conv1"
    if how == "map packing":
        conv["weights"]["packing"] = "8bit"
        return "layer1.0.conv1"
    if how == "map kind":
        conv["kind"] = "linear"
        return "layer1.0.conv1"
    if how == "map lacks bits":
        del conv["weights"]["bits"]
        return "bits"
    if how == "map unknown layer":
        qmap["layers"]["layer7.conv"] = conv
        return "layer7.conv"
    if how == "map activation bits":
        conv["activations"]["bits"] = 9
        return "layer1.0.conv1"
    if how == "format version":
        qmap["format_version"] = 99
        return "format_version"
    if how == "unknown model":
        qmap["arch"]["name"] = "resnet9"
        return "resnet9"
    if how == "bad arch argument":
        qmap["arch"]["depth_multiplier"] = 2
        return "depth_multiplier"
    raise AssertionError(how)


CORRUPTIONS = ["missing tensor", "extra tensor", "float shape", "missing codes", "codes length",
               "codes out of range", "scale shape", "map shape", "map count", "map packing", "map kind",
               "map lacks bits", "map unknown layer", "map activation bits", "format version",
               "unknown model", "bad arch argument"]


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_load_rejects_inconsistent_file(tmp_path, how) -> None:
    model, _ = _student("resnet8", "2W/8A")
    path = tmp_path / "m.safetensors"
    save_packed(model, path)
    tensors, qmap = read_packed(path)
    needle = _corrupt(tensors, qmap, how)
    _rewrite(path, tensors, qmap)
    with pytest.raises(ApprenticeError) as info:
        load_packed(path)
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_load_rejects_bad_files(tmp_path) -> None:
    with pytest.raises(ApprenticeError, match="does not exist"):
        load_packed(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00\x01not a safetensors file")
    with pytest.raises(ApprenticeError, match="safetensors"):
        load_packed(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ApprenticeError, match="quantization map"):
        load_packed(tmp_path / "plain.safetensors")


def test_save_rejects_bad_arguments(tmp_path) -> None:
    model, _ = _student("resnet8", "2W/32A")
    with pytest.raises(ApprenticeError, match="ternary_packing"):
        save_packed(model, tmp_path / "m.safetensors", ternary_packing="3bit")
    with pytest.raises(ApprenticeError, match="folder"):
        save_packed(model, tmp_path / "missing" / "m.safetensors")
    with pytest.raises(ApprenticeError, match="model must be an nn.Module"):
        save_packed(model, tmp_path / "m.safetensors")
        load_packed(tmp_path / "m.safetensors", model="resnet8")


# ----------------------------------------------------------------------------------------------
# Any model: a user's own nn.Module (examples/my_models.py), grouped and depthwise convs included
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "scheme", "precision", "options"), USER_CASES)
def test_user_model_reloads_equal_in_a_fresh_process(tmp_path, user_models, name, scheme, precision, options):
    import subprocess
    import sys

    student = distilled_user_student(name, scheme, precision, options)
    assert any(isinstance(m, QConv2d) and m.groups > 1 for m in student.modules()) == (name == "sepnet")
    path = tmp_path / "m.safetensors"
    qmap = save_packed(student, path)
    assert qmap["arch"] == {"name": name, "num_classes": 10, "in_channels": 1, "channels": 8}
    x = torch.randn(4, 1, 16, 16)
    torch.save({"x": x}, tmp_path / "x.pt")
    with torch.no_grad():
        ref = student(x)
    code = ("import sys, torch, importlib.util\n"
            f"spec = importlib.util.spec_from_file_location('my_models', {str(EXAMPLES / 'my_models.py')!r})\n"
            "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
            "from apprentice import load_packed\n"
            f"m = load_packed({str(path)!r})\n"
            f"x = torch.load({str(tmp_path / 'x.pt')!r}, weights_only=True)['x']\n"
            f"torch.save({{'y': m(x).detach()}}, {str(tmp_path / 'y.pt')!r})\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    out = torch.load(tmp_path / "y.pt", weights_only=True)["y"]
    assert _rel_err(out, ref) < 1e-5


def test_hand_built_model_reloads_into_the_float_model_given(tmp_path):
    torch.manual_seed(0)

    def net() -> nn.Module:
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=4), nn.ReLU(),
                             nn.Conv2d(4, 8, 1), nn.Flatten(), nn.LazyLinear(5))

    model = net()
    model(torch.zeros(1, 1, 8, 8))  # materialise the lazy layer
    prepare(model, "2W/8A", exclude=["0"])
    path = tmp_path / "m.safetensors"
    qmap = save_packed(model, path)
    assert qmap["arch"] is None and qmap["model_class"] == "torch.nn.modules.container.Sequential"
    with pytest.raises(ApprenticeError, match=r"built by hand \(torch.nn.modules.container.Sequential\).*model="):
        load_packed(path)
    template = net()
    template(torch.zeros(1, 1, 8, 8))
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(load_packed(path, model=template)(x), model.eval()(x))
    assert not any(isinstance(m, QConv2d) for m in template.modules())  # the caller's model is left alone
    with torch.no_grad():  # a prepared model as the template is turned back to float first
        assert torch.equal(load_packed(path, model=model)(x), model(x))


@pytest.mark.parametrize(("change", "message"), [
    (lambda: nn.Conv2d(4, 4, 3, groups=2), r"layer '2': the file's layer has groups=4, the model's has groups=2"),
    (lambda: nn.Conv2d(4, 4, 3, stride=2, groups=4), r"layer '2': the file's layer has stride=\[1, 1\], the model's has stride=\[2, 2\]"),
    (lambda: nn.Conv2d(4, 6, 3), r"layer '2'"),
    (lambda: nn.Linear(4, 4), r"layer '2': map says 'conv2d', the model has Linear"),
])
def test_the_model_given_is_checked_layer_by_layer(tmp_path, change, message):
    def net(middle: nn.Module) -> nn.Module:
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), middle, nn.ReLU(), nn.Flatten(), nn.LazyLinear(5))

    model = net(nn.Conv2d(4, 4, 3, groups=4))
    model(torch.zeros(1, 1, 8, 8))
    prepare(model, "2W/32A")
    save_packed(model, tmp_path / "m.safetensors")
    with pytest.raises(ApprenticeError, match=message):
        load_packed(tmp_path / "m.safetensors", model=net(change()))



# ----------------------------------------------------------------------------------------------
# Deployable models (quant.deploy=int8): the adds' quantizers and shared inputs travel in the map
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "arch", "precision", "options"), [
    ("resnet8", {"shortcut": "A"}, "2W/8A", {}),
    ("resnet8", {"shortcut": "B"}, "4W/8A", {"per_channel": True, "learned": True}),
    ("resnet8", {"shortcut": "B"}, "3W/8A", {"quantizer": "lsq"}),
    ("sepnet", {"channels": 8}, "4W/8A", {}),
])
def test_deployable_reload_equals_fake_quant(tmp_path, user_models, name, arch, precision, options) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=1, **arch)
    w, a = parse_precision(precision, **options)
    plan = prepare(model, weights=w, activations=a, deploy="int8")
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 1, 16, 16))  # calibrates the adds, moves BN statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(-1.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    model.eval()
    x = torch.randn(64, 1, 16, 16)
    with torch.no_grad():
        ref = model(x)
    qmap = save_packed(model, tmp_path / "m.safetensors")
    assert qmap["deploy"] == "int8" and {n for n, e in qmap["layers"].items() if e["kind"] == "add"} == {
        n for n, p in plan.items() if isinstance(p, AddPlan)}
    assert not [k for k in packed_tensors(model)[0] if ".add." in k]  # add quantizers are numbers in the map
    loaded = load_packed(tmp_path / "m.safetensors")
    def wiring(m: nn.Module) -> dict:  # adds with their frozen values; each layer's shared input and BatchNorm
        return {n: p if isinstance(p, AddPlan) else (p.input_from, p.deploy, p.batchnorm)
                for n, p in quantized_layers(m).items()}

    assert wiring(loaded) == wiring(model)
    with torch.no_grad():
        assert torch.equal(loaded(x), ref)
    save_packed(model, tmp_path / "f.safetensors", fold_bn=True)  # BatchNorm folded: close, not bit-equal
    with torch.no_grad():
        assert _rel_err(load_packed(tmp_path / "f.safetensors")(x), ref) <= 2e-2
