"""The one bridge from the config tree to plain objects: data, student, teacher, distiller, optimizer.

Only the command line, `apprentice.fit` and this module see a `Config`; every component below
takes plain typed arguments. ``build_*`` functions map config sections onto those arguments. Runs
read back live in `apprentice.run.runs`, the teacher read back in `apprentice.run.teacher`, the checks on
the files a command is given in `apprentice.run.file_checks`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from apprentice.config.checks import validate
from apprentice.config.schema import Config, QuantConfig
from apprentice.data import (
    DATASETS,
    DataSpec,
    Preprocess,
    TrainSet,
    eval_batches,
    eval_resize,
    resolve_spec,
    teacher_hash,
    train_batches,
)
from apprentice.distill import SCHEMES, Distiller, make_student
from apprentice.errors import ApprenticeError, lookup
from apprentice.losses import LOSSES, LossRecipe
from apprentice.models import check_outputs, count_parameters
from apprentice.quant import (
    LayerPlan,
    default_act_quantizer,
    default_per_channel,
    parse_layer_rules,
    parse_precision,
    quantized_layers,
)
from apprentice.run.file_checks import NOT_WEIGHTS, check_kind
from apprentice.run.teacher import build_from_config, load_teachers
from apprentice.train.checkpoint import load_state_dict_file
from apprentice.train.layout import to_memory_format
from apprentice.train.optim import LRSchedule, make_optimizer, param_groups
from apprentice.train.runtime import Runtime
from apprentice.weights import check_finite

__all__ = [
    "Training",
    "build_distiller",
    "build_from_config",  # its home is apprentice.run.teacher; benchmarks/speed.py reaches it here at any commit
    "build_optimizer",
    "build_student",
    "build_teacher",
    "build_training",
    "data_spec",
    "eval_data",
    "preprocess_from_config",
    "resolve_data",
    "resolve_quant",
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
                        augment=d.augment, tensor_cache=d.tensor_cache, erase=d.erase, workers=d.workers, prepare=prepare,
                        report=report)


def resolve_data(cfg: Config, report: Callable[[str], None] | None = None) -> tuple[Config, DataSpec | None]:
    """``cfg`` with the facts of a folder or npz data set filled in from its files (`data_spec`), and
    the spec they were read into: a run passes it on (`build_training`) rather than reading them again.

    Classes, channels, image size, mean and std (computed from the training images when not given)
    and the tensor-cache choice are written into ``cfg.data``, so the run records them and
    evaluation, export and ``apprentice predict`` reuse them; a folder to decode once is decoded
    here. Other data sets' facts are in their table row: ``cfg`` comes back unchanged, with no spec
    (None: `build_training` resolves it).
    """
    if not DATASETS[cfg.data.name].from_files:
        return cfg, None
    spec = data_spec(cfg, prepare=True, report=report)
    pre = spec.preprocess
    facts = {"classes": pre.classes, "mean": pre.mean, "std": pre.std, "channels": pre.channels,
             "image_size": pre.image_size}
    if spec.info.is_folder:
        facts["tensor_cache"] = spec.tensor_cache
    resolved = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **facts))
    validate(resolved)  # an image size read from the files meets the model's stride check here
    return resolved, spec


def resolve_quant(cfg: Config, spec: DataSpec | None = None) -> Config:
    """``cfg`` with the automatic quantizer choices made for its model, so the run records what it trains
    with and a resume compares that: ``quant.per_channel`` null becomes `default_per_channel`'s answer and
    ``quant.act_quantizer`` null `default_act_quantizer`'s (a built-in ResNet: per layer, and null, the
    paper's unsigned quantizer; any other model: per channel and "asym"). A run stored before these were
    automatic (per layer, unsigned) compares equal for the built-in ResNets.
    """
    if _resolved(cfg.quant):
        return cfg
    info = DATASETS[cfg.data.name]
    classes, channels = ((len(spec.preprocess.classes), spec.preprocess.channels) if spec is not None
                         else (info.num_classes, info.channels))
    model = build_from_config(cfg.model, num_classes=classes, in_channels=channels)
    return dataclasses.replace(cfg, quant=_automatic_quant(cfg.quant, model))


def _clip_asked(q: QuantConfig) -> bool:
    return q.learned_clip or q.act_clip != 1.0  # a clip set asks for the clip quantizer


def _resolved(q: QuantConfig) -> bool:
    return q.per_channel is not None and (q.act_quantizer is not None or _clip_asked(q))


def _automatic_quant(q: QuantConfig, model: nn.Module) -> QuantConfig:
    """``q`` with its null automatic choices made for the float ``model``."""
    per_channel = default_per_channel(model, q.quantizer) if q.per_channel is None else q.per_channel
    act = q.act_quantizer if q.act_quantizer is not None or _clip_asked(q) else default_act_quantizer(model, q.quantizer)
    return dataclasses.replace(q, per_channel=per_channel, act_quantizer=act)


def preprocess_from_config(cfg: Config, num_classes: int) -> Preprocess:
    """The preprocessing a run's config records (a folder's facts were written there by training);
    values left null come from the data set's table row. Touches no data file."""
    d, info = cfg.data, DATASETS.get(cfg.data.name)
    if info is None:
        raise ApprenticeError(f"the run's data set {cfg.data.name!r} is unknown to this version of apprentice")
    # other sets' sizes are the table's (old configs say 224 for all)
    size, channels = (d.image_size or info.image_size, d.channels or info.channels) if info.from_files else (
        info.image_size, info.channels)
    classes = d.classes or info.classes or tuple(str(i) for i in range(num_classes))
    p = Preprocess(channels, size, eval_resize(d.augmentation or info.augmentation, size) if size else 0,
                   tuple(d.mean or info.mean), tuple(d.std or info.std), tuple(classes))
    if not (p.channels and p.image_size and p.mean and p.std):
        raise ApprenticeError(f"the run's config does not record how its {cfg.data.name} images were prepared "
                              f"(trained before apprentice recorded it); set data.channels, data.image_size, "
                              f"data.mean and data.std in it")
    if len(p.classes) != num_classes:
        raise ApprenticeError(f"the run records {len(p.classes)} class names but the model predicts {num_classes}")
    return p


