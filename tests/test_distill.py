"""Tests of apprentice.distill: scheme semantics, teacher handling and make_student."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from apprentice import quant
from apprentice.distill import SCHEMES, Distiller, Scheme, make_student, resolve_scheme
from apprentice.errors import ApprenticeError
from apprentice.losses import apprentice_loss


class TinyNet(nn.Sequential):
    """conv → BN → ReLU → conv → BN → ReLU → pool → linear, optionally with a num_classes attribute."""

    def __init__(self, num_classes: int = 5, width: int = 4, tag_classes: bool = True) -> None:
        super().__init__(
            nn.Conv2d(1, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(width, num_classes),
        )
        if tag_classes:
            self.num_classes = num_classes


def batch(n: int = 6, classes: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, classes, (n,), generator=g)


def bn_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def train_steps(distiller: Distiller, steps: int = 3) -> None:
    opt = torch.optim.SGD(distiller.trainable_parameters(), lr=0.1)
    distiller.train()
    for i in range(steps):
        x, y = batch(seed=i)
        opt.zero_grad()
        _, losses = distiller(x, y)
        losses["loss"].backward()
        opt.step()


# ---------------------------------------------------------------- schemes table


def test_schemes_table():
    assert set(SCHEMES) == {"baseline", "A", "B", "C"}
    assert SCHEMES["baseline"].teacher == "none"
    assert SCHEMES["A"].teacher == "joint" and SCHEMES["A"].student_init == "scratch"
    assert SCHEMES["B"].teacher == "frozen" and SCHEMES["B"].student_init == "scratch"
    assert SCHEMES["C"].teacher == "frozen" and SCHEMES["C"].student_init == "pretrained"
    for name, scheme in SCHEMES.items():
        assert scheme.name == name and scheme.description


def test_unknown_scheme_lists_choices():
    with pytest.raises(
        ApprenticeError, match=r"unknown scheme 'D'; choose from \['A', 'B', 'C', 'baseline'\]"
    ):
        resolve_scheme("D")
    with pytest.raises(ApprenticeError, match="unknown scheme"):
        Distiller(TinyNet(), TinyNet(), scheme="D")


def test_scheme_fields_are_validated():
    with pytest.raises(ApprenticeError, match="Scheme.teacher"):
        Scheme("X", "sometimes", "scratch", "")
    with pytest.raises(ApprenticeError, match="Scheme.student_init"):
        Scheme("X", "frozen", "imagenet", "")


def test_scheme_object_is_accepted():
    d = Distiller(TinyNet(), TinyNet(), scheme=SCHEMES["A"])
    assert d.scheme is SCHEMES["A"]


def given_inputs(s: Scheme) -> dict[str, bool]:
    """Which distill.* settings a config of scheme ``s`` sets, read off the scheme's fields."""
    return {"teacher": s.frozen_teacher, "teacher_model": s.teacher == "joint",
            "student_init": s.student_init == "pretrained", "teacher_grad_from_gamma": False}


@pytest.mark.parametrize("name", SCHEMES)
def test_scheme_rule_takes_its_own_inputs_and_names_the_key_of_a_wrong_one(name):
    s = SCHEMES[name]
    given = given_inputs(s)
    s.check_inputs(**given)
    optional = {"teacher_model": s.frozen_teacher, "teacher_grad_from_gamma": s.teacher == "joint"}
    for key in given:
        flipped = {**given, key: not given[key]}
        if optional.get(key):
            s.check_inputs(**flipped)  # a frozen teacher's architecture; scheme A's gradient switch
            continue
        with pytest.raises(ApprenticeError, match=f"^distill\\.{key}: .*scheme"):
            s.check_inputs(**flipped)


def test_distiller_make_student_and_config_state_the_same_rule():
    def message(call) -> str:
        with pytest.raises(ApprenticeError) as e:
            call()
        return str(e.value).split(": ", 1)[1]  # without the name of the input

    rule = SCHEMES["baseline"].check_inputs
    assert message(lambda: Distiller(TinyNet(), TinyNet(), scheme="baseline")) == message(
        lambda: rule(teacher=True, teacher_model=False, student_init=False, teacher_grad_from_gamma=False))
    assert message(lambda: make_student(TinyNet(), scheme="baseline", init_state_dict={})) == message(
        lambda: rule(teacher=False, teacher_model=False, student_init=True, teacher_grad_from_gamma=False))


