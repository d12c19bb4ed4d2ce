"""Tests of apprentice.losses against hand computation on a 3-sample batch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from apprentice.errors import ApprenticeError
from apprentice.losses import (
    apprentice_loss,
    check_loss_weights,
    cross_entropy,
    soft_cross_entropy,
)

Z_S = np.array([[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 0.3, -0.4], [-1.5, 3.0, 0.5, 1.0]])
Z_T = np.array([[3.0, -0.5, 0.0, 1.0], [0.0, 1.0, 2.0, -1.0], [0.5, 2.5, -0.5, 0.0]])
Y = np.array([0, 2, 1])


def np_softmax(z: np.ndarray, tau: float = 1.0) -> np.ndarray:
    e = np.exp(z / tau - (z / tau).max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_ce(z: np.ndarray, y: np.ndarray) -> float:
    p = np_softmax(z)
    return float(np.mean([-math.log(p[i, y[i]]) for i in range(len(y))]))


def np_soft_ce(z: np.ndarray, p: np.ndarray, tau: float = 1.0) -> float:
    q = np_softmax(z, tau)
    return float(np.mean(-(p * np.log(q)).sum(axis=1)))


def t(a: np.ndarray, grad: bool = False) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float32, requires_grad=grad)


Y_T = torch.tensor(Y)


def test_cross_entropy_matches_hand_computation():
    assert cross_entropy(t(Z_S), Y_T).item() == pytest.approx(np_ce(Z_S, Y), rel=1e-6)


def test_soft_cross_entropy_matches_hand_computation():
    p = np_softmax(Z_T)
    assert soft_cross_entropy(t(Z_S), t(p)).item() == pytest.approx(np_soft_ce(Z_S, p), rel=1e-6)


def test_soft_cross_entropy_of_one_hot_is_cross_entropy():
    one_hot = np.eye(4)[Y]
    assert soft_cross_entropy(t(Z_S), t(one_hot)).item() == pytest.approx(np_ce(Z_S, Y), rel=1e-6)


def test_apprentice_loss_terms_match_hand_computation():
    out = apprentice_loss(t(Z_S), Y_T, t(Z_T), alpha=1.0, beta=0.5, gamma=0.5)
    ce_t, ce_s = np_ce(Z_T, Y), np_ce(Z_S, Y)
    kd = np_soft_ce(Z_S, np_softmax(Z_T))
    assert set(out) == {"loss", "ce_teacher", "ce_student", "kd"}
    assert out["ce_teacher"].item() == pytest.approx(ce_t, rel=1e-6)
    assert out["ce_student"].item() == pytest.approx(ce_s, rel=1e-6)
    assert out["kd"].item() == pytest.approx(kd, rel=1e-6)
    assert out["loss"].item() == pytest.approx(1.0 * ce_t + 0.5 * ce_s + 0.5 * kd, rel=1e-6)


def test_terms_present_only_when_computed():
    assert set(apprentice_loss(t(Z_S), Y_T)) == {"loss", "ce_student"}
    assert set(apprentice_loss(t(Z_S), Y_T, t(Z_T), alpha=0.0)) == {"loss", "ce_student", "kd"}
    assert set(apprentice_loss(t(Z_S), Y_T, t(Z_T), gamma=0.0)) == {"loss", "ce_student", "ce_teacher"}
    no_teacher = apprentice_loss(t(Z_S), Y_T, beta=0.7)
    assert no_teacher["loss"].item() == pytest.approx(0.7 * np_ce(Z_S, Y), rel=1e-6)


def test_gamma_only_equals_soft_cross_entropy_to_teacher_softmax():
    out = apprentice_loss(t(Z_S), Y_T, t(Z_T), alpha=0.0, beta=0.0, gamma=1.0)
    ref = soft_cross_entropy(t(Z_S), torch.softmax(t(Z_T), dim=1))
    assert out["loss"].item() == pytest.approx(ref.item(), rel=1e-6)


@pytest.mark.parametrize("beta,gamma", [(0.5, 0.5), (0.3, 0.9), (1.0, 0.0)])
def test_student_gradient_is_p_s_minus_mixed_target(beta, gamma):
    # (β+γ)·p_S − (β·y + γ·p_T), i.e. the paper's p_S − (β·y + γ·p_T) when β + γ = 1
    z_s = t(Z_S, grad=True)
    apprentice_loss(z_s, Y_T, t(Z_T), alpha=1.0, beta=beta, gamma=gamma)["loss"].backward()
    mixed_target = beta * np.eye(4)[Y] + gamma * np_softmax(Z_T)
    expected = ((beta + gamma) * np_softmax(Z_S) - mixed_target) / len(Y)
    np.testing.assert_allclose(z_s.grad.numpy(), expected, rtol=1e-5, atol=1e-7)


def test_temperature_squared_scaling():
    tau = 2.0
    out = apprentice_loss(t(Z_S), Y_T, t(Z_T), alpha=0.0, beta=0.0, gamma=1.0, temperature=tau)
    raw = np_soft_ce(Z_S, np_softmax(Z_T, tau), tau)
    assert out["kd"].item() == pytest.approx(raw, rel=1e-6)
    assert out["loss"].item() == pytest.approx(4.0 * raw, rel=1e-6)
    mixed = apprentice_loss(t(Z_S), Y_T, t(Z_T), alpha=0.0, beta=0.5, gamma=0.5, temperature=tau)
    assert mixed["loss"].item() == pytest.approx(0.5 * np_ce(Z_S, Y) + 0.5 * 4.0 * raw, rel=1e-6)


def test_teacher_gets_gradient_from_alpha_term_only_by_default():
    z_t = t(Z_T, grad=True)
    apprentice_loss(t(Z_S, grad=True), Y_T, z_t, alpha=1.0, beta=0.5, gamma=0.5)["loss"].backward()
    expected = (np_softmax(Z_T) - np.eye(4)[Y]) / len(Y)  # gradient of H(y, p_T) alone
    np.testing.assert_allclose(z_t.grad.numpy(), expected, rtol=1e-5, atol=1e-7)


def test_teacher_gets_no_gradient_without_alpha_by_default():
    z_t = t(Z_T, grad=True)
    out = apprentice_loss(t(Z_S, grad=True), Y_T, z_t, alpha=0.0, beta=0.5, gamma=0.5)
    out["loss"].backward()
    assert z_t.grad is None


def test_teacher_grad_from_gamma_flag():
    z_t = t(Z_T, grad=True)
    out = apprentice_loss(t(Z_S), Y_T, z_t, alpha=0.0, beta=0.0, gamma=1.0, teacher_grad_from_gamma=True)
    out["loss"].backward()
    # manual: d/dz_T of −(1/N)Σ p_T·log p_S, with p_T = softmax(z_T)
    p_t, log_q = np_softmax(Z_T), np.log(np_softmax(Z_S))
    g_p = -log_q / len(Y)
    expected = p_t * (g_p - (p_t * g_p).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(z_t.grad.numpy(), expected, rtol=1e-5, atol=1e-7)


def test_bf16_logits_are_upcast():
    out = apprentice_loss(t(Z_S).bfloat16(), Y_T, t(Z_T).bfloat16())
    assert out["loss"].dtype == torch.float32


# The loss settings are checked once where they are set (Distiller, config), not by apprentice_loss
# on every step: these tests call the one check (tests/test_distill.py and test_config.py show that
# the Distiller and the config run it).
@pytest.mark.parametrize("arg", ["alpha", "beta", "gamma"])
def test_negative_weight_is_rejected(arg):
    with pytest.raises(ApprenticeError, match=arg):
        check_loss_weights(**{arg: -0.1})


@pytest.mark.parametrize("tau", [0.0, -1.0, float("nan")])
def test_bad_temperature_is_rejected(tau):
    with pytest.raises(ApprenticeError, match="temperature"):
        check_loss_weights(temperature=tau)


def test_check_loss_weights_rejects_non_numbers():
    with pytest.raises(ApprenticeError, match="beta"):
        check_loss_weights(beta="0.5")  # type: ignore[arg-type]


def test_check_loss_weights_names_the_key_with_a_prefix():
    with pytest.raises(ApprenticeError, match=r"^distill\.gamma: must be >= 0"):
        check_loss_weights(gamma=float("inf"), prefix="distill.")


def test_class_count_mismatch_is_rejected():
    with pytest.raises(ApprenticeError, match="teacher has 5 classes, student has 4"):
        apprentice_loss(t(Z_S), Y_T, torch.zeros(3, 5))


def test_batch_mismatch_is_rejected():
    with pytest.raises(ApprenticeError, match="batch size"):
        apprentice_loss(t(Z_S), Y_T, torch.zeros(2, 4))


@pytest.mark.parametrize("labels", [[0, 4, 1], [0, -1, 1]])
def test_labels_out_of_range_are_rejected(labels):
    with pytest.raises(ApprenticeError, match=r"labels must lie in \[0, 3\]"):
        apprentice_loss(t(Z_S), torch.tensor(labels), t(Z_T))
    with pytest.raises(ApprenticeError, match="labels"):
        cross_entropy(t(Z_S), torch.tensor(labels))


def test_bad_label_shape_and_dtype_are_rejected():
    with pytest.raises(ApprenticeError, match="labels must have shape"):
        apprentice_loss(t(Z_S), torch.tensor([0, 1]))
    with pytest.raises(ApprenticeError, match="integer"):
        apprentice_loss(t(Z_S), torch.tensor([0.0, 1.0, 2.0]))


def test_soft_cross_entropy_shape_mismatch_is_rejected():
    with pytest.raises(ApprenticeError, match="target_probs"):
        soft_cross_entropy(t(Z_S), torch.full((3, 5), 0.2))


def test_no_active_term_is_rejected():
    with pytest.raises(ApprenticeError, match="no active loss term"):
        apprentice_loss(t(Z_S), Y_T, beta=0.0)


# -- the loss table ------------------------------------------------------------------------------


def test_logit_mse_and_its_place_in_the_loss():
    from apprentice.losses import logit_mse

    z_s, z_t, y = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1.0, 0.0, 6.0]]), torch.tensor([2])
    assert logit_mse(z_s, z_t).item() == pytest.approx((0 + 4 + 9) / 3)
    out = apprentice_loss(z_s, y, z_t, alpha=0.0, beta=0.0, gamma=2.0, temperature=3.0, kd="mse")
    assert out["loss"].item() == pytest.approx(2.0 * 13 / 3)  # γ·τ²·(mse/τ²): τ does not change it


@pytest.mark.parametrize("schedule, progress, want", [
    ("constant", 0.7, (0.5, 0.5)), ("decay", 0.0, (0.5, 0.5)), ("decay", 1.0, (1.0, 0.0)),
    ("rise", 0.0, (1.0, 0.0)), ("rise", 0.5, (0.75, 0.25)), ("rise", 2.0, (0.5, 0.5)),
])
def test_gamma_schedules_keep_the_sum_of_the_weights(schedule, progress, want):
    from apprentice.losses import scheduled_weights

    assert scheduled_weights(0.5, 0.5, schedule, progress) == pytest.approx(want)


@pytest.mark.parametrize("name", sorted(__import__("apprentice.losses", fromlist=["LOSSES"]).LOSSES))
def test_every_row_of_the_loss_table_trains_a_student(name):
    from torch import nn

    from apprentice.distill import Distiller
    from apprentice.losses import LOSSES

    row = LOSSES[name]
    torch.manual_seed(0)
    student, teacher = nn.Linear(4, 3), nn.Linear(4, 3)
    d = Distiller(student, teacher, scheme="B", beta=row.beta, gamma=row.gamma, temperature=row.temperature,
                  kd=row.kd, gamma_schedule=row.gamma_schedule)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    for progress in (0.0, 0.5, 1.0):
        d.set_progress(progress)
        assert d.beta + d.gamma == pytest.approx(row.beta + row.gamma)
        _, losses = d(x, y)
        losses["loss"].backward()
        assert torch.isfinite(losses["loss"]) and student.weight.grad is not None
    assert row.source


@pytest.mark.parametrize("kwargs, message", [({"kd": "kl-divergence"}, "unknown distillation term 'kl-divergence'"),
                                             ({"gamma_schedule": "cosine"}, "unknown gamma schedule 'cosine'")])
def test_unknown_loss_parts_are_named(kwargs, message):
    from torch import nn

    from apprentice.distill import Distiller

    with pytest.raises(ApprenticeError, match=message):
        Distiller(nn.Linear(2, 2), nn.Linear(2, 2), scheme="B", **kwargs)


@pytest.mark.parametrize("overrides, message", [
    (["distill.loss=kl"], r"distill.loss: unknown loss 'kl'; choose from \['function-matching'"),
    (["distill.loss=soft-t4", "distill.gamma=0.7"], "distill.gamma: distill.loss='soft-t4' sets it"),
])
def test_the_recipe_names_a_loss_of_the_table(overrides, message):
    from apprentice.config import load_config

    with pytest.raises(ApprenticeError, match=message):
        load_config(None, ["distill.scheme=B", "distill.teacher=t", *overrides])
    assert load_config(None, ["distill.loss=mse"]).distill.loss == "mse"
