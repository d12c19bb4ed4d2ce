"""Loss functions of Apprentice distillation: pure functions of logits and labels.

The Apprentice loss (Mishra & Marr, "Apprentice: Using Knowledge Distillation Techniques To Improve
Low-Precision Network Accuracy", ICLR 2018, eq. 1-3) trains a low-precision student beside a
full-precision teacher:

    L = α·H(y, p_T) + β·H(y, p_S) + γ·τ²·H(p_T^τ, p_S^τ)

with H(a, b) = −Σ_k a_k·log b_k, y the one-hot label, p = softmax(z) for the label terms and
p^τ = softmax(z/τ) for the distillation term. The paper uses α = 1, β = 0.5, γ = 0.5, τ = 1. At
τ = 1 the student's gradient w.r.t. its logits is p_S − (β·y + γ·p_T): it learns from a mix of the
label and the teacher's distribution. For τ ≠ 1 the distillation term is multiplied by τ² (Hinton,
Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015) so its gradient keeps the same
size as τ changes; at τ = 1 the factor is 1 and the loss is the paper's.

Every function returns batch means. Logits are upcast to float32 before the softmax so the losses
are computed in full precision under bf16/fp16 autocast too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from apprentice.errors import ApprenticeError, lookup

__all__ = ["GAMMA_SCHEDULES", "KD_TERMS", "LOSSES", "LossRecipe", "apprentice_loss", "check_loss_weights",
           "cross_entropy", "logit_mse", "scheduled_weights", "soft_cross_entropy"]


def _check_logits(logits: Tensor, name: str) -> None:
    if logits.dim() != 2:
        raise ApprenticeError(f"{name} must have shape [batch, classes], got {tuple(logits.shape)}")


def _check_labels(labels: Tensor, num_classes: int, batch: int) -> None:
    if labels.dim() != 1 or labels.shape[0] != batch:
        raise ApprenticeError(
            f"labels must have shape [{batch}] (one class index per sample), got {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise ApprenticeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    # On the CPU an out-of-range label would be a bare IndexError; the check costs a reduction, no
    # sync. On an accelerator it would cost a host sync every step, so there the labels are trusted:
    # every data set validates its labels when it is loaded (`apprentice.data`).
    if labels.device.type == "cpu" and labels.numel() and bool(((labels < 0) | (labels >= num_classes)).any()):
        lo, hi = int(labels.min()), int(labels.max())
        raise ApprenticeError(
            f"labels must lie in [0, {num_classes - 1}] for {num_classes} classes, got values in [{lo}, {hi}]"
        )


def check_loss_weights(
    *, alpha: float = 1.0, beta: float = 0.5, gamma: float = 0.5, temperature: float = 1.0, prefix: str = ""
) -> None:
    """Raise `ApprenticeError` unless the weights are finite and >= 0 and the temperature is > 0.

    The one check of the loss settings: the `apprentice.distill.Distiller` runs it once when it is
    built and the config runs it at load time; `apprentice_loss`, called every step, does not.

    Args:
        alpha: Weight of the teacher's label term H(y, p_T).
        beta: Weight of the student's label term H(y, p_S).
        gamma: Weight of the distillation term H(p_T^τ, p_S^τ).
        temperature: Softmax temperature τ of the distillation term.
        prefix: Put before the argument's name in the message (``"distill."`` names the config key).

    Example:
        >>> check_loss_weights(alpha=1.0, beta=0.5, gamma=0.5, temperature=1.0)
    """
    for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma), ("temperature", temperature)):
        want = "> 0" if name == "temperature" else ">= 0"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ApprenticeError(f"{prefix}{name}: must be a number {want}, got {value!r}")
        if not math.isfinite(value) or not (value > 0 if name == "temperature" else value >= 0):
            raise ApprenticeError(f"{prefix}{name}: must be {want} and finite, got {value!r}")


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy with hard labels, H(y, softmax(z)), averaged over the batch.

        CE = −(1/N)·Σ_i log softmax(z_i)[y_i]

    Args:
        logits: Float tensor [N, K] of unnormalised scores z.
        labels: Integer tensor [N] of class indices in [0, K).

    Returns:
        Scalar tensor.

    Raises:
        ApprenticeError: Wrong shapes, non-integer labels, or a label outside [0, K).

    Example:
        >>> round(cross_entropy(torch.zeros(2, 4), torch.tensor([0, 3])).item(), 4)  # log 4
        1.3863
    """
    _check_logits(logits, "logits")
    _check_labels(labels, logits.shape[1], logits.shape[0])
    return F.cross_entropy(logits.float(), labels)


