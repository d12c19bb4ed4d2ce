"""`validate`: the values and combinations a configuration tree may hold.

Choices (model, data set, scheme, quantizer, schedule, amp mode, ...) are names looked up in the
tables of the modules that own them, imported lazily in one place (`_owners`): this module itself
needs no torch. File existence (teacher, student_init, data directory) is not checked here; `fit`
checks it when it needs the files.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

from apprentice.config.schema import (
    Config,
    DataConfig,
    DistillConfig,
    ModelConfig,
    OptimConfig,
    QuantConfig,
)
from apprentice.config.typed_yaml import show
from apprentice.errors import ApprenticeError, lookup

__all__ = ["validate"]


# Value ranges by dotted key: (low, high, low allowed?, high allowed?); high None = unbounded.
# The loss weights are not here: `losses.check_loss_weights` is their one check.
_POS, _NONNEG = (0, None, False, False), (0, None, True, False)
_RANGES: dict[str, tuple[float, float | None, bool, bool]] = {
    **dict.fromkeys(("model.width", "quant.act_clip", "data.batch_size", "data.eval_batch_size", "data.limit",
                     "data.image_size", "optim.lr", "optim.quant_lr_scale", "train.epochs", "train.log_every"), _POS),
    **dict.fromkeys(("data.holdout", "data.workers", "data.pad", "optim.weight_decay", "optim.warmup_epochs",
                     "train.seed", "train.checkpoint_every", "train.bn_reestimate"), _NONNEG),
    "optim.momentum": (0, 1, True, False),
    "data.erase": (0, 1, True, True),
    "optim.lr_decay": (0, 1, False, True),
}


def _owners() -> SimpleNamespace:
    """The choice tables and checks that `validate` uses, from the modules that own them.

    The one place config reaches into the library, and only when validating: importing torch is
    slow, and this module must import with PyYAML alone.
    """
    from apprentice import data, distill, losses, models, quant
    from apprentice.train import optim, runtime, step

    return SimpleNamespace(
        choices={  # dotted key -> (what the message calls it, the owner's table)
            "distill.scheme": ("scheme", distill.SCHEMES), "data.name": ("data set", data.DATASETS),
            "optim.name": ("optimizer", optim.OPTIMIZERS), "optim.schedule": ("schedule", optim.LR_SCHEDULES),
            "optim.quant_domain": ("quantizer parameter domain", optim.QUANT_DOMAINS),
            "train.amp": ("amp mode", step.AMP_MODES),
            "train.on_nonfinite": ("non-finite policy", step.NONFINITE_POLICIES),
        },
        model_constructor=models.model_constructor, takes_argument=models.takes_argument, shortcuts=models.SHORTCUTS,
        builtin_models=models.BUILTIN_MODELS, data_arguments=models.DATA_ARGUMENTS, schemes=distill.SCHEMES,
        datasets=data.DATASETS, augmentations=data.AUGMENTATIONS,
        quantizers=quant.WEIGHT_QUANTIZERS, act_quantizers=quant.ACT_QUANTIZERS, parse_precision=quant.parse_precision,
        deploy_modes=quant.DEPLOY_MODES,
        integer_act_bits=quant.INTEGER_ACT_BITS,
        parse_layer_rules=quant.parse_layer_rules,
        check_loss_weights=losses.check_loss_weights, check_device=runtime.check_device, losses=losses.LOSSES,
    )


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ApprenticeError(f"{key}: {message}")


def _check_range(key: str, value: float | None) -> None:
    lo, hi, lo_ok, hi_ok = _RANGES[key.replace("distill.teacher_model.", "model.")]
    if value is None:
        return
    ok = math.isfinite(value) and (value >= lo if lo_ok else value > lo)
    ok = ok and (hi is None or (value <= hi if hi_ok else value < hi))
    if hi is None:
        want = f"{'>=' if lo_ok else '>'} {lo}"
    else:
        want = f"in {'[' if lo_ok else '('}{lo}, {hi}{']' if hi_ok else ')'}"
    _check(ok, key, f"must be {want}, got {value}")


def _choice(table: Mapping[str, Any], value: str, what: str, key: str) -> None:
    try:
        lookup(table, value, what)
    except ApprenticeError as e:
        raise ApprenticeError(f"{key}: {e}") from None


def _takes(name: str, argument: str, owners: SimpleNamespace) -> bool:
    return owners.takes_argument(name, argument)


def _imagenet_style(name: str, owners: SimpleNamespace) -> bool:
    """ImageNet-style ResNets are the ones whose factory takes `small_input` (CIFAR ones take `shortcut`)."""
    return "small_input" in inspect.signature(owners.model_constructor(name)).parameters


def _total_stride(m: ModelConfig, owners: SimpleNamespace) -> int | None:
    """How many input pixels one pixel of the model's last stage covers along a side (None: not a built-in)."""
    if m.name not in owners.builtin_models:
        return None
    if not _imagenet_style(m.name, owners):
        return 4  # three stages, two of them stride 2
    return 8 if m.small_input else 32  # the 7x7/2 stem and max-pool add a factor 4