# ---------------------------------------------------------------- validation


def test_baseline_with_teacher_is_rejected():
    with pytest.raises(ApprenticeError, match="without a teacher"):
        Distiller(TinyNet(), TinyNet(), scheme="baseline")


TEACHER_SCHEMES = [k for k, s in SCHEMES.items() if s.needs_teacher]
SCRATCH_SCHEMES = [k for k, s in SCHEMES.items() if s.student_init == "scratch"]


@pytest.mark.parametrize("scheme", TEACHER_SCHEMES)
def test_teacher_schemes_without_teacher_are_rejected(scheme):
    with pytest.raises(ApprenticeError, match=f"scheme '{scheme}' needs a teacher"):
        Distiller(TinyNet(), scheme=scheme)


def test_same_module_as_teacher_and_student_is_rejected():
    net = TinyNet()
    with pytest.raises(ApprenticeError, match="two different modules"):
        Distiller(net, net, scheme="A")


def test_class_count_mismatch_from_attributes():
    with pytest.raises(ApprenticeError, match="teacher has 7 classes, student has 5"):
        Distiller(TinyNet(5), TinyNet(7), scheme="B")


def test_class_count_mismatch_at_forward_without_attributes():
    d = Distiller(TinyNet(5, tag_classes=False), TinyNet(7, tag_classes=False), scheme="B")
    with pytest.raises(ApprenticeError, match="teacher has 7 classes, student has 5"):
        d(*batch())


@pytest.mark.parametrize(
    "kwargs,arg",
    [
        ({"alpha": -1.0}, "alpha"),
        ({"beta": -0.5}, "beta"),
        ({"gamma": -0.5}, "gamma"),
        ({"temperature": 0.0}, "temperature"),
    ],
)
def test_bad_weights_are_rejected_at_construction(kwargs, arg):
    with pytest.raises(ApprenticeError, match=arg):
        Distiller(TinyNet(), TinyNet(), scheme="A", **kwargs)


def test_no_loss_term_is_rejected():
    with pytest.raises(ApprenticeError, match="no loss term"):
        Distiller(TinyNet(), scheme="baseline", beta=0.0, gamma=0.0)


# ---------------------------------------------------------------- effective weights


def test_effective_weights_per_scheme():
    base = Distiller(TinyNet(), scheme="baseline")
    assert (base.alpha, base.beta, base.gamma) == (0.0, 1.0, 0.0)  # β+γ = 0.5+0.5
    base2 = Distiller(TinyNet(), scheme="baseline", beta=0.3, gamma=0.4)
    assert base2.beta == pytest.approx(0.7)
    a = Distiller(TinyNet(), TinyNet(), scheme="A")
    assert (a.alpha, a.beta, a.gamma) == (1.0, 0.5, 0.5)
    for scheme in (k for k, s in SCHEMES.items() if s.frozen_teacher):
        d = Distiller(TinyNet(), TinyNet(), scheme=scheme)
        assert (d.alpha, d.beta, d.gamma) == (0.0, 0.5, 0.5)


def test_baseline_loss_is_full_weight_label_term():
    torch.manual_seed(0)
    student = TinyNet()
    d = Distiller(student, scheme="baseline")
    x, y = batch()
    logits, losses = d(x, y)
    assert set(losses) == {"loss", "ce_student"}
    ref = nn.functional.cross_entropy(logits, y)
    assert losses["loss"].item() == pytest.approx(ref.item(), rel=1e-6)


def test_baseline_student_gradient_scale_matches_distilled_student():
    # gradient w.r.t. logits: baseline p_S − y, distilled p_S − (β·y + γ·p_T): same (β+γ)·p_S scale
    z_s = torch.randn(4, 5, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3])
    d = Distiller(TinyNet(), scheme="baseline")
    apprentice_loss(z_s, y, alpha=d.alpha, beta=d.beta, gamma=d.gamma)["loss"].backward()
    expected = (torch.softmax(z_s, 1) - nn.functional.one_hot(y, 5).float()) / 4
    torch.testing.assert_close(z_s.grad, expected.detach())


