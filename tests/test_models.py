"""Tests for apprentice.models: exact sizes, torchvision names, forward/backward, arguments."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from torch import nn

from apprentice.errors import ApprenticeError
from apprentice.models import (
    ENTRY_POINT_GROUP,
    MODELS,
    SHORTCUTS,
    CifarResNet,
    ResNet,
    ZeroPadShortcut,
    build_model,
    count_parameters,
    model_names,
    register_model,
)

CIFAR = ["resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]
IMAGENET = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


def test_table_holds_every_model():
    assert sorted(MODELS) == sorted(CIFAR + IMAGENET)


# --- sizes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("resnet20", {}, 269_722),
        ("resnet20", {"shortcut": "B"}, 272_474),
        ("resnet56", {}, 853_018),
        # torchvision's counts at 1000 classes.
        ("resnet18", {}, 11_689_512),
        ("resnet34", {}, 21_797_672),
        ("resnet50", {}, 25_557_032),
        ("resnet101", {}, 44_549_160),
        ("resnet152", {}, 60_192_808),
    ],
)
def test_parameter_counts(name, kwargs, expected):
    assert count_parameters(build_model(name, **kwargs)) == expected


# --- torchvision layout --------------------------------------------------------------------------


def torchvision_state_shapes(layers: list[int], bottleneck: bool) -> dict[str, tuple[int, ...]]:
    """Key -> shape of torchvision's ResNet state dict, written out from its documented layout."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(key, out_ch, in_ch, k):
        shapes[f"{key}.weight"] = (out_ch, in_ch, k, k)

    def bn(key, ch):
        for buf in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{key}.{buf}"] = (ch,)
        shapes[f"{key}.num_batches_tracked"] = ()

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    in_ch = 64
    expansion = 4 if bottleneck else 1
    for stage, blocks in enumerate(layers, start=1):
        planes = 64 * 2 ** (stage - 1)
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            if bottleneck:
                conv(f"{p}.conv1", planes, in_ch, 1)
                bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3)
                bn(f"{p}.bn2", planes)
                conv(f"{p}.conv3", planes * 4, planes, 1)
                bn(f"{p}.bn3", planes * 4)
            else:
                conv(f"{p}.conv1", planes, in_ch, 3)
                bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3)
                bn(f"{p}.bn2", planes)
            # Projection on the first block of stages 2-4; bottlenecks also need it in stage 1.
            if b == 0 and (stage > 1 or bottleneck):
                conv(f"{p}.downsample.0", planes * expansion, in_ch, 1)
                bn(f"{p}.downsample.1", planes * expansion)
            in_ch = planes * expansion
    shapes["fc.weight"] = (1000, 512 * expansion)
    shapes["fc.bias"] = (1000,)
    return shapes


@pytest.mark.parametrize(
    ("name", "layers", "bottleneck"),
    [("resnet18", [2, 2, 2, 2], False), ("resnet50", [3, 4, 6, 3], True)],
)
def test_torchvision_names_and_strict_load(name, layers, bottleneck):
    expected = torchvision_state_shapes(layers, bottleneck)
    model = build_model(name)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert list(ours) == list(expected)  # same names, same order
    assert ours == expected
    gen = torch.Generator().manual_seed(0)
    state = {
        k: torch.tensor(7) if k.endswith("num_batches_tracked") else torch.rand(s, generator=gen)
        for k, s in expected.items()
    }
    model.load_state_dict(state, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    named = dict(model.named_modules())
    assert isinstance(named["maxpool"], nn.MaxPool2d)
    assert isinstance(named["avgpool"], nn.AdaptiveAvgPool2d)
    # v1.5: the stride sits on the 3x3 conv of a bottleneck.
    if bottleneck:
        assert named["layer2.0.conv1"].stride == (1, 1)
        assert named["layer2.0.conv2"].stride == (2, 2)


def test_small_input_stem():
    model = build_model("resnet18", small_input=True)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    names = list(build_model("resnet18").state_dict())
    assert list(model.state_dict()) == names  # same parameter names, so checkpoints line up
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 1000)


def test_first_conv_and_classifier_names():
    # The quantizer's default exclusion relies on these names in every model.
    for name in MODELS:
        model = MODELS[name]()
        convs = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        assert convs[0] == "conv1" and convs[-1] == "fc", name


