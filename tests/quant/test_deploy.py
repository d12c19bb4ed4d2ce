"""Deployable graphs: apprentice.quant.add (Add, QAdd, the uint8 quantizer) and apprentice.quant.deploy."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from apprentice.errors import ApprenticeError
from apprentice.models import build_model
from apprentice.quant import (
    UINT8_MAX,
    ActQuant,
    Add,
    AddInput,
    AddPlan,
    LayerPlan,
    QAdd,
    QConv2d,
    apply_plan,
    calibrate_uint8,
    integer_layers,
    plan_from_dict,
    prepare,
    quantized_layers,
    to_float,
    uint8_fake_quant,
)


def _calibrated(model: nn.Module, size: int = 28, seed: int = 0) -> nn.Module:
    """One train-mode batch (calibrates the adds' quantizers, moves BN statistics), then eval."""
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 1, size, size, generator=torch.Generator().manual_seed(seed)))
    return model.eval()


# ----------------------------------------------------------------------------------------------
# The uint8 quantizer and Add
# ----------------------------------------------------------------------------------------------


def test_uint8_fake_quant_golden_values_and_gradients() -> None:
    x = torch.tensor([-2.0, -0.3, 0.0, 0.6, 0.375, 100.0], requires_grad=True)
    step = torch.tensor(0.25, requires_grad=True)
    y = uint8_fake_quant(x, step, torch.tensor(4.0))  # codes -4..251: range [-1, 62.75]
    assert y.tolist() == [-1.0, -0.25, 0.0, 0.5, 0.5, 62.75]  # 0.375/0.25 = 1.5 rounds half to even
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]  # straight through inside the range only
    # LSQ's step gradient with Q_N = z, Q_P = 255 - z: bound outside, round(v) - v inside, times g.
    g = 1 / (6 * UINT8_MAX) ** 0.5
    expected = g * (-4 + (-1 + 1.2) + 0 + (2 - 2.4) + (2 - 1.5) + 251)
    assert step.grad.item() == pytest.approx(expected, rel=1e-5)


def test_calibration_holds_zero_and_the_range() -> None:
    step, zero = calibrate_uint8(torch.tensor([-1.0, 0.5, 2.0]))
    assert step.item() == pytest.approx(3.0 / 255) and zero.item() == 85.0
    step, zero = calibrate_uint8(torch.tensor([0.5, 2.0]))  # all positive: the range starts at 0
    assert step.item() == pytest.approx(2.0 / 255) and zero.item() == 0.0
    x = torch.tensor([-1.0, 0.5, 2.0])
    step, zero = calibrate_uint8(x)
    assert torch.allclose(uint8_fake_quant(x, step, zero), x, atol=step.item() / 2)  # ends exact, inside to half a step


def test_add_is_plain_addition_with_no_state_and_the_models_keep_their_keys() -> None:
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    assert torch.equal(Add()(a, b), a + b) and not Add().state_dict()
    for name in ("resnet8", "resnet18", "resnet50"):
        model = build_model(name, num_classes=10, in_channels=1, width=0.25)
        assert not [k for k in model.state_dict() if ".add." in k]
        assert sum(isinstance(m, Add) for m in model.modules()) == len(
            [m for m in model.modules() if type(m).__name__ in ("BasicBlock", "Bottleneck")])


def test_without_deploy_nothing_changes() -> None:
    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=10, in_channels=1)
    plain = copy.deepcopy(model)
    plan = prepare(model, "2W/8A")
    assert all(isinstance(p, LayerPlan) and p.deploy is None and p.input_from is None for p in plan.values())
    assert not any(isinstance(m, QAdd) for m in model.modules())
    assert all("deploy" not in p.to_dict() and "input_from" not in p.to_dict() for p in plan.values())
    prepare(plain, "2W/8A")
    assert model.state_dict().keys() == plain.state_dict().keys()


# ----------------------------------------------------------------------------------------------
# What deploy="int8" quantizes
# ----------------------------------------------------------------------------------------------


def _adds(plan: dict) -> dict[str, AddPlan]:
    return {n: p for n, p in plan.items() if isinstance(p, AddPlan)}


