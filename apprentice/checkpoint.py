"""Run folders and checkpoints: atomic writes, safe loading, models rebuilt from files, RNG state.

Every file a run writes goes through a temporary file in the same folder that is flushed, fsynced
and then renamed over the target (`apprentice.atomic`), so a crash or a ``kill -9`` leaves either
the old file or the new one, never half of one; a failed checkpoint write (a full disk) raises
`CheckpointWriteError` and leaves the previous checkpoint as it was.

Checkpoints hold plain containers and tensors only, and every load uses
``torch.load(..., weights_only=True)``: a file that would need arbitrary unpickling (a pickled
model, a malicious payload) is refused with an `ApprenticeError` naming it, and no code in it runs.

Layout of a run folder (written by rank 0 only)::

    config.yaml            resolved config (``load_config`` reads it back to an equal config)
    metrics.jsonl          {"type": "step"|"epoch"|"nonfinite"|"stopped", "step": ..., ...} per line
    tb/                    TensorBoard scalars ``step/<key>``, ``epoch/<key>`` (if tensorboard is installed)
    checkpoints/last.pt    every epoch end, every train.checkpoint_every steps, and on SIGTERM/SIGINT
    checkpoints/best.pt    a copy of last.pt whenever the test top-1 improved
    summary.json           written once the run has finished

A checkpoint (format 1) is a dict: ``format``, ``config`` (`config_to_dict`), ``arch`` (the
student's ``model.arch``), ``plan`` ({layer: LayerPlan.to_dict()}), ``epoch`` (epochs finished),
``step`` (optimizer steps taken), ``model`` (student state dict), ``optimizer``, ``scheduler``
({schedule, step, total_steps, warmup_steps}), ``data`` (loader position {epoch, step}), ``rng``
(python/numpy/torch/CUDA states), ``best_top1`` and ``best`` ({top1, top5, epoch}), ``top1``
(this epoch's test top-1; None mid-epoch), ``meter`` (the epoch's running sums), ``skipped``,
``elapsed`` (seconds trained so far), ``world_size``; scheme A adds ``teacher`` and
``teacher_arch``, fp16 adds ``scaler``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from apprentice.atomic import (
    atomic_copy,
    atomic_file,
    atomic_write_bytes,
    atomic_write_text,
    remove_stale_temps,
)
from apprentice.config import Config, ModelConfig, config_from_dict
from apprentice.errors import ApprenticeError
from apprentice.models import build_model
from apprentice.quant import LayerPlan, apply_plan

__all__ = [
    "BEST", "CHECKPOINT_DIR", "FORMAT", "LAST", "CheckpointWriteError", "LoadedRun", "as_state_dict", "atomic_copy",
    "atomic_write_bytes", "atomic_write_text", "build_from_config", "check_checkpoint", "check_finite",
    "check_run_dir", "clear_run", "find_checkpoint", "is_checkpoint", "load_run", "load_state_dict_file",
    "load_strict", "load_teacher", "model_from_checkpoint", "read_checkpoint", "remove_stale_temps", "rng_state",
    "run_files", "save_checkpoint", "set_rng_state", "stored_config", "torch_load",
]

FORMAT = 1
CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"
# Keys every checkpoint written by `apprentice.train.fit` has (see the contract's layout).
REQUIRED_KEYS = ("format", "config", "arch", "plan", "epoch", "step", "model")


class CheckpointWriteError(RuntimeError):
    """Writing a checkpoint failed (disk full, permissions); the previous checkpoint is intact.

    Attributes:
        exit_code: 1 (a failure during the run, not bad input).
        path: the checkpoint that was being written.
    """

    exit_code = 1

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


def save_checkpoint(obj: Mapping[str, Any], path: str | os.PathLike) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically (temp file in the same folder, fsync, rename).

    Raises:
        CheckpointWriteError: the disk is full or the file cannot be written; one line naming the
            file and saying whether an earlier checkpoint there is kept (it always is, untouched).
    """
    p = Path(path)
    try:
        with atomic_file(p) as f:
            torch.save(dict(obj), f)
    except OSError as e:
        kept = "the previous checkpoint is kept" if p.is_file() else "no earlier checkpoint exists there"
        if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            what = "no space left on device" if e.errno == errno.ENOSPC else "disk quota exceeded"
            message = f"{what} while writing checkpoint {str(p)!r}; {kept}"
        else:
            message = f"cannot write checkpoint {str(p)!r}: {e.strerror or e}; {kept}"
        raise CheckpointWriteError(message, path=str(p)) from e