def _check_model(m: ModelConfig, key: str, owners: SimpleNamespace) -> None:
    try:
        owners.model_constructor(m.name)
    except ApprenticeError as e:
        raise ApprenticeError(f"{key}.name: {e}") from None
    _check_range(f"{key}.width", m.width)
    _check(m.width == 1.0 or _takes(m.name, "width", owners), f"{key}.width",
           f"model {m.name!r} takes no width argument; leave it at 1.0")
    for option, value in (("shortcut", m.shortcut), ("small_input", m.small_input)):
        what = {"shortcut": "CIFAR-style", "small_input": "ImageNet-style"}[option]
        _check(value is None or _takes(m.name, option, owners), f"{key}.{option}",
               f"only {what} ResNets take {option}; model {m.name!r} does not, set null")
    if m.shortcut is not None:
        _choice(owners.shortcuts, m.shortcut, "shortcut", f"{key}.shortcut")
    for name, _ in m.args or ():
        _check(name not in (*owners.data_arguments, "width", "shortcut", "small_input"), f"{key}.args",
               f"{name!r} is not set here: " + (f"use {key}.{name}" if name not in owners.data_arguments
                                                 else "the data set gives it"))
        _check(_takes(m.name, name, owners), f"{key}.args",
               f"model {m.name!r} takes no argument {name!r}; it takes "
               f"{list(inspect.signature(owners.model_constructor(m.name)).parameters)}")


def _check_values(cfg: Config, owners: SimpleNamespace) -> None:
    """Ranges (the loss weights' by their one check), names in the owners' tables, device, paths."""
    for key in _RANGES:
        if not key.startswith("model."):
            _check_range(key, _get(cfg, key))
    _check_model(cfg.model, "model", owners)
    if cfg.distill.teacher_model is not None:
        _check_model(cfg.distill.teacher_model, "distill.teacher_model", owners)
    d = cfg.distill
    owners.check_loss_weights(alpha=d.alpha, beta=d.beta, gamma=d.gamma, temperature=d.temperature,
                              prefix="distill.")
    for key, (what, table) in owners.choices.items():
        _choice(table, _get(cfg, key), what, key)
    owners.check_device(cfg.train.device, "train.device")
    for key in ("distill.teacher", "distill.student_init", "distill.teacher_cache", "data.dir", "train.out"):
        v = _get(cfg, key)
        for i, path in enumerate((v,) if v is None or isinstance(v, str) else v):
            _check(path is None or bool(path.strip()), key if isinstance(v, str) or v is None else f"{key}[{i}]",
                   "empty path; use null for none")


def _check_quant(q: QuantConfig, owners: SimpleNamespace) -> None:
    if q.quantizer is not None:
        _choice(owners.quantizers, q.quantizer, "weight quantizer", "quant.quantizer")
    if q.act_quantizer is not None:
        _choice(owners.act_quantizers, q.act_quantizer, "activation quantizer", "quant.act_quantizer")
    options = {"quantizer": q.quantizer, "per_channel": q.per_channel is True, "clip": q.act_clip,
               "learned": q.learned_clip, "act_quantizer": q.act_quantizer}
    try:
        _, acts = owners.parse_precision(q.precision, **options)
    except ApprenticeError as e:
        with_q = "" if q.quantizer is None else f" with quant.quantizer={q.quantizer!r}"
        raise ApprenticeError(f"quant.precision={q.precision!r}{with_q}: {e}") from None
    _check(not q.learned_clip or acts.enabled, "quant.learned_clip",
           f"needs quantized activations, but precision {q.precision!r} keeps them at 32 bits")
    if q.deploy is not None:
        _choice(owners.deploy_modes, q.deploy, "deploy mode", "quant.deploy")
        _check(acts.bits == owners.integer_act_bits, "quant.deploy",
               f"{q.deploy!r} runs uint8 activations: quant.precision needs {owners.integer_act_bits}-bit activations "
               f"(e.g. 2W/8A, 4W/8A), got {q.precision!r}")
    for i, pattern in enumerate(q.exclude or ()):
        _check(bool(pattern.strip()), f"quant.exclude[{i}]", "empty layer pattern")
    if q.layers is not None:  # which layers a pattern matches is checked against the model when it is built
        try:
            owners.parse_layer_rules(q.layers, **options)
        except ApprenticeError as e:
            raise ApprenticeError(f"quant.layers: {e}") from None


def _check_distill(d: DistillConfig, owners: SimpleNamespace) -> None:
    """The scheme's own rule says which inputs it takes (`distill.Scheme.check_inputs`)."""
    scheme = owners.schemes[d.scheme]
    scheme.check_inputs(teacher=d.teacher is not None, teacher_model=d.teacher_model is not None,
                        student_init=d.student_init is not None, teacher_grad_from_gamma=d.teacher_grad_from_gamma,
                        teacher_cache=d.teacher_cache is not None)
    _check_ensemble(d)
    if d.loss is not None:
        _choice(owners.losses, d.loss, "loss", "distill.loss")
        defaults = DistillConfig()
        for key in ("beta", "gamma", "temperature"):
            _check(getattr(d, key) == getattr(defaults, key), f"distill.{key}",
                   f"distill.loss={d.loss!r} sets it ({getattr(owners.losses[d.loss], key)}); leave distill.{key} at "
                   f"its default, or set distill.loss=null to give the weights yourself")
    _check(d.beta + d.gamma > 0, "distill.beta",
           f"distill.beta and distill.gamma are both 0: scheme {scheme.name!r} would give the student no loss")