# --- forward / backward --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_backward(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10).train()
    # 32 px through the full ImageNet stem leaves 1x1 at layer4; batch 2 keeps BN defined there.
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 10)
    nn.functional.cross_entropy(out, torch.tensor([1, 2])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", CIFAR)
def test_cifar_models_take_one_channel_28px(name):
    model = build_model(name, in_channels=1).eval()
    assert model.conv1.in_channels == 1
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_default_class_counts():
    assert build_model("resnet20").num_classes == 10
    assert build_model("resnet18").num_classes == 1000


# --- shortcuts -----------------------------------------------------------------------------------


def test_option_a_is_parameter_free():
    model = build_model("resnet20")
    assert not [k for k in model.state_dict() if "downsample" in k]
    assert isinstance(model.layer2[0].downsample, ZeroPadShortcut)
    assert model.layer1[0].downsample is None  # shape unchanged in stage 1


def test_option_b_projects_only_where_shape_changes():
    model = build_model("resnet20", shortcut="B")
    keys = {k.rsplit(".", 2)[0] for k in model.state_dict() if "downsample" in k}
    assert keys == {"layer2.0.downsample", "layer3.0.downsample"}
    assert "layer2.0.downsample.0.weight" in model.state_dict()
    assert "layer2.0.downsample.1.running_var" in model.state_dict()


def test_zero_pad_shortcut_values():
    x = torch.arange(2 * 2 * 4 * 4, dtype=torch.float32).reshape(2, 2, 4, 4)
    y = ZeroPadShortcut(stride=2, extra=3)(x)
    assert y.shape == (2, 5, 2, 2)
    assert torch.equal(y[:, 1:3], x[:, :, ::2, ::2])  # 1 zero channel before, 2 after
    assert not y[:, 0].any() and not y[:, 3:].any()


# --- width ---------------------------------------------------------------------------------------


def test_width_multiplies_channels():
    wide = build_model("resnet20", width=2.0)
    assert wide.conv1.out_channels == 32
    assert wide.layer3[0].conv1.out_channels == 128
    assert wide.fc.in_features == 128
    thin = build_model("resnet18", width=0.5)
    assert thin.conv1.out_channels == 32
    assert thin.layer4[1].conv2.out_channels == 256
    assert thin.fc.in_features == 256
    assert build_model("resnet50", width=0.5).fc.in_features == 1024


@pytest.mark.parametrize("width", [0.3, 0.01])
def test_odd_and_tiny_widths_still_run(width):
    for shortcut in SHORTCUTS:
        model = build_model("resnet8", width=width, shortcut=shortcut).eval()
        assert min(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)) >= 1
        with torch.no_grad():
            assert model(torch.randn(1, 3, 16, 16)).shape == (1, 10)


# --- init ----------------------------------------------------------------------------------------


def test_init_like_torchvision():
    torch.manual_seed(0)
    model = build_model("resnet56")
    conv = model.layer3[0].conv2  # fan_out = 64 * 3 * 3
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.05)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))


@pytest.mark.parametrize(("name", "last_bn"), [("resnet20", "bn2"), ("resnet50", "bn3")])
def test_zero_init_residual(name, last_bn):
    model = build_model(name, zero_init_residual=True)
    last = [m for n, m in model.named_modules() if n.startswith("layer") and n.endswith(last_bn)]
    assert last and all(not m.weight.any() for m in last)
    assert model.bn1.weight.all()


# --- arch / rebuild ------------------------------------------------------------------------------


def odd_kwargs(name: str) -> dict:
    if name in CIFAR:
        return {"num_classes": 7, "in_channels": 1, "width": 0.5, "shortcut": "B"}
    return {"num_classes": 5, "in_channels": 2, "width": 0.25, "small_input": True}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_rebuild_from_arch(name):
    model = build_model(name, **odd_kwargs(name), zero_init_residual=True)
    arch = json.loads(json.dumps(model.arch))  # JSON-safe
    assert arch == {"name": name, **odd_kwargs(name), "zero_init_residual": True}
    assert (model.num_classes, model.in_channels) == (arch["num_classes"], arch["in_channels"])
    again = build_model(**arch)
    again.load_state_dict(model.state_dict(), strict=True)
    assert again.arch == model.arch


def test_arch_fills_defaults():
    assert build_model("resnet20").arch == {
        "name": "resnet20",
        "num_classes": 10,
        "in_channels": 3,
        "width": 1.0,
        "shortcut": "A",
        "zero_init_residual": False,
    }
    assert build_model("resnet18", width=1).arch == {
        "name": "resnet18",
        "num_classes": 1000,
        "in_channels": 3,
        "width": 1.0,
        "small_input": False,
        "zero_init_residual": False,
    }


# --- bad arguments -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "argument"),
    [
        (lambda: build_model("resnet19"), "model"),
        (lambda: build_model("resnet20", num_classes=0), "num_classes"),
        (lambda: build_model("resnet20", num_classes=2.5), "num_classes"),
        (lambda: build_model("resnet18", num_classes=True), "num_classes"),
        (lambda: build_model("resnet20", in_channels=0), "in_channels"),
        (lambda: build_model("resnet50", in_channels=-3), "in_channels"),
        (lambda: build_model("resnet20", width=0), "width"),
        (lambda: build_model("resnet18", width=-1.0), "width"),
        (lambda: build_model("resnet20", width=float("nan")), "width"),
        (lambda: build_model("resnet20", width="2"), "width"),
        (lambda: build_model("resnet20", shortcut="C"), "shortcut"),
        (lambda: build_model("resnet18", shortcut="A"), "shortcut"),
        (lambda: build_model("resnet20", small_input=True), "small_input"),
        (lambda: build_model("resnet20", depth=32), "depth"),
        (lambda: build_model("resnet18", small_input="yes"), "small_input"),
        (lambda: build_model("resnet20", zero_init_residual=1), "zero_init_residual"),
        (lambda: CifarResNet(21), "depth"),
        (lambda: CifarResNet(2), "depth"),
        (lambda: ResNet(19), "depth"),
    ],
)
def test_bad_arguments(build, argument):
    with pytest.raises(ApprenticeError) as info:
        build()
    message = str(info.value)
    assert argument in message
    assert "\n" not in message


