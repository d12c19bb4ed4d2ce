"""The configuration tree: frozen dataclasses that hold values only.

One schema serves YAML recipes, dotted command-line overrides and ``apprentice train --help``:
every field carries a one-line help text in its metadata, and loading fills the tree generically
from the type hints. Precedence is defaults < YAML file < overrides. Choices (model, data set,
scheme, quantizer, schedule, amp mode, ...) are names that `validate` looks up in the tables of the
modules that own them, imported lazily in one place (`_owners`): this module itself needs only
PyYAML. File existence (teacher, student_init, data directory) is not checked here; `fit` checks it
when it needs the files.

Example:
    >>> cfg = load_config(None, ["optim.lr=0.05", "quant.exclude=[conv1,fc]"])
    >>> cfg.optim.lr, cfg.quant.exclude
    (0.05, ('conv1', 'fc'))
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from apprentice.errors import ApprenticeError, lookup
from apprentice.typed_yaml import (
    Scalar,
    apply_override,
    build,
    field_types,
    parse_override,
    show,
    split_optional,
    to_plain,
    type_name,
    yaml_load,
)

__all__ = [
    "Config", "DataConfig", "DistillConfig", "ModelConfig", "OptimConfig", "QuantConfig",
    "TrainConfig", "config_from_dict", "config_to_dict", "diff_configs", "dump_yaml", "help_text",
    "load_config", "parse_override", "validate",
]


def _f(default: Any, help: str) -> Any:
    """A dataclass field holding an immutable value, with its help text."""
    return field(default=default, metadata={"help": help})



@dataclass(frozen=True)
class ModelConfig:
    name: str = _f("resnet20", "architecture: resnet8..110 (CIFAR-style), resnet18..152 (ImageNet-style), or a model of your own registered with @apprentice.register_model and loaded with --import")
    width: float = _f(1.0, "channel multiplier applied to every layer (a model of your own gets it only if it takes `width` or it is not 1)")
    shortcut: str | None = _f(None, "CIFAR depths only: 'A' parameter-free or 'B' 1x1 projection shortcuts; null = model default")
    small_input: bool | None = _f(None, "ImageNet depths only: 3x3 stride-1 stem without max-pool for 28/32 px images; null = model default")
    args: tuple[tuple[str, Scalar], ...] | None = _f(None, "more constructor arguments, recorded with the run, e.g. {hidden: 64, dropout: 0.1} (num_classes and in_channels come from the data)")


@dataclass(frozen=True)
class QuantConfig:
    precision: str = _f("32W/32A", "student precision in the paper's notation, e.g. 2W/32A (ternary), 4W/8A; 32W/32A = full precision")
    quantizer: str | None = _f(None, "weight quantizer, a quant.WEIGHT_QUANTIZERS key; null = ternary at 2 bits, uniform otherwise")
    per_channel: bool = _f(False, "one weight scale per output channel instead of one per layer")
    act_clip: float = _f(1.0, "clip c of the clipped ReLU [0, c] before activation quantization (initial value if learned)")
    learned_clip: bool = _f(False, "learn the activation clip per layer (PACT)")
    exclude: tuple[str, ...] | None = _f(None, "layer-name patterns kept in float; null = first conv and last linear (@first, @last)")
    layers: tuple[tuple[str, str], ...] | None = _f(None, "per-layer precision, first match wins: {pattern: precision}, e.g. {conv1: 8W/32A, 'layer4.*': 4W/8A, '*': 2W/8A}; unmatched layers take quant.precision; conv1/fc only when named exactly")
    deploy: str | None = _f(None, "train the graph an integer runtime runs: 'int8' quantizes each tensor once, conv outputs before residual adds and the adds (uint8), so the ONNX export runs as QLinearConv/QLinearAdd and equals the trained model; needs 8-bit activations; null = off")


@dataclass(frozen=True)
class DistillConfig:
    scheme: str = _f("baseline", "baseline (no teacher) | A (teacher trained jointly) | B (trained frozen teacher) | C (B + student starts from FP weights)")
    teacher: str | None = _f(None, "schemes B/C: teacher run folder or state-dict file (.pt/.pth/.safetensors)")
    teacher_model: ModelConfig | None = field(default=None, metadata={"help": "teacher architecture; needed for scheme A and for a plain state-dict teacher, else read from the teacher run"})
    student_init: str | None = _f(None, "scheme C: run folder or FP state-dict file of the student architecture to start from")
    alpha: float = _f(1.0, "weight of the teacher's cross-entropy with the labels (scheme A only)")
    beta: float = _f(0.5, "weight of the student's cross-entropy with the labels (baseline: the label term is weighted beta+gamma)")
    gamma: float = _f(0.5, "weight of the student's cross-entropy with the teacher's distribution")
    temperature: float = _f(1.0, "softmax temperature of the distillation term (scaled by temperature^2)")
    teacher_grad_from_gamma: bool = _f(False, "scheme A: let the distillation term's gradient reach the teacher too")
    teacher_cache: str | None = _f(None, "schemes B/C: file of the teacher's logits for every training view (apprentice cache-teacher), read instead of running the teacher")


@dataclass(frozen=True)
class DataConfig:
    name: str = _f("fashion_mnist", "data set, a data.DATASETS key; your own images: folder (train/<class>/*, val/<class>/*) or npz (train.npz, test.npz)")
    dir: str | None = _f(None, "folder holding the data files; null = the standard place (downloaded if allowed)")
    download: bool = _f(True, "download the data set when its files are missing (small sets only)")
    batch_size: int = _f(128, "training images per step")
    eval_batch_size: int = _f(1000, "images per evaluation batch")
    augment: bool = _f(True, "training augmentation on (data.augmentation) or off (every image as evaluated)")
    holdout: int = _f(0, "training images held out for tuning and evaluated as 'holdout'")
    limit: int | None = _f(None, "use only the first N training images (quick runs); null = all")
    workers: int = _f(4, "image-folder DataLoader worker processes (streaming, and decoding a folder once)")
    image_size: int | None = _f(None, "your own images and imagenet: side of the square images the model sees; null = the data set's (imagenet 224; folder: the first training image's shorter side; npz: the arrays', recorded)")
    channels: int | None = _f(None, "your own images and imagenet: 1 (grey) or 3 (RGB); null = the data set's (imagenet 3; folder: 1 if the first training image is grey, else 3; npz: the arrays', recorded)")
    mean: tuple[float, ...] | None = _f(None, "per-channel normalisation mean on the [0, 1] scale; null = the data set's (folder, npz: computed from the training images once and recorded in the run)")
    std: tuple[float, ...] | None = _f(None, "per-channel normalisation std on the [0, 1] scale; null = as data.mean")
    classes: tuple[str, ...] | None = _f(None, "folder, npz: class names in label order; null = the class folders of train/ in natural order (2 before 10), or train.npz's 'classes' (recorded in the run)")
    augmentation: str | None = _f(None, "training augmentation, a data.AUGMENTATIONS key: none | pad-crop-flip | random-resized-crop; null = the data set's (imagenet random-resized-crop, others pad-crop-flip)")
    pad: int | None = _f(None, "pad-crop-flip: pixels of zero padding; null = the data set's (Fashion-MNIST 2, CIFAR 4; folder, npz: image_size // 8)")
    flip: bool | None = _f(None, "random horizontal flips; null = the data set's (MNIST and synthetic no; others yes: set false for digits, text, ...)")
    tensor_cache: bool | None = _f(None, "image folders: decode every image once into a uint8 tensor file beside the data and train at tensor speed; null = when the training images fit in 2 GiB and the augmentation runs on tensors")


@dataclass(frozen=True)
class OptimConfig:
    name: str = _f("sgd", "optimizer: sgd | adamw")
    lr: float = _f(0.1, "peak learning rate")
    momentum: float = _f(0.9, "SGD momentum (adamw: beta1)")
    nesterov: bool = _f(True, "Nesterov momentum (sgd)")
    weight_decay: float = _f(1e-4, "weight decay (L2 for sgd, decoupled for adamw)")
    decay_norm_and_bias: bool = _f(False, "apply weight decay to BatchNorm parameters and biases too")
    schedule: str = _f("step", "learning-rate schedule: step | cosine | onecycle | constant")
    milestones: tuple[float, ...] = _f((0.5, 0.75), "step schedule: fractions of the run where lr is multiplied by lr_decay")
    lr_decay: float = _f(0.1, "step schedule: factor applied at each milestone")
    warmup_epochs: float = _f(0.0, "linear warm-up length in epochs (fractions allowed)")
    quant_lr_scale: float = _f(1.0, "learning-rate factor of the quantizer parameters (PACT clips, LSQ steps); never decayed")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _f(10, "training epochs")
    seed: int = _f(0, "random seed (initialisation, data order, augmentation)")
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    amp: str = _f("off", "mixed precision autocast: off | bf16 | fp16")
    channels_last: bool = _f(False, "use channels-last memory format (faster convolutions on recent GPUs)")
    compile: bool = _f(False, "torch.compile the student (and a teacher that runs): slower start, faster steps")
    out: str = _f("runs/run", "run folder (config, metrics, checkpoints, summary)")
    checkpoint_every: int = _f(0, "also checkpoint every N steps; 0 = only at epoch ends")
    log_every: int = _f(50, "steps between metrics lines")
    on_nonfinite: str = _f("stop", "what a NaN/inf loss does: stop (error) | skip (drop the step)")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "student architecture"})
    quant: QuantConfig = field(default_factory=QuantConfig, metadata={"help": "student quantization"})
    distill: DistillConfig = field(default_factory=DistillConfig, metadata={"help": "teacher, scheme and loss weights"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "data set and batches"})
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"help": "optimizer and learning-rate schedule"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "run length, device, outputs"})


# ---------------------------------------------------------------------------------------------
# Public API


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML recipe, apply dotted overrides and validate.

    Args:
        path: YAML file of values (``yaml.safe_load`` semantics, no tags); None = defaults only.
        overrides: ``section.key=value`` strings applied after the file, values parsed as YAML.

    Returns:
        The validated `Config`.

    Raises:
        ApprenticeError: unreadable file, bad YAML, unknown key, wrong type, bad value or an
            impossible combination; the message names the file/line or the dotted key.
    """
    tree: Any = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            override = "=" in str(path) and not Path(path).exists()  # `apprentice train optim.lr=0.1`: no recipe
            raise ApprenticeError(f"cannot read config file {str(path)!r}: {e.strerror or e}" + (
                "; the first argument is the YAML recipe, key=value overrides come after it" if override else "")) from None
        except UnicodeDecodeError:
            raise ApprenticeError(f"config file {str(path)!r} is not UTF-8 text (a checkpoint or other binary "
                                  f"file?); give a YAML recipe") from None
        tree = yaml_load(text, str(path))
        if tree is not None and not isinstance(tree, dict):
            raise ApprenticeError(f"{path}: expected a mapping of sections at the top, got {show(tree)}")
        if not tree or all(v is None or v == {} for v in tree.values()):
            # An unsaved or wrong file would otherwise train every default (resnet20, 10 epochs) silently.
            raise ApprenticeError(f"{path}: the recipe sets nothing (the file is empty, only comments or empty "
                                  f"sections); write the sections you mean, e.g. 'model: {{name: resnet20}}'")
        try:
            build(Config, tree, "")  # type errors here name the file, not an override
        except ApprenticeError as e:
            raise ApprenticeError(f"{path}: {e}") from None
    for text in overrides:
        apply_override(tree, text, Config)
    cfg = build(Config, tree, "")
    validate(cfg)
    return cfg


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain JSON/YAML-safe containers (tuples become lists)."""
    return to_plain(cfg)


def config_from_dict(d: Mapping[str, Any], *, check: bool = True) -> Config:
    """Rebuild a `Config` from `config_to_dict` output (or any partial mapping; defaults fill in).

    Args:
        d: nested mapping of sections.
        check: run `validate` (turn off to read an old run whose choices no longer exist).
    """
    cfg = build(Config, d, "")
    if check:
        validate(cfg)
    return cfg


def diff_configs(a: Config, b: Config, *, values: bool = True) -> list[str]:
    """Dotted keys whose values differ between two configs, in schema order.

    Args:
        a: old config.
        b: new config.
        values: entries read ``"optim.lr: 0.1 -> 0.05"``; False gives bare keys (``"optim.lr"``).
    """
    out: list[str] = []

    def walk(x: Any, y: Any, prefix: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in x:
                walk(x[k], y[k], f"{prefix}.{k}" if prefix else k)
        elif x != y:
            out.append(f"{prefix}: {show(x)} -> {show(y)}" if values else prefix)

    walk(config_to_dict(a), config_to_dict(b), "")
    return out


def help_text() -> str:
    """Every config key with its type, default and help (for ``apprentice train --help``).

    Example:
        >>> print(help_text().splitlines()[1])
          model.name: string = 'resnet20'
    """
    lines = []

    def walk(cls: type, default: Any, prefix: str) -> None:
        hints = field_types(cls)
        for f in dataclasses.fields(cls):
            key = f"{prefix}.{f.name}" if prefix else f.name
            inner, _ = split_optional(hints[f.name])
            value = getattr(default, f.name)
            if dataclasses.is_dataclass(inner) and not prefix:
                lines.append(f"{key}: {f.metadata['help']}")
            else:
                kind = type_name(hints[f.name]).replace("a list of", "list of").replace("true or false", "bool")
                kind = re.sub(r"^(a|an) ", "", kind)
                lines.append(f"  {key}: {kind} = {show(value)}")
                lines.append(f"      {f.metadata['help']}")
            if dataclasses.is_dataclass(inner):
                walk(inner, value if value is not None else inner(), key)

    walk(Config, Config(), "")
    return "\n".join(lines)


# Value ranges by dotted key: (low, high, low allowed?, high allowed?); high None = unbounded.
# The loss weights are not here: `losses.check_loss_weights` is their one check.
_POS, _NONNEG = (0, None, False, False), (0, None, True, False)
_RANGES: dict[str, tuple[float, float | None, bool, bool]] = {
    **dict.fromkeys(("model.width", "quant.act_clip", "data.batch_size", "data.eval_batch_size", "data.limit",
                     "data.image_size", "optim.lr", "optim.quant_lr_scale", "train.epochs", "train.log_every"), _POS),
    **dict.fromkeys(("data.holdout", "data.workers", "data.pad", "optim.weight_decay", "optim.warmup_epochs",
                     "train.seed", "train.checkpoint_every"), _NONNEG),
    "optim.momentum": (0, 1, True, False),
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
            "train.amp": ("amp mode", step.AMP_MODES),
            "train.on_nonfinite": ("non-finite policy", step.NONFINITE_POLICIES),
        },
        model_constructor=models.model_constructor, takes_argument=models.takes_argument, shortcuts=models.SHORTCUTS,
        builtin_models=models.BUILTIN_MODELS, data_arguments=models.DATA_ARGUMENTS, schemes=distill.SCHEMES,
        datasets=data.DATASETS, augmentations=data.AUGMENTATIONS,
        quantizers=quant.WEIGHT_QUANTIZERS, parse_precision=quant.parse_precision, deploy_modes=quant.DEPLOY_MODES,
        integer_act_bits=quant.INTEGER_ACT_BITS,
        parse_layer_rules=quant.parse_layer_rules,
        check_loss_weights=losses.check_loss_weights, check_device=runtime.check_device,
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
        _check(v is None or bool(v.strip()), key, "empty path; use null for none")


def _check_quant(q: QuantConfig, owners: SimpleNamespace) -> None:
    if q.quantizer is not None:
        _choice(owners.quantizers, q.quantizer, "weight quantizer", "quant.quantizer")
    try:
        _, acts = owners.parse_precision(q.precision, quantizer=q.quantizer, per_channel=q.per_channel,
                                         clip=q.act_clip, learned=q.learned_clip)
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
            owners.parse_layer_rules(q.layers, quantizer=q.quantizer, per_channel=q.per_channel, clip=q.act_clip,
                                     learned=q.learned_clip)
        except ApprenticeError as e:
            raise ApprenticeError(f"quant.layers: {e}") from None


def _check_distill(d: DistillConfig, owners: SimpleNamespace) -> None:
    """The scheme's own rule says which inputs it takes (`distill.Scheme.check_inputs`)."""
    scheme = owners.schemes[d.scheme]
    scheme.check_inputs(teacher=d.teacher is not None, teacher_model=d.teacher_model is not None,
                        student_init=d.student_init is not None, teacher_grad_from_gamma=d.teacher_grad_from_gamma,
                        teacher_cache=d.teacher_cache is not None)
    _check(d.beta + d.gamma > 0, "distill.beta",
           f"distill.beta and distill.gamma are both 0: scheme {scheme.name!r} would give the student no loss")


def _check_data(cfg: Config, owners: SimpleNamespace) -> None:
    dc = cfg.data
    info = owners.datasets[dc.name]
    _check_image_settings(dc, info, owners)
    if info.kind != "folder":
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
    own = {"folder": ("image_size", "channels", "classes", "tensor_cache"),
           "npz": ("image_size", "channels", "classes")}.get(info.kind, ())
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


def dump_yaml(cfg: Config) -> str:
    """The config as YAML text that `load_config` reads back to an equal config."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