def eval_data(cfg: Config, split: str = "test", *, data_dir: str | None = None, batch_size: int | None = None,
                 device: str | torch.device = "cpu", rank: int = 0, world_size: int = 1,
                 spec: DataSpec | None = None) -> Iterable[tuple[Tensor, Tensor]]:
    """`batches.eval_batches` for ``cfg``'s data set, as `fit` evaluates it (``apprentice eval`` too).

    Args:
        cfg: the run's config (data set, holdout size, limit, data folder).
        split: "test", "holdout", "train" or "val" (an image folder's ``val/``; its "test" is ``test/``
            when it has one, else ``val/``).
        data_dir: overrides ``cfg.data.dir`` (when the spec is resolved here).
        batch_size: overrides ``cfg.data.eval_batch_size``.
        device: where the batches go.
        rank: this process's share is images ``rank, rank + world_size, ...``.
        world_size: number of processes sharing the split.
        spec: ``cfg``'s resolved data (the run's); None: `data_spec` of ``cfg`` and ``data_dir``.
    """
    data, spec = cfg.data, spec or data_spec(cfg, data_dir=data_dir)
    return eval_batches(spec.name, split, batch_size=batch_size or data.eval_batch_size, download=data.download,
                        holdout=data.holdout, limit=data.limit, workers=data.workers, device=device, rank=rank,
                        world_size=world_size, spec=spec)