def test_cifar_depth_limited_to_table():
    # An untabled 6n+2 depth could not be rebuilt from arch["name"]; 50 would even name the ImageNet model.
    for depth in (26, 50):
        with pytest.raises(ApprenticeError, match="depth must be one of"):
            CifarResNet(depth)
    assert len(CifarResNet(110).layer1) == 18


# --- models of the user's own: register_model, entry points ---------------------------------------


@pytest.fixture
def restore_table():
    before = dict(MODELS)
    yield
    MODELS.clear()
    MODELS.update(before)


class _Tiny(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, channels: int = 4, act: str = "relu") -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.fc = nn.Linear(channels, num_classes)
        self.act = act

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def test_registered_model_builds_by_name_and_records_its_arguments(restore_table):
    assert register_model("tiny")(_Tiny) is _Tiny
    assert "tiny" in model_names()
    model = build_model("tiny", num_classes=3, in_channels=2, channels=5)
    assert model.arch == {"name": "tiny", "num_classes": 3, "in_channels": 2, "channels": 5}
    again = build_model(**json.loads(json.dumps(model.arch)))
    again.load_state_dict(model.state_dict(), strict=True)
    assert again(torch.zeros(1, 2, 6, 6)).shape == (1, 3)
    register_model("tiny")(_Tiny)  # the same class again (a module imported twice) is fine
    register_model("tiny", replace=True)(lambda num_classes, in_channels: _Tiny(num_classes, in_channels, 2))
    assert build_model("tiny", num_classes=2, in_channels=1).conv.out_channels == 2


@pytest.mark.parametrize(
    ("register", "message"),
    [
        (lambda: register_model("resnet20", replace=True)(_Tiny), "taken"),
        (lambda: register_model("bad name")(_Tiny), "letters, digits"),
        (lambda: register_model(3)(_Tiny), "letters, digits"),
        (lambda: register_model("noclasses")(lambda in_channels: _Tiny()), "num_classes"),
        (lambda: [register_model("twice")(_Tiny), register_model("twice")(lambda **kw: _Tiny(**kw))], "replace=True"),
    ],
)
def test_register_model_refuses(restore_table, register, message):
    with pytest.raises(ApprenticeError, match=message):
        register()


def test_unknown_model_says_how_to_add_one():
    with pytest.raises(ApprenticeError, match=r"unknown model 'mynet'.*register_model.*--import"):
        build_model("mynet")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: build_model("tiny", channels=[1, 2]), "plain value"),
        (lambda: build_model("tiny", depth=3), "takes no argument 'depth'"),
        (lambda: build_model("tiny", channels=-1), r"failed to build .*RuntimeError"),
        (lambda: build_model("notamodule"), "returned int, not an nn.Module"),
    ],
)
def test_a_user_model_that_fails_is_one_line(restore_table, build, message):
    register_model("tiny")(_Tiny)
    register_model("notamodule")(lambda num_classes=1, in_channels=1: 7)
    with pytest.raises(ApprenticeError, match=message) as info:
        build()
    assert "\n" not in str(info.value)


def _install_package(root, name: str, target: str, code: str) -> None:
    """A package installed the way pip leaves it: its module plus a dist-info with entry_points.txt."""
    (root / f"{name}.py").write_text(code)
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{target}\n")


def test_installed_package_provides_a_model_by_entry_point(tmp_path, monkeypatch, restore_table):
    code = ("from torch import nn\nLOADED = True\nclass Net(nn.Module):\n"
            "    def __init__(self, num_classes=10, in_channels=1, hidden=3):\n"
            "        super().__init__(); self.fc = nn.Linear(in_channels, num_classes)\n"
            "    def forward(self, x): return self.fc(x.mean((2, 3)))\n")
    _install_package(tmp_path, "ep_pkg", "ep_net = ep_pkg:Net", code)
    _install_package(tmp_path, "ep_broken", "ep_broken_net = ep_broken:Missing", "X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert {"ep_net", "ep_broken_net"} <= set(model_names())
    assert "ep_pkg" not in sys.modules  # listed by name, not imported
    model = build_model("ep_net", num_classes=4, in_channels=2)
    assert model.arch == {"name": "ep_net", "num_classes": 4, "in_channels": 2}
    assert "ep_net" in MODELS
    with pytest.raises(ApprenticeError, match=r"ep_broken_net.*ep_broken:Missing.*AttributeError"):
        build_model("ep_broken_net")