def torch_load(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with one-line errors.

    Args:
        path: the file.
        what: how the error messages name it ("checkpoint", "teacher file", ...).

    Raises:
        ApprenticeError: missing, empty, truncated, corrupt or foreign file, or one that needs
            arbitrary unpickling (refused without running any of its code); names the file.
    """
    p = Path(path)
    if p.is_dir():
        raise ApprenticeError(f"{what} {str(p)!r} is a folder, not a file")
    if not p.is_file():
        raise ApprenticeError(f"{what} {str(p)!r} does not exist")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, UnpicklingError, EOFError, zipfile errors...
        raise ApprenticeError(f"cannot read {what} {str(p)!r}: {_load_failure(e, p)}") from None


def _load_failure(e: Exception, p: Path) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in words for the person who gave the file."""
    text = " ".join(str(e).split())
    if "Weights only load failed" in text or "weights_only" in text:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if found:
            return (f"it refers to the Python object {found.group(1)}; files are never unpickled beyond tensors "
                    f"and plain containers (weights_only=True), so nothing in it ran")
        return ("it is not a PyTorch tensor file, or it holds pickled objects other than tensors and plain "
                "containers, which are never unpickled (weights_only=True)")
    with contextlib.suppress(OSError):
        if p.stat().st_size == 0:
            return "the file is empty"
    detail = text.split(". ")[0] or type(e).__name__
    if isinstance(e, (KeyError, OSError, EOFError)) or len(detail) < 8:
        detail = f"{type(e).__name__}: {detail}" if text else type(e).__name__
    if len(detail) > 120:
        detail = detail[:117] + "..."
    return f"the file is truncated or corrupt, or not a PyTorch file ({detail})"


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load an apprentice checkpoint and check it has the fields of format `FORMAT`.

    Raises:
        ApprenticeError: unreadable file, or not an apprentice checkpoint (names the missing keys).
    """
    return check_checkpoint(torch_load(path), path)


def is_checkpoint(obj: Any) -> bool:
    """Whether a loaded object looks like an apprentice checkpoint (rather than a bare state dict)."""
    return isinstance(obj, dict) and "format" in obj and "arch" in obj and isinstance(obj.get("model"), dict)


def check_checkpoint(ckpt: Any, path: str | os.PathLike) -> dict[str, Any]:
    """Return ``ckpt`` if it has the fields of checkpoint format `FORMAT`, else raise naming ``path``."""
    if not isinstance(ckpt, dict):
        raise ApprenticeError(f"{str(path)!r} is not an apprentice checkpoint (it holds a {type(ckpt).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise ApprenticeError(f"{str(path)!r} is not an apprentice checkpoint: missing keys {missing}")
    if ckpt["format"] != FORMAT:
        raise ApprenticeError(
            f"{str(path)!r} has checkpoint format {ckpt['format']!r}; this version reads format {FORMAT}"
        )
    return ckpt


def find_checkpoint(run_dir: str | os.PathLike, prefer: tuple[str, ...] = (BEST, LAST)) -> Path:
    """The first existing file of ``prefer`` in ``run_dir/checkpoints`` (default: best, else last).

    Raises:
        ApprenticeError: the folder has no such checkpoint.
    """
    folder = Path(run_dir) / CHECKPOINT_DIR
    for name in prefer:
        if (folder / name).is_file():
            return folder / name
    raise ApprenticeError(f"run folder {str(run_dir)!r} has no checkpoint ({', '.join(prefer)} in {CHECKPOINT_DIR}/)")


def _strip_prefix(sd: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state dict of tensors from a run folder or a weights file, never unpickling code.

    Args:
        path: a run folder (its ``checkpoints/best.pt``, else ``last.pt``: the ``"model"`` entry);
            a ``.safetensors`` file; or a ``.pt``/``.pth`` file holding a state dict, an apprentice
            checkpoint (its ``"model"``) or a ``{"state_dict": ...}`` wrapper. A ``module.`` prefix
            on every key (saved from DistributedDataParallel) is removed.

    Returns:
        ``{parameter name: tensor}`` on the CPU.

    Raises:
        ApprenticeError: missing, unreadable, truncated or foreign file, or contents that are
            not a mapping of names to tensors; names the file.
    """
    p = Path(path)
    if p.is_dir():
        p = find_checkpoint(p)
        sd: Any = read_checkpoint(p)["model"]
    elif p.suffix == ".safetensors":
        if not p.is_file():
            raise ApprenticeError(f"weights file {str(p)!r} does not exist")
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            sd = load_file(str(p), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise ApprenticeError(f"cannot read weights file {str(p)!r}: {' '.join(str(e).split())}") from None
    else:
        sd = torch_load(p, "weights file")
    return as_state_dict(sd, p)


def as_state_dict(sd: Any, path: str | os.PathLike) -> dict[str, Tensor]:
    """The state dict inside a loaded object (itself, a checkpoint's ``"model"``, a ``"state_dict"``)."""
    p = path
    if is_checkpoint(sd):
        sd = sd["model"]
    elif isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in sd.items()):
        raise ApprenticeError(f"{str(p)!r} does not hold a state dict (a mapping of parameter names to tensors)")
    return _strip_prefix(sd, "module.")


def rng_state() -> dict[str, Any]:
    """The global generators' states as plain containers and tensors (python, numpy, torch, CUDA)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what `rng_state` saved; the CUDA states only when the device count matches."""
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


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


def _describe(arch: Mapping[str, Any]) -> str:
    args = ", ".join(f"{k}={v}" for k, v in arch.items() if k != "name")
    return f"{arch.get('name')}({args})"


def load_strict(model: nn.Module, sd: Mapping[str, Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with one error line naming the file and the first bad keys."""
    def first(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")

    not_tensors = [f"{k} ({type(v).__name__})" for k, v in sd.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise ApprenticeError(f"{source} holds weights that are not tensors: {first(not_tensors)}")
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"{what} {first(keys)}" for what, keys in
                 (("missing", missing), ("unexpected", unexpected), ("shape mismatch (file vs model)", shapes)) if keys]
        arch = getattr(model, "arch", None)
        name = _describe(arch) if isinstance(arch, Mapping) else type(model).__name__
        raise ApprenticeError(f"{source} does not fit {name}: {'; '.join(parts)}")
    model.load_state_dict(sd, strict=True)


def model_from_checkpoint(ckpt: Mapping[str, Any], path: str | Path, *, key: str = "model",
                           arch_key: str = "arch", plan_key: str | None = "plan") -> tuple[nn.Module, dict]:
    """Rebuild a model from a checkpoint's arch, quantization plan and weights (CPU, train mode)."""
    arch = ckpt.get(arch_key)
    if not isinstance(arch, Mapping) or "name" not in arch:
        raise ApprenticeError(f"checkpoint {str(path)!r} has no architecture ({arch_key!r} entry)")
    plans = (ckpt.get(plan_key) or {}) if plan_key else {}
    if not isinstance(plans, Mapping):
        raise ApprenticeError(f"checkpoint {str(path)!r} has a malformed quantization plan ({plan_key!r} entry)")
    try:
        model = build_model(**arch)
        plan = {n: LayerPlan.from_dict(d) for n, d in plans.items()}
        apply_plan(model, plan)
    except ApprenticeError as e:
        raise ApprenticeError(f"checkpoint {str(path)!r}: {e}") from None
    sd = ckpt.get(key)
    if not isinstance(sd, Mapping):
        raise ApprenticeError(f"checkpoint {str(path)!r} has no {key!r} weights")
    load_strict(model, sd, f"checkpoint {str(path)!r}")
    return model, plan


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


def check_finite(sd: Mapping[str, Tensor], source: str) -> None:
    """Raise naming the first tensors of ``sd`` that hold NaN or inf (a teacher or init that diverged)."""
    bad = [k for k, v in sd.items() if isinstance(v, Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
        raise ApprenticeError(f"{source} holds non-finite values (NaN or inf) in {', '.join(bad[:3])}{more}; "
                              f"it cannot teach or initialise anything")


# ---------------------------------------------------------------------------------------------
# Run folders


def run_files(run_dir: Path) -> list[Path]:
    """The files that mark ``run_dir`` as holding a run: ``summary.json`` and ``checkpoints/*.pt``."""
    found = [run_dir / "summary.json"] if (run_dir / "summary.json").is_file() else []
    folder = run_dir / CHECKPOINT_DIR
    if folder.is_dir():
        found += sorted(p for p in folder.iterdir() if p.suffix == ".pt")
    return found


def clear_run(run_dir: Path) -> None:
    """Remove what an earlier run wrote (only our own files; the folder may hold other things)."""
    for name in ("summary.json", "metrics.jsonl", "config.yaml"):
        with contextlib.suppress(FileNotFoundError):
            (run_dir / name).unlink()
    folder = run_dir / CHECKPOINT_DIR
    if folder.is_dir():
        for p in folder.iterdir():
            if p.suffix in (".pt", ".tmp"):
                p.unlink()
    shutil.rmtree(run_dir / "tb", ignore_errors=True)


def check_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> str | None:
    """Return the error message for starting in ``run_dir``, or None."""
    if run_dir.exists() and not run_dir.is_dir():
        return f"train.out {str(run_dir)!r} is a file, not a folder"
    files = run_files(run_dir)
    if files and not (resume or overwrite):
        what = "a finished run (summary.json)" if files[0].name == "summary.json" else f"checkpoints ({files[0].name})"
        return (f"run folder {str(run_dir)!r} already holds {what}; pass --resume (resume=True) to continue it "
                f"or --overwrite (overwrite=True) to start again, or choose another train.out")
    return None