# ---------------------------------------------------------------- scheme semantics


def test_scheme_a_teacher_trains():
    torch.manual_seed(0)
    d = Distiller(TinyNet(), TinyNet(), scheme="A")
    x, y = batch()
    d.train()
    assert d.teacher.training and d.student.training
    _, losses = d(x, y)
    assert set(losses) == {"loss", "ce_teacher", "ce_student", "kd"}
    losses["loss"].backward()
    assert all(p.grad is not None for p in d.teacher.parameters())
    assert all(p.grad is not None for p in d.student.parameters())
    n_student = len(list(d.student.parameters()))
    assert len(d.trainable_parameters()) == n_student + len(list(d.teacher.parameters()))


def test_scheme_a_teacher_gradient_comes_from_alpha_term_only_by_default():
    torch.manual_seed(0)
    teacher = TinyNet()
    d = Distiller(TinyNet(), teacher, scheme="A", alpha=0.0, beta=0.5, gamma=0.5)
    _, losses = d(*batch())
    losses["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())

    d2 = Distiller(TinyNet(), teacher, scheme="A", alpha=0.0, teacher_grad_from_gamma=True)
    _, losses = d2(*batch())
    losses["loss"].backward()
    assert all(p.grad is not None for p in teacher.parameters())


@pytest.mark.parametrize("scheme", ["B", "C"])
def test_frozen_teacher_gets_no_grad_and_no_graph(scheme):
    torch.manual_seed(0)
    d = Distiller(TinyNet(), TinyNet(), scheme=scheme)
    d.train()
    x, y = batch()
    assert not d.teacher.training
    assert d.teacher_logits(x).grad_fn is None
    _, losses = d(x, y)
    assert set(losses) == {"loss", "ce_student", "kd"}
    losses["loss"].backward()
    assert all(p.grad is None for p in d.teacher.parameters())
    assert all(not p.requires_grad for p in d.teacher.parameters())
    assert all(p.grad is not None for p in d.student.parameters())
    assert d.trainable_parameters() == list(d.student.parameters())


@pytest.mark.parametrize("scheme", ["B", "C"])
def test_frozen_teacher_bn_statistics_never_change(scheme):
    torch.manual_seed(0)
    teacher = TinyNet()
    teacher.train()
    teacher(batch(seed=9)[0])  # give the running stats non-default values
    before = bn_state(teacher)
    params_before = {k: v.clone() for k, v in teacher.named_parameters()}
    d = Distiller(TinyNet(), teacher, scheme=scheme)
    train_steps(d)
    d.train(True)
    train_steps(d)
    d.train()
    teacher.train()  # even a direct call after distiller.train() does not let the stats move
    _, losses = d(*batch(seed=5))
    losses["loss"].backward()
    after = bn_state(teacher)
    assert before.keys() == after.keys() and any("num_batches_tracked" in k for k in after)
    for k in before:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0)
    for k, v in teacher.named_parameters():
        torch.testing.assert_close(v, params_before[k], rtol=0, atol=0)


def test_scheme_a_teacher_bn_statistics_do_change():
    torch.manual_seed(0)
    teacher = TinyNet()
    before = bn_state(teacher)
    train_steps(Distiller(TinyNet(), teacher, scheme="A"))
    assert bn_state(teacher)["1.num_batches_tracked"] == before["1.num_batches_tracked"] + 3


def test_eval_mode_reaches_student():
    d = Distiller(TinyNet(), TinyNet(), scheme="A")
    d.eval()
    assert not d.student.training and not d.teacher.training
    d.train()
    assert d.student.training and d.teacher.training


def test_state_dict_keys_are_prefixed():
    keys = Distiller(TinyNet(), TinyNet(), scheme="B").state_dict().keys()
    assert any(k.startswith("student.") for k in keys)
    assert any(k.startswith("teacher.") for k in keys)
    assert all(k.startswith(("student.", "teacher.")) for k in keys)
    assert all(k.startswith("student.") for k in Distiller(TinyNet(), scheme="baseline").state_dict())


