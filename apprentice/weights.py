"""Weights read safely and loaded strictly: the one loader behind checkpoints, teachers and inits.

`torch_load` is ``torch.load(..., weights_only=True)`` with one-line errors: a file that would need
arbitrary unpickling (a pickled model, a malicious payload) is refused with an `ApprenticeError`
naming it, and no code in it runs. `load_strict` is ``load_state_dict(strict=True)`` whose error
names the source and the first missing, unexpected and wrong-shape keys; `check_finite` refuses
weights holding NaN or inf.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from apprentice.errors import ApprenticeError

__all__ = ["check_finite", "load_strict", "standard_layout", "torch_load"]


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


def _describe(arch: Mapping[str, Any]) -> str:
    args = ", ".join(f"{k}={v}" for k, v in arch.items() if k != "name")
    return f"{arch.get('name')}({args})"


def load_strict(model: nn.Module, sd: Mapping[str, Tensor], source: str, *, into: str = "") -> None:
    """``load_state_dict(strict=True)`` with one error line naming the source and the first bad keys.

    The one strict loader: checkpoints, teachers and the scheme-C student init all come through here.

    Args:
        model: takes the weights.
        sd: the state dict.
        source: how the message names where ``sd`` came from (a file, ``"init_state_dict"``).
        into: how the message names ``model`` before its architecture (``"the student"``).

    Raises:
        ApprenticeError: "<source> does not fit <into> <arch>: missing ...; unexpected ...; shape
            mismatch (file vs model) ..." with the first three keys of each kind, or values that
            are not tensors.
    """
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
        raise ApprenticeError(f"{source} does not fit {into + ' ' if into else ''}{name}: {'; '.join(parts)}")
    model.load_state_dict(sd, strict=True)


def check_finite(sd: Mapping[str, Tensor], source: str, *,
                 why: str = "it cannot teach or initialise anything") -> None:
    """Raise naming the first tensors of ``sd`` that hold NaN or inf (a teacher or init that diverged).

    Args:
        sd: the tensors; those that are not floating point are skipped.
        source: how the message names where they came from.
        why: the end of the message: what the file cannot be used for, or what to do instead.
    """
    bad = [k for k, v in sd.items() if isinstance(v, Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
        raise ApprenticeError(f"{source} holds non-finite values (NaN or inf) in {', '.join(bad[:3])}{more}; {why}")


def standard_layout(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``sd`` with every tensor in the standard (contiguous) memory format, as checkpoints store them.

    A model trained channels-last holds 4-D weights in that layout; stored as they are, its
    weights would carry it to every reader (and safetensors refuses to write them). A channels-last
    model loads them back into its own layout.
    """
    return {k: v.contiguous() for k, v in sd.items()}
