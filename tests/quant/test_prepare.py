"""Per-layer precision in `prepare`: rule order, first match, the default exclusions, errors, and the
precision notation for every width on either side."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from apprentice.errors import ApprenticeError
from apprentice.models import build_model
from apprentice.quant import (
    ActQuant,
    QConv2d,
    QLinear,
    WeightQuant,
    default_per_channel,
    format_precision,
    parse_layer_rules,
    parse_precision,
    precision_bits,
    prepare,
    quantized_layers,
)

WIDTHS = [*range(2, 9), 32]


@pytest.mark.parametrize("w", WIDTHS)
@pytest.mark.parametrize("a", WIDTHS)
def test_every_precision_string_round_trips(w, a):
    text = f"{w}W/{a}A"
    assert precision_bits(text) == (w, a)
    weights, acts = parse_precision(text)
    assert format_precision(weights, acts) == text
    assert (weights is None) == (w == 32) and acts.bits == a
    if w == 2:
        assert weights.quantizer == "ternary"  # "2W" is the paper's ternary
    if w != 32:
        lw, la = parse_precision(text, quantizer="lsq")
        assert format_precision(lw, la) == text and lw.quantizer == "lsq" and lw.levels == 2 ** (w - 1) - 1
        assert la.learns_step == (a != 32)


def _resnet18():
    return build_model("resnet18", num_classes=10, in_channels=3, width=0.25, small_input=True)


def _bits(plan):
    return {n: (p.weights.bits if p.weights else 32, p.activations.bits) for n, p in plan.items()}


def test_first_match_wins_in_order():
    model = _resnet18()
    plan = prepare(model, layers=[("conv1", "8W/8A"), ("fc", "8W/8A"), ("layer4.0.*", "3W/3A"),
                                  ("layer4.*", "4W/8A"), ("*", "2W/8A")])
    bits = _bits(plan)
    assert bits["conv1"] == (8, 8) and bits["fc"] == (8, 8)  # named exactly: quantized despite @first/@last
    assert bits["layer4.0.conv1"] == (3, 3) and bits["layer4.1.conv2"] == (4, 8)  # the earlier rule took layer4.0
    assert bits["layer1.0.conv1"] == (2, 8) and plan["layer1.0.conv1"].weights.quantizer == "ternary"
    names = [n for n, m in model.named_modules() if type(m) in (QConv2d, QLinear)]
    assert list(plan) == names  # module order, every Conv2d/Linear quantized
    assert isinstance(model.conv1, QConv2d) and isinstance(model.fc, QLinear)
    assert quantized_layers(model) == plan


def test_a_wildcard_does_not_lift_the_default_exclusion():
    plan = prepare(_resnet18(), layers={"layer4.*": "4W/8A", "*": "2W/8A"})  # a mapping keeps its order
    assert "conv1" not in plan and "fc" not in plan
    assert _bits(plan)["layer4.0.conv2"] == (4, 8) and _bits(plan)["layer2.0.conv1"] == (2, 8)
    plan = prepare(_resnet18(), layers=[("@first", "8W/8A"), ("@last", "8W/32A"), ("*", "2W/8A")])
    assert _bits(plan)["conv1"] == (8, 8) and _bits(plan)["fc"] == (8, 32)


def test_precision_is_the_default_for_layers_no_rule_matches():
    plan = prepare(_resnet18(), "2W/8A", layers=[("conv1", "8W/8A"), ("fc", "8W/8A")])
    assert _bits(plan)["conv1"] == (8, 8) and _bits(plan)["layer3.1.conv2"] == (2, 8)
    only = prepare(_resnet18(), layers=[("layer2.*", "4W/4A")])  # no default: the rest stays float
    assert set(only) == {n for n in only if n.startswith("layer2.")} and len(only) == 5
    float_rule = prepare(_resnet18(), "2W/8A", layers=[("layer1.*", "32W/32A")])
    assert not any(n.startswith("layer1.") for n in float_rule) and "layer2.0.conv1" in float_rule


def test_rules_with_quantizer_options_and_settings():
    rules = parse_layer_rules([("conv1", "8W/8A"), ("layer1.*", "32W/8A"), ("*", "2W/2A")],
                              quantizer="lsq", per_channel=True)
    assert rules[0][1] == (WeightQuant("lsq", 8, True), ActQuant(8, quantizer="lsq"))
    assert rules[1][1] == (None, ActQuant(8, quantizer="lsq"))  # float weights: the weight quantizer is moot
    model = _resnet18()
    settings = (WeightQuant("uniform", 4), ActQuant(4, 2.0, learned=True))
    plan = prepare(model, layers=rules[:2] + [("layer4.*", settings)] + rules[2:])
    assert plan["layer4.0.conv1"].weights == settings[0] and model.layer4[0].conv1.act_clip is not None
    assert plan["layer1.0.conv1"].weights is None and model.layer1[0].conv1.act_step is not None
    assert plan["layer2.0.conv1"].weights == WeightQuant("lsq", 2, True)
    model.train()
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    assert model.conv1.weight_step.grad is not None


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"layers": [("layer9.*", "2W/8A")]}, "layers pattern 'layer9.*' matches no"),
    ({"layers": [("*", "2W/8A"), ("layer1.*", "4W/8A")]}, "rule 'layer1.\\*' applies to no layer"),
    ({"layers": [("f*", "8W/8A"), ("*", "2W/8A")]}, "rule 'f\\*' applies to no layer.*naming them exactly"),
    ({"layers": [("conv1", "8W/8A")], "exclude": ["conv1"]}, "named by a layers rule and also matched by exclude"),
    ({"layers": [("conv1", "9W/8A")]}, "weight bits"),
    ({"layers": [("conv1", 8)]}, "expected a precision"),
    ({"layers": [("", "8W/8A")]}, "non-empty string"),
    ({"layers": "conv1=8W/8A"}, "mapping or a list"),
    ({"layers": [("layer1.*", "32W/32A")]}, "leave no layer"),
    ({"layers": [("*", "2W/8A")], "include": ["fc"]}, "applies to no layer"),
])
def test_rule_errors(kwargs, words):
    with pytest.raises(ApprenticeError, match=words):
        prepare(_resnet18(), **kwargs)


def test_explicit_exclude_still_applies_to_wildcards():
    model = _resnet18()
    plan = prepare(model, layers=[("*", "2W/8A")], exclude=["@first", "@last", "layer4.*"])
    assert plan and not any(n.startswith("layer4") for n in plan)
    assert type(model.layer4[0].conv1) is nn.Conv2d and type(model.fc) is nn.Linear
    with pytest.raises(ApprenticeError, match="applies to no layer"):  # an exact name after a wildcard is shadowed
        prepare(_resnet18(), layers=[("*", "2W/8A"), ("fc", "8W/8A")])


def _depthwise_net() -> nn.Sequential:
    """A pointwise conv into a depthwise conv whose channel 0 holds 100x larger weights than the rest."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                        nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.Flatten(), nn.Linear(8 * 16, 2))
    with torch.no_grad():
        net[3].weight[0] *= 100
    return net


