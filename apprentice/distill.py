"""Distillation schemes of Apprentice (Mishra & Marr, ICLR 2018) and the one `Distiller` module.

Three schemes pair a low-precision student with a full-precision teacher (paper, section 4):

- ``A``: teacher and student both start from random weights and train together; the loss has all
  three terms α·H(y, p_T) + β·H(y, p_S) + γ·H(p_T, p_S).
- ``B``: a trained teacher is frozen; the student trains from scratch with β·H(y, p_S) + γ·H(p_T, p_S).
- ``C``: as B, but the student starts from a trained full-precision checkpoint of its own
  architecture, which is then quantized (its recipes fine-tune at a lower learning rate).

``baseline`` is the same student trained without a teacher (the paper's "no teacher" rows).

The `Distiller` holds ``student`` and ``teacher`` as submodules (state dict keys ``student.*`` and
``teacher.*``), runs both on a batch and returns the student logits and the loss dict of
`apprentice.losses.apprentice_loss`. A frozen teacher is kept in eval mode with no gradients, so
neither its weights nor its BatchNorm statistics ever change.

Example:
    >>> student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> distiller = Distiller(student, teacher, scheme="B")
    >>> logits, losses = distiller(torch.randn(2, 4), torch.tensor([0, 2]))
    >>> sorted(losses)
    ['ce_student', 'kd', 'loss']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from apprentice.errors import ApprenticeError, lookup
from apprentice.losses import (
    GAMMA_SCHEDULES,
    KD_TERMS,
    apprentice_loss,
    check_loss_weights,
    scheduled_weights,
)
from apprentice.quant import (
    ActQuant,
    LayerRules,
    Plan,
    WeightQuant,
    prepare,
    quantized_layers,
)
from apprentice.train.nonfinite import (
    collapsed_note,
    first_nonfinite_gradient,
    locate_nonfinite,
)
from apprentice.train.step import NonFiniteLossError
from apprentice.weights import load_strict

__all__ = ["SCHEMES", "Distiller", "Scheme", "make_student", "resolve_scheme"]

_TEACHER_MODES = ("none", "joint", "frozen")
_STUDENT_INITS = ("scratch", "pretrained")


@dataclass(frozen=True)
class Scheme:
    """How the teacher and the student are set up in one training scheme.

    Attributes:
        name: Key in `SCHEMES`.
        teacher: ``"none"`` (no teacher), ``"joint"`` (teacher trains beside the student, scheme A)
            or ``"frozen"`` (trained teacher, never updated, schemes B and C).
        student_init: ``"scratch"`` (random init) or ``"pretrained"`` (trained full-precision
            weights of the student's own architecture, loaded before quantization; scheme C).
        description: One line for help texts and logs.
    """

    name: str
    teacher: str
    student_init: str
    description: str

    def __post_init__(self) -> None:
        if self.teacher not in _TEACHER_MODES:
            raise ApprenticeError(
                f"Scheme.teacher must be one of {list(_TEACHER_MODES)}, got {self.teacher!r}"
            )
        if self.student_init not in _STUDENT_INITS:
            raise ApprenticeError(
                f"Scheme.student_init must be one of {list(_STUDENT_INITS)}, got {self.student_init!r}"
            )

    @property
    def needs_teacher(self) -> bool:
        """True for every scheme except the no-teacher baseline."""
        return self.teacher != "none"

    @property
    def frozen_teacher(self) -> bool:
        """True when the teacher is trained beforehand and never updated (B, C)."""
        return self.teacher == "frozen"

    # What each scheme takes, stated once: `check_teacher` and `check_student_init` serve the
    # Distiller, make_student and the config alike; `check_inputs` is the config's whole set.

    def check_teacher(self, given: bool, key: str, need: str) -> None:
        """A teacher is required by A, B and C and refused by ``baseline``.

        Args:
            given: whether the caller has one.
            key: how the message names the input (``"teacher"``, ``"distill.teacher"``).
            need: what to give, for the message (``"a teacher; pass teacher=<model>"``).
        """
        if self.needs_teacher and not given:
            raise ApprenticeError(f"{key}: scheme {self.name!r} needs {need}")
        if not self.needs_teacher and given:
            raise ApprenticeError(f"{key}: scheme {self.name!r} trains without a teacher; leave it out or choose "
                                  f"scheme {_names(lambda s: s.needs_teacher)}")

    def check_student_init(self, given: bool, key: str, need: str) -> None:
        """Trained full-precision weights of the student are required by C and refused by the others.

        Args:
            given: whether the caller has them.
            key: how the message names the input (``"init_state_dict"``, ``"distill.student_init"``).
            need: what to give, for the message.
        """
        if self.student_init == "pretrained" and not given:
            raise ApprenticeError(f"{key}: scheme {self.name!r} starts from trained FP weights of the student; "
                                  f"give {need}")
        if self.student_init != "pretrained" and given:
            raise ApprenticeError(f"{key}: only scheme {_names(lambda s: s.student_init == 'pretrained')} starts "
                                  f"from trained weights; scheme {self.name!r} trains the student from scratch")

    def check_inputs(self, *, teacher: bool, teacher_model: bool, student_init: bool,
                     teacher_grad_from_gamma: bool, teacher_cache: bool = False) -> None:
        """Check which ``distill.*`` settings are given against what this scheme takes.

        Args:
            teacher: ``distill.teacher`` (trained teacher weights) is set.
            teacher_model: ``distill.teacher_model`` (the teacher's architecture) is set.
            student_init: ``distill.student_init`` (the student's trained FP weights) is set.
            teacher_grad_from_gamma: ``distill.teacher_grad_from_gamma`` is true.
            teacher_cache: ``distill.teacher_cache`` (stored outputs of a frozen teacher) is set.

        Raises:
            ApprenticeError: naming the first ``distill.*`` key that is missing or not taken.
        """
        joint = self.teacher == "joint"
        if joint and teacher:
            raise ApprenticeError(f"distill.teacher: scheme {self.name!r} trains its teacher from random init; use "
                                  f"scheme {_names(lambda s: s.frozen_teacher)} for a trained teacher")
        if joint:
            self.check_teacher(teacher_model, "distill.teacher_model",
                               "the teacher architecture, e.g. distill.teacher_model.name=resnet56")
        else:  # a frozen teacher's architecture is optional (read from its run folder)
            self.check_teacher(teacher, "distill.teacher", "a trained teacher: a run folder or state-dict file")
            if not self.needs_teacher:
                self.check_teacher(teacher_model, "distill.teacher_model", "no teacher")
        self.check_student_init(student_init, "distill.student_init", "a run folder or state-dict file")
        if teacher_cache and not self.frozen_teacher:
            raise ApprenticeError(f"distill.teacher_cache: scheme {self.name!r} has no frozen teacher whose outputs "
                                  f"could be stored; a teacher cache is for schemes "
                                  f"{_names(lambda s: s.frozen_teacher)}")
        if teacher_grad_from_gamma and not joint:
            raise ApprenticeError(f"distill.teacher_grad_from_gamma: only scheme "
                                  f"{_names(lambda s: s.teacher == 'joint')} trains the teacher; "
                                  f"scheme {self.name!r} does not")


SCHEMES: dict[str, Scheme] = {
    "baseline": Scheme(
        "baseline", "none", "scratch", "no teacher: the low-precision student trained on labels alone"
    ),
    "A": Scheme("A", "joint", "scratch", "teacher trained from scratch jointly with the student"),
    "B": Scheme("B", "frozen", "scratch", "frozen trained teacher, student trained from scratch"),
    "C": Scheme(
        "C",
        "frozen",
        "pretrained",
        "frozen trained teacher, student initialised from its own trained full-precision checkpoint, "
        "then quantized",
    ),
}


def _names(rule: Callable[[Scheme], bool]) -> str:
    """The `SCHEMES` keys that follow ``rule``, for messages: "A", "B or C", "A, B or C"."""
    names = [k for k, s in SCHEMES.items() if rule(s)]
    return " or ".join(filter(None, [", ".join(names[:-1]), names[-1]]))


def resolve_scheme(scheme: str | Scheme) -> Scheme:
    """Return ``scheme`` itself or the `SCHEMES` entry of that name (ApprenticeError if unknown)."""
    if isinstance(scheme, Scheme):
        return scheme
    return lookup(SCHEMES, scheme, "scheme")


class Distiller(nn.Module):
    """Student + teacher of one Apprentice scheme; ``forward`` returns logits and named losses.

    Per scheme (see `SCHEMES`):

    - ``baseline``: no teacher. Loss = (β+γ)·H(y, p_S). Fairness decision: the student's label
      term is weighted β+γ (= 1 at the paper's 0.5/0.5), so its gradient p_S − y has the same scale
      as the distilled student's (β+γ)·p_S − (β·y + γ·p_T); the comparison then differs only in the
      target, not in the effective learning rate. This is done by data (``self.beta``), not by a
      separate code path.
    - ``A``: the teacher trains (its forward keeps the graph); loss has α, β and γ terms. The γ term
      sees detached teacher logits unless ``teacher_grad_from_gamma``.
    - ``B``, ``C``: the teacher is frozen: ``requires_grad_(False)``, eval mode forever (see
      `train`), forward under ``torch.no_grad()`` (not inference mode, whose tensors cannot enter
      the autograd graph of the loss). Its α term is a constant and is not computed (α = 0).

    The effective weights passed to the loss are the attributes ``alpha``, ``beta``, ``gamma`` and
    ``temperature``. The submodules are only ever called, so a training loop may wrap ``student``
    (and, in scheme A, ``teacher``) in DistributedDataParallel after construction.

    Args:
        student: Student network (usually a quantized one, see `make_student`); returns logits [N, K].
        teacher: Full-precision teacher returning logits [N, K]; None for ``baseline`` only.
        scheme: A `SCHEMES` key or a `Scheme`.
        alpha: Weight of the teacher's label term (scheme A only).
        beta: Weight of the student's label term.
        gamma: Weight of the distillation term.
        temperature: Softmax temperature τ of the distillation term (τ² scaling, see losses).
        teacher_grad_from_gamma: Scheme A: let the distillation term's gradient reach the teacher.
        kd: the distillation term, a `apprentice.losses.KD_TERMS` key.
        gamma_schedule: how γ moves over the run, a `apprentice.losses.GAMMA_SCHEDULES` key; the
            training loop says how far the run is with `set_progress` (`beta` and `gamma` are then
            that step's weights, `scheduled_weights`).
        check_finite: stop at the first non-finite value, in a loop of your own too: a training
            forward whose loss is NaN/inf, or a backward pass that leaves a NaN/inf gradient on a
            trained parameter, raises `NonFiniteLossError` naming the training step (this
            Distiller's count) and the first layer whose output (or gradient) went non-finite.
            It costs one host sync a forward and one a backward; `apprentice.fit` turns it off and
            checks the same itself (``train.on_nonfinite``).

    Raises:
        ApprenticeError: Unknown scheme; a teacher missing for A/B/C or given to ``baseline``;
            teacher and student ``num_classes`` attributes that differ; a bad weight or temperature.
        NonFiniteLossError: (from ``forward`` and from ``backward``) see ``check_finite``.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        *,
        scheme: str | Scheme = "B",
        alpha: float = 1.0,
        beta: float = 0.5,
        gamma: float = 0.5,
        temperature: float = 1.0,
        teacher_grad_from_gamma: bool = False,
        kd: str = "soft-ce",
        gamma_schedule: str = "constant",
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        self.scheme = resolve_scheme(scheme)
        check_loss_weights(alpha=alpha, beta=beta, gamma=gamma, temperature=temperature)
        lookup(KD_TERMS, kd, "distillation term")
        lookup(GAMMA_SCHEDULES, gamma_schedule, "gamma schedule")
        self.kd, self.gamma_schedule = kd, gamma_schedule
        name = self.scheme.name
        if not isinstance(student, nn.Module):
            raise ApprenticeError(f"student must be an nn.Module, got {type(student).__name__}")
        self.scheme.check_teacher(teacher is not None, "teacher", "a teacher; pass teacher=<trained or fresh model>")
        if self.scheme.needs_teacher:
            if not isinstance(teacher, nn.Module):
                raise ApprenticeError(f"teacher must be an nn.Module, got {type(teacher).__name__}")
            if teacher is student:
                raise ApprenticeError("teacher and student must be two different modules")
            t_classes = getattr(teacher, "num_classes", None)
            s_classes = getattr(student, "num_classes", None)
            if t_classes is not None and s_classes is not None and t_classes != s_classes:
                raise ApprenticeError(
                    f"teacher has {t_classes} classes, student has {s_classes}; "
                    "they must predict the same classes"
                )

        self.student = student
        self.teacher = teacher
        if self.scheme.teacher == "joint":
            self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        elif self.scheme.frozen_teacher:
            self.alpha, self.beta, self.gamma = 0.0, float(beta), float(gamma)
        else:  # baseline: label term only, weighted β+γ (see the class docstring)
            self.alpha, self.beta, self.gamma = 0.0, float(beta) + float(gamma), 0.0
        if self.beta == 0 and self.gamma == 0 and self.alpha == 0:
            raise ApprenticeError(
                f"scheme {name!r} with these weights has no loss term; make beta or gamma > 0"
            )
        self.temperature = float(temperature)
        self.teacher_grad_from_gamma = bool(teacher_grad_from_gamma)
        self._base = (self.beta, self.gamma)
        self.set_progress(0.0)

        if teacher is not None:  # frozen, or joint with no loss term reaching it: no gradients at all
            teacher.requires_grad_(self.teacher_trains)
        if teacher is not None and self.scheme.frozen_teacher:
            teacher.eval()
        self.check_finite, self.steps = bool(check_finite), 0
        if self.check_finite:
            self._watch_gradients()

    def _watch_gradients(self) -> None:
        """A hook that sees every trained parameter's gradient of a backward pass, all at once."""
        named = [(f"{prefix}.{n}" if n else prefix, m, p_name, p)
                 for prefix, top in (("student", self.student), ("teacher", self.teacher)) if top is not None
                 for n, m in top.named_modules() for p_name, p in m.named_parameters(recurse=False)
                 if p.requires_grad]
        if not named:
            return

        def check(grads: Sequence[Tensor | None]) -> None:
            where = first_nonfinite_gradient([x[:3] for x in named], list(grads))
            if where is not None:
                self._stop(f"non-finite gradient at training step {self.steps}: the first non-finite value is {where}")

        torch.autograd.graph.register_multi_grad_hook([x[3] for x in named], check, mode="all")

    def set_progress(self, progress: float) -> None:
        """Set this step's β and γ from the γ schedule, ``progress`` the fraction of the run done."""
        if self.gamma_schedule != "constant":
            self.beta, self.gamma = scheduled_weights(*self._base, self.gamma_schedule, progress)

    @property
    def teacher_trains(self) -> bool:
        """Whether the teacher learns: scheme A's, when the α term or the γ term's gradient reaches it."""
        return self.scheme.teacher == "joint" and (self.alpha > 0 or self.teacher_grad_from_gamma)

    def trained_modules(self) -> list[nn.Module]:
        """What the optimizer updates (and DDP wraps): the student, and the teacher if it trains."""
        return [self.student, self.teacher] if self.teacher_trains else [self.student]

    def train(self, mode: bool = True) -> Distiller:
        """Set training mode of the student (and a joint teacher); a frozen teacher stays in eval."""
        super().train(mode)
        if self.teacher is not None and self.scheme.frozen_teacher:
            self.teacher.eval()
        return self

    def teacher_logits(self, images: Tensor) -> Tensor | None:
        """Teacher logits for ``images``: None without a teacher, no graph for a frozen one."""
        if self.teacher is None:
            return None
        if not self.scheme.frozen_teacher:
            return self.teacher(images)
        if self.teacher.training:  # someone called teacher.train() directly; its BN stats must not move
            self.teacher.eval()
        with torch.no_grad():
            return self.teacher(images)

    def forward(self, images: Tensor, labels: Tensor,
                teacher_logits: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Run student and teacher on a batch.

        Args:
            images: Input batch [N, C, H, W] (anything both networks accept).
            labels: Class indices [N].
            teacher_logits: The frozen teacher's logits for exactly these images, read from a
                teacher-output cache (`apprentice.data.cache_teacher`) instead of running it; schemes
                B and C only (scheme A's teacher learns, so its outputs cannot be stored).

        Returns:
            ``(student_logits, losses)`` where ``losses`` is the dict of `apprentice_loss`
            (``"loss"`` to back-propagate, raw terms ``"ce_student"``, ``"kd"``, ``"ce_teacher"``).

        Raises:
            ApprenticeError: Teacher and student logits with different class counts, or labels
                out of range.
        """
        if teacher_logits is not None and not self.scheme.frozen_teacher:
            raise ApprenticeError(f"scheme {self.scheme.name!r} has no frozen teacher; cached teacher logits are "
                                  f"for schemes B and C")
        training = self.training and torch.is_grad_enabled()
        self.steps += int(training)
        student_logits, losses = self._losses(images, labels, teacher_logits)
        if self.check_finite and training and not bool(torch.isfinite(losses["loss"].detach()).all()):
            where = locate_nonfinite(self, lambda: self._losses(images, labels, teacher_logits)[1]["loss"])
            self._stop(f"non-finite loss at training step {self.steps}: the first non-finite value is {where}")
        return student_logits, losses

    def _stop(self, message: str) -> None:
        """Raise the non-finite stop, naming any learned quantizer steps pushed through zero (`collapsed_note`)."""
        note = collapsed_note(self)
        raise NonFiniteLossError(message + (f"; {note}" if note else ""), step=self.steps)

    def _losses(self, images: Tensor, labels: Tensor,
                teacher_logits: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        if teacher_logits is None:
            teacher_logits = self.teacher_logits(images)
        student_logits = self.student(images)
        losses = apprentice_loss(
            student_logits,
            labels,
            teacher_logits,
            alpha=self.alpha,
            beta=self.beta,
            gamma=self.gamma,
            temperature=self.temperature,
            teacher_grad_from_gamma=self.teacher_grad_from_gamma,
            kd=self.kd,
        )
        return student_logits, losses

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimizer should update: those of `trained_modules`."""
        return [p for m in self.trained_modules() for p in m.parameters()]

    def extra_repr(self) -> str:
        return (
            f"scheme={self.scheme.name!r}, alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, "
            f"temperature={self.temperature}, teacher_grad_from_gamma={self.teacher_grad_from_gamma}, "
            f"kd={self.kd!r}, gamma_schedule={self.gamma_schedule!r}"
        )


def make_student(
    model: nn.Module,
    *,
    scheme: str | Scheme = "B",
    precision: str | None = None,
    weights: WeightQuant | None = None,
    activations: ActQuant | None = None,
    exclude: Sequence[str] | None = None,
    init_state_dict: Mapping[str, Any] | None = None,
    layers: LayerRules | None = None,
    deploy: str | None = None,
) -> Plan:
    """Turn a float model into the low-precision student of ``scheme``, in place.

    For a scheme whose ``student_init`` is ``"pretrained"`` (C), ``init_state_dict`` — the trained
    full-precision weights of this same architecture — is loaded strictly into the *float* model
    first, and only then does `apprentice.quant.prepare` swap the layers, so the quantized layers'
    shadow weights start from the checkpoint. Scratch schemes (baseline, A, B) take no checkpoint.

    Args:
        model: Float model (not yet prepared); modified in place.
        scheme: A `SCHEMES` key or a `Scheme`.
        precision: Precision text such as ``"2W/32A"`` or ``"8A, 4W"``
            (see `apprentice.quant.parse_precision`).
        weights: Weight quantizer settings (instead of ``precision``, as in `apprentice.quant.prepare`).
        activations: Activation quantizer settings (as in `apprentice.quant.prepare`).
        exclude: Layer name patterns to keep float (default: first conv and last linear).
        init_state_dict: Full-precision state dict of the student architecture (scheme C only).
        layers: Per-layer precision rules, first match wins (as in `apprentice.quant.prepare`).
        deploy: A deployable graph ("int8"; as in `apprentice.quant.prepare`), or None.

    Returns:
        ``{layer_name: LayerPlan}`` of the quantized layers, as returned by `apprentice.quant.prepare`.

    Raises:
        ApprenticeError: Unknown scheme; ``init_state_dict`` missing for C or given to a scratch
            scheme; a state dict of another architecture (names the missing / unexpected /
            mismatched keys); a model that is already quantized; bad quantizer settings.
    """
    sch = resolve_scheme(scheme)
    if quantized_layers(model):
        raise ApprenticeError("make_student expects a float model, but this one already has quantized layers")
    sch.check_student_init(init_state_dict is not None, "init_state_dict",
                           "the state dict of its float model as init_state_dict")
    if init_state_dict is not None:
        if not isinstance(init_state_dict, Mapping):
            raise ApprenticeError("init_state_dict must be a mapping of parameter names to tensors, "
                                  f"got {type(init_state_dict).__name__}")
        load_strict(model, init_state_dict, "init_state_dict", into="the student")
    return prepare(model, precision, weights=weights, activations=activations, exclude=exclude, layers=layers,
                   deploy=deploy)
