"""The one bridge from the config tree to plain objects: data, models, teacher, runs read back.

Only the command line, `apprentice.fit` and this module see a `Config`; every component below
takes plain typed arguments. ``build_*`` functions map config sections onto those arguments.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from apprentice.config import Config, ModelConfig, config_from_dict
from apprentice.data import TrainSet, eval_batches, train_batches
from apprentice.errors import ApprenticeError
from apprentice.models import build_model
from apprentice.train.checkpoint import (
    CHECKPOINT_DIR,
    as_state_dict,
    check_checkpoint,
    find_checkpoint,
    is_checkpoint,
    load_state_dict_file,
    model_from_checkpoint,
    read_checkpoint,
)
from apprentice.train.runtime import Runtime
from apprentice.weights import check_finite, load_strict, torch_load

__all__ = ["LoadedRun", "build_from_config", "eval_data", "load_run", "load_teacher", "stored_config", "train_data"]


def eval_data(cfg: Config, split: str = "test", *, data_dir: str | None = None, batch_size: int | None = None,
                 device: str | torch.device = "cpu", rank: int = 0, world_size: int = 1) -> Iterable[tuple[Tensor, Tensor]]:
    """`batches.eval_batches` for ``cfg``'s data set, as `fit` evaluates it (``apprentice eval`` too).

    Args:
        cfg: the run's config (data set, holdout size, limit, data folder).
        split: "test", "holdout" or "train" ("val" of an ImageNet folder is its "test").
        data_dir: overrides ``cfg.data.dir``.
        batch_size: overrides ``cfg.data.eval_batch_size``.
        device: where the batches go.
        rank: this process's share is images ``rank, rank + world_size, ...``.
        world_size: number of processes sharing the split.
    """
    dc = cfg.data
    return eval_batches(dc.name, split, batch_size=batch_size or dc.eval_batch_size, data_dir=data_dir or dc.dir,
                                download=dc.download, holdout=dc.holdout, limit=dc.limit, image_size=dc.image_size,
                                workers=dc.workers, device=device, rank=rank, world_size=world_size)


def train_data(cfg: Config, rt: Runtime) -> TrainSet:
    dc = cfg.data
    return train_batches(dc.name, batch_size=dc.batch_size, seed=cfg.train.seed, data_dir=dc.dir,
                                 download=dc.download, holdout=dc.holdout, limit=dc.limit, augment=dc.augment,
                                 image_size=dc.image_size, workers=dc.workers, device=rt.device, rank=rt.rank,
                                 world_size=rt.world_size)


@dataclass(frozen=True)
class LoadedRun:
    """A trained model read back from a run folder or checkpoint file (see `load_run`).

    Attributes:
        config: the run's config.
        model: the student, quantization plan applied, weights loaded, in eval mode, on the CPU.
        plan: ``{layer name: LayerPlan}`` of its quantized layers (empty for a float model).
        summary: the run's ``summary.json`` if it has one (finished runs), else None.
        checkpoint_path: the file the weights came from.
    """

    config: Config
    model: nn.Module
    plan: dict[str, Any]
    summary: dict[str, Any] | None
    checkpoint_path: str


def stored_config(ckpt: Mapping[str, Any], file: str | os.PathLike) -> Config:
    """The training config a checkpoint (read from ``file``) holds, unvalidated: it was valid when written."""
    try:
        return config_from_dict(ckpt["config"], check=False)
    except ApprenticeError as e:
        raise ApprenticeError(f"checkpoint {str(file)!r} holds a config this version cannot read: {e}") from None


def load_run(path: str | os.PathLike) -> LoadedRun:
    """Load the trained student of a run folder (its best checkpoint, else the last) or a checkpoint file.

    Only tensors and plain containers are read (``weights_only=True``); nothing in the file runs.

    Raises:
        ApprenticeError: no checkpoint, an unreadable/truncated/foreign file, or a checkpoint whose
            config, architecture or weights do not fit together; names the file.
    """
    p = Path(path)
    file = find_checkpoint(p) if p.is_dir() else p
    run_dir = p if p.is_dir() else (p.parent.parent if p.parent.name == CHECKPOINT_DIR else None)
    ckpt = read_checkpoint(file)
    config = stored_config(ckpt, file)
    model, plan = model_from_checkpoint(ckpt, file)
    model.eval()
    summary = None
    if run_dir is not None and (run_dir / "summary.json").is_file():
        with contextlib.suppress(OSError, json.JSONDecodeError):
            summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    return LoadedRun(config, model, plan, summary, str(file))


def build_from_config(m: ModelConfig, *, num_classes: int, in_channels: int) -> nn.Module:
    """``models.build_model`` from a `ModelConfig` plus the data set's class and channel counts."""
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_channels": in_channels, "width": m.width}
    if m.shortcut is not None:
        kwargs["shortcut"] = m.shortcut
    if m.small_input is not None:
        kwargs["small_input"] = m.small_input
    return build_model(m.name, **kwargs)


