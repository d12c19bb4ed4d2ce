"""Training: `fit` is the one consumer of the config tree; everything below it takes plain arguments.

``fit(cfg)`` builds the data, the student (quantized by `distill.make_student`), the teacher of the
scheme and the `Distiller`, then runs one explicit loop: a `train_step` per batch, a metrics line
every ``train.log_every`` steps, a checkpoint every ``train.checkpoint_every`` steps and at each
epoch end, an evaluation of the test (and holdout) split per epoch, ``summary.json`` at the end.
Run folder and checkpoint layout: `apprentice.checkpoint`.

Decisions:

- ``data.batch_size`` is the *global* batch. With N processes each takes ``batch_size / N``
  images per step from its share of the same seeded permutation, so global batch k holds the same
  images for any N and the learning rate means the same thing.
- Weight decay skips 1-D parameters (BatchNorm, biases) unless ``optim.decay_norm_and_bias``, and
  never touches PACT clips (``act_clip``): decay would shrink the activation range for no reason
  found in the data.
- The learning rate is a pure function of the global step (`lr_factor`), set before every step,
  so a resumed run is on the exact schedule.
- Under ``torchrun`` the student (and scheme A's teacher) are wrapped in DistributedDataParallel
  separately; a frozen teacher never is. BatchNorm statistics are per process (DDP broadcasts
  rank 0's each forward). Evaluation is sharded: each process evaluates a disjoint slice and the
  counts are summed, so the accuracy is exact. Only rank 0 prints and writes files (its logged
  loss terms are its own share's; the bar's loss is the mean over processes); resuming needs
  the run folder visible to every process (one node or a shared file system).
- A non-finite loss or gradient stops the run (``train.on_nonfinite=stop``; nothing of that step
  is saved) or, with ``skip``, drops the update and rolls back that batch's BatchNorm statistics;
  the step still counts for the schedule and the data position. fp16 gradient overflow is the
  GradScaler's business (it skips and rescales) and is neither.
- On CPU a run stopped by SIGTERM/SIGINT mid-epoch and resumed ends bit-identical to an
  uninterrupted one. ImageNet folders resume at the right batch in the same order, but the
  workers' augmentation draws differ; cuDNN autotuning makes CUDA runs nondeterministic anyway.

Exit codes (`apprentice.cli`): `TrainingInterrupted` subclasses KeyboardInterrupt (a stop request,
not an error; ``except Exception`` does not swallow it) and carries ``exit_code`` 143 (SIGTERM) or
130 (SIGINT), the shell's 128 + signal. `NonFiniteLossError` is a RuntimeError with ``exit_code`` 1.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F

from apprentice import checkpoint as ck
from apprentice.checkpoint import (
    CHECKPOINT_DIR,
    LAST,
    LoadedRun,
    load_run,
    load_state_dict_file,
)
from apprentice.config import (
    Config,
    config_from_dict,
    config_to_dict,
    diff_configs,
    dump_yaml,
    validate,
)
from apprentice.errors import ApprenticeError, lookup
from apprentice.progress import Meter, MetricsWriter, Progress, bar_text, trim_metrics

__all__ = [
    "EXIT_NONFINITE", "EXIT_SIGINT", "EXIT_SIGTERM", "HARMLESS_KEYS", "LR_SCHEDULES", "LoadedRun",
    "NonFiniteLossError", "StepResult", "TrainingInterrupted", "eval_batches", "evaluate", "fit",
    "load_run", "load_state_dict_file", "lr_factor", "param_groups", "train_one_epoch", "train_step",
]

EXIT_SIGTERM = 128 + signal.SIGTERM  # 143
EXIT_SIGINT = 128 + signal.SIGINT  # 130
EXIT_NONFINITE = 1

# Config keys that may differ when resuming: they move files or change how often things are
# reported, not what is trained (train.device: moving a run to another machine is legitimate).
HARMLESS_KEYS = ("train.out", "train.log_every", "train.checkpoint_every", "train.device",
                 "data.dir", "data.download", "data.workers", "data.eval_batch_size")
HOLDOUT_SEED = 0  # the holdout images do not depend on train.seed: all seeds tune on the same ones
# Set to a folder to make every process write rank<R>.json (hash of its final parameters, its
# first-epoch sample indices) when fit ends; the multi-process test compares them.
DEBUG_DUMP_ENV = "APPRENTICE_DEBUG_DUMP"


class TrainingInterrupted(KeyboardInterrupt):
    """SIGTERM/SIGINT stopped training after checkpointing the current step.

    Attributes:
        exit_code: 143 (SIGTERM) or 130 (SIGINT).
        step: the global step the checkpoint holds, None if none was written.
        checkpoint: that checkpoint's path, or None.
    """

    def __init__(self, message: str, *, exit_code: int, step: int | None = None,
                 checkpoint: str | None = None) -> None:
        super().__init__(message)
        self.exit_code, self.step, self.checkpoint = exit_code, step, checkpoint


class NonFiniteLossError(RuntimeError):
    """NaN/inf loss or gradient with ``train.on_nonfinite=stop``; nothing of that step was saved.

    Attributes:
        exit_code: 1.
        step: the global step (1-based) that was not finite.
        checkpoint: the last good checkpoint, or None if none was written yet.
    """

    exit_code = EXIT_NONFINITE

    def __init__(self, message: str, *, step: int, checkpoint: str | None = None) -> None:
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint


# ---------------------------------------------------------------------------------------------
# Learning-rate schedules and optimizer


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


def param_groups(modules: Iterable[nn.Module], *, weight_decay: float,
                 decay_norm_and_bias: bool = False) -> list[dict[str, Any]]:
    """Trainable parameters split into a decayed and an undecayed group (see the module notes)."""
    decay, no_decay = [], []
    for module in modules:
        for name, p in module.named_parameters():
            if p.requires_grad:
                skip = name.rsplit(".", 1)[-1] == "act_clip" or (p.ndim <= 1 and not decay_norm_and_bias)
                (no_decay if skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _optimizer(name: str, groups: list[dict[str, Any]], *, lr: float, momentum: float,
               nesterov: bool) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999))
    lookup({"sgd": 0}, name, "optimizer")
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)


# ---------------------------------------------------------------------------------------------
# One step, one epoch, evaluation


def _autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=lookup({"bf16": torch.bfloat16, "fp16": torch.float16}, amp, "amp mode"))


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
               *, lr: float, amp: str = "off", scaler: Any = None, restore_buffers: bool = False) -> StepResult:
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
        lr: learning rate of this step (set on every parameter group).
        amp: "off", "bf16" or "fp16" autocast.
        scaler: GradScaler for fp16, else None.
        restore_buffers: roll back buffers (BN statistics) when the step is skipped.
    """
    for g in optimizer.param_groups:
        g["lr"] = lr
    saved = [b.detach().clone() for b in distiller.buffers()] if restore_buffers else None
    optimizer.zero_grad(set_to_none=True)
    with _autocast(images.device, amp):
        logits, losses = distiller(images, labels)
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


