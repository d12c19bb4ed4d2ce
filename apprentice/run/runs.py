"""Trained models read back: a run folder, a checkpoint file, or any model file (packed too).

`load_run` rebuilds a run's student from its checkpoint with the config it was trained with;
`load_model_file` also takes a packed export (decided by content, not name), as the commands that
read a model (eval, info, export, compare, predict, cache-teacher) do. Only tensors and plain
containers are ever read: nothing in a file runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from apprentice.config import config_from_dict
from apprentice.config.schema import Config
from apprentice.data import DATASETS
from apprentice.errors import ApprenticeError
from apprentice.export import model_from_packed, read_packed
from apprentice.run.file_checks import check_kind, file_kind, is_packed_file
from apprentice.train.checkpoint import (
    CHECKPOINT_DIR,
    SUMMARY_FILE,
    checkpoint_config,
    find_checkpoint,
    model_from_checkpoint,
    read_checkpoint,
)
from apprentice.weights import check_finite

__all__ = ["LoadedModel", "LoadedRun", "load_model_file", "load_run", "stored_config"]

_DAMAGED = "its outputs would be NaN; the file is damaged or the run diverged: use another checkpoint"


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
        cfg = config_from_dict(checkpoint_config(ckpt), check=False)
    except ApprenticeError as e:
        raise ApprenticeError(f"checkpoint {str(file)!r} holds a config this version cannot read: {e}") from None
    return _legacy_image_size(cfg)


def _legacy_image_size(cfg: Config) -> Config:
    """Configs written before data.image_size could be null hold 224 for every data set; only folders
    ever used it, so for the others it reads as null (and a resumed run's config still matches)."""
    info = DATASETS.get(cfg.data.name)
    if info is not None and not info.is_folder and cfg.data.image_size == 224:
        return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, image_size=None))
    return cfg


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
    check_finite(model.state_dict(), f"checkpoint {str(file)!r}", why=_DAMAGED)
    model.eval()
    summary = None
    if run_dir is not None and (run_dir / SUMMARY_FILE).is_file():
        with contextlib.suppress(OSError, json.JSONDecodeError):
            summary = json.loads((run_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
    return LoadedRun(config, model, plan, summary, str(file))



@dataclass(frozen=True)
class LoadedModel:
    """A model with what we know about it.

    Attributes:
        path: where it came from.
        model: the eval-mode model (a packed file's has dequantized weights).
        config: its training `Config`, or None for a packed file saved without one.
        summary: the run's summary.json contents, if any.
        kind: "run", "checkpoint", "packed", or (`load_model_file` with ``runtimes``) "executorch" or "litert".
        qmap: a packed file's quantization map (None otherwise).
    """

    path: Path
    model: Any
    config: Any
    summary: dict | None
    kind: str
    qmap: dict | None = None


def load_model_file(path_text: str, *, runtimes: bool = False) -> LoadedModel:
    """Load a run folder, a checkpoint file or a packed file (decided by content, not name); with
    ``runtimes``, an ExecuTorch (``.pte``) or LiteRT (``.tflite``) export too (a module that runs the file)."""
    path = Path(path_text)
    if not path.exists():
        raise ApprenticeError(f"{path_text!r} does not exist (expected a run folder, checkpoint or packed file)")
    kind = file_kind(path_text)
    if runtimes and kind in ("executorch", "litert"):
        return _runtime_file(path, kind)
    check_kind(path_text, "", ("onnx", "executorch", "litert", "cache"), "give a run folder, checkpoint or packed file")
    if is_packed_file(path):
        tensors, qmap = read_packed(path)
        model = model_from_packed(tensors, qmap)
        meta = qmap.get("metadata")
        config, summary = _recorded(meta if isinstance(meta, dict) else {}, path_text, "packed file")
        return LoadedModel(path, model, config, summary, "packed", qmap)
    run = load_run(str(path))
    return LoadedModel(path, run.model, run.config, run.summary, "run" if path.is_dir() else "checkpoint")


def _recorded(meta: dict[str, Any], path_text: str, what: str) -> tuple[Any, dict | None]:
    """The training config and summary an export's metadata records (the caller's extras: optional, never trusted)."""
    config = None
    if isinstance(meta.get("config"), dict):
        try:
            config = config_from_dict(meta["config"], check=False)
        except ApprenticeError as e:
            raise ApprenticeError(f"{path_text!r}: the training config stored in the {what} is unreadable: {e}") from None
    return config, meta.get("summary") if isinstance(meta.get("summary"), dict) else None


def _runtime_file(path: Path, kind: str) -> LoadedModel:
    """An ExecuTorch or LiteRT export as a module that runs the file, with the config its metadata records."""
    if kind == "executorch":
        from apprentice.export.pte import ExecuTorchModel as Runner
    else:
        from apprentice.export.tflite import LiteRTModel as Runner
    model = Runner(path)
    config, summary = _recorded(model.metadata, str(path), f"{kind} file")
    qmap = model.metadata.get("apprentice") if isinstance(model.metadata.get("apprentice"), dict) else None
    return LoadedModel(path, model, config, summary, kind, qmap)

