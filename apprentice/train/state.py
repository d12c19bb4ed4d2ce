"""What a checkpoint holds: `TrainState`, the one place the checkpoint layout is written down.

A checkpoint is ``TrainState.to_dict()`` saved with ``torch.save`` (plain containers and tensors
only, so ``torch.load(weights_only=True)`` reads it) and read back with `TrainState.from_dict`.
The counters that move during a run (`Counters`, with the `Meter` sums of the epoch in progress)
are part of it; so are the state dicts of everything that trains (student, a jointly trained
teacher, optimizer, fp16 grad scaler), the data loader's position and the random generators, so a
resumed run continues bit for bit on the CPU.

Format 1, key by key::

    format        1
    config        the run's config as plain containers (`apprentice.config.config_to_dict`)
    arch          the student's ``model.arch`` (name and constructor arguments)
    plan          {layer: LayerPlan.to_dict()} of the student's quantized layers (and AddPlan.to_dict() of a
                  deployable graph's adds, quant.deploy)
    model         student state dict
    epoch, step   epochs finished, optimizer steps taken
    best, best_top1   the epoch in best.pt: {top1, top5 (its test accuracy), epoch, on, score}; on is
                  "holdout" (chosen by the holdout top-1, score) or "last" (no holdout: the last epoch);
                  best_top1 is its test top1 alone
    top1, results     this epoch's test top-1 (None mid-epoch) and every split's last evaluation
    meter         the running sums of the epoch in progress (`Meter`)
    skipped       steps dropped for a non-finite loss (``train.on_nonfinite=skip``)
    elapsed       seconds trained so far, over every process start
    world_size    processes the run was trained with
    optimizer, scheduler, data, rng    optimizer state; {schedule, step, total_steps, warmup_steps};
                  the loader's {epoch, step}; python/numpy/torch/CUDA generator states
    teacher, teacher_arch   scheme A only: the jointly trained teacher
    scaler        fp16 only: the GradScaler's state
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from apprentice.errors import ApprenticeError

__all__ = ["FORMAT", "MODEL_KEYS", "Counters", "Meter", "TrainState", "take_best"]

FORMAT = 1
# What rebuilding the trained model needs (`apprentice.train.checkpoint.check_checkpoint`); a
# resume needs every field of `TrainState`.
MODEL_KEYS = ("format", "config", "arch", "plan", "epoch", "step", "model")


@dataclass
class Meter:
    """Sums of the loss terms, correct predictions and images over the steps of one interval.

    Sums stay tensors on the device until `means` is called, so adding costs no host sync.
    """

    sums: dict[str, Any] = field(default_factory=dict)
    correct: Any = 0
    steps: int = 0
    images: int = 0
    seconds: float = 0.0

    def add(self, losses: Mapping[str, Tensor], logits: Tensor, labels: Tensor) -> None:
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0) + v.detach().float()
        self.correct = self.correct + (logits.argmax(1) == labels).sum()
        self.steps += 1
        self.images += len(labels)

    def means(self, prefix: str = "") -> dict[str, float]:
        """Mean of every loss term and training top-1 (%) as ``{prefix + name: value}``."""
        out = {prefix + k: float(v) / self.steps for k, v in self.sums.items()} if self.steps else {}
        if self.images:
            out[prefix + "top1"] = 100 * float(self.correct) / self.images
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"sums": {k: float(v) for k, v in self.sums.items()}, "correct": float(self.correct),
                "steps": self.steps, "images": self.images, "seconds": self.seconds}

    @classmethod
    def from_state_dict(cls, s: Mapping[str, Any]) -> Meter:
        return cls(dict(s["sums"]), s["correct"], s["steps"], s["images"], s["seconds"])


def _no_best() -> dict[str, Any]:
    return {"top1": -1.0, "top5": None, "epoch": 0, "on": None, "score": None}


@dataclass
class Counters:
    """Where a run stands: what moves from step to step and is saved with every checkpoint."""

    epoch: int = 0
    step: int = 0
    skipped: int = 0
    elapsed: float = 0.0
    best: dict[str, Any] = field(default_factory=_no_best)
    top1: float | None = None
    results: dict[str, Any] = field(default_factory=dict)
    meter: Meter = field(default_factory=Meter)


def take_best(c: Counters, results: dict[str, dict[str, float]]) -> bool:
    """Whether the model just evaluated becomes ``best.pt`` (and ``c.best``): a higher holdout top-1
    than the best so far when the data holds images out (``data.holdout``), else always (the last
    epoch is the best one can choose without looking at the test set, which the accuracy reports)."""
    holdout = results.get("holdout", {}).get("top1")
    score = c.best.get("score")  # absent in checkpoints of older versions, which chose on test
    if holdout is not None and score is not None and holdout <= score:
        return False
    test = results["test"]
    c.best = {"top1": test["top1"], "top5": test.get("top5"), "epoch": c.epoch,
              "on": "last" if holdout is None else "holdout", "score": holdout}
    return True


@dataclass
class TrainState:
    """Everything a checkpoint holds (module docstring: the layout, key by key)."""

    config: dict[str, Any]
    arch: dict[str, Any]
    plan: dict[str, Any]
    model: dict[str, Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    data: dict[str, int]
    rng: dict[str, Any]
    counters: Counters
    world_size: int
    teacher: dict[str, Tensor] | None = None
    teacher_arch: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's dict: plain containers and tensors, in the layout above."""
        c = self.counters
        out: dict[str, Any] = {"format": FORMAT}
        for f in dataclasses.fields(self):
            if f.name != "counters" and getattr(self, f.name) is not None:
                out[f.name] = getattr(self, f.name)
        out.update(epoch=c.epoch, step=c.step, best=dict(c.best), best_top1=c.best["top1"], top1=c.top1,
                   results=c.results, meter=c.meter.state_dict(), skipped=c.skipped, elapsed=c.elapsed)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str) -> TrainState:
        """Read a checkpoint's dict back; a missing or malformed field is one error naming ``source``."""
        try:
            counters = Counters(epoch=int(d["epoch"]), step=int(d["step"]), skipped=int(d["skipped"]),
                                elapsed=float(d["elapsed"]), best=dict(d["best"]), top1=d.get("top1"),
                                results=dict(d.get("results") or {}), meter=Meter.from_state_dict(d["meter"]))
            missing = [k for k in _REQUIRED if d.get(k) is None]
            if missing:
                raise KeyError(missing[0])
            values = {f.name: d.get(f.name) for f in dataclasses.fields(cls) if f.name not in ("counters", "world_size")}
            return cls(**values, counters=counters, world_size=int(d["world_size"]))
        except (KeyError, TypeError, ValueError) as e:
            what = f"missing {e}" if isinstance(e, KeyError) else " ".join(str(e).split())[:200]
            raise ApprenticeError(f"{source} cannot be resumed ({what}); --overwrite starts the run again") from None


_REQUIRED = ("config", "arch", "plan", "model", "optimizer", "scheduler", "data", "rng")