def train_one_epoch(distiller: nn.Module, optimizer: torch.optim.Optimizer,
                    batches: Iterable[tuple[Tensor, Tensor]], *, device: str | torch.device,
                    lr: float | Callable[[int], float], start_step: int = 0, amp: str = "off",
                    scaler: Any = None, on_nonfinite: str = "stop") -> dict[str, float]:
    """Train over ``batches`` once: `train_step` in a loop (`fit` adds checkpoints and logging).

    Args:
        distiller: the `Distiller` (put in training mode here).
        optimizer: updates its trainable parameters.
        batches: ``(images, labels)`` pairs, moved to ``device``.
        device: where the model lives.
        lr: a constant, or a function of the 0-based global step.
        start_step: global step of the first batch (for ``lr``).
        amp: autocast mode.
        scaler: GradScaler for fp16.
        on_nonfinite: "stop" raises `NonFiniteLossError`; "skip" drops the step and counts it.

    Returns:
        The mean of every loss term over the applied steps, ``top1`` (training accuracy, %),
        ``steps`` (applied) and ``skipped``.
    """
    lookup({"stop": 0, "skip": 1}, on_nonfinite, "non-finite policy")
    device = torch.device(device)
    distiller.train()
    meter, step = Meter(), start_step
    for images, labels in batches:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        out = train_step(distiller, optimizer, images, labels, lr=lr(step) if callable(lr) else lr, amp=amp,
                         scaler=scaler, restore_buffers=on_nonfinite == "skip")
        step += 1
        if out.finite:
            meter.add(out.losses, out.logits, labels)
        elif on_nonfinite == "stop":
            raise NonFiniteLossError(f"non-finite loss or gradient at step {step}", step=step)
    return {**meter.means(), "steps": meter.steps, "skipped": step - start_step - meter.steps}


