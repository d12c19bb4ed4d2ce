"""Checkpoint files and run folders: the checkpoint format on disk, run-folder bookkeeping, RNG state.

Every file a run writes goes through a temporary file in the same folder that is flushed, fsynced
and then renamed over the target (`apprentice.atomic`), so a crash or a ``kill -9`` leaves either
the old file or the new one, never half of one; a failed checkpoint write (a full disk) raises
`CheckpointWriteError` and leaves the previous checkpoint as it was.

Checkpoints hold plain containers and tensors only, and every load uses
``torch.load(..., weights_only=True)`` (`apprentice.weights.torch_load`): nothing in a file runs.
What a checkpoint holds is `apprentice.train.state.TrainState` (its layout is written there, once).

Layout of a run folder (written by rank 0 only)::

    config.yaml            resolved config (``load_config`` reads it back to an equal config)
    metrics.jsonl          {"type": "step"|"epoch"|"nonfinite"|"stopped", "step": ..., ...} per line
    tb/                    TensorBoard scalars ``step/<key>``, ``epoch/<key>`` (if tensorboard is installed)
    checkpoints/last.pt    every epoch end, every train.checkpoint_every steps, and on SIGTERM/SIGINT
    checkpoints/best.pt    a copy of last.pt whenever the holdout top-1 improved (``data.holdout``), else
                           every epoch: never chosen on the test set
    summary.json           written once the run has finished
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from apprentice.atomic import atomic_file
from apprentice.errors import EXIT_RUNTIME, ApprenticeError
from apprentice.models import build_model
from apprentice.quant import apply_plan, plan_from_dict
from apprentice.train.state import FORMAT, MODEL_KEYS
from apprentice.weights import load_strict, torch_load

__all__ = [
    "BEST", "CHECKPOINT_DIR", "CONFIG_FILE", "LAST", "METRICS_FILE", "SUMMARY_FILE", "TENSORBOARD_DIR",
    "CheckpointWriteError", "as_state_dict", "check_checkpoint", "check_run_dir", "checkpoint_arch",
    "checkpoint_config", "checkpoint_weights", "clear_run", "find_checkpoint", "is_checkpoint", "load_state_dict_file",
    "model_from_checkpoint", "read_checkpoint", "rng_state", "run_files", "save_checkpoint", "set_rng_state",
]


# The names in a run folder (the layout above); every module that writes or reads one uses these.
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tb"
CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"
SUMMARY_FILE = "summary.json"


class CheckpointWriteError(RuntimeError):
    """Writing a checkpoint failed (disk full, permissions); the previous checkpoint is intact.

    Attributes:
        exit_code: 1 (a failure during the run, not bad input).
        path: the checkpoint that was being written.
    """

    exit_code = EXIT_RUNTIME

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
    missing = [k for k in MODEL_KEYS if k not in ckpt]
    if missing:
        raise ApprenticeError(f"{str(path)!r} is not an apprentice checkpoint: missing keys {missing}")
    if ckpt["format"] != FORMAT:
        raise ApprenticeError(
            f"{str(path)!r} has checkpoint format {ckpt['format']!r}; this version reads format {FORMAT}"
        )
    return ckpt


# A checked checkpoint's entries (`apprentice.train.state` writes the layout): read through these.


def checkpoint_config(ckpt: Mapping[str, Any]) -> Any:
    """The run's config as plain containers (``apprentice.config.config_from_dict`` reads it back)."""
    return ckpt["config"]


def checkpoint_arch(ckpt: Mapping[str, Any]) -> Any:
    """The student's ``model.arch``: what ``build_model(**arch)`` rebuilds it from."""
    return ckpt["arch"]


def checkpoint_weights(ckpt: Mapping[str, Any]) -> Any:
    """The student's state dict."""
    return ckpt["model"]


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
        sd: Any = checkpoint_weights(read_checkpoint(p))
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
        sd = checkpoint_weights(sd)
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
        plan = {n: plan_from_dict(d) for n, d in plans.items()}
        apply_plan(model, plan)
    except ApprenticeError as e:
        raise ApprenticeError(f"checkpoint {str(path)!r}: {e}") from None
    sd = ckpt.get(key)
    if not isinstance(sd, Mapping):
        raise ApprenticeError(f"checkpoint {str(path)!r} has no {key!r} weights")
    load_strict(model, sd, f"checkpoint {str(path)!r}")
    return model, plan


def run_files(run_dir: Path) -> list[Path]:
    """The files that mark ``run_dir`` as holding a run: ``summary.json`` and ``checkpoints/*.pt``."""
    found = [run_dir / SUMMARY_FILE] if (run_dir / SUMMARY_FILE).is_file() else []
    folder = run_dir / CHECKPOINT_DIR
    if folder.is_dir():
        found += sorted(p for p in folder.iterdir() if p.suffix == ".pt")
    return found


def clear_run(run_dir: Path) -> None:
    """Remove what an earlier run wrote (only our own files; the folder may hold other things)."""
    for name in (SUMMARY_FILE, METRICS_FILE, CONFIG_FILE):
        with contextlib.suppress(FileNotFoundError):
            (run_dir / name).unlink()
    folder = run_dir / CHECKPOINT_DIR
    if folder.is_dir():
        for p in folder.iterdir():
            if p.suffix in (".pt", ".tmp"):
                p.unlink()
    shutil.rmtree(run_dir / TENSORBOARD_DIR, ignore_errors=True)


def check_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> str | None:
    """Return the error message for starting in ``run_dir``, or None."""
    if run_dir.exists() and not run_dir.is_dir():
        return f"train.out {str(run_dir)!r} is a file, not a folder"
    files = run_files(run_dir)
    if files and not (resume or overwrite):
        what = f"a finished run ({SUMMARY_FILE})" if files[0].name == SUMMARY_FILE else f"checkpoints ({files[0].name})"
        return (f"run folder {str(run_dir)!r} already holds {what}; pass --resume (resume=True) to continue it "
                f"or --overwrite (overwrite=True) to start again, or choose another train.out")
    return None