def test_resnet_block_input_is_quantized_once_for_conv1_projection_and_identity() -> None:
    model = build_model("resnet20", num_classes=10, in_channels=1, shortcut="B")
    plan = prepare(model, "4W/8A", deploy="int8")
    assert all(p.deploy == "int8" for p in plan.values())
    # The projection conv reads the block input: it uses conv1's quantizer and holds none of its own.
    shared = {n: p.input_from for n, p in plan.items() if isinstance(p, LayerPlan) and p.input_from}
    assert shared == {f"layer{i}.0.downsample.0": f"layer{i}.0.conv1" for i in (2, 3)}
    adds = _adds(plan)
    assert len(adds) == 9
    # Identity blocks: the identity is conv1's input; projection blocks: the projection's output (own quantizer).
    assert adds["layer1.1.add"].inputs == (AddInput(), AddInput(source="layer1.1.conv1"))
    assert adds["layer2.0.add"].inputs == (AddInput(), AddInput())
    # The add's output goes (after the ReLU) to the next block, whose conv1 quantizes it; the last one
    # goes to the float pooling and classifier, so it quantizes its output itself.
    assert [n for n, p in adds.items() if p.output is not None] == ["layer3.2.add"]


def test_zero_padded_shortcut_uses_conv1s_quantizer() -> None:
    model = build_model("resnet8", num_classes=10, in_channels=1)  # shortcut A: subsample + zero channels
    adds = _adds(prepare(model, "2W/8A", deploy="int8"))
    assert adds["layer2.0.add"].inputs[1] == AddInput(source="layer2.0.conv1")
    assert not [n for n, p in quantized_layers(model).items() if isinstance(p, LayerPlan) and p.input_from]


def test_bottleneck_blocks() -> None:
    model = build_model("resnet50", num_classes=10, in_channels=3, width=0.125)
    plan = prepare(model, "4W/8A", deploy="int8")
    assert plan["layer1.0.downsample.0"].input_from == "layer1.0.conv1"
    assert _adds(plan)["layer1.1.add"].inputs[1].source == "layer1.1.conv1"
    assert [n for n, p in _adds(plan).items() if p.output is not None] == ["layer4.2.add"]


def test_user_model_with_apprentices_add(user_models) -> None:
    model = build_model("sepnet", num_classes=10, in_channels=1, channels=8)
    adds = _adds(prepare(model, "2W/8A", deploy="int8"))
    assert adds["blocks.0.add"].inputs == (AddInput(source="blocks.0.depthwise.0"), AddInput())
    assert [n for n, p in adds.items() if p.output is not None] == ["blocks.4.add"]


def test_a_deployable_model_trains_and_its_quantizers_calibrate_once() -> None:
    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=10, in_channels=1, shortcut="B")
    prepare(model, "2W/8A", deploy="int8")
    add = model.get_submodule("layer3.0.add")
    assert not bool(add.quant_out.act_step_initialized)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    model.train()
    for step in range(3):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            zero, first_step = add.quant_out.zero_point.clone(), add.quant_out.act_step.detach().clone()
            assert add.quant_out.act_step.grad is not None and add.quant_out.act_step.grad != 0
        opt.step()
        assert torch.isfinite(loss)
    assert bool(add.quant_out.act_step_initialized) and torch.equal(add.quant_out.zero_point, zero)
    assert add.quant_out.act_step.item() != first_step.item()  # learned, not calibrated again


def test_plan_round_trip_and_strict_reload_never_recalibrate() -> None:
    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=10, in_channels=1, shortcut="B")
    prepare(model, "4W/8A", deploy="int8")
    _calibrated(model)
    stored = {n: plan_from_dict(p.to_dict()) for n, p in quantized_layers(model).items()}  # as a checkpoint
    fresh = build_model("resnet8", num_classes=10, in_channels=1, shortcut="B")
    apply_plan(fresh, stored)
    fresh.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), model(x))
        before = {k: v.clone() for k, v in fresh.state_dict().items() if "zero_point" in k or "act_step" in k}
        fresh.train()(torch.randn(8, 1, 28, 28) * 10)  # another batch, other statistics: no recalibration
    assert before and all(torch.equal(fresh.state_dict()[k], v) for k, v in before.items())


def test_to_float_gives_back_the_float_model() -> None:
    model = build_model("resnet8", num_classes=10, in_channels=1, shortcut="B")
    keys = set(model.state_dict())
    prepare(model, "2W/8A", deploy="int8")
    to_float(model)
    assert set(model.state_dict()) == keys and not quantized_layers(model)
    assert all(type(m) is Add for n, m in model.named_modules() if n.endswith(".add"))