def load_teacher(path: str, model_cfg: ModelConfig | None, *, num_classes: int, in_channels: int) -> nn.Module:
    """The trained teacher of schemes B/C, in eval mode on the CPU.

    Args:
        path: a run folder or apprentice checkpoint (architecture read from it), or a plain
            ``.pt``/``.pth``/``.safetensors`` state dict (architecture from ``model_cfg``).
        model_cfg: the teacher architecture (``distill.teacher_model``); required for plain state
            dicts, checked against the run's architecture otherwise.
        num_classes: classes of the data set; the teacher must predict the same.
        in_channels: image channels of the data set.

    Raises:
        ApprenticeError: missing/unreadable file, class-count or channel mismatch, or weights that
            do not fit the architecture (names the file and the first mismatched keys).
    """
    p = Path(path)
    if not p.exists():
        raise ApprenticeError(f"distill.teacher {path!r} does not exist")
    loaded: Any = None
    if p.is_dir():
        loaded = read_checkpoint(find_checkpoint(p))
    elif p.suffix != ".safetensors":
        loaded = torch_load(p, "teacher file")  # once: teacher files can be large
    if is_checkpoint(loaded):
        ckpt = check_checkpoint(loaded, p)
        arch = ckpt["arch"]
        if not isinstance(arch, Mapping):
            raise ApprenticeError(f"teacher {path!r} has no architecture ('arch' entry)")
        if arch.get("num_classes") != num_classes or arch.get("in_channels") != in_channels:
            raise ApprenticeError(
                f"teacher {path!r} was trained for {arch.get('num_classes')} classes and {arch.get('in_channels')} "
                f"input channels, but the data set has {num_classes} classes and {in_channels} channels")
        if model_cfg is not None:
            wanted = {"name": model_cfg.name, "width": model_cfg.width, "shortcut": model_cfg.shortcut,
                      "small_input": model_cfg.small_input}
            diff = [f"{k}={v!r} (run has {arch.get(k)!r})" for k, v in wanted.items()
                    if v is not None and arch.get(k) != v]
            if diff:
                raise ApprenticeError(f"distill.teacher_model does not match teacher run {path!r}: {', '.join(diff)}")
        model, _ = model_from_checkpoint(ckpt, p)
        check_finite(model.state_dict(), f"teacher {path!r}")
        return model.eval()
    if model_cfg is None:
        raise ApprenticeError(f"distill.teacher {path!r} is a plain weights file; set distill.teacher_model "
                              f"to its architecture (e.g. distill.teacher_model.name=resnet56)")
    sd = load_state_dict_file(p) if loaded is None else as_state_dict(loaded, p)
    fc = sd.get("fc.weight")
    if fc is not None and fc.dim() == 2 and fc.shape[0] != num_classes:
        raise ApprenticeError(f"teacher {path!r} predicts {fc.shape[0]} classes (fc.weight {tuple(fc.shape)}), "
                              f"but the data set has {num_classes}")
    model = build_from_config(model_cfg, num_classes=num_classes, in_channels=in_channels)
    load_strict(model, sd, f"teacher {path!r}")
    check_finite(sd, f"teacher {path!r}")
    return model.eval()