def test_the_automatic_weight_scale_is_per_channel_except_for_the_papers_resnets_and_fixed_scales():
    assert default_per_channel(_depthwise_net()) and default_per_channel(_depthwise_net(), "ternary")
    assert not default_per_channel(_depthwise_net(), "wrpn")  # its scale is a fixed 1/n
    assert not default_per_channel(build_model("resnet8")) and not default_per_channel(build_model("resnet18"))
    plan = prepare(build_model("resnet8"), "4W/8A")
    assert not any(p.weights.per_channel for p in plan.values())  # the paper's per-layer scale, as before
    assert all(p.weights.per_channel for p in prepare(_depthwise_net(), "4W/8A").values())
    assert not any(p.weights.per_channel for p in prepare(_depthwise_net(), "4W/8A", per_channel=False).values())
    rules = prepare(_depthwise_net(), layers=[("3", "2W/8A"), ("6", "4W/8A")])
    assert all(p.weights.per_channel for p in rules.values())


@pytest.mark.parametrize("per_channel, dead", [(False, 7), (None, 0)])
def test_one_channels_large_weights_zero_the_others_only_at_a_per_layer_scale(per_channel, dead):
    """The cause of the divergence that per-channel scales remove (timm's EfficientNet-B0 at 4W/8A): a dead
    channel's BatchNorm divides by √ε, so its gradient explodes; at the automatic scale no channel is dead."""
    net = _depthwise_net()
    prepare(net, "4W/8A", per_channel=per_channel)
    codes, _ = net[3].weight_codes()
    assert int((codes.reshape(8, -1).abs().sum(1) == 0).sum()) == dead