def _check_ensemble(d: DistillConfig) -> None:
    """An ensemble is a list of teachers; its weights, if given, one positive finite number each."""
    members = () if d.teacher is None or isinstance(d.teacher, str) else d.teacher
    if d.teacher_weights is None:
        return
    _check(len(members) > 1, "distill.teacher_weights",
           "weights an ensemble's members: set distill.teacher to a list of two or more teachers")
    _check(len(d.teacher_weights) == len(members), "distill.teacher_weights",
           f"{len(d.teacher_weights)} weights for {len(members)} teachers")
    for i, w in enumerate(d.teacher_weights):
        _check(math.isfinite(w) and w > 0, f"distill.teacher_weights[{i}]", f"must be a finite number > 0, got {w}")


def _check_data(cfg: Config, owners: SimpleNamespace) -> None:
    dc = cfg.data
    info = owners.datasets[dc.name]
    _check_image_settings(dc, info, owners)
    if not info.is_folder:
        _check(not info.sizes[0] or dc.holdout < info.sizes[0], "data.holdout",
               f"holds out {dc.holdout} of only {info.sizes[0]} {dc.name} training images; nothing left to train on")
        return
    for key in ("holdout", "limit"):
        _check(getattr(dc, key) in (0, None), f"data.{key}", f"not supported for {dc.name}; set it to 0/null")
    size = dc.image_size or info.image_size
    for key, m in (("model", cfg.model), ("distill.teacher_model", cfg.distill.teacher_model)):
        if m is None or not size:  # a folder's image size is known once its first image is read
            continue
        stride = _total_stride(m, owners)
        _check(stride is None or size >= stride, "data.image_size",
               f"{size} px is smaller than the total stride of {key} {m.name} ({stride} px): its last "
               f"stage would see padding only; use at least {stride}"
               + (f" or {key}.small_input=true" if stride == 32 else ""))


def _check_image_settings(dc: DataConfig, info: Any, owners: SimpleNamespace) -> None:
    """The image settings: which data sets take them, and their values."""
    own = ("image_size", "channels", "classes") if info.from_files else ()
    own += ("tensor_cache",) if info.is_folder else ()
    for key in ("image_size", "channels", "classes", "tensor_cache"):
        _check(getattr(dc, key) is None or key in own, f"data.{key}",
               f"{dc.name} fixes it; only your own images (data.name=folder or npz) take it (set null)")
    _check(dc.channels in (None, 1, 3), "data.channels", f"must be 1 (grey) or 3 (RGB), got {dc.channels}")
    if dc.augmentation is not None:
        _choice(owners.augmentations, dc.augmentation, "augmentation", "data.augmentation")
    for key in ("mean", "std"):
        values = getattr(dc, key)
        if values is None:
            continue
        wanted = dc.channels or info.channels
        _check(not wanted or len(values) == wanted, f"data.{key}", f"needs {wanted} value(s), one per channel, got {show(values)}")
        _check(all(math.isfinite(v) for v in values) and (key == "mean" or all(v > 0 for v in values)),
               f"data.{key}", f"must be finite{' and > 0' if key == 'std' else ''}, got {show(values)}")
    if dc.classes is not None:
        _check(len(dc.classes) > 0 and len(set(dc.classes)) == len(dc.classes), "data.classes",
               f"must name each class once, got {show(dc.classes)}")


def _check_optim(o: OptimConfig, epochs: int) -> None:
    for i, m in enumerate(o.milestones):
        _check(0 < m < 1, f"optim.milestones[{i}]", f"must be a fraction of the run in (0, 1), got {m}")
    _check(list(o.milestones) == sorted(set(o.milestones)), "optim.milestones",
           f"must be strictly increasing, got {show(o.milestones)}")
    # torch's SGD refuses Nesterov without momentum; say so here rather than train something else.
    _check(not (o.name == "sgd" and o.nesterov and o.momentum == 0), "optim.nesterov",
           "Nesterov momentum needs optim.momentum > 0; set optim.nesterov=false or give a momentum")
    _check(o.warmup_epochs < epochs, "optim.warmup_epochs",
           f"must be shorter than train.epochs={epochs}, got {o.warmup_epochs}")


def validate(cfg: Config) -> None:
    """Check value ranges, choices against the owners' tables, and combinations of keys.

    Does not touch the file system: teacher, student_init and data paths are checked by `fit`.

    Raises:
        ApprenticeError: naming the first offending dotted key and what is allowed.
    """
    owners = _owners()
    _check_values(cfg, owners)
    _check_quant(cfg.quant, owners)
    _check_distill(cfg.distill, owners)
    _check_data(cfg, owners)
    _check_optim(cfg.optim, cfg.train.epochs)