def test_plans_and_adds_are_checked() -> None:
    model = build_model("resnet8", num_classes=10, in_channels=1, shortcut="B")
    with pytest.raises(ApprenticeError, match="unknown deploy mode 'int4'"):
        prepare(model, "2W/8A", deploy="int4")
    with pytest.raises(ApprenticeError, match="not a quantized layer"):
        QAdd(AddPlan((AddInput(source="conv9"), AddInput()), None), {})
    with pytest.raises(ApprenticeError, match="zero point"):
        AddInput(step=0.1, zero_point=256)
    with pytest.raises(ApprenticeError, match="malformed add plan"):
        plan_from_dict({"kind": "add", "inputs": [{}]})
    bad = {"layer2.0.downsample.0": LayerPlan("conv2d", None, ActQuant(8), input_from="layer2.0.conv1")}
    with pytest.raises(ApprenticeError, match="does not quantize with its own"):
        apply_plan(build_model("resnet8", num_classes=10, in_channels=1, shortcut="B"), bad)


def test_a_plain_plus_and_a_model_fx_cannot_trace_are_named() -> None:
    class PlainPlus(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv0 = nn.Conv2d(1, 4, 3, padding=1)
            self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            x = torch.relu(self.conv0(x))
            y = self.conv2(torch.relu(self.conv1(x)))
            return self.fc((x + y).mean((2, 3)))

    model = PlainPlus()
    plan = prepare(model, "4W/8A", deploy="int8")
    reasons = integer_layers(model)
    # conv2 quantizes its output itself (the plain '+' then adds its dequantized codes in float)
    assert reasons["conv1"] is None and reasons["conv2"] is None and plan["conv2"].output is not None
    assert "kept float" in reasons["conv0"] and "kept float" in reasons["fc"]

    class PlainPlusAfterRelu(PlainPlus):
        def forward(self, x):
            x = torch.relu(self.conv0(x))
            y = torch.relu(self.conv2(torch.relu(self.conv1(x))))
            return self.fc((x + y).mean((2, 3)))

    model = PlainPlusAfterRelu()
    prepare(model, "4W/8A", deploy="int8")
    reason = integer_layers(model)["conv2"]
    assert "plain '+'" in reason and "apprentice.quant.Add" in reason

    class Branchy(PlainPlus):
        def forward(self, x):
            return self.fc(self.conv0(x).mean((2, 3))) if x.sum() > 0 else self.fc(x.mean((2, 3)))

    with pytest.raises(ApprenticeError, match="torch.fx-traceable"):
        prepare(Branchy(), "4W/8A", deploy="int8")


def test_integer_layers_says_why_a_layer_stays_float() -> None:
    model = build_model("resnet8", num_classes=10, in_channels=1, shortcut="B")
    prepare(model, layers={"layer1.0.conv2": "4W/4A", "*": "4W/8A"}, deploy="int8")
    reasons = integer_layers(model)
    # conv2 reads 4-bit codes (they fit uint8); conv1 before it would have to write them, through a clip.
    assert reasons["layer1.0.conv1"].startswith("its output goes to layer1.0.conv2's 4-bit input quantizer")
    assert {n for n, r in reasons.items() if r is None} == {
        n for n, m in model.named_modules() if isinstance(m, QConv2d) and n != "layer1.0.conv1"}
    plain = build_model("resnet8", num_classes=10, in_channels=1)
    prepare(plain, "4W/8A")
    assert set(integer_layers(plain).values()) >= {"not trained deployable (quant.deploy is off)"}


def test_checkpoints_from_before_the_add_module_load_and_start_a_deployable_student() -> None:
    from pathlib import Path

    from apprentice.distill import make_student
    from apprentice.run.runs import load_run

    # A committed FP ResNet-8 checkpoint, written before the blocks had an Add module: loads strictly.
    run = load_run(Path(__file__).resolve().parents[2] / "benchmarks/results/accuracy_lsq_runs/fp-s0")
    student = build_model(**run.model.arch)
    plan = make_student(student, scheme="C", precision="4W/8A", init_state_dict=run.model.state_dict(), deploy="int8")
    assert sum(isinstance(p, AddPlan) for p in plan.values()) == 3
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.isfinite(_calibrated(student)(x)).all()