def _eval_sums(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], *, device: torch.device,
               amp: str = "off", channels_last: bool = False) -> Tensor:
    """[top-1 correct, top-5 correct (NaN below 5 classes), summed loss, images] as float64."""
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
                with _autocast(device, amp):
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


def _eval_dict(sums: Tensor) -> dict[str, float]:
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
    return _eval_dict(_eval_sums(model, batches, device=torch.device(device), amp=amp))


# ---------------------------------------------------------------------------------------------
# Data: TensorLoader for small sets; ImageNet folders behind the same position interface


class _FolderBatches:
    """An ImageNet training DataLoader with TensorLoader's interface (set_epoch, position, normalised batches)."""

    def __init__(self, loader: torch.utils.data.DataLoader, *, device: torch.device, seed: int) -> None:
        self.loader, self.device, self.seed, self.epoch, self.step = loader, device, seed, 0, 0

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.step = epoch, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "step": self.step}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.epoch, self.step = int(state["epoch"]), int(state["step"])

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch, loader = self.epoch, self.loader
        loader.sampler.set_epoch(epoch)
        if self.step:  # resume mid-epoch: the rest of this epoch's order, without decoding the skipped images
            loader = torch.utils.data.DataLoader(
                loader.dataset, batch_size=loader.batch_size, sampler=list(loader.sampler)[self.step * loader.batch_size:],
                num_workers=loader.num_workers, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
                generator=torch.Generator().manual_seed(self.seed + 1000003 * epoch + self.step))
        for batch in _normalized(loader, self.device):
            self.step += 1
            yield batch
        if self.epoch == epoch:
            self.epoch, self.step = epoch + 1, 0