def train_data(cfg: Config, rt: Runtime, *, teacher_hash: str | None = None, spec: DataSpec | None = None) -> TrainSet:
    """`batches.train_batches` for ``cfg``'s data set: this process's share of the global batches.

    With ``teacher_hash`` (the frozen teacher's `apprentice.data.teacher_hash`) the batches carry
    the logits of ``distill.teacher_cache``, which must have been made from that teacher and data.
    ``spec`` is ``cfg``'s resolved data (the run's; None: `data_spec` of ``cfg``).
    """
    data, cache = cfg.data, cfg.distill.teacher_cache if teacher_hash is not None else None
    if cache is not None:
        if Path(cache).is_dir():
            raise ApprenticeError(f"distill.teacher_cache {cache!r} is a folder; give the file apprentice "
                                  f"cache-teacher wrote")
        check_kind(cache, "distill.teacher_cache", ("packed", "onnx", "safetensors"),
                   "give the file apprentice cache-teacher wrote")
    try:
        spec = spec or data_spec(cfg)
        return train_batches(spec.name, batch_size=data.batch_size, seed=cfg.train.seed, download=data.download,
                             holdout=data.holdout, limit=data.limit, workers=data.workers, device=rt.device,
                             rank=rt.rank, world_size=rt.world_size, teacher_cache=cache, teacher_hash=teacher_hash,
                             spec=spec)
    except ApprenticeError as e:
        if cache is None:
            raise
        raise ApprenticeError(f"distill.teacher_cache: {e}") from None

# ---------------------------------------------------------------------------------------------
# What a training run trains with


@dataclass
class Training:
    """What `apprentice.run.loop.fit` trains with, built from the config by `build_training`.

    Attributes:
        data: the training batches and what the model needs to know of the data.
        spec: the run's resolved data set, what every batch of the run comes from.
        evals: evaluation batches by split ("test", and "holdout" when images are held out).
        student: the (quantized) student; ``teacher`` the scheme's teacher or None.
        distiller: the `Distiller` of the scheme; it alone says what trains.
        optimizer: over the parameters of what trains; ``scaler`` the fp16 GradScaler or None.
        schedule: the learning rate of each step.
        steps_per_epoch: optimizer steps an epoch (the run's length is ``schedule.total_steps``).
        parameters, quantized_layers: the student's parameter and quantized-layer counts.
    """

    data: TrainSet
    spec: DataSpec
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


def build_training(cfg: Config, rt: Runtime, spec: DataSpec | None = None) -> Training:
    """Data, student, teacher, distiller, optimizer and schedule of ``cfg``, on this process's device.

    ``spec`` is ``cfg``'s resolved data (`resolve_data`'s; None: `data_spec` of ``cfg``), resolved
    once for the run: training and evaluation batches all come from it.

    With ``distill.teacher_cache`` the training batches carry the teacher's cached logits, checked
    against this teacher's weights and this data (`apprentice.data.train_batches`); the teacher is
    loaded for that check and stays on the CPU, never run.
    """
    spec = spec or data_spec(cfg)
    data = train_data(cfg, rt, spec=spec)
    splits = ("test", "holdout") if cfg.data.holdout > 0 else ("test",)
    folder = spec.info.is_folder  # an image folder's val/ scores the run; test/ stays unseen
    evals = {s: eval_data(cfg, "val" if folder and s == "test" else s, device=rt.device, rank=rt.rank,
                          world_size=rt.world_size, spec=spec) for s in splits}
    student = build_student(cfg, num_classes=data.num_classes, in_channels=data.channels,
                            image_size=spec.preprocess.image_size)
    teacher = build_teacher(cfg, num_classes=data.num_classes, in_channels=data.channels)
    cached = cfg.distill.teacher_cache is not None
    if cached:
        data = train_data(cfg, rt, teacher_hash=teacher_hash(teacher), spec=spec)  # type: ignore[arg-type]
    for m in (student, None if cached else teacher):
        if m is not None:
            to_memory_format(m, rt.device, cfg.train.channels_last)
    distiller = build_distiller(cfg, student, teacher)
    steps_per_epoch = len(data.batches)
    total = cfg.train.epochs * steps_per_epoch
    o = cfg.optim
    schedule = LRSchedule(o.schedule, lr=o.lr, total_steps=total, warmup_steps=round(o.warmup_epochs * steps_per_epoch),
                          milestones=o.milestones, decay=o.lr_decay)
    return Training(data, spec, evals, student, teacher, distiller, build_optimizer(cfg, distiller),
                    torch.amp.GradScaler("cuda") if cfg.train.amp == "fp16" else None, schedule,
                    steps_per_epoch, count_parameters(student),
                    sum(isinstance(p, LayerPlan) for p in quantized_layers(student).values()))


