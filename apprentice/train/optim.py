"""The optimizer and its learning-rate schedule, from plain arguments.

Decisions:

- Weight decay skips 1-D parameters (BatchNorm, biases) unless ``decay_norm_and_bias``, and
  never touches the quantizers' own parameters (`apprentice.quant.QUANTIZER_PARAMETERS`: PACT
  clips, LSQ weight and activation steps): decay would shrink the quantization range for no reason
  found in the data. They may also take their own learning rate, ``quant_lr_scale`` times the
  others' (a group's ``"lr_scale"``, applied by `set_lr`).
- Quantizer parameters are positive scales whose gradients can be large against their value (the
  learned steps of a deployable 4W/8A EfficientNet-B0: up to 33.5 times the step before the first
  update, so one SGD update at lr 0.1 takes a step through zero;
  benchmarks/results/quant_steps_efficientnet.md).
  With ``quant_domain="log"`` they are updated in the log domain instead (TQT: Jain et al., "Trained
  Quantization Thresholds for Accurate and Efficient Fixed-Point Inference of Deep Neural Networks",
  MLSys 2020, sec. 3.2): the optimizer steps θ = ln s with ∂L/∂θ = s·∂L/∂s, so every update is
  relative, s·exp(Δθ), and no step reaches zero. The parameter still holds s between steps
  (checkpoints, plans and exports unchanged); the optimizer's own state (momentum, Adam's moments)
  is θ's.
- The learning rate is a pure function of the global step (`lr_factor`), set before every step,
  so a resumed run is on the exact schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from apprentice.errors import ApprenticeError, lookup
from apprentice.quant import MIN_LEARNED_STEP, is_quantizer_parameter

__all__ = ["LR_SCHEDULES", "OPTIMIZERS", "QUANT_DOMAINS", "LRSchedule", "lr_factor", "make_optimizer", "param_groups",
           "set_lr"]


def _onecycle(t: int, total: int, warmup: int) -> float:
    start, end = 1 / 25, 1 / 25 / 1e4  # torch's OneCycleLR: from lr/25 up to lr, cosine down to lr/25e4
    peak = warmup if warmup > 0 else round(0.3 * total)
    if t < peak:
        return start + (1 - start) * t / peak
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * (t - peak) / max(1, total - peak)))


LR_SCHEDULES: dict[str, Callable[..., float]] = {
    "step": lambda t, total, warmup, milestones, decay: decay ** sum(t >= round(m * total) for m in milestones),
    "cosine": lambda t, total, warmup, milestones, decay: 0.5 * (1 + math.cos(math.pi * (t - warmup) / max(1, total - warmup))),
    "onecycle": lambda t, total, warmup, milestones, decay: _onecycle(t, total, warmup),
    "constant": lambda t, total, warmup, milestones, decay: 1.0,
}


def lr_factor(step: int, *, schedule: str, total_steps: int, warmup_steps: int = 0,
              milestones: Sequence[float] = (), decay: float = 0.1) -> float:
    """Multiplier of the peak learning rate for the optimizer step with 0-based index ``step``.

    Every schedule starts with a linear warm-up ``(step + 1) / warmup_steps``, except ``onecycle``,
    whose own ramp from lr/25 lasts ``warmup_steps`` (30 % of the run if 0). ``step``: × ``decay``
    at each milestone (fractions of ``total_steps``: 0.5 of 160 epochs is the start of epoch 81);
    ``cosine``: half a cosine from 1 to 0 after the warm-up; ``constant``: 1.

    Example:
        >>> [lr_factor(t, schedule="step", total_steps=8, milestones=(0.5, 0.75), decay=0.5) for t in range(8)]
        [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
        >>> [lr_factor(t, schedule="constant", total_steps=8, warmup_steps=4) for t in range(5)]
        [0.25, 0.5, 0.75, 1.0, 1.0]
    """
    fn = lookup(LR_SCHEDULES, schedule, "schedule")
    if schedule != "onecycle" and step < warmup_steps:
        return (step + 1) / warmup_steps
    return fn(step, total_steps, warmup_steps, milestones, decay)


#: How the quantizers' own parameters are updated (the module notes): a param group's ``"log_domain"``.
QUANT_DOMAINS = {"linear": "the optimizer steps s itself, as every other parameter",
                 "log": "the optimizer steps ln s (TQT): relative updates, s stays positive"}


def param_groups(modules: Iterable[nn.Module], *, weight_decay: float, decay_norm_and_bias: bool = False,
                 quant_lr_scale: float = 1.0, quant_domain: str = "linear") -> list[dict[str, Any]]:
    """Trainable parameters split into a decayed and an undecayed group (see the module notes).

    Quantizer parameters (PACT clips, LSQ steps) are never decayed. With ``quant_lr_scale`` other
    than 1, or ``quant_domain`` "log", they form a third group, ``{"weight_decay": 0.0, "lr_scale":
    quant_lr_scale}`` (and ``"log_domain": True``), whose learning rate `set_lr` scales and which
    `make_optimizer` steps in the log domain; otherwise they stay in the undecayed group (the groups
    of earlier runs).
    """
    if isinstance(quant_lr_scale, bool) or not isinstance(quant_lr_scale, (int, float)) or not quant_lr_scale > 0:
        raise ApprenticeError(f"quant_lr_scale must be a positive number, got {quant_lr_scale!r}")
    lookup(QUANT_DOMAINS, quant_domain, "quantizer parameter domain (optim.quant_domain)")
    log = quant_domain == "log"
    own_group = quant_lr_scale != 1 or log
    decay, no_decay, quant = [], [], []
    for module in modules:
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            if is_quantizer_parameter(name):
                (quant if own_group else no_decay).append(p)
            else:
                (no_decay if p.ndim <= 1 and not decay_norm_and_bias else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0},
              {"params": quant, "weight_decay": 0.0, "lr_scale": float(quant_lr_scale), **({"log_domain": True} if log else {})}]
    return [g for g in groups if g["params"]]


def _log_domain_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The parameters of the ``"log_domain"`` groups that this step updates (those with a gradient)."""
    return [p for g in optimizer.param_groups if g.get("log_domain") for p in g["params"] if p.grad is not None]


@torch.no_grad()
def _into_log(optimizer: torch.optim.Optimizer, *_: Any) -> None:
    """Before the step: θ = ln s and ∂L/∂θ = s·∂L/∂s (a step is floored as the forward floors it)."""
    for p in _log_domain_params(optimizer):
        p.clamp_(min=MIN_LEARNED_STEP)
        p.grad.mul_(p)
        p.log_()


@torch.no_grad()
def _out_of_log(optimizer: torch.optim.Optimizer, *_: Any) -> None:
    """After the step: s = exp(θ), what the forward and every reader of the parameter expect."""
    for p in _log_domain_params(optimizer):
        p.exp_()


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate to ``lr`` times its ``"lr_scale"`` (1 where it has none).

    Example:
        >>> p, q = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
        >>> opt = torch.optim.SGD([{"params": [p]}, {"params": [q], "lr_scale": 0.1}], lr=1.0)
        >>> set_lr(opt, 0.5); [g["lr"] for g in opt.param_groups]
        [0.5, 0.05]
    """
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


OPTIMIZERS = {"sgd": "SGD with momentum (Nesterov if optim.nesterov)", "adamw": "AdamW"}


def make_optimizer(name: str, groups: list[dict[str, Any]], *, lr: float, momentum: float,
                   nesterov: bool) -> torch.optim.Optimizer:
    """SGD (``momentum``, ``nesterov``) or AdamW (``momentum`` is its beta1) over ``groups``.

    Nesterov needs a momentum > 0; torch's SGD refuses it otherwise (config.validate says so first).
    Groups marked ``"log_domain"`` (`param_groups`) are stepped in the log domain: hooks around every
    ``step()`` turn their parameters into ln s and back (a GradScaler's step included).
    """
    lookup(OPTIMIZERS, name, "optimizer")
    if name == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999))
    else:
        opt = torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    if any(g.get("log_domain") for g in groups):
        opt.register_step_pre_hook(_into_log)
        opt.register_step_post_hook(_out_of_log)
    return opt


@dataclass(frozen=True)
class LRSchedule:
    """The learning rate of every step of a run: ``lr * lr_factor(step, ...)``.

    Example:
        >>> s = LRSchedule("step", lr=0.1, total_steps=4, milestones=(0.5,), decay=0.1)
        >>> [round(s(t), 4) for t in range(4)]
        [0.1, 0.1, 0.01, 0.01]
    """

    name: str
    lr: float
    total_steps: int
    warmup_steps: int = 0
    milestones: Sequence[float] = ()
    decay: float = 0.1

    def __post_init__(self) -> None:
        lookup(LR_SCHEDULES, self.name, "schedule")

    def __call__(self, step: int) -> float:
        return self.lr * lr_factor(step, schedule=self.name, total_steps=self.total_steps,
                                   warmup_steps=self.warmup_steps, milestones=self.milestones, decay=self.decay)

    def state_dict(self, step: int) -> dict[str, Any]:
        """What a checkpoint records of the schedule at ``step``."""
        return {"schedule": self.name, "step": step, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps}