def _normalized(loader: Iterable[tuple[Tensor, Tensor]], device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    from apprentice.data import DATASETS, normalize

    info = DATASETS["imagenet"]
    for images, labels in loader:
        yield normalize(images.to(device, non_blocking=True), info.mean, info.std), labels.to(device, non_blocking=True)


class _Reiterable:
    """Makes a generator function iterable more than once (one evaluation per epoch)."""

    def __init__(self, make: Callable[[], Iterator]) -> None:
        self.make = make

    def __iter__(self) -> Iterator:
        return self.make()


def eval_batches(cfg: Config, split: str = "test", *, data_dir: str | None = None, batch_size: int | None = None,
                 device: str | torch.device = "cpu", rank: int = 0, world_size: int = 1) -> Iterable[tuple[Tensor, Tensor]]:
    """Unaugmented batches of one split of ``cfg``'s data set, for `evaluate` (``apprentice eval`` too).

    Args:
        cfg: the run's config (data set, holdout size, data folder).
        split: "test", "holdout" or "train" ("val" of an ImageNet folder is its "test").
        data_dir: overrides ``cfg.data.dir``.
        batch_size: overrides ``cfg.data.eval_batch_size``.
        device: where the batches go.
        rank: this process's share is images ``rank, rank + world_size, ...`` (no padding, so
            counts summed over processes are exact).
        world_size: number of processes sharing the split.
    """
    from apprentice import data

    dc, device = cfg.data, torch.device(device)
    folder, bs = data_dir or dc.dir, batch_size or dc.eval_batch_size
    if lookup(data.DATASETS, dc.name, "data set").kind == "folder":
        if folder is None:
            raise ApprenticeError(f"data.dir must name the {dc.name} folder (with train/ and val/ inside)")
        sub = lookup({"test": "val", "val": "val", "train": "train"}, split, f"{dc.name} split")
        images = data.ImageFolder(folder, sub, image_size=dc.image_size, resize=round(dc.image_size / 0.875), train=False)
        loader = torch.utils.data.DataLoader(images, batch_size=bs, sampler=list(range(rank, len(images), world_size)),
                                             num_workers=dc.workers, pin_memory=device.type == "cuda")
        return _Reiterable(lambda: _normalized(loader, device))
    split_data = data.load_tensors(dc.name, split, data_dir=folder, download=dc.download, holdout=dc.holdout,
                                   seed=HOLDOUT_SEED, limit=dc.limit if split == "train" else None)
    share = split_data.subset(torch.arange(rank, len(split_data), world_size)) if world_size > 1 else split_data
    return data.TensorLoader(share, batch_size=bs, shuffle=False, device=device)


def _train_batches(cfg: Config, d: _Dist) -> tuple[Any, int, int, int]:
    """(loader with set_epoch/state_dict/load_state_dict, number of classes, image channels, images)."""
    from apprentice import data

    dc = cfg.data
    if dc.batch_size % d.world_size:
        raise ApprenticeError(f"data.batch_size={dc.batch_size} (the global batch) must be divisible by the "
                              f"{d.world_size} processes")
    per_rank = dc.batch_size // d.world_size
    if lookup(data.DATASETS, dc.name, "data set").kind == "folder":
        if dc.dir is None:
            raise ApprenticeError(f"data.dir must name the {dc.name} folder (with train/ and val/ inside)")
        if dc.holdout or dc.limit:
            raise ApprenticeError(f"data.holdout and data.limit are not supported for {dc.name}; set them to 0 and null")
        loader = data.imagenet_loader(dc.dir, "train", batch_size=per_rank, workers=dc.workers, shuffle=True,
                                      seed=cfg.train.seed, rank=d.rank, world_size=d.world_size,
                                      image_size=dc.image_size, resize=round(dc.image_size / 0.875))
        return (_FolderBatches(loader, device=d.device, seed=cfg.train.seed), len(loader.dataset.classes), 3,
                len(loader.dataset))
    train = data.load_tensors(dc.name, "train", data_dir=dc.dir, download=dc.download, holdout=dc.holdout,
                              seed=HOLDOUT_SEED, limit=dc.limit)
    loader = data.TensorLoader(train, batch_size=per_rank, shuffle=True, augment=dc.augment, device=d.device,
                               seed=cfg.train.seed, drop_last=True, rank=d.rank, world_size=d.world_size)
    return loader, train.num_classes, int(train.images.shape[1]), len(train)


# ---------------------------------------------------------------------------------------------
# Processes and signals


@dataclass(frozen=True)
class _Dist:
    rank: int
    world_size: int
    device: torch.device
    owns_group: bool


def _setup(device_name: str) -> _Dist:
    """Resolve the device and, under torchrun (WORLD_SIZE > 1), join the process group."""
    world, local_rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device("cpu")
    if device_name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ApprenticeError(f"train.device={device_name} but CUDA is not available; use train.device=cpu or auto")
        # Under torchrun every process takes the GPU of its local rank, whatever cuda:N says.
        index = local_rank if world > 1 else (int(device_name.split(":")[1]) if ":" in device_name else 0)
        if index >= torch.cuda.device_count():
            raise ApprenticeError(f"train.device: cuda:{index} does not exist ({torch.cuda.device_count()} GPUs)")
        torch.cuda.set_device(index)
        device = torch.device("cuda", index)
    if world <= 1:
        return _Dist(0, 1, device, False)
    if dist.is_initialized():
        return _Dist(dist.get_rank(), dist.get_world_size(), device, False)
    # A dead peer should end the job, not hold the machines: 30 min covers the longest thing one
    # process does alone (rank 0 writing a large checkpoint).
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=30))
    return _Dist(dist.get_rank(), dist.get_world_size(), device, True)


