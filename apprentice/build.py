"""The one bridge from the config tree to plain objects: data, models, teacher, runs read back.

Only the command line, `apprentice.fit` and this module see a `Config`; every component below
takes plain typed arguments. ``build_*`` functions map config sections onto those arguments.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from apprentice.config import Config, ModelConfig, config_from_dict, validate
from apprentice.data import (
    DATASETS,
    DataSpec,
    TrainSet,
    eval_batches,
    resolve_spec,
    teacher_hash,
    train_batches,
)
from apprentice.data.teacher_cache import FORMAT as CACHE_FORMAT
from apprentice.distill import SCHEMES, Distiller, make_student
from apprentice.errors import ApprenticeError, lookup
from apprentice.export import MAP_KEY, model_from_packed, read_packed
from apprentice.models import build_model, count_parameters, takes_argument
from apprentice.quant import (
    LayerPlan,
    parse_layer_rules,
    parse_precision,
    quantized_layers,
)
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
from apprentice.train.optim import LRSchedule, make_optimizer, param_groups
from apprentice.train.runtime import Runtime
from apprentice.weights import check_finite, load_strict, torch_load

__all__ = [
    "FILE_KINDS",
    "LoadedModel",
    "LoadedRun",
    "Training",
    "build_distiller",
    "build_from_config",
    "build_optimizer",
    "build_student",
    "build_teacher",
    "build_training",
    "check_output_apart",
    "data_spec",
    "eval_data",
    "file_kind",
    "is_packed_export",
    "is_packed_file",
    "load_model_file",
    "load_run",
    "load_teacher",
    "resolve_data",
    "stored_config",
    "train_data",
]


def data_spec(cfg: Config, *, data_dir: str | None = None, prepare: bool = False,
              report: Callable[[str], None] | None = None) -> DataSpec:
    """The resolved facts of ``cfg``'s data set (`apprentice.data.resolve_spec` of the ``data.*`` settings).

    Args:
        cfg: a config; a run's stored config already holds a folder's computed facts.
        data_dir: overrides ``cfg.data.dir``.
        prepare: decode a folder's tensor cache now (so an unreadable image fails before training).
        report: called with a line when a folder is decoded.
    """
    d = cfg.data
    return resolve_spec(d.name, data_dir or d.dir, channels=d.channels, image_size=d.image_size, mean=d.mean,
                        std=d.std, classes=d.classes, augmentation=d.augmentation, pad=d.pad, flip=d.flip,
                        augment=d.augment, tensor_cache=d.tensor_cache, workers=d.workers, prepare=prepare,
                        report=report)


def resolve_data(cfg: Config, report: Callable[[str], None] | None = None) -> Config:
    """``cfg`` with the facts of a folder or npz data set filled in from its files (`data_spec`).

    Classes, channels, image size, mean and std (computed from the training images when not given)
    and the tensor-cache choice are written into ``cfg.data``, so the run records them and
    evaluation, export and ``apprentice predict`` reuse them; a folder to decode once is decoded
    here. Other data sets' facts are in their table row: ``cfg`` comes back unchanged.
    """
    if DATASETS[cfg.data.name].kind not in ("folder", "npz"):
        return cfg
    spec = data_spec(cfg, prepare=True, report=report)
    facts = {"classes": spec.classes, "mean": spec.mean, "std": spec.std, "channels": spec.channels,
             "image_size": spec.image_size}
    if spec.kind == "folder":
        facts["tensor_cache"] = spec.tensor_cache
    resolved = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **facts))
    validate(resolved)  # an image size read from the files meets the model's stride check here
    return resolved


def eval_data(cfg: Config, split: str = "test", *, data_dir: str | None = None, batch_size: int | None = None,
                 device: str | torch.device = "cpu", rank: int = 0, world_size: int = 1) -> Iterable[tuple[Tensor, Tensor]]:
    """`batches.eval_batches` for ``cfg``'s data set, as `fit` evaluates it (``apprentice eval`` too).

    Args:
        cfg: the run's config (data set, holdout size, limit, data folder).
        split: "test", "holdout", "train" or "val" (an image folder's ``val/``; its "test" is ``test/``
            when it has one, else ``val/``).
        data_dir: overrides ``cfg.data.dir``.
        batch_size: overrides ``cfg.data.eval_batch_size``.
        device: where the batches go.
        rank: this process's share is images ``rank, rank + world_size, ...``.
        world_size: number of processes sharing the split.
    """
    data = cfg.data
    return eval_batches(data.name, split, batch_size=batch_size or data.eval_batch_size, data_dir=data_dir or data.dir,
                        download=data.download, holdout=data.holdout, limit=data.limit, workers=data.workers,
                        device=device, rank=rank, world_size=world_size, spec=data_spec(cfg, data_dir=data_dir))


def train_data(cfg: Config, rt: Runtime, *, teacher_hash: str | None = None) -> TrainSet:
    """`batches.train_batches` for ``cfg``'s data set: this process's share of the global batches.

    With ``teacher_hash`` (the frozen teacher's `apprentice.data.teacher_hash`) the batches carry
    the logits of ``distill.teacher_cache``, which must have been made from that teacher and data.
    """
    data, cache = cfg.data, cfg.distill.teacher_cache if teacher_hash is not None else None
    if cache is not None:
        if Path(cache).is_dir():
            raise ApprenticeError(f"distill.teacher_cache {cache!r} is a folder; give the file apprentice "
                                  f"cache-teacher wrote")
        _check_kind(cache, "distill.teacher_cache", ("packed", "onnx", "safetensors"),
                    "give the file apprentice cache-teacher wrote")
    try:
        return train_batches(data.name, batch_size=data.batch_size, seed=cfg.train.seed, data_dir=data.dir,
                             download=data.download, holdout=data.holdout, limit=data.limit,
                             workers=data.workers, device=rt.device, rank=rt.rank, world_size=rt.world_size,
                             teacher_cache=cache, teacher_hash=teacher_hash, spec=data_spec(cfg))
    except ApprenticeError as e:
        if cache is None:
            raise
        raise ApprenticeError(f"distill.teacher_cache: {e}") from None


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
        cfg = config_from_dict(ckpt["config"], check=False)
    except ApprenticeError as e:
        raise ApprenticeError(f"checkpoint {str(file)!r} holds a config this version cannot read: {e}") from None
    return _legacy_image_size(cfg)


def _legacy_image_size(cfg: Config) -> Config:
    """Configs written before data.image_size could be null hold 224 for every data set; only folders
    ever used it, so for the others it reads as null (and a resumed run's config still matches)."""
    kind = DATASETS[cfg.data.name].kind if cfg.data.name in DATASETS else None
    if kind not in ("folder", None) and cfg.data.image_size == 224:
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
    if run_dir is not None and (run_dir / "summary.json").is_file():
        with contextlib.suppress(OSError, json.JSONDecodeError):
            summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    return LoadedRun(config, model, plan, summary, str(file))


def model_arguments(m: ModelConfig, *, num_classes: int, in_channels: int) -> dict[str, Any]:
    """The constructor arguments a `ModelConfig` means for a data set of ``num_classes`` and ``in_channels``.

    ``width`` goes to models that take it (the ResNets; a model of one's own only if it says so);
    ``shortcut``/``small_input`` only when set; ``model.args`` as written.
    """
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_channels": in_channels, **dict(m.args or ())}
    if m.width != 1.0 or takes_argument(m.name, "width"):
        kwargs["width"] = m.width
    for option, value in (("shortcut", m.shortcut), ("small_input", m.small_input)):
        if value is not None:
            kwargs[option] = value
    return kwargs


_DAMAGED = "its outputs would be NaN; the file is damaged or the run diverged: use another checkpoint"


def build_from_config(m: ModelConfig, *, num_classes: int, in_channels: int) -> nn.Module:
    """``models.build_model`` from a `ModelConfig` plus the data set's class and channel counts."""
    return build_model(m.name, **model_arguments(m, num_classes=num_classes, in_channels=in_channels))


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
    _check_kind(path, "distill.teacher", _WEIGHTS,
                "a teacher needs float weights: give its run folder, checkpoint or state-dict file")
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
            wanted = {"name": model_cfg.name,
                      **model_arguments(model_cfg, num_classes=num_classes, in_channels=in_channels)}
            diff = [f"{k}={v!r} (run has {arch.get(k)!r})" for k, v in wanted.items() if arch.get(k) != v]
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


# ---------------------------------------------------------------------------------------------
# Any model file: a run folder, a checkpoint or a packed file


def is_packed_file(path: Path) -> bool:
    """A packed model is a safetensors file: 8-byte header length, then a JSON header (``{``)."""
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _safetensors_metadata(path: Path) -> dict | None:
    """The ``__metadata__`` of a safetensors file's header ({} if none); None if ``path`` is not one."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size)) if 0 < size < 1 << 26 else None
    except (OSError, ValueError):
        return None
    if not isinstance(header, dict):
        return None
    meta = header.get("__metadata__")
    return meta if isinstance(meta, dict) else {}


def is_packed_export(path: Path) -> bool:
    """Whether ``path`` is a packed file written by apprentice (its safetensors header has our map)."""
    return MAP_KEY in (_safetensors_metadata(path) or {})


# Files that are not a model's float weights, by what an error calls them (`file_kind`).
FILE_KINDS = {
    "packed": "a packed export (apprentice export --format packed: quantized integer codes)",
    "onnx": "an ONNX export (apprentice export --format onnx)",
    "cache": "a teacher cache (apprentice cache-teacher: a teacher's stored logits)",
    "safetensors": "a safetensors file that is neither a teacher cache nor a packed export",
}


def file_kind(path: str | os.PathLike) -> str | None:
    """Which of `FILE_KINDS` the file ``path`` is: by its header (ONNX: by its ``.onnx`` name); else None.

    Example:
        >>> file_kind("student.safetensors")   # written by apprentice export --format packed
        'packed'
    """
    p = Path(path)
    if not p.is_file():
        return None
    meta = _safetensors_metadata(p)
    if meta is not None:
        return "packed" if MAP_KEY in meta else "cache" if meta.get("format") == CACHE_FORMAT else "safetensors"
    return "onnx" if p.suffix.lower() == ".onnx" else None


def _check_kind(path: str, key: str, refused: tuple[str, ...], need: str) -> None:
    """Refuse ``path`` (given as ``key``) when it is one of the ``refused`` kinds, naming what it is."""
    kind = file_kind(path)
    if kind not in refused:
        return
    source = None
    if kind == "packed":  # the map records what it was exported from: point there
        with contextlib.suppress(Exception):
            source = json.loads((_safetensors_metadata(Path(path)) or {})[MAP_KEY])["metadata"]["source"]
    where = f" (this one was exported from {source!r})" if isinstance(source, str) else ""
    raise ApprenticeError(f"{key + ' ' if key else ''}{path!r} is {FILE_KINDS[kind]}; {need}{where}")


_WEIGHTS = ("packed", "onnx", "cache")  # never a teacher's or an init's weights


def check_output_apart(out: str | os.PathLike, option: str, reads: Mapping[str, str | os.PathLike | None]) -> None:
    """Refuse an output that is, or is a folder holding, a file or folder the same command reads.

    A student trained with ``train.out`` set to its teacher's run folder would replace the teacher's
    checkpoints with its own (silently, with ``--overwrite``); an export or a cache written over the
    checkpoint it reads destroys its own source. Paths are compared once symbolic links and ``..``
    are resolved, so another spelling of the same place is caught too. Call it before anything is
    created or cleared: ``fit`` (train), ``apprentice export`` and ``apprentice cache-teacher`` do.

    Args:
        out: the folder or file the command writes (``train.out``, ``--out``).
        option: how the message names ``out``.
        reads: ``{how the message names it: path}`` of what the command reads; None: nothing.

    Raises:
        ApprenticeError: ``out`` is one of ``reads``, or a folder holding one.
    """
    target = Path(out).resolve()
    for name, path in reads.items():
        if path is None:
            continue
        source = Path(path).resolve()
        if source != target and target not in source.parents:
            continue
        same = os.path.normpath(out) == os.path.normpath(path)
        how = "holds" if source != target else "is" if same else "is (once links and '..' are resolved)"
        raise ApprenticeError(f"{option} {str(out)!r} {how} {name} {str(path)!r}; a command never writes where "
                              f"it reads (it could replace what it is made from): choose another {option}")


@dataclass(frozen=True)
class LoadedModel:
    """A model with what we know about it.

    Attributes:
        path: where it came from.
        model: the eval-mode model (a packed file's has dequantized weights).
        config: its training `Config`, or None for a packed file saved without one.
        summary: the run's summary.json contents, if any.
        kind: "run", "checkpoint" or "packed".
        qmap: a packed file's quantization map (None otherwise).
    """

    path: Path
    model: Any
    config: Any
    summary: dict | None
    kind: str
    qmap: dict | None = None


def load_model_file(path_text: str) -> LoadedModel:
    """Load a run folder, a checkpoint file or a packed file (decided by content, not name)."""
    path = Path(path_text)
    if not path.exists():
        raise ApprenticeError(f"{path_text!r} does not exist (expected a run folder, checkpoint or packed file)")
    _check_kind(path_text, "", ("onnx", "cache"), "give a run folder, checkpoint or packed file")
    if is_packed_file(path):
        tensors, qmap = read_packed(path)
        model = model_from_packed(tensors, qmap)
        meta = qmap.get("metadata")
        meta = meta if isinstance(meta, dict) else {}  # the caller's extras: optional, never trusted
        config = None
        if isinstance(meta.get("config"), dict):
            try:
                config = config_from_dict(meta["config"], check=False)
            except ApprenticeError as e:
                raise ApprenticeError(f"{path_text!r}: the training config stored in the packed file is "
                                      f"unreadable: {e}") from None
        summary = meta.get("summary") if isinstance(meta.get("summary"), dict) else None
        return LoadedModel(path, model, config, summary, "packed", qmap)
    run = load_run(str(path))
    return LoadedModel(path, run.model, run.config, run.summary, "run" if path.is_dir() else "checkpoint")


# ---------------------------------------------------------------------------------------------
# What a training run trains with


@dataclass
class Training:
    """What `apprentice.loop.fit` trains with, built from the config by `build_training`.

    Attributes:
        data: the training batches and what the model needs to know of the data.
        evals: evaluation batches by split ("test", and "holdout" when images are held out).
        student: the (quantized) student; ``teacher`` the scheme's teacher or None.
        distiller: the `Distiller` of the scheme; it alone says what trains.
        optimizer: over the parameters of what trains; ``scaler`` the fp16 GradScaler or None.
        schedule: the learning rate of each step.
        steps_per_epoch: optimizer steps an epoch (the run's length is ``schedule.total_steps``).
        parameters, quantized_layers: the student's parameter and quantized-layer counts.
    """

    data: TrainSet
    evals: dict[str, Iterable[tuple[Tensor, Tensor]]]
    student: nn.Module
    teacher: nn.Module | None
    distiller: Distiller
    optimizer: torch.optim.Optimizer
    scaler: Any
    schedule: LRSchedule
    steps_per_epoch: int
    parameters: int
    quantized_layers: int


def build_training(cfg: Config, rt: Runtime) -> Training:
    """Data, student, teacher, distiller, optimizer and schedule of ``cfg``, on this process's device.

    With ``distill.teacher_cache`` the training batches carry the teacher's cached logits, checked
    against this teacher's weights and this data (`apprentice.data.train_batches`); the teacher is
    loaded for that check and stays on the CPU, never run.
    """
    data = train_data(cfg, rt)
    splits = ("test", "holdout") if cfg.data.holdout > 0 else ("test",)
    folder = DATASETS[cfg.data.name].kind == "folder"  # an image folder's val/ scores the run; test/ stays unseen
    evals = {s: eval_data(cfg, "val" if folder and s == "test" else s, device=rt.device, rank=rt.rank,
                          world_size=rt.world_size) for s in splits}
    student = build_student(cfg, num_classes=data.num_classes, in_channels=data.channels)
    teacher = build_teacher(cfg, num_classes=data.num_classes, in_channels=data.channels)
    cached = cfg.distill.teacher_cache is not None
    if cached:
        data = train_data(cfg, rt, teacher_hash=teacher_hash(teacher))  # type: ignore[arg-type]
    memory = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    for m in (student, None if cached else teacher):
        if m is not None:
            m.to(rt.device, memory_format=memory)
    distiller = build_distiller(cfg, student, teacher)
    steps_per_epoch = len(data.batches)
    total = cfg.train.epochs * steps_per_epoch
    o = cfg.optim
    schedule = LRSchedule(o.schedule, lr=o.lr, total_steps=total, warmup_steps=round(o.warmup_epochs * steps_per_epoch),
                          milestones=o.milestones, decay=o.lr_decay)
    return Training(data, evals, student, teacher, distiller, build_optimizer(cfg, distiller),
                    torch.amp.GradScaler("cuda") if cfg.train.amp == "fp16" else None, schedule,
                    steps_per_epoch, count_parameters(student),
                    sum(isinstance(p, LayerPlan) for p in quantized_layers(student).values()))


def build_student(cfg: Config, *, num_classes: int, in_channels: int) -> nn.Module:
    """The float model of ``cfg.model`` made the student of the scheme: quantized as ``cfg.quant`` says,
    after loading ``distill.student_init`` first for a scheme that starts from trained weights (C)."""
    q, kd = cfg.quant, cfg.distill
    student = build_from_config(cfg.model, num_classes=num_classes, in_channels=in_channels)
    scheme = lookup(SCHEMES, kd.scheme, "scheme")
    init = None
    if scheme.student_init == "pretrained":
        _check_kind(kd.student_init, "distill.student_init", _WEIGHTS,  # type: ignore[arg-type]
                    "scheme C starts from float weights: give a run folder, checkpoint or state-dict file")
        try:
            init = load_state_dict_file(kd.student_init)  # type: ignore[arg-type]
            check_finite(init, repr(kd.student_init))
        except ApprenticeError as e:
            raise ApprenticeError(f"distill.student_init: {e}") from None
    weights, acts = parse_precision(q.precision, quantizer=q.quantizer, per_channel=q.per_channel,
                                    clip=q.act_clip, learned=q.learned_clip)
    layers = None if q.layers is None else parse_layer_rules(q.layers, quantizer=q.quantizer, per_channel=q.per_channel,
                                                            clip=q.act_clip, learned=q.learned_clip)
    try:
        make_student(student, scheme=scheme, weights=weights, activations=acts, init_state_dict=init,
                     exclude=list(q.exclude) if q.exclude is not None else None, layers=layers, deploy=q.deploy)
    except ApprenticeError as e:
        if init is None or "init_state_dict" not in str(e):
            raise
        raise ApprenticeError(f"distill.student_init {kd.student_init!r}: {e}") from None
    return student


def build_teacher(cfg: Config, *, num_classes: int, in_channels: int) -> nn.Module | None:
    """Scheme A: a fresh ``distill.teacher_model``; B and C: the trained ``distill.teacher``; else None."""
    kd = cfg.distill
    scheme = lookup(SCHEMES, kd.scheme, "scheme")
    if scheme.teacher == "joint":
        return build_from_config(kd.teacher_model, num_classes=num_classes, in_channels=in_channels)  # type: ignore[arg-type]
    if scheme.frozen_teacher:
        return load_teacher(kd.teacher, kd.teacher_model, num_classes=num_classes, in_channels=in_channels)  # type: ignore[arg-type]
    return None


def build_distiller(cfg: Config, student: nn.Module, teacher: nn.Module | None) -> Distiller:
    """The `Distiller` of ``cfg.distill``'s scheme and loss weights."""
    kd = cfg.distill
    return Distiller(student, teacher, scheme=kd.scheme, alpha=kd.alpha, beta=kd.beta, gamma=kd.gamma,
                     temperature=kd.temperature, teacher_grad_from_gamma=kd.teacher_grad_from_gamma)


def build_optimizer(cfg: Config, distiller: Distiller) -> torch.optim.Optimizer:
    """``cfg.optim``'s optimizer over the parameters of what the distiller trains."""
    o = cfg.optim
    groups = param_groups(distiller.trained_modules(), weight_decay=o.weight_decay,
                          decay_norm_and_bias=o.decay_norm_and_bias, quant_lr_scale=o.quant_lr_scale)
    return make_optimizer(o.name, groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)
