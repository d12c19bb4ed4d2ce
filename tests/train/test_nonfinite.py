"""Tests of apprentice.train.nonfinite and the Distiller's own stop: a NaN/inf forced in one layer is named."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from apprentice.distill import Distiller
from apprentice.quant import ActQuant, WeightQuant, prepare
from apprentice.train.nonfinite import (
    collapsed_steps,
    first_nonfinite_gradient,
    locate_nonfinite,
)
from apprentice.train.step import NonFiniteLossError


class _NanGrad(torch.autograd.Function):
    """Identity forward, NaN gradient backward: a layer whose backward goes wrong, its forward fine."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        return g * float("nan")


class Spoil(nn.Module):
    """Identity until ``armed``; then "output" makes its output NaN, "grad" its input's gradient NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.armed: str | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.armed == "output":
            return x * float("nan")
        return _NanGrad.apply(x) if self.armed == "grad" else x


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                         Spoil(), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))


def batch() -> tuple[Tensor, Tensor]:
    return torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))


def test_a_layer_whose_output_is_nan_is_named_and_the_model_left_as_it_was():
    model, (x, y) = net(), batch()
    model[4].armed = "output"
    before = [b.clone() for b in model.buffers()]
    where = locate_nonfinite(model, lambda: F.cross_entropy(model(x), y))
    assert where == "the output of layer '4' (Spoil)"  # the first in forward order; the BN and ReLU after it follow
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers()))  # BatchNorm statistics rolled back
    assert all(p.grad is None for p in model.parameters())


def test_a_nan_born_in_the_backward_pass_is_named_by_the_output_whose_gradient_went_bad():
    model, (x, y) = net(), batch()
    model[4].armed = "grad"
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    where = locate_nonfinite(model, lambda: F.cross_entropy(model(x), y))
    # The conv before the spoiled layer is the first whose output gradient the backward pass made NaN.
    assert where == "the gradient of layer '3' (Conv2d)'s output"
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in model.parameters())  # gradients restored


def test_a_finite_batch_says_so():
    model, (x, y) = net(), batch()
    assert "finite when run again" in locate_nonfinite(model, lambda: F.cross_entropy(model(x), y))


def test_first_nonfinite_gradient_names_the_last_bad_parameter_or_none():
    model = net()
    named = [(n, m, pn) for n, m in model.named_modules() for pn, _ in m.named_parameters(recurse=False)]
    grads = [torch.zeros(2) for _ in named]
    assert first_nonfinite_gradient(named, grads) is None
    grads[0], grads[2] = torch.tensor([float("inf")]), torch.tensor([float("nan")])
    assert first_nonfinite_gradient(named, grads) == f"the gradient of layer '{named[2][0]}' (BatchNorm2d)'s parameter 'weight'"
    assert first_nonfinite_gradient(named, [None] * len(named)) is None


@pytest.mark.parametrize("how, message", [
    ("output", r"non-finite loss at training step 2: the first non-finite value is the output of layer 'student.4' \(Spoil\)"),
    ("grad", (r"non-finite gradient at training step 2: the first non-finite value is the gradient of layer "
              r"'student.3' \(QConv2d\)'s parameter 'act_step'")),  # its asym step, registered last
])
def test_the_distiller_stops_a_loop_of_ones_own_at_the_first_nonfinite_value(how, message):
    model, (x, y) = net(), batch()
    prepare(model, "2W/8A")
    distiller = Distiller(model, scheme="baseline")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    distiller(x, y)[1]["loss"].backward()  # step 1: fine
    opt.step()
    model[4].armed = how
    with pytest.raises(NonFiniteLossError, match=message) as e:
        opt.zero_grad()
        distiller(x, y)[1]["loss"].backward()
    assert e.value.step == 2 and e.value.checkpoint is None


def test_check_finite_off_leaves_the_decision_to_the_caller():
    model, (x, y) = net(), batch()
    distiller = Distiller(model, scheme="baseline", check_finite=False)
    model[4].armed = "output"
    _, losses = distiller(x, y)
    assert not torch.isfinite(losses["loss"])
    with torch.no_grad():  # evaluation is never stopped, with the check on either
        assert not torch.isfinite(Distiller(model, scheme="baseline")(x, y)[1]["loss"])


def test_learned_steps_pushed_to_or_below_zero_are_named_with_their_lowest_value():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(16, 2))
    prepare(net, weights=WeightQuant("lsq", 4, per_channel=True), activations=ActQuant(4, quantizer="lsq"))
    net.train()(torch.rand(8, 1, 6, 6))  # the first batch sets the activation steps
    assert collapsed_steps(net) == []
    with torch.no_grad():
        net[2].weight_step[1] = -0.25   # one channel of a per-channel step crossed zero
        net[2].act_step.fill_(0.0)
    assert collapsed_steps(net) == ["2.weight_step = -0.25", "2.act_step = 0"]  # in registration order


def test_the_distillers_stop_names_learned_steps_pushed_through_zero():
    model, (x, y) = net(), batch()
    prepare(model, "2W/8A")
    distiller = Distiller(model, scheme="baseline")
    distiller(x, y)  # the first batch sets the activation steps
    with torch.no_grad():
        model[3].act_step.fill_(-2.0)
    model[4].armed = "output"
    with pytest.raises(NonFiniteLossError, match=r"1 learned quantizer steps fell to or below zero \(first: "
                                                 r"student.3.act_step = -2\): update them in the log domain "
                                                 r"\(optim.quant_domain=log\) or lower their learning rate"):
        distiller(x, y)
