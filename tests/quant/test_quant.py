"""Quantizer math (golden values, level counts, STE) and the module swap (prepare/apply_plan/to_float)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from apprentice.errors import ApprenticeError
from apprentice.models import MODELS, build_model
from apprentice.quant import (
    WEIGHT_QUANTIZERS,
    ActQuant,
    LayerPlan,
    QConv2d,
    QLinear,
    WeightQuant,
    apply_plan,
    fake_quant_activation,
    fake_quant_weight,
    format_precision,
    lsq_init_step,
    parse_precision,
    prepare,
    quantized_layers,
    to_float,
    weight_codes,
)

# --- golden values on small tensors (worked by hand in each quantizer's docstring) ---------------


def test_ternary_twn_golden():
    w = torch.tensor([0.1, -0.5, 0.9, -0.05, 0.3, 0.0])
    codes, alpha = weight_codes(w, WeightQuant("ternary", 2))
    # mean|W| = 1.85/6, Δ = 0.7·0.30833 = 0.21583; kept |W| = 0.5, 0.9, 0.3 -> α = 1.7/3
    assert codes.tolist() == [0, -1, 1, 0, 1, 0]
    assert alpha.item() == pytest.approx(1.7 / 3)
    q = fake_quant_weight(w, WeightQuant("ternary", 2))
    assert torch.allclose(q, torch.tensor([0, -1, 1, 0, 1, 0]) * (1.7 / 3))


def test_uniform_golden_rounds_half_to_even():
    codes, scale = weight_codes(torch.tensor([0.7, -0.35, 0.1, -0.7]), WeightQuant("uniform", 4))
    assert codes.tolist() == [7, -4, 1, -7]  # -3.5 -> -4 (half to even)
    assert scale.item() == pytest.approx(0.1)


def test_wrpn_golden_and_ternary_reading():
    spec = WeightQuant("wrpn", 2)
    codes, scale = weight_codes(torch.tensor([1.5, 0.6, 0.4, -0.51, -2.0]), spec)
    assert codes.tolist() == [1, 1, 0, -1, -1] and scale.item() == 1.0
    codes8, scale8 = weight_codes(torch.tensor([0.5, -0.25]), WeightQuant("wrpn", 8))
    assert codes8.tolist() == [64, -32] and scale8.item() == pytest.approx(1 / 127)  # 63.5 -> 64, -31.75 -> -32


def test_dorefa_golden():
    w = torch.tensor([0.5, -1.0, 2.0])
    codes, scale = weight_codes(w, WeightQuant("dorefa", 2))
    assert codes.tolist() == [0, -1, 1] and scale.item() == 1.0
    codes3, _ = weight_codes(w, WeightQuant("dorefa", 3))  # n = 3: t·3 = [1.438, -2.370, 3]
    assert codes3.tolist() == [1, -2, 3]


def test_activation_golden():
    x = torch.tensor([-0.5, 0.1, 0.2, 0.5, 0.9, 1.5])
    q = fake_quant_activation(x, 2, 1.0)
    assert torch.allclose(q * 3, torch.tensor([0.0, 0, 1, 2, 3, 3]))  # 1.5 -> 2 (half to even)
    q8 = fake_quant_activation(torch.tensor([0.3, 4.0]), 8, 2.0)
    assert q8.tolist() == pytest.approx([round(0.3 / 2 * 255) * 2 / 255, 2.0])
    assert torch.equal(fake_quant_activation(x, 32, 1.0), x)


# --- level counts per bit width --------------------------------------------------------------


VALID_SPECS = [  # every quantizer at every width it takes; rejected combinations are in test_bad_settings
    (q, bits, pc)
    for q in sorted(WEIGHT_QUANTIZERS)
    for bits in ([2] if q == "ternary" else range(2, 9))
    for pc in ([False] if q == "wrpn" else [False, True])
]


def _step(w, spec):
    """The learned step an LSQ layer starts with (None for the other quantizers)."""
    return lsq_init_step(w, spec.levels, per_channel=spec.per_channel) if spec.learns_step else None


@pytest.mark.parametrize("quantizer, bits, per_channel", VALID_SPECS)
def test_weight_level_counts(quantizer, bits, per_channel):
    w = torch.randn(8, 4, 3, 3) * (0.5 if quantizer == "wrpn" else 0.05)
    spec = WeightQuant(quantizer, bits, per_channel)
    codes, scale = weight_codes(w, spec, _step(w, spec))
    n = spec.levels
    assert torch.equal(codes, codes.round()) and codes.abs().max() <= n
    assert len(codes.unique()) <= 2**bits - 1
    q = fake_quant_weight(w, spec, _step(w, spec))
    assert torch.allclose(q, codes * scale)
    rows = q.reshape(8, -1) if per_channel else q.reshape(1, -1)
    for r in rows:  # per layer/channel the distinct values are the levels of that row's grid
        assert len(r.unique()) <= 2**bits - 1
    if quantizer == "ternary":  # exactly three levels {−α, 0, α} in each scale group of a random tensor
        assert all(len(r.unique()) == 3 for r in rows)


@pytest.mark.parametrize("bits", range(2, 9))
def test_activation_level_counts(bits):
    x = torch.rand(10_000) * 3 - 1
    q = fake_quant_activation(x, bits, 1.0)
    assert len(q.unique()) == 2**bits  # 0 .. 2^k − 1 steps of c/(2^k − 1), all reached
    assert q.min() == 0 and q.max() == 1


# --- straight-through gradients -------------------------------------------------------------


@pytest.mark.parametrize("spec", [WeightQuant("ternary", 2), WeightQuant("uniform", 4, True), WeightQuant("uniform", 8)])
def test_weight_ste_is_identity(spec):
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    g = torch.randn_like(w)
    (fake_quant_weight(w, spec) * g).sum().backward()
    assert torch.equal(w.grad, g)


def test_wrpn_ste_zero_outside_clip():
    w = torch.tensor([-1.5, -0.5, 0.2, 0.9, 3.0], requires_grad=True)
    fake_quant_weight(w, WeightQuant("wrpn", 4)).sum().backward()
    assert w.grad.tolist() == [0, 1, 1, 1, 0]


def test_dorefa_gradient_flows_through_tanh():
    w = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    (fake_quant_weight(w, WeightQuant("dorefa", 4)) * torch.tensor([1.0, 0, 0])).sum().backward()
    t = torch.tanh(w.detach())
    # d/dw0 of tanh(w0)/tanh(w2) = (1 - tanh²(w0))/tanh(w2), the max being w2 (not w0)
    assert w.grad[0].item() == pytest.approx(((1 - t[0] ** 2) / t[2]).item(), rel=1e-5)


def test_activation_ste_and_pact_clip_gradient():
    x = torch.tensor([-0.5, 0.2, 0.7, 1.5, 2.0], requires_grad=True)
    c = torch.tensor(1.0, requires_grad=True)
    fake_quant_activation(x, 4, c).sum().backward()
    assert x.grad.tolist() == [0, 1, 1, 0, 0]  # STE inside [0, c], zero outside
    assert c.grad.item() == 2.0  # PACT: one for each x ≥ c


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_fixed_clip_activation_equals_the_clamp_reference(bits):
    # The fixed-clip path computes levels in place outside the graph and masks the gradient in the
    # STE; it must give the same values and gradients as the plain clamp -> round -> STE formula,
    # including at the clip's edges (clamp passes the gradient at x == 0 and x == c).
    torch.manual_seed(bits)
    x = torch.cat([torch.randn(4000) * 0.8, torch.tensor([0.0, -0.0, 1.0, 1.0 + 1e-7, -1e-7])]).requires_grad_()
    g = torch.randn_like(x)
    (fake_quant_activation(x, bits, 1.0) * g).sum().backward()
    steps = 2**bits - 1
    x_ref = x.detach().clone().requires_grad_()
    y = x_ref.clamp(0, 1.0)
    q = torch.round(y / 1.0 * steps) * (1.0 / steps)
    ref = q.detach() + (y - y.detach())
    (ref * g).sum().backward()
    assert torch.equal(fake_quant_activation(x.detach(), bits, 1.0), ref.detach())
    assert torch.equal(x.grad, x_ref.grad)


def test_ste_window_and_no_graph_without_grad():
    from apprentice.quant import ste
    x = torch.tensor([-1e-30, 0.0, 1.0, 2.0, 2.0000002, 3.0], requires_grad=True)
    q = torch.tensor([0.0, 5.0, 5.0, 5.0, 5.0, 5.0])
    out = ste(x, q, (0.0, 2.0))
    assert torch.equal(out.detach(), q)
    (out * torch.tensor([2.0, 3.0, 4.0, 5.0, 6.0, 7.0])).sum().backward()
    assert x.grad.tolist() == [0.0, 3.0, 4.0, 5.0, 0.0, 0.0]  # low <= x <= high, the edges included
    x.grad = None
    ste(x, q).sum().backward()  # no window: the gradient passes everywhere
    assert x.grad.tolist() == [1.0] * 6
    with torch.no_grad():
        assert not ste(x, q).requires_grad
    assert not ste(x.detach(), q).requires_grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_ste_window_edges_hold_in_other_dtypes(dtype):
    from apprentice.quant import ste
    high = 0.7  # not representable: the edge is the dtype's own value of it
    x = torch.tensor([0.0, high, -0.0, 1.0], dtype=dtype)
    edge = x[1].item()
    x = torch.tensor([0.0, edge, torch.nextafter(torch.tensor(edge, dtype=dtype), torch.tensor(2.0, dtype=dtype)).item(),
                      -torch.finfo(dtype).tiny], dtype=dtype, requires_grad=True)
    ste(x, x.detach(), (0.0, edge)).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 0.0]


# --- per-channel vs per-layer scales -----------------------------------------------------------


def test_per_channel_scales():
    w = torch.stack([torch.full((2, 3, 3), 0.01), torch.full((2, 3, 3), 1.0)]) * torch.sign(torch.randn(2, 2, 3, 3))
    _, s_layer = weight_codes(w, WeightQuant("uniform", 4))
    codes, s_chan = weight_codes(w, WeightQuant("uniform", 4, per_channel=True))
    assert s_layer.shape == () and s_layer.item() == pytest.approx(1 / 7)
    assert s_chan.shape == (2, 1, 1, 1) and s_chan.flatten().tolist() == pytest.approx([0.01 / 7, 1 / 7])
    assert codes.abs().max() == 7 and (codes[0].abs() == 7).all()  # the small channel uses its own full grid
    _, a_chan = weight_codes(w, WeightQuant("ternary", 2, per_channel=True))
    assert a_chan.flatten().tolist() == pytest.approx([0.01, 1.0])
    lin_codes, lin_scale = weight_codes(torch.randn(5, 7), WeightQuant("ternary", 2, per_channel=True))
    assert lin_scale.shape == (5, 1) and lin_codes.shape == (5, 7)


# --- precision notation and settings validation ---------------------------------------------------


def test_parse_precision():
    assert parse_precision("2W/32A") == (WeightQuant("ternary", 2), ActQuant(32))
    assert parse_precision("4W/8A") == (WeightQuant("uniform", 4), ActQuant(8))
    assert parse_precision("8A, 4W") == parse_precision("4w/8a")
    assert parse_precision("32W/8A") == (None, ActQuant(8))
    assert parse_precision("2W") == (WeightQuant("ternary", 2), ActQuant(32))
    w, a = parse_precision("2W/8A", quantizer="wrpn", clip=2.0, learned=True)
    assert w == WeightQuant("wrpn", 2) and a == ActQuant(8, 2.0, True)
    assert format_precision(*parse_precision("8A/4W")) == "4W/8A"


@pytest.mark.parametrize(
    "text, words",
    [("9W/8A", "weight bits"), ("4W/1A", "activation bits"), ("4X", "not like"), ("8A", "not like"),
     ("2W/2W", "not like"), ("", "not like"), (4, "not like")],
)
def test_parse_precision_errors(text, words):
    with pytest.raises(ApprenticeError, match=words):
        parse_precision(text)


@pytest.mark.parametrize(
    "make, words",
    [(lambda: WeightQuant("ternary", 4), "takes bits=2"), (lambda: WeightQuant("uniform", 1), "weight bits"),
     (lambda: WeightQuant("uniform", 9), "weight bits"), (lambda: WeightQuant("nope", 4), "unknown weight quantizer 'nope'"),
     (lambda: WeightQuant("wrpn", 4, per_channel=True), "per_channel"), (lambda: WeightQuant(threshold=0), "threshold"),
     (lambda: ActQuant(33), "activation bits"), (lambda: ActQuant(8, clip=0), "clip"),
     (lambda: parse_precision("32W/8A", quantizer="dorefa"), "full precision")],
)
def test_bad_settings(make, words):
    with pytest.raises(ApprenticeError, match=words):
        make()


# --- modules and the swap -------------------------------------------------------------------------


def _resnet():
    return build_model("resnet20", num_classes=10, in_channels=1)


def test_prepare_swaps_exactly_inner_layers():
    model = _resnet()
    float_names = [n for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    plan = prepare(model, "2W/8A")
    assert list(plan) == [n for n in float_names if n not in ("conv1", "fc")]
    assert type(model.conv1) is nn.Conv2d and type(model.fc) is nn.Linear
    assert all(isinstance(model.get_submodule(n), QConv2d) for n in plan)
    assert all(p.weights == WeightQuant("ternary", 2) and p.activations == ActQuant(8) for p in plan.values())
    assert quantized_layers(model) == plan


def test_prepare_patterns():
    model = _resnet()
    plan = prepare(model, "4W/32A", exclude=["@first", "@last", "layer3.*"])
    assert plan and not any(n.startswith("layer3") for n in plan)
    assert all(type(m) is nn.Conv2d for n, m in model.named_modules() if n.startswith("layer3.") and n.count(".") == 2 and "conv" in n)
    everything = prepare(_resnet(), "4W/32A", exclude=[])
    assert "conv1" in everything and "fc" in everything and isinstance(everything["fc"], LayerPlan)
    only = prepare(_resnet(), "4W/32A", include=["layer1.0.*"], exclude=[])
    assert list(only) == ["layer1.0.conv1", "layer1.0.conv2"]


def test_prepare_explicit_settings_equal_precision_string():
    a, b = _resnet(), _resnet()
    b.load_state_dict(a.state_dict())
    pa = prepare(a, "4W/8A")
    pb = prepare(b, weights=WeightQuant("uniform", 4), activations=ActQuant(8))
    assert pa == pb
    x = torch.randn(2, 1, 28, 28)
    a.eval(), b.eval()
    assert torch.equal(a(x), b(x))


@pytest.mark.parametrize(
    "kwargs, words",
    [({"exclude": ["layer9.*"]}, "exclude pattern 'layer9.*' matches no"),
     ({"include": ["nothing"]}, "include pattern 'nothing'"),
     ({"exclude": "conv1"}, "list of patterns"),
     ({"include": ["conv1"]}, "leave no layer"),
     ({"weights": WeightQuant("uniform", 4)}, "not both"),
     ({"activations": 8}, "ActQuant")],
)
def test_prepare_errors(kwargs, words):
    precision = None if "activations" in kwargs else "2W/32A"
    with pytest.raises(ApprenticeError, match=words):
        prepare(_resnet(), precision, **kwargs)


def test_prepare_twice_and_full_precision():
    model = _resnet()
    assert prepare(model, "32W/32A") == {} and not quantized_layers(model)
    prepare(model, "2W/32A")
    with pytest.raises(ApprenticeError, match="already quantized"):
        prepare(model, "4W/8A")


def test_to_float_round_trip():
    model = _resnet()
    reference = copy.deepcopy(model)
    plan = prepare(model, "2W/8A")
    x = torch.randn(2, 1, 28, 28)
    model.eval(), reference.eval()
    assert not torch.allclose(model(x), reference(x))  # quantization changed the function
    assert sorted(to_float(model)) == sorted(plan)
    assert not quantized_layers(model)
    assert all(type(m) in (nn.Conv2d, nn.Linear) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert model.state_dict().keys() == reference.state_dict().keys()
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in model.state_dict().items())
    assert torch.equal(model(x), reference(x))


def test_from_float_shares_shadow_weights_and_keeps_mode():
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=True).eval()
    q = QConv2d.from_float(conv, WeightQuant("uniform", 8), ActQuant())
    assert q.weight is conv.weight and q.bias is conv.bias and not q.training
    lin = nn.Linear(5, 3)
    ql = QLinear.from_float(lin, WeightQuant("ternary", 2, per_channel=True), ActQuant(4, learned=True, clip=2.0))
    assert set(dict(ql.named_parameters())) == {"weight", "bias", "act_clip"} and ql.act_clip.item() == 2.0
    assert ql.plan().activations == ActQuant(4, 2.0, True)
    x = torch.randn(2, 3, 8, 8)
    expected = nn.functional.conv2d(x, fake_quant_weight(conv.weight, WeightQuant("uniform", 8)), conv.bias, padding=1)
    assert torch.allclose(q(x), expected)


@pytest.mark.parametrize("learned_value", [1e-5, -0.5])
def test_a_clip_pushed_below_the_floor_is_reported_as_the_forward_uses_it(learned_value):
    from apprentice.export import packed_tensors
    from apprentice.quant import MIN_LEARNED_CLIP

    model = _resnet()
    prepare(model, weights=WeightQuant("uniform", 4), activations=ActQuant(4, 1.0, learned=True))
    q = model.get_submodule("layer1.0.conv1")
    with torch.no_grad():
        q.act_clip.fill_(learned_value)
    used = q.activation_clip()
    assert used == pytest.approx(MIN_LEARNED_CLIP)
    assert q.plan().activations.clip == used  # the plan records the clip the forward uses
    x = torch.randn(2, q.in_channels, 8, 8)
    assert torch.allclose(q.quantize_input(x), fake_quant_activation(x, 4, used), rtol=0, atol=1e-9)
    _, qmap = packed_tensors(model)
    assert qmap["layers"]["layer1.0.conv1"]["activations"]["clip"] == used  # and so does the export


def test_plan_round_trip_and_apply_plan():
    model = _resnet()
    plan = prepare(model, weights=WeightQuant("dorefa", 3, True), activations=ActQuant(4, 1.5, True))
    as_json = {k: v.to_dict() for k, v in plan.items()}
    restored = {k: LayerPlan.from_dict(v) for k, v in as_json.items()}
    assert restored == plan
    fresh = _resnet()
    apply_plan(fresh, restored)
    fresh.load_state_dict(model.state_dict())  # same keys, act_clip included
    assert quantized_layers(fresh) == plan
    with pytest.raises(ApprenticeError, match="does not have"):
        apply_plan(_resnet(), {"layer7.conv": plan["layer1.0.conv1"]})
    with pytest.raises(ApprenticeError, match="float linear"):
        apply_plan(_resnet(), {"layer1.0.conv1": LayerPlan("linear", None, ActQuant(8))})
    with pytest.raises(ApprenticeError, match="malformed"):
        LayerPlan.from_dict({"kind": "conv2d"})


def test_eval_cache_follows_weight_updates():
    model = _resnet()
    prepare(model, "2W/32A")
    model.eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        first = model(x)
        assert torch.equal(model(x), first)
        layer = model.layer1[0].conv1
        cached = layer._wq_cache[1]
        assert layer.quantized_weight() is cached  # served from the cache
        layer.weight.mul_(-1)  # an in-place update (as an optimizer step does) must invalidate it
        assert torch.equal(layer.quantized_weight(), -cached)
        assert not torch.equal(model(x), first)
    model.train()
    model(x).sum().backward()  # training mode never uses the cache and gradients reach the shadow weights
    assert layer._wq_cache is None and layer.weight.grad is not None


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_quantized_forward_backward(name):
    small = {"small_input": True} if name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152") else {}
    model = build_model(name, num_classes=10, in_channels=3, width=0.25, **small)
    plan = prepare(model, "2W/8A")
    assert plan and "conv1" not in plan and "fc" not in plan
    logits = model(torch.randn(2, 3, 16, 16))
    assert logits.shape == (2, 10)
    logits.logsumexp(1).sum().backward()
    for n in plan:
        g = model.get_submodule(n).weight.grad
        assert g is not None and torch.isfinite(g).all()
