"""Tests of apprentice.train.optim: learning-rate schedules and parameter groups."""

from __future__ import annotations

import pytest
import torch

from apprentice.errors import ApprenticeError
from apprentice.models import build_model
from apprentice.train.optim import (
    LR_SCHEDULES,
    lr_factor,
    make_optimizer,
    param_groups,
    set_lr,
)


@pytest.mark.parametrize("schedule", sorted(LR_SCHEDULES))
def test_lr_schedules_warm_up_and_stay_in_range(schedule):
    total, warmup = 100, 10
    f = [lr_factor(t, schedule=schedule, total_steps=total, warmup_steps=warmup, milestones=(0.5, 0.75),
                   decay=0.1) for t in range(total)]
    assert all(0 < x <= 1 for x in f)
    assert max(f) == pytest.approx(1.0)
    if schedule != "onecycle":
        assert f[:warmup] == pytest.approx([(t + 1) / warmup for t in range(warmup)])
    else:
        assert f[0] == pytest.approx(1 / 25) and f[warmup] == pytest.approx(1.0)
    if schedule == "step":
        assert f[49] == 1 and f[50] == pytest.approx(0.1) and f[75] == pytest.approx(0.01)
    if schedule in ("cosine", "onecycle"):
        assert f[-1] < 0.01 and all(a >= b for a, b in zip(f[warmup:], f[warmup + 1:]))


def test_lr_factor_unknown_schedule():
    with pytest.raises(ApprenticeError, match="unknown schedule 'linear'"):
        lr_factor(0, schedule="linear", total_steps=10)


def test_param_groups_skip_norm_bias_and_pact_clip():
    from apprentice.quant import ActQuant, prepare

    model = build_model("resnet8", num_classes=10, in_channels=1, width=0.25)
    prepare(model, activations=ActQuant(8, 1.0, learned=True))  # PACT clips on the inner convs
    groups = param_groups([model], weight_decay=1e-4)
    decayed = {id(p) for p in groups[0]["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert groups[0]["weight_decay"] == 1e-4 and groups[1]["weight_decay"] == 0
    assert all(names[i].endswith("weight") and "bn" not in names[i] for i in decayed)
    undecayed = [names[id(p)] for p in groups[1]["params"]]
    assert any(n.endswith("act_clip") for n in undecayed) and "fc.bias" in undecayed and "bn1.weight" in undecayed
    all_in = param_groups([model], weight_decay=1e-4, decay_norm_and_bias=True)
    assert [names[id(p)] for p in all_in[1]["params"]] == [n for n in undecayed if n.endswith("act_clip")]


def test_quantizer_parameters_are_never_decayed_and_may_take_their_own_lr():
    from apprentice.quant import parse_precision, prepare

    model = build_model("resnet8", num_classes=10, in_channels=1, width=0.25)
    weights, acts = parse_precision("4W/8A", quantizer="lsq", per_channel=True)
    prepare(model, weights=weights, activations=acts)
    names = {id(p): n for n, p in model.named_parameters()}
    steps = sorted(n for n in names.values() if n.endswith(("weight_step", "act_step")))
    assert steps and all(n.count("layer") for n in steps)
    for decay_all in (False, True):
        groups = param_groups([model], weight_decay=1e-4, decay_norm_and_bias=decay_all)
        decayed = {names[id(p)] for g in groups if g["weight_decay"] for p in g["params"]}
        assert not decayed & set(steps) and "layer1.0.conv1.weight" in decayed
    scaled = param_groups([model], weight_decay=1e-4, quant_lr_scale=0.01)
    assert len(scaled) == 3 and sorted(names[id(p)] for p in scaled[2]["params"]) == steps
    assert scaled[2]["weight_decay"] == 0 and scaled[2]["lr_scale"] == 0.01
    assert sum(len(g["params"]) for g in scaled) == len(names)
    opt = make_optimizer("sgd", scaled, lr=0.1, momentum=0.9, nesterov=False)
    set_lr(opt, 0.4)
    assert [g["lr"] for g in opt.param_groups] == [0.4, 0.4, 0.4 * 0.01]
    with pytest.raises(ApprenticeError, match="quant_lr_scale"):
        param_groups([model], weight_decay=1e-4, quant_lr_scale=0)


def _log_domain_model():
    from apprentice.quant import parse_precision, prepare

    model = build_model("resnet8", num_classes=10, in_channels=1, width=0.25)
    weights, acts = parse_precision("4W/8A", quantizer="lsq")
    prepare(model, weights=weights, activations=acts)
    return model, [p for n, p in model.named_parameters() if n.endswith(("weight_step", "act_step"))]


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_log_domain_steps_the_log_of_the_quantizer_parameters(name):
    model, steps = _log_domain_model()
    groups = param_groups([model], weight_decay=1e-4, quant_domain="log")
    assert groups[-1]["log_domain"] and {id(p) for p in groups[-1]["params"]} == {id(p) for p in steps}
    opt = make_optimizer(name, groups, lr=0.1, momentum=0.9, nesterov=False)
    # the same optimizer on θ = ln s, by hand: what the log-domain group must compute, two steps (momentum)
    theta = [torch.nn.Parameter(p.detach().log()) for p in steps]
    ref = make_optimizer(name, [{"params": theta, "weight_decay": 0.0}], lr=0.1, momentum=0.9, nesterov=False)
    weight = model.fc.weight.detach().clone()
    for grad_of_s in (50.0, -3.0):  # 50 / unit lr: a linear SGD step of 0.1 would take every step below zero
        for p, t in zip(steps, theta):
            p.grad = torch.full_like(p, grad_of_s)
            t.grad = p.detach() * grad_of_s  # ∂L/∂θ = s·∂L/∂s
        model.fc.weight.grad = torch.ones_like(model.fc.weight)
        opt.step()
        ref.step()
        for p, t in zip(steps, theta):
            torch.testing.assert_close(p.detach(), t.detach().exp())
    assert all(bool((p > 0).all()) for p in steps)
    assert not torch.equal(model.fc.weight.detach(), weight)  # the other groups step as before, in s


def test_linear_domain_takes_a_large_gradient_through_zero_and_log_does_not():
    model, steps = _log_domain_model()
    for domain, positive in (("linear", False), ("log", True)):
        start = [p.detach().clone() for p in steps]
        opt = make_optimizer("sgd", param_groups([model], weight_decay=0.0, quant_domain=domain), lr=0.1,
                             momentum=0.0, nesterov=False)
        for p in steps:
            p.grad = 300 * p.detach()  # 300 times the step: EfficientNet-B0's worst, measured
        opt.step()
        assert all(bool((p > 0).all()) for p in steps) is positive
        with torch.no_grad():
            for p, s in zip(steps, start):
                p.copy_(s)
    with pytest.raises(ApprenticeError, match="unknown quantizer parameter domain.*'exp'"):
        param_groups([model], weight_decay=1e-4, quant_domain="exp")


def test_sgd_nesterov_without_momentum_is_refused_not_silently_dropped():
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))]}]
    assert make_optimizer("sgd", groups, lr=0.1, momentum=0.9, nesterov=True).defaults["nesterov"]
    with pytest.raises(ValueError, match="Nesterov"):
        make_optimizer("sgd", groups, lr=0.1, momentum=0.0, nesterov=True)
    with pytest.raises(ApprenticeError, match="unknown optimizer 'adam'; choose from"):
        make_optimizer("adam", groups, lr=0.1, momentum=0.9, nesterov=False)
