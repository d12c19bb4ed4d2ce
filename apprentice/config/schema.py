"""The configuration tree's schema: frozen dataclasses that hold values only.

One schema serves YAML recipes, dotted command-line overrides and ``apprentice train --help``:
every field carries a one-line help text in its metadata and a type hint that loading fills the
tree from (`apprentice.config`). Defaults are the values written here; `apprentice.config.checks`
says which values and combinations are allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from apprentice.config.typed_yaml import Scalar

__all__ = ["Config", "DataConfig", "DistillConfig", "ModelConfig", "OptimConfig", "QuantConfig", "TrainConfig"]


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
    per_channel: bool | None = _f(None, "one weight scale per output channel (true) or per layer (false); null = per layer for the built-in ResNets (the paper's), per channel for any other model (a per-layer scale can zero whole channels of a modern network and make it diverge)")
    act_quantizer: str | None = _f(None, "activation quantizer, a quant.ACT_QUANTIZERS key: clip ([0, c], WRPN; PACT with learned_clip) | lsq (learned step, unsigned) | asym (learned step and a zero point from the first batch's range: signed inputs kept); null = the paper's for the built-in ResNets (clip, lsq beside LSQ weights), asym for any other model (clip when act_clip or learned_clip is set)")
    act_clip: float = _f(1.0, "clip c of the clipped ReLU [0, c] before activation quantization (initial value if learned)")
    learned_clip: bool = _f(False, "learn the activation clip per layer (PACT)")
    exclude: tuple[str, ...] | None = _f(None, "layer-name patterns kept in float; null = first conv and last linear (@first, @last)")
    layers: tuple[tuple[str, str], ...] | None = _f(None, "per-layer precision, first match wins: {pattern: precision}, e.g. {conv1: 8W/32A, 'layer4.*': 4W/8A, '*': 2W/8A}; unmatched layers take quant.precision; conv1/fc only when named exactly")
    deploy: str | None = _f(None, "train the graph an integer runtime runs: 'int8' quantizes each tensor once, conv outputs before residual adds and the adds (uint8), so the ONNX export runs as QLinearConv/QLinearAdd and equals the trained model; needs 8-bit activations; null = off")


@dataclass(frozen=True)
class DistillConfig:
    scheme: str = _f("baseline", "baseline (no teacher) | A (teacher trained jointly) | B (trained frozen teacher) | C (B + student starts from FP weights)")
    teacher: str | tuple[str, ...] | None = _f(None, "schemes B/C: teacher run folder or state-dict file (.pt/.pth/.safetensors); a list of them is an ensemble, its logits the (distill.teacher_weights) weighted mean of theirs")
    teacher_weights: tuple[float, ...] | None = _f(None, "ensemble teacher: each member's weight in the mean of the logits (normalised to sum 1); null = equal")
    teacher_model: ModelConfig | None = field(default=None, metadata={"help": "teacher architecture; needed for scheme A and for a plain state-dict teacher, else read from the teacher run"})
    student_init: str | None = _f(None, "scheme C: run folder or FP state-dict file of the student architecture to start from")
    alpha: float = _f(1.0, "weight of the teacher's cross-entropy with the labels (scheme A only)")
    beta: float = _f(0.5, "weight of the student's cross-entropy with the labels (baseline: the label term is weighted beta+gamma)")
    gamma: float = _f(0.5, "weight of the student's cross-entropy with the teacher's distribution")
    temperature: float = _f(1.0, "softmax temperature of the distillation term (scaled by temperature^2)")
    loss: str | None = _f(None, "a named distillation loss, a key of apprentice.losses.LOSSES (the recipe reference and docs/distillation.md list them): its beta, gamma, temperature, term and gamma schedule; null = distill.beta, gamma and temperature as given")
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
    erase: float = _f(0.0, "probability of random erasing (Zhong et al. 2020) per training image, after the augmentation; 0 = off. Tensors only. With distill.teacher_cache each (image, view) is erased the same way every time, as the cache's views were (apprentice cache-teacher ... data.erase=P): the cache must have been built with the same value")
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
    quant_domain: str = _f("linear", "how the quantizer parameters are updated: linear | log (the optimizer steps ln s, as TQT "
                           "does: relative updates, so a learned step never reaches zero; for networks whose steps "
                           "collapse, e.g. EfficientNet-B0's: benchmarks/README.md, Modern networks)")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _f(10, "training epochs")
    seed: int = _f(0, "random seed (initialisation, data order, augmentation)")
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    amp: str = _f("off", "mixed precision autocast: off | bf16 | fp16")
    channels_last: bool = _f(True, "channels-last memory format: faster convolutions on this project's CPUs (0.79x the FP step, 0.86x the 2W/8A step: benchmarks/results/speed_layout.md) and on recent GPUs; false = NCHW")
    compile: bool = _f(False, "torch.compile the student (and a teacher that runs): slower start, faster steps")
    keep_freed_memory: bool = _f(True, "glibc malloc keeps what a step frees for the next one (no page faults "
                                 "on fresh memory each step): 4W/8A step 1.10x the FP step instead of 1.23x "
                                 "(benchmarks/results/speed_layout.md); false = the system's defaults")
    out: str = _f("runs/run", "run folder (config, metrics, checkpoints, summary)")
    checkpoint_every: int = _f(0, "also checkpoint every N steps; 0 = only at epoch ends")
    log_every: int = _f(50, "steps between metrics lines")
    on_nonfinite: str = _f("stop", "what a NaN/inf loss does: stop (error) | skip (drop the step)")
    bn_reestimate: int = _f(0, "after the last epoch, recompute BatchNorm statistics from this many training "
                               "batches with the final weights (Nagel et al. 2022); 0 = off")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "student architecture"})
    quant: QuantConfig = field(default_factory=QuantConfig, metadata={"help": "student quantization"})
    distill: DistillConfig = field(default_factory=DistillConfig, metadata={"help": "teacher, scheme and loss weights"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "data set and batches"})
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"help": "optimizer and learning-rate schedule"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "run length, device, outputs"})