def test_forward_returns_student_logits_and_matching_loss():
    torch.manual_seed(0)
    d = Distiller(TinyNet(), TinyNet(), scheme="B", temperature=2.0)
    d.eval()
    x, y = batch()
    logits, losses = d(x, y)
    torch.testing.assert_close(logits, d.student(x))
    ref = apprentice_loss(d.student(x), y, d.teacher(x), alpha=0.0, temperature=2.0)
    torch.testing.assert_close(losses["loss"], ref["loss"])


# ---------------------------------------------------------------- make_student


def test_make_student_c_loads_checkpoint_before_quantization():
    torch.manual_seed(0)
    fp = TinyNet()
    checkpoint = {k: v.clone() for k, v in fp.state_dict().items()}
    student = TinyNet()  # different random init
    plan = make_student(student, scheme="C", precision="2W/32A", init_state_dict=checkpoint)
    assert plan, "some layer should be quantized"
    swapped = dict(student.named_modules())
    for name in plan:
        assert isinstance(swapped[name], (quant.QConv2d, quant.QLinear))
    # the shadow weights are the checkpoint's, and so is every other tensor
    state = student.state_dict()
    for k, v in checkpoint.items():
        torch.testing.assert_close(state[k], v, rtol=0, atol=0)
    assert plan == quant.quantized_layers(student)


def test_make_student_b_quantizes_from_scratch():
    student = TinyNet()
    plan = make_student(student, scheme="B", precision="2W/32A")
    assert plan == quant.quantized_layers(student)


def test_make_student_c_needs_checkpoint():
    with pytest.raises(ApprenticeError, match="init_state_dict"):
        make_student(TinyNet(), scheme="C", precision="2W/32A")


@pytest.mark.parametrize("scheme", SCRATCH_SCHEMES)
def test_make_student_scratch_scheme_rejects_checkpoint(scheme):
    with pytest.raises(ApprenticeError, match="from scratch"):
        make_student(TinyNet(), scheme=scheme, precision="2W/32A", init_state_dict=TinyNet().state_dict())


def test_make_student_rejects_other_architecture():
    student = TinyNet(width=4)
    with pytest.raises(ApprenticeError, match=r"shape mismatch \(file vs model\) 0\.weight \(8, 1, 3, 3\) vs \(4, 1, 3, 3\)"):
        make_student(student, scheme="C", precision="2W/32A", init_state_dict=TinyNet(width=8).state_dict())
    other = {"extra.0.weight": torch.zeros(4, 1, 3, 3)}
    with pytest.raises(
        ApprenticeError,
        match=r"missing 0\.weight, 1\.weight, 1\.bias \(\+\d+ more\); unexpected extra\.0\.weight",
    ):
        make_student(TinyNet(), scheme="C", precision="2W/32A", init_state_dict=other)
    # the model was left float: nothing was swapped by the failed calls
    assert not quant.quantized_layers(student)


def test_make_student_rejects_prepared_model():
    student = TinyNet()
    make_student(student, scheme="B", precision="2W/32A")
    with pytest.raises(ApprenticeError, match="already has quantized layers"):
        make_student(student, scheme="B", precision="2W/32A")


def test_make_student_c_loads_before_prepare_is_called(monkeypatch):
    torch.manual_seed(0)
    checkpoint = {k: v.clone() for k, v in TinyNet().state_dict().items()}
    seen = {}
    real_prepare = quant.prepare

    def spy(model, *args, **kwargs):
        seen["float_weight"] = model[3].weight.detach().clone()
        seen["was_float"] = type(model[3]) is nn.Conv2d
        return real_prepare(model, *args, **kwargs)

    monkeypatch.setattr("apprentice.distill.prepare", spy)
    make_student(TinyNet(), scheme="C", precision="2W/32A", init_state_dict=checkpoint)
    assert seen["was_float"]
    torch.testing.assert_close(seen["float_weight"], checkpoint["3.weight"], rtol=0, atol=0)