def soft_cross_entropy(logits: Tensor, target_probs: Tensor) -> Tensor:
    """Cross-entropy against a target distribution, H(p, softmax(z)), averaged over the batch.

        H = −(1/N)·Σ_i Σ_k p_ik·log softmax(z_i)_k

    Gradient w.r.t. z_i is (softmax(z_i) − p_i)/N when each p_i sums to 1.

    Args:
        logits: Float tensor [N, K] of unnormalised scores z.
        target_probs: Tensor [N, K] of probabilities p (rows summing to 1).

    Returns:
        Scalar tensor.

    Raises:
        ApprenticeError: The two tensors differ in shape.

    Example:
        >>> round(soft_cross_entropy(torch.zeros(1, 2), torch.tensor([[0.5, 0.5]])).item(), 4)  # log 2
        0.6931
    """
    _check_logits(logits, "logits")
    if target_probs.shape != logits.shape:
        raise ApprenticeError(
            f"target_probs must have the shape of logits {tuple(logits.shape)}, "
            f"got {tuple(target_probs.shape)}"
        )
    log_q = F.log_softmax(logits.float(), dim=1)
    return -(target_probs.float() * log_q).sum(dim=1).mean()


def logit_mse(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Mean squared difference of the logits, ``(1/(N·K))·Σ_i Σ_k (z_S,ik − z_T,ik)²``.

    Kim et al., "Comparing Kullback-Leibler Divergence and Mean Squared Error Loss in Knowledge
    Distillation", IJCAI 2021: matching logits directly (the τ → ∞ limit of soft cross-entropy,
    Hinton et al. 2015, sec. 2.1) transfers more than the softened distributions do.

    Example:
        >>> logit_mse(torch.zeros(1, 2), torch.tensor([[1.0, 3.0]])).item()  # (1 + 9) / 2
        5.0
    """
    return (student_logits.float() - teacher_logits.float()).pow(2).mean()


def _soft_ce_term(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> Tensor:
    return soft_cross_entropy(student_logits.float() / tau, F.softmax(teacher_logits.float() / tau, dim=1))


def _mse_term(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> Tensor:
    return logit_mse(student_logits, teacher_logits) / (tau * tau)  # the τ² weight then cancels: τ is unused


#: The distillation term by name, ``kd(z_S, z_T, τ)``, weighted γ·τ² in the loss.
KD_TERMS: dict[str, Callable[[Tensor, Tensor, float], Tensor]] = {
    "soft-ce": _soft_ce_term,  # H(p_T^τ, p_S^τ): the paper's; its gradient is KL's (Hinton et al. 2015)
    "mse": _mse_term,  # logit matching (Kim et al. 2021)
}

#: How γ moves over training, w(t) for t = the fraction of the run done: γ_t = γ·w(t) and
#: β_t = β + γ·(1 − w(t)), so the label and teacher weights always sum to β + γ.
GAMMA_SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": lambda t: 1.0,
    "decay": lambda t: 1.0 - t,  # the teacher first, the labels at the end
    "rise": lambda t: t,  # the labels first, the teacher at the end
}


def scheduled_weights(beta: float, gamma: float, schedule: str, progress: float) -> tuple[float, float]:
    """``(β_t, γ_t)`` of `GAMMA_SCHEDULES` ``schedule`` at ``progress`` ∈ [0, 1].

    Example:
        >>> scheduled_weights(0.5, 0.5, "decay", 0.25)
        (0.625, 0.375)
    """
    w = lookup(GAMMA_SCHEDULES, schedule, "gamma schedule")(min(max(float(progress), 0.0), 1.0))
    return beta + gamma * (1.0 - w), gamma * w


@dataclass(frozen=True)
class LossRecipe:
    """One row of `LOSSES`: the student's loss weights, the distillation term and γ's schedule."""

    beta: float
    gamma: float
    temperature: float
    kd: str = "soft-ce"
    gamma_schedule: str = "constant"
    source: str = ""


#: Named distillation losses (``distill.loss``), each a complete choice of the student's loss.
LOSSES: dict[str, LossRecipe] = {
    "paper": LossRecipe(0.5, 0.5, 1.0, source="Mishra & Marr 2018: α=1, β=γ=0.5, τ=1"),
    "soft-t4": LossRecipe(0.1, 0.9, 4.0, source="Hinton et al. 2015: KL at τ=4 scaled by τ², most weight on it"),
    "function-matching": LossRecipe(0.0, 1.0, 1.0, source="Beyer et al. 2022: the teacher's outputs only, β=0"),
    "mse": LossRecipe(0.5, 0.5, 1.0, kd="mse", source="Kim et al. 2021: match the logits"),
    "gamma-decay": LossRecipe(0.5, 0.5, 1.0, gamma_schedule="decay",
                              source="γ from 0.5 to 0 (Jafari et al. 2021, annealing KD, reversed)"),
    "gamma-rise": LossRecipe(0.0, 1.0, 1.0, gamma_schedule="rise",
                             source="labels first, the teacher's outputs alone at the end"),
}


def apprentice_loss(
    student_logits: Tensor,
    labels: Tensor,
    teacher_logits: Tensor | None = None,
    *,
    alpha: float = 1.0,
    beta: float = 0.5,
    gamma: float = 0.5,
    temperature: float = 1.0,
    teacher_grad_from_gamma: bool = False,
    kd: str = "soft-ce",
) -> dict[str, Tensor]:
    """The Apprentice loss (Mishra & Marr 2018) as a dict of named terms.

        L = α·H(y, p_T) + β·H(y, p_S) + γ·τ²·H(p_T^τ, p_S^τ)

    p_T, p_S are softmax(z) for the label terms; p^τ = softmax(z/τ) in the distillation term, whose
    τ² factor (Hinton et al. 2015) keeps its gradient size independent of τ (it is 1 at τ = 1, the
    paper's setting). At τ = 1 the gradient w.r.t. the student logits is (p_S − (β·y + γ·p_T))/N.

    By default the distillation term sees *detached* teacher logits, so a teacher that trains
    (scheme A) learns from the α term only; ``teacher_grad_from_gamma=True`` lets the γ term's
    gradient reach the teacher too (the paper does not say which it did).

    Args:
        student_logits: Student logits z_S, [N, K].
        labels: Class indices y, [N], integers in [0, K).
        teacher_logits: Teacher logits z_T, [N, K], or None (no teacher: only the β term).
        alpha: Weight of H(y, p_T); the term is computed only when alpha != 0 and teacher logits are
            given. Pass 0 for a frozen teacher, whose term is a constant.
        beta: Weight of H(y, p_S).
        gamma: Weight of the distillation term; computed only when gamma != 0 and teacher logits
            are given.
        temperature: τ > 0 of the distillation term.
        teacher_grad_from_gamma: Let the distillation term back-propagate into the teacher logits.
        kd: the distillation term, a `KD_TERMS` key: ``soft-ce`` (the paper's) or ``mse`` (logits).

    Returns:
        ``{"loss": weighted total, "ce_student": H(y, p_S)}`` plus ``"ce_teacher"`` = H(y, p_T) and
        ``"kd"`` = H(p_T^τ, p_S^τ) (or the `KD_TERMS` term; raw, without γ and τ²) when computed. All scalar tensors;
        the raw terms keep their graph, call ``.item()`` / ``.detach()`` to log them.

    Raises:
        ApprenticeError: Labels out of range, teacher and student logits of different shape, or no
            active term (beta = 0 and no teacher term). The weights are not checked here, on every
            step: `check_loss_weights` does that once, where they are set.

    Example:
        >>> z_s, z_t, y = torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 2])
        >>> out = apprentice_loss(z_s, y, z_t, alpha=0.0)
        >>> sorted(out), round(out["loss"].item(), 4)  # 0.5·log 3 + 0.5·log 3
        (['ce_student', 'kd', 'loss'], 1.0986)
    """
    _check_logits(student_logits, "student_logits")
    batch, classes = student_logits.shape
    if teacher_logits is not None:
        _check_logits(teacher_logits, "teacher_logits")
        if teacher_logits.shape[1] != classes:
            raise ApprenticeError(
                f"teacher has {teacher_logits.shape[1]} classes, student has {classes}; "
                "teacher and student must predict the same classes"
            )
        if teacher_logits.shape[0] != batch:
            raise ApprenticeError(
                f"teacher logits have batch size {teacher_logits.shape[0]}, student logits {batch}"
            )
    _check_labels(labels, classes, batch)

    use_alpha = teacher_logits is not None and alpha != 0
    use_gamma = teacher_logits is not None and gamma != 0
    if beta == 0 and not use_alpha and not use_gamma:
        raise ApprenticeError(
            "no active loss term: beta is 0 and there is no teacher term "
            "(teacher logits missing or alpha = gamma = 0)"
        )

    terms: dict[str, Tensor] = {}
    ce_student = F.cross_entropy(student_logits.float(), labels)
    terms["ce_student"] = ce_student
    total = beta * ce_student if beta != 0 else None

    if use_alpha:
        assert teacher_logits is not None
        ce_teacher = F.cross_entropy(teacher_logits.float(), labels)
        terms["ce_teacher"] = ce_teacher
        total = alpha * ce_teacher if total is None else total + alpha * ce_teacher

    if use_gamma:
        assert teacher_logits is not None
        z_t = teacher_logits if teacher_grad_from_gamma else teacher_logits.detach()
        tau = float(temperature)
        term = KD_TERMS[kd](student_logits, z_t, tau)
        terms["kd"] = term
        weighted = (gamma * tau * tau) * term
        total = weighted if total is None else total + weighted

    assert total is not None
    terms["loss"] = total
    return terms