def build_student(cfg: Config, *, num_classes: int, in_channels: int, image_size: int | None = None) -> nn.Module:
    """The float model of ``cfg.model`` made the student of the scheme: quantized as ``cfg.quant`` says,
    after loading ``distill.student_init`` first for a scheme that starts from trained weights (C).
    With ``image_size``, the float model is first checked to return logits of the data's classes
    (`apprentice.models.check_outputs`)."""
    q, kd = cfg.quant, cfg.distill
    student = build_from_config(cfg.model, num_classes=num_classes, in_channels=in_channels)
    if image_size is not None:
        check_outputs(student, channels=in_channels, image_size=image_size, num_classes=num_classes,
                      what=f"model {cfg.model.name!r}")
    scheme = lookup(SCHEMES, kd.scheme, "scheme")
    init = None
    if scheme.student_init == "pretrained":
        check_kind(kd.student_init, "distill.student_init", NOT_WEIGHTS,  # type: ignore[arg-type]
                   "scheme C starts from float weights: give a run folder, checkpoint or state-dict file")
        try:
            init = load_state_dict_file(kd.student_init)  # type: ignore[arg-type]
            check_finite(init, repr(kd.student_init))
        except ApprenticeError as e:
            raise ApprenticeError(f"distill.student_init: {e}") from None
    q = _automatic_quant(q, student)  # a run's config has them made already (`resolve_quant`)
    options = {"quantizer": q.quantizer, "clip": q.act_clip, "learned": q.learned_clip, "per_channel": q.per_channel,
               "act_quantizer": q.act_quantizer}
    weights, acts = parse_precision(q.precision, **options)
    layers = None if q.layers is None else parse_layer_rules(q.layers, **options)
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
        return load_teachers(kd.teacher, kd.teacher_model, weights=kd.teacher_weights,  # type: ignore[arg-type]
                             num_classes=num_classes, in_channels=in_channels)
    return None


def build_distiller(cfg: Config, student: nn.Module, teacher: nn.Module | None) -> Distiller:
    """The `Distiller` of ``cfg.distill``'s scheme and loss: ``distill.loss``'s `LOSSES` row, or the weights."""
    kd = cfg.distill
    row = LOSSES[kd.loss] if kd.loss is not None else LossRecipe(kd.beta, kd.gamma, kd.temperature)
    return Distiller(student, teacher, scheme=kd.scheme, alpha=kd.alpha, beta=row.beta, gamma=row.gamma,
                     temperature=row.temperature, teacher_grad_from_gamma=kd.teacher_grad_from_gamma, kd=row.kd,
                     gamma_schedule=row.gamma_schedule, check_finite=False)  # the loop checks (train.on_nonfinite)


def build_optimizer(cfg: Config, distiller: Distiller) -> torch.optim.Optimizer:
    """``cfg.optim``'s optimizer over the parameters of what the distiller trains."""
    o = cfg.optim
    groups = param_groups(distiller.trained_modules(), weight_decay=o.weight_decay,
                          decay_norm_and_bias=o.decay_norm_and_bias, quant_lr_scale=o.quant_lr_scale,
                          quant_domain=o.quant_domain)
    return make_optimizer(o.name, groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)