def _agree(flag: bool, d: _Dist) -> bool:
    """True on every process if ``flag`` is true on any (so all stop at the same step)."""
    if d.world_size == 1:
        return flag
    t = torch.tensor([int(flag)], device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _raise_from_rank0(message: str | None, d: _Dist) -> None:
    if d.world_size > 1:
        box = [message]
        dist.broadcast_object_list(box, src=0)
        message = box[0]
    if message:
        raise ApprenticeError(message)


class _StopSignals:
    """SIGTERM/SIGINT set a flag checked after every step; the same signal again stops at once.

    (torchrun forwards a terminal's Ctrl-C as SIGTERM after the SIGINT itself; a different second
    signal must not cut the checkpoint short.)
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:  # noqa: PYI034 - typing.Self needs Python 3.11
        if threading.current_thread() is threading.main_thread():  # signal.signal only works there
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum == signum:
            raise TrainingInterrupted(f"{signal.Signals(signum).name} twice: stopped without checkpointing this step",
                                      exit_code=128 + signum)
        self.signum = self.signum or signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


# ---------------------------------------------------------------------------------------------
# fit


def fit(cfg: Config, *, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train the student described by ``cfg`` and write the run folder ``cfg.train.out``.

    Args:
        cfg: the whole config (`apprentice.config.load_config`); validated again here.
        resume: continue from ``checkpoints/last.pt``. Its stored config must equal ``cfg`` except
            for `HARMLESS_KEYS`. With no checkpoint in the folder a new run starts.
        overwrite: delete an earlier run's files (summary, metrics, checkpoints, tb/) first.

    Returns:
        The summary, also written to ``summary.json``: final and best top-1/top-5, epochs, steps,
        wall time, versions, git commit, device, world size, scheme, precision, parameters.

    Raises:
        ApprenticeError: bad config or files; the folder holds a run and neither ``resume`` nor
            ``overwrite`` was given; ``resume`` with a different config (lists the keys).
        TrainingInterrupted: SIGTERM/SIGINT; the current step was checkpointed.
        NonFiniteLossError: NaN/inf with ``train.on_nonfinite=stop``; the last good checkpoint stays.
    """
    if resume and overwrite:
        raise ApprenticeError("give resume or overwrite, not both")
    validate(cfg)
    if cfg.train.amp == "fp16" and not (cfg.train.device.startswith("cuda") or
                                        (cfg.train.device == "auto" and torch.cuda.is_available())):
        raise ApprenticeError("train.amp=fp16 needs CUDA (its GradScaler); use train.amp=bf16 or off on the CPU")
    d = _setup(cfg.train.device)
    try:
        with _StopSignals() as signals:
            return _fit(cfg, d, signals, resume=resume, overwrite=overwrite)
    finally:
        if d.owns_group:
            dist.destroy_process_group()


def _read_resume_state(cfg: Config, out: Path, resume: bool, progress: Progress) -> dict[str, Any] | None:
    last = out / CHECKPOINT_DIR / LAST
    if not resume:
        return None
    if (out / "summary.json").is_file():
        raise ApprenticeError(f"run folder {str(out)!r} holds a finished run (summary.json); nothing to resume "
                              f"(use --overwrite to train it again)")
    if not last.is_file():
        if ck.run_files(out):
            raise ApprenticeError(f"run folder {str(out)!r} has no {CHECKPOINT_DIR}/{LAST} to resume from; "
                                  f"use --overwrite to start again")
        progress.line(f"nothing to resume in {out}: no {CHECKPOINT_DIR}/{LAST}; starting a new run")
        return None
    state = ck.read_checkpoint(last)
    try:
        stored = config_from_dict(state["config"], check=False)
    except ApprenticeError as e:
        raise ApprenticeError(f"checkpoint {str(last)!r} holds a config this version cannot read: {e}") from None
    diffs = [x for x in diff_configs(stored, cfg) if x.split(":")[0] not in HARMLESS_KEYS]
    if diffs:
        raise ApprenticeError(f"cannot resume {str(out)!r}: the config differs from its checkpoint's in "
                              f"{'; '.join(diffs)}; use the same config, or --overwrite to start again")
    return state


def _fit(cfg: Config, d: _Dist, signals: _StopSignals, *, resume: bool, overwrite: bool) -> dict[str, Any]:
    from apprentice.distill import Distiller, make_student, resolve_scheme
    from apprentice.models import count_parameters
    from apprentice.quant import parse_precision, quantized_layers

    t_start, main, out = time.perf_counter(), d.rank == 0, Path(cfg.train.out)
    last = out / CHECKPOINT_DIR / LAST
    progress = Progress(enabled=main)
    _raise_from_rank0(ck.check_run_dir(out, resume=resume, overwrite=overwrite) if main else None, d)
    state = _read_resume_state(cfg, out, resume, progress)

    # ---- data and models, seeded alike on every process
    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    if d.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    train_batches, num_classes, channels, train_images = _train_batches(cfg, d)
    evals = {"test": eval_batches(cfg, "test", device=d.device, rank=d.rank, world_size=d.world_size)}
    if cfg.data.holdout > 0:
        evals["holdout"] = eval_batches(cfg, "holdout", device=d.device, rank=d.rank, world_size=d.world_size)
    scheme, dc, q, o = resolve_scheme(cfg.distill.scheme), cfg.distill, cfg.quant, cfg.optim
    student = ck.build_from_config(cfg.model, num_classes=num_classes, in_channels=channels)
    init = load_state_dict_file(dc.student_init) if scheme.student_init == "pretrained" else None  # type: ignore[arg-type]
    weights, acts = parse_precision(q.precision, quantizer=q.quantizer, per_channel=q.per_channel,
                                    clip=q.act_clip, learned=q.learned_clip)
    try:
        make_student(student, scheme=scheme, weights=weights, activations=acts, init_state_dict=init,
                     exclude=list(q.exclude) if q.exclude is not None else None)
    except ApprenticeError as e:
        if init is None or "init_state_dict" not in str(e):
            raise
        raise ApprenticeError(f"distill.student_init {dc.student_init!r}: {e}") from None
    teacher: Any = None
    if scheme.teacher == "joint":
        teacher = ck.build_from_config(dc.teacher_model, num_classes=num_classes, in_channels=channels)  # type: ignore[arg-type]
    elif scheme.frozen_teacher:
        teacher = ck.load_teacher(dc.teacher, dc.teacher_model, num_classes=num_classes, in_channels=channels)  # type: ignore[arg-type]
    memory = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    for m in (student, teacher):
        if m is not None:
            m.to(d.device, memory_format=memory)
    distiller = Distiller(student, teacher, scheme=scheme, alpha=dc.alpha, beta=dc.beta, gamma=dc.gamma,
                          temperature=dc.temperature, teacher_grad_from_gamma=dc.teacher_grad_from_gamma)
    # Scheme A's teacher trains only if some loss term reaches it (else DDP would wait for its grads).
    teacher_trains = scheme.teacher == "joint" and (distiller.alpha > 0 or dc.teacher_grad_from_gamma)
    if scheme.teacher == "joint" and not teacher_trains:
        teacher.requires_grad_(False)
    trained = [student, teacher] if teacher_trains else [student]
    optimizer = _optimizer(o.name, param_groups(trained, weight_decay=o.weight_decay,
                                                decay_norm_and_bias=o.decay_norm_and_bias),
                           lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)
    scaler = torch.amp.GradScaler("cuda") if cfg.train.amp == "fp16" else None
    steps_per_epoch, epochs = len(train_batches), cfg.train.epochs
    total_steps, warmup_steps = epochs * steps_per_epoch, round(o.warmup_epochs * steps_per_epoch)

    def lr_at(step: int) -> float:
        return o.lr * lr_factor(step, schedule=o.schedule, total_steps=total_steps, warmup_steps=warmup_steps,
                                milestones=o.milestones, decay=o.lr_decay)

    # ---- restore a resumed run's state
    step, done_epochs, skipped, elapsed = 0, 0, 0, 0.0
    best: dict[str, Any] = {"top1": -1.0, "top5": None, "epoch": 0}
    epoch_meter = Meter()
    if state is not None:
        ck.load_strict(student, state["model"], f"checkpoint {str(last)!r}")
        if teacher_trains:
            ck.load_strict(teacher, state["teacher"], f"checkpoint {str(last)!r} (teacher)")
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        train_batches.load_state_dict(state["data"])
        step, done_epochs, skipped, elapsed = state["step"], state["epoch"], state["skipped"], state["elapsed"]
        best, epoch_meter = dict(state["best"]), Meter.from_state_dict(state["meter"])
        ck.set_rng_state(state["rng"])
        if state["world_size"] != d.world_size:
            progress.line(f"note: resuming a {state['world_size']}-process run with {d.world_size}: the batches "
                          f"stay the same, augmentation draws change")

    # ---- run folder: rank 0 writes, the others only train
    if main:
        if overwrite:
            ck.clear_run(out)
        (out / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
        ck.atomic_write_text(out / "config.yaml", dump_yaml(cfg))
        if state is not None:
            trim_metrics(out / "metrics.jsonl", step)
    metrics = MetricsWriter(out, enabled=main, purge_step=step + 1 if state is not None else None, notice=progress.line)
    if d.world_size > 1:  # average the gradients of what trains; a frozen teacher is never wrapped
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [d.device.index] if d.device.type == "cuda" else None
        distiller.student = DDP(student, device_ids=ids)
        if teacher_trains:
            distiller.teacher = DDP(teacher, device_ids=ids)
    n_params, n_quantized = count_parameters(student), len(quantized_layers(student))
    progress.line(f"training {cfg.model.name} ({q.precision}, {n_quantized} quantized layers, {n_params:,} parameters), "
                  f"scheme {scheme.name}, on {cfg.data.name}: {train_images} images, {steps_per_epoch} steps/epoch x "
                  f"{epochs} epochs on {d.device}{f' x {d.world_size} processes' if d.world_size > 1 else ''}; "
                  f"run folder {out}" + (f"; resuming at step {step}" if state is not None else ""))

    def save(top1: float | None, is_best: bool) -> None:
        if not main:
            return
        blob = {"format": ck.FORMAT, "config": config_to_dict(cfg), "arch": student.arch,
                "plan": {n: lp.to_dict() for n, lp in quantized_layers(student).items()},
                "epoch": done_epochs, "step": step, "model": student.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": {"schedule": o.schedule, "step": step, "total_steps": total_steps, "warmup_steps": warmup_steps},
                "data": train_batches.state_dict(), "rng": ck.rng_state(), "best_top1": best["top1"], "best": best,
                "top1": top1, "meter": epoch_meter.state_dict(), "skipped": skipped, "world_size": d.world_size,
                "elapsed": elapsed + time.perf_counter() - t_start}
        if scheme.teacher == "joint":
            blob.update(teacher=teacher.state_dict(), teacher_arch=teacher.arch)
        if scaler is not None:
            blob["scaler"] = scaler.state_dict()
        ck.save_checkpoint(blob, last)
        if is_best:
            ck.atomic_copy(last, out / CHECKPOINT_DIR / ck.BEST)

    def stop() -> None:
        signals.signum = signals.signum or signal.SIGTERM  # set if only another process was signalled
        name = signal.Signals(signals.signum).name
        if d.world_size > 1:
            dist.barrier()  # nobody exits (and makes torchrun kill rank 0) before the checkpoint is written
        msg = f"stopped by {name} at step {step}; checkpoint {last}; continue with --resume"
        metrics.write({"type": "stopped", "step": step, "signal": name})
        raise TrainingInterrupted(msg, exit_code=128 + signals.signum, step=step, checkpoint=str(last))

    skip_mode, results = cfg.train.on_nonfinite == "skip", {}
    interval, t_interval = Meter(), time.perf_counter()
    try:
        for epoch in range(done_epochs, epochs):
            train_batches.set_epoch(epoch)
            distiller.train()
            t_epoch = time.perf_counter()
            for images, labels in train_batches:
                if cfg.train.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                lr = lr_at(step)
                res = train_step(distiller, optimizer, images, labels, lr=lr, amp=cfg.train.amp, scaler=scaler,
                                 restore_buffers=skip_mode)
                step += 1
                if res.finite:
                    interval.add(res.losses, res.logits, labels)
                    epoch_meter.add(res.losses, res.logits, labels)
                else:
                    where = f"step {step} (epoch {epoch + 1}, batch {train_batches.step}/{steps_per_epoch})"
                    metrics.write({"type": "nonfinite", "epoch": epoch + 1, "step": step, "loss": res.loss,
                                   "grad_norm": res.grad_norm, "action": "skip" if skip_mode else "stop"})
                    if not skip_mode:
                        kept = f"the last good checkpoint {last} is kept" if last.is_file() else "no checkpoint was written yet"
                        msg = (f"non-finite loss or gradient at {where}: loss {res.loss}, gradient norm {res.grad_norm}; "
                               f"this step was not saved and {kept}. Lower optim.lr, try train.amp=off, or set "
                               f"train.on_nonfinite=skip")
                        raise NonFiniteLossError(msg, step=step, checkpoint=str(last) if last.is_file() else None)
                    skipped += 1
                    progress.line(f"skipped {where}: non-finite loss or gradient ({skipped} skipped so far)")
                log_due = step % cfg.train.log_every == 0
                if main:
                    rate = interval.images * d.world_size / max(time.perf_counter() - t_interval, 1e-9)
                    progress.step(bar_text(epoch=epoch + 1, epochs=epochs, step=train_batches.step, steps=steps_per_epoch,
                                           loss=res.loss, images_per_s=rate), log=log_due)
                    if log_due:
                        metrics.write({"type": "step", "epoch": epoch + 1, "step": step, "lr": lr, **interval.means(),
                                       "grad_norm": res.grad_norm, "images_per_s": rate,
                                       **({"skipped": skipped} if skip_mode else {})})
                if log_due:
                    interval, t_interval = Meter(), time.perf_counter()
                stopping = _agree(signals.signum is not None, d)
                if stopping or (cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0):
                    epoch_meter.seconds += time.perf_counter() - t_epoch
                    t_epoch = time.perf_counter()
                    save(None, False)
                if stopping:
                    stop()

            # ---- epoch end: evaluate every split (sharded, counts summed), log, checkpoint
            epoch_meter.seconds += time.perf_counter() - t_epoch
            results = {}
            for split, batches in evals.items():
                sums = _eval_sums(student, batches, device=d.device, amp=cfg.train.amp, channels_last=cfg.train.channels_last)
                if d.world_size > 1:
                    dist.all_reduce(sums)
                results[split] = _eval_dict(sums)
            done_epochs, test = epoch + 1, results["test"]
            is_best = test["top1"] > best["top1"]
            if is_best:
                best = {"top1": test["top1"], "top5": test.get("top5"), "epoch": done_epochs}
            rec = {"type": "epoch", "epoch": done_epochs, "step": step, "lr": lr_at(max(step - 1, 0)),
                   **epoch_meter.means("train_"),
                   **{f"{s}_{k}": v for s, r in results.items() for k, v in r.items() if k != "images"},
                   "best_top1": best["top1"], "epoch_time_s": epoch_meter.seconds,
                   "images_per_s": epoch_meter.images * d.world_size / max(epoch_meter.seconds, 1e-9),
                   **({"skipped": skipped} if skip_mode else {})}
            metrics.write(rec)
            progress.line(f"epoch {done_epochs}/{epochs}: train loss {rec.get('train_loss', float('nan')):.4f}, "
                          f"test top-1 {test['top1']:.2f}%" + (f" top-5 {test['top5']:.2f}%" if "top5" in test else "")
                          + (f", holdout top-1 {results['holdout']['top1']:.2f}%" if "holdout" in results else "")
                          + f", {epoch_meter.seconds:.1f} s")
            epoch_meter = Meter()
            save(test["top1"], is_best)
            if _agree(signals.signum is not None, d):
                stop()
    finally:
        progress.close()
        metrics.close()

    if not results:  # resumed a run that had finished its last epoch but not written its summary
        results = {"test": {"top1": ck.read_checkpoint(last).get("top1")}}
    test = results["test"]
    summary = {
        "status": "finished", "final_top1": test.get("top1"), "final_top5": test.get("top5"),
        "final_loss": test.get("loss"), "best_top1": best["top1"], "best_top5": best["top5"],
        "best_epoch": best["epoch"], **({"holdout_top1": results["holdout"]["top1"]} if "holdout" in results else {}),
        "epochs": epochs, "steps": step, "skipped_steps": skipped, "wall_time_s": elapsed + time.perf_counter() - t_start,
        "version": _version(), "git_commit": _git_commit(), "torch": torch.__version__, "device": str(d.device),
        "world_size": d.world_size, "scheme": scheme.name, "precision": q.precision, "model": cfg.model.name,
        "parameters": n_params, "quantized_layers": n_quantized, "train_images": train_images,
        "teacher": dc.teacher if scheme.frozen_teacher else (dc.teacher_model.name if dc.teacher_model else None),
    }
    if main:
        ck.atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    if os.environ.get(DEBUG_DUMP_ENV):
        _debug_dump(Path(os.environ[DEBUG_DUMP_ENV]), d, student, train_batches)
    if d.world_size > 1:
        dist.barrier()
    return summary


def _version() -> str:
    from apprentice import __version__

    return __version__


def _debug_dump(folder: Path, d: _Dist, student: nn.Module, train_batches: Any) -> None:
    h = hashlib.sha256()
    for name, p in student.named_parameters():
        h.update(name.encode() + p.detach().cpu().contiguous().numpy().tobytes())
    indices = train_batches.indices(0).tolist() if hasattr(train_batches, "indices") else []
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank{d.rank}.json").write_text(json.dumps(
        {"rank": d.rank, "world_size": d.world_size, "params_sha256": h.hexdigest(), "epoch0_indices": indices}))
