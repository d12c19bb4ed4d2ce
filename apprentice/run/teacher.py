"""Models a `ModelConfig` names: a fresh one (`build_from_config`), or a trained teacher read back.

`load_teacher` takes the teacher of schemes B and C from a run folder, an apprentice checkpoint or
a plain state-dict file, and checks it against the data set (classes, channels) and against the
architecture the config names (`model_arguments`) before a student ever trains with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from apprentice.config.schema import ModelConfig
from apprentice.ensemble import Ensemble
from apprentice.errors import ApprenticeError
from apprentice.export import load_packed
from apprentice.models import build_model, takes_argument
from apprentice.quant import quantized_layers
from apprentice.run.file_checks import NOT_WEIGHTS, check_kind, file_kind
from apprentice.stock_models import is_stock_name
from apprentice.train.checkpoint import (
    as_state_dict,
    check_checkpoint,
    checkpoint_arch,
    find_checkpoint,
    is_checkpoint,
    load_state_dict_file,
    model_from_checkpoint,
    read_checkpoint,
)
from apprentice.weights import check_finite, load_strict, torch_load

__all__ = ["build_from_config", "load_teacher", "load_teachers", "model_arguments", "teacher_paths"]


def model_arguments(m: ModelConfig, *, num_classes: int, in_channels: int) -> dict[str, Any]:
    """The constructor arguments a `ModelConfig` means for a data set of ``num_classes`` and ``in_channels``.

    ``width`` goes to models that take it (the ResNets; a model of one's own only if it says so; a
    stock network only when set, as timm's constructors take any keyword);
    ``shortcut``/``small_input`` only when set; ``model.args`` as written.
    """
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_channels": in_channels, **dict(m.args or ())}
    if m.width != 1.0 or (takes_argument(m.name, "width") and not is_stock_name(m.name)):  # timm's take **kwargs
        kwargs["width"] = m.width
    for option, value in (("shortcut", m.shortcut), ("small_input", m.small_input)):
        if value is not None:
            kwargs[option] = value
    return kwargs


def build_from_config(m: ModelConfig, *, num_classes: int, in_channels: int) -> nn.Module:
    """``models.build_model`` from a `ModelConfig` plus the data set's class and channel counts."""
    return build_model(m.name, **model_arguments(m, num_classes=num_classes, in_channels=in_channels))


def load_teacher(path: str, model_cfg: ModelConfig | None, *, num_classes: int, in_channels: int) -> nn.Module:
    """The trained teacher of schemes B/C, in eval mode on the CPU.

    Args:
        path: a run folder or apprentice checkpoint (architecture read from it), the packed export
            of a full-precision run (rebuilt by name; a quantized student's export is refused), or a
            plain ``.pt``/``.pth``/``.safetensors`` state dict (architecture from ``model_cfg``).
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
    if file_kind(path) == "packed" and (packed := _full_precision_packed(path)) is not None:
        _check_arch(getattr(packed, "arch", None), path, model_cfg, num_classes=num_classes, in_channels=in_channels)
        return packed.eval()
    check_kind(path, "distill.teacher", NOT_WEIGHTS,
               "a teacher needs float weights: give its run folder, checkpoint or state-dict file")
    loaded: Any = None
    if p.is_dir():
        loaded = read_checkpoint(find_checkpoint(p))
    elif p.suffix != ".safetensors":
        loaded = torch_load(p, "teacher file")  # once: teacher files can be large
    if is_checkpoint(loaded):
        ckpt = check_checkpoint(loaded, p)
        _check_arch(checkpoint_arch(ckpt), path, model_cfg, num_classes=num_classes, in_channels=in_channels)
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



def _check_arch(arch: Any, path: str, model_cfg: ModelConfig | None, *, num_classes: int, in_channels: int) -> None:
    """A trained teacher's recorded architecture fits the data set and ``distill.teacher_model``."""
    if not isinstance(arch, Mapping):
        raise ApprenticeError(f"teacher {path!r} has no architecture ('arch' entry)")
    if arch.get("num_classes") != num_classes or arch.get("in_channels") != in_channels:
        raise ApprenticeError(
            f"teacher {path!r} was trained for {arch.get('num_classes')} classes and {arch.get('in_channels')} "
            f"input channels, but the data set has {num_classes} classes and {in_channels} channels")
    if model_cfg is not None:
        wanted = {"name": model_cfg.name, **model_arguments(model_cfg, num_classes=num_classes, in_channels=in_channels)}
        diff = [f"{k}={v!r} (run has {arch.get(k)!r})" for k, v in wanted.items() if arch.get(k) != v]
        if diff:
            raise ApprenticeError(f"distill.teacher_model does not match teacher run {path!r}: {', '.join(diff)}")


def _full_precision_packed(path: str) -> nn.Module | None:
    """A packed export whose every layer is float (a full-precision run's), rebuilt by name without running
    code from the file (safetensors; non-finite values refused); None for a quantized one, whose float
    weights are gone: that stays refused as a teacher (`check_kind`)."""
    model = load_packed(path)
    return None if quantized_layers(model) else model


def teacher_paths(teacher: str | tuple[str, ...] | None) -> dict[str, str]:
    """``distill.teacher`` as ``{how a message names it: path}``: one teacher, or each member of an ensemble."""
    if teacher is None:
        return {}
    if isinstance(teacher, str):
        return {"distill.teacher": teacher}
    return {f"distill.teacher[{i}]": path for i, path in enumerate(teacher)}


def load_teachers(teacher: str | tuple[str, ...], model_cfg: ModelConfig | None, *,
                  weights: tuple[float, ...] | None, num_classes: int, in_channels: int) -> nn.Module:
    """``distill.teacher``: one trained teacher (`load_teacher`), or an `Ensemble` of several.

    Every member is checked as a single teacher is (it exists, holds float weights, predicts the data
    set's classes from its channels; messages name ``distill.teacher[i]``), so members of different
    class counts or input channels never meet in one ensemble.
    """
    if isinstance(teacher, str):
        return load_teacher(teacher, model_cfg, num_classes=num_classes, in_channels=in_channels)
    if len(set(teacher)) != len(teacher):
        raise ApprenticeError(f"distill.teacher lists a teacher twice: {list(teacher)}; weight it with "
                              f"distill.teacher_weights instead")
    members = []
    for key, path in teacher_paths(teacher).items():
        try:
            members.append(load_teacher(path, model_cfg, num_classes=num_classes, in_channels=in_channels))
        except ApprenticeError as e:
            raise ApprenticeError(f"{key}: {e}") from None
    return Ensemble(members, weights).eval()
