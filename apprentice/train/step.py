"""One training step and evaluation: the plain-argument pieces that `apprentice.fit` composes.

Decisions:

- A non-finite loss or gradient skips the update; the caller decides whether that stops the run
  (`NonFiniteLossError`) or only drops the step, rolling back that batch's BatchNorm statistics.
  fp16 gradient overflow is the GradScaler's business (it skips and rescales) and is neither.
- Under torchrun the loss and gradient norm are averaged over processes before that decision, so
  all of them decide alike; evaluation returns summed counts (`eval_sums`) so a sharded
  evaluation is exact once the sums are all-reduced.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F

from apprentice.errors import EXIT_RUNTIME, lookup
from apprentice.train.optim import set_lr

__all__ = ["AMP_MODES", "NONFINITE_POLICIES", "NonFiniteLossError", "StepResult", "autocast",
           "eval_metrics", "eval_sums", "evaluate", "train_step"]

# Mixed-precision modes (``train.amp``, ``eval --amp``): the autocast dtype, None = plain float32.
# fp16 also needs a GradScaler, which `fit` adds.
AMP_MODES: dict[str, torch.dtype | None] = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# What a non-finite loss or gradient does (``train.on_nonfinite``).
NONFINITE_POLICIES = {"stop": "raise NonFiniteLossError (the last checkpoint is kept)",
                      "skip": "drop the step and roll back its BatchNorm statistics"}


class NonFiniteLossError(RuntimeError):
    """NaN/inf loss or gradient with ``train.on_nonfinite=stop``; nothing of that step was saved.

    Attributes:
        exit_code: 1.
        step: the global step (1-based) that was not finite.
        checkpoint: the last good checkpoint, or None if none was written yet.
    """

    exit_code = EXIT_RUNTIME

    def __init__(self, message: str, *, step: int, checkpoint: str | None = None) -> None:
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Autocast to ``amp`` (an `AMP_MODES` key) on ``device``'s type; "off" does nothing."""
    dtype = lookup(AMP_MODES, amp, "amp mode")
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _grad_norm(params: Sequence[Tensor], device: torch.device) -> Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=device)
    total_norm = getattr(nn.utils, "get_total_norm", None)  # torch >= 2.6: one fused kernel per device
    if total_norm is not None:
        return total_norm(grads).float()
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


@dataclass
class StepResult:
    """What `train_step` did: detached ``losses`` and student ``logits``; the total ``loss`` and
    ``grad_norm`` as floats (averaged over processes); ``finite`` False means no update was applied."""

    losses: dict[str, Tensor]
    logits: Tensor
    loss: float
    grad_norm: float
    finite: bool


def train_step(distiller: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor, labels: Tensor,
               *, lr: float, amp: str = "off", scaler: Any = None, restore_buffers: bool = False,
               teacher_logits: Tensor | None = None) -> StepResult:
    """One optimizer step: forward, backward, non-finite check, update.

    A non-finite loss or gradient skips the update (the caller decides whether to stop); with
    ``restore_buffers`` the BatchNorm statistics of that forward are rolled back too, so a skipped
    batch leaves no trace. Under fp16 the GradScaler handles gradient overflow itself (skips and
    lowers its scale; not reported as non-finite); a non-finite loss still is. Under torchrun the
    loss and gradient norm are summed over processes, so all of them decide alike.

    Args:
        distiller: a `Distiller` (``forward(images, labels) -> (logits, losses)``), in train mode.
        optimizer: updates the trainable parameters.
        images: input batch on the model's device.
        labels: class indices.
        lr: learning rate of this step (set on every parameter group, times its ``lr_scale``).
        amp: an `AMP_MODES` key ("off", "bf16", "fp16").
        scaler: GradScaler for fp16, else None.
        restore_buffers: roll back buffers (BN statistics) when the step is skipped.
        teacher_logits: the frozen teacher's cached logits for this batch (passed to the distiller).
    """
    set_lr(optimizer, lr)
    saved = [b.detach().clone() for b in distiller.buffers()] if restore_buffers else None
    optimizer.zero_grad(set_to_none=True)
    with autocast(images.device, amp):
        cached = {} if teacher_logits is None else {"teacher_logits": teacher_logits}
        logits, losses = distiller(images, labels, **cached)
    loss = losses["loss"]
    (scaler.scale(loss) if scaler is not None else loss).backward()
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    vals = torch.stack([loss.detach().float(), _grad_norm(params, loss.device)])
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world > 1:
        dist.all_reduce(vals)  # a NaN/inf on any process makes the sum non-finite on all
        vals = vals / world
    loss_value, grad_norm = vals.tolist()  # the step's one host sync
    finite = math.isfinite(loss_value) and (scaler is not None or math.isfinite(grad_norm))
    if finite and scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    elif finite:
        optimizer.step()
    else:
        optimizer.zero_grad(set_to_none=True)
        if saved is not None:
            with torch.no_grad():
                for b, s in zip(distiller.buffers(), saved):
                    b.copy_(s)
    return StepResult({k: v.detach() for k, v in losses.items()}, logits.detach(), loss_value, grad_norm, finite)


def eval_sums(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], *, device: torch.device,
              amp: str = "off", channels_last: bool = False) -> Tensor:
    """[top-1 correct, top-5 correct (NaN below 5 classes), summed loss, images] as float64.

    Sums, not means, so that the shares of several processes can be all-reduced exactly.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    classes = 0
    try:
        with torch.no_grad():
            for images, labels in batches:
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with autocast(device, amp):
                    logits = model(images)
                logits = logits.float()
                classes = logits.shape[1]
                hit = logits.topk(min(5, classes), dim=1).indices == labels[:, None]
                sums += torch.stack([hit[:, 0].sum(), hit.any(1).sum(), F.cross_entropy(logits, labels, reduction="sum"),
                                     torch.tensor(len(labels), device=device)]).double()
    finally:
        model.train(was_training)
    if classes < 5:
        sums[1] = float("nan")
    return sums


def eval_metrics(sums: Tensor) -> dict[str, float]:
    """`eval_sums` as `evaluate`'s dict: percentages and the mean loss."""
    c1, c5, loss, n = sums.tolist()
    out = {"top1": 100 * c1 / max(n, 1), "loss": loss / max(n, 1), "images": int(n)}
    if not math.isnan(c5):
        out["top5"] = 100 * c5 / max(n, 1)
    return out


def evaluate(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], *, device: str | torch.device,
             amp: str = "off") -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` on ``batches``, in eval mode without gradients.

    Returns:
        ``{"top1", "top5", "loss", "images"}``: top-k accuracy in percent (``top5`` only for
        models with >= 5 classes), mean cross-entropy, number of images. The model's training
        mode is restored afterwards.
    """
    return eval_metrics(eval_sums(model, batches, device=torch.device(device), amp=amp))
