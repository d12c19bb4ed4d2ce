"""Float ResNets: CIFAR-style depths 6n+2 (He et al. 2016) and ImageNet ResNet-18..152.

The ImageNet models use torchvision's architecture and parameter names (Bottleneck with the stride
on the 3x3 conv, "v1.5"), so torchvision state dicts load with ``strict=True``. Both families share
the module names the quantizer relies on: the first conv is ``conv1`` and the classifier is ``fc``.
Models are float only; ``apprentice.quant.prepare`` swaps layers for quantized ones afterwards.

Example:
    >>> model = build_model("resnet20", num_classes=10, in_channels=1)
    >>> count_parameters(model)
    269434
    >>> build_model(**model.arch).arch == model.arch
    True
"""

from __future__ import annotations

import importlib.metadata
import inspect
import math
import numbers
import re
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from apprentice.errors import ApprenticeError, lookup
from apprentice.quant.add import Add
from apprentice.stock_models import is_stock_name, stock_constructor

# Residual shortcuts of the CIFAR ResNets where the shape changes (He et al. 2016, section 4.2).
SHORTCUTS = {"A": "parameter-free (zero-padded identity)", "B": "1x1 projection"}


def _channels(base: int, width: float) -> int:
    # Round half up (not Python's banker's rounding) so e.g. 16 x 1.5 -> 24 and 5 x 0.5 -> 3.
    return max(1, int(base * width + 0.5))


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


def _projection(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    # Indices 0/1 give torchvision's `downsample.0` (conv) / `downsample.1` (BN) names.
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
    )


class ZeroPadShortcut(nn.Module):
    """Parameter-free shortcut (option A of He et al. 2016): subsample, then zero-pad channels.

    Args:
        stride: spatial step of the subsampling (``x[..., ::stride, ::stride]``).
        extra: number of zero channels added, split as evenly as possible before and after.
    """

    def __init__(self, stride: int, extra: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = extra

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        before = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, before, self.extra - before))


class BasicBlock(nn.Module):
    """Two 3x3 convs (the first carries the stride) plus the shortcut; ``planes`` channels out."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride
        self.add = Add()  # a module, so that a deployable graph (quant.deploy) can quantize it; no state

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(self.add(out, identity))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride, as torchvision), 1x1 expand to ``4 * planes``."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self.add = Add()

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(self.add(out, identity))


Block = type[BasicBlock] | type[Bottleneck]


def _stage(
    block: Block, in_ch: int, planes: int, blocks: int, stride: int, shortcut: str
) -> tuple[nn.Sequential, int]:
    """Return one stage of ``blocks`` blocks and its output channel count."""
    out_ch = planes * block.expansion
    downsample: nn.Module | None = None
    # Only the first block of a stage changes shape, so only it needs a shortcut module.
    if stride != 1 or in_ch != out_ch:
        if shortcut == "A":
            downsample = ZeroPadShortcut(stride, out_ch - in_ch)
        else:
            downsample = _projection(in_ch, out_ch, stride)
    layers = [block(in_ch, planes, stride, downsample)]
    layers += [block(out_ch, planes, 1, None) for _ in range(1, blocks)]
    return nn.Sequential(*layers), out_ch


def _init_weights(model: nn.Module, zero_init_residual: bool) -> None:
    # torchvision's init; Linear keeps PyTorch's default, as there.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        # Each residual branch starts at zero, so a block first passes its shortcut through
        # (Goyal et al. 2017); helps large-batch training.
        for m in model.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)
            elif isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)


def _check_args(num_classes: Any, in_channels: Any, width: Any, **flags: Any) -> None:
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ApprenticeError(f"{name} must be an integer >= 1, got {value!r}")
    if (
        isinstance(width, bool)
        or not isinstance(width, numbers.Real)
        or not math.isfinite(width)
        or width <= 0
    ):
        raise ApprenticeError(f"width must be a finite number > 0, got {width!r}")
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise ApprenticeError(f"{name} must be true or false, got {value!r}")


CIFAR_DEPTHS = (8, 14, 20, 32, 44, 56, 110)


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth 6n+2 (He et al. 2016, sec. 4.2): 3 stages of n BasicBlocks.

    Stem: 3x3 stride-1 conv to 16 channels, then stages of 16/32/64 channels (times ``width``),
    global average pooling and ``fc``. Works for any input size (32 px CIFAR, 28 px MNIST).

    Args:
        depth: 6n+2 (20, 56, 110, ...). Only depths in ``MODELS`` can be rebuilt by name from
            ``arch``; note 50 = 6*8+2 would be named like the ImageNet ``resnet50``.
        num_classes: classifier outputs.
        in_channels: input image channels (1 for Fashion-MNIST).
        width: channel multiplier (WRPN widening); each count is rounded, at least 1.
        shortcut: "A" = parameter-free subsample + zero-pad (the paper's CIFAR choice), "B" = 1x1
            conv + BN projection where the shape changes.
        zero_init_residual: start every block's last BN scale at 0.
    """

    #: `apprentice.quant.prepare`'s automatic choices follow the paper here: one weight scale per layer and
    #: unsigned activations (every quantized layer reads a ReLU's output).
    paper_quantization = True

    def __init__(
        self,
        depth: int,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        width: float = 1.0,
        shortcut: str = "A",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        # Only the tabled depths: arch["name"] must rebuild this model (6·8+2 = 50 would name the ImageNet one).
        if depth not in CIFAR_DEPTHS:
            raise ApprenticeError(f"CIFAR ResNet depth must be one of {list(CIFAR_DEPTHS)} (6n+2), got {depth!r}")
        _check_args(num_classes, in_channels, width, zero_init_residual=zero_init_residual)
        lookup(SHORTCUTS, shortcut, "shortcut")
        self.num_classes, self.in_channels = int(num_classes), int(in_channels)
        self.arch = {
            "name": f"resnet{depth}",
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "width": float(width),
            "shortcut": shortcut,
            "zero_init_residual": zero_init_residual,
        }
        n = (depth - 2) // 6
        ch = _channels(16, width)
        self.conv1 = _conv3x3(self.in_channels, ch)
        self.bn1 = nn.BatchNorm2d(ch)
        self.relu = nn.ReLU(inplace=True)
        self.layer1, ch = _stage(BasicBlock, ch, _channels(16, width), n, 1, shortcut)
        self.layer2, ch = _stage(BasicBlock, ch, _channels(32, width), n, 2, shortcut)
        self.layer3, ch = _stage(BasicBlock, ch, _channels(64, width), n, 2, shortcut)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(ch, self.num_classes)
        _init_weights(self, zero_init_residual)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# depth -> (block, blocks per stage), as in torchvision.
IMAGENET_LAYERS: dict[int, tuple[Block, tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class ResNet(nn.Module):
    """ImageNet ResNet with torchvision's architecture and parameter names.

    Args:
        depth: a key of ``IMAGENET_LAYERS`` (18, 34, 50, 101, 152).
        num_classes: classifier outputs.
        in_channels: input image channels.
        width: channel multiplier (WRPN widening) on every stage's base count (64..512, and the
            stem); Bottleneck outputs stay 4x the rounded base count.
        small_input: 3x3 stride-1 ``conv1`` and no max-pool (``maxpool`` becomes an Identity), for
            28/32 px images; parameter names are unchanged.
        zero_init_residual: start every block's last BN scale at 0 (as torchvision's flag).
    """

    #: `apprentice.quant.prepare`'s automatic choices follow the paper here: one weight scale per layer and
    #: unsigned activations (every quantized layer reads a ReLU's output).
    paper_quantization = True

    def __init__(
        self,
        depth: int,
        *,
        num_classes: int = 1000,
        in_channels: int = 3,
        width: float = 1.0,
        small_input: bool = False,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        block, blocks = lookup(IMAGENET_LAYERS, depth, "ImageNet ResNet depth")
        _check_args(
            num_classes, in_channels, width, small_input=small_input,
            zero_init_residual=zero_init_residual,
        )
        self.num_classes, self.in_channels = int(num_classes), int(in_channels)
        self.arch = {
            "name": f"resnet{depth}",
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "width": float(width),
            "small_input": small_input,
            "zero_init_residual": zero_init_residual,
        }
        ch = _channels(64, width)
        if small_input:
            self.conv1 = _conv3x3(self.in_channels, ch)
        else:
            self.conv1 = nn.Conv2d(
                self.in_channels, ch, kernel_size=7, stride=2, padding=3, bias=False
            )
        self.bn1 = nn.BatchNorm2d(ch)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = (
            nn.Identity() if small_input else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        )
        # Projection shortcuts ("B") as torchvision; the stem already has 64 channels.
        self.layer1, ch = _stage(block, ch, _channels(64, width), blocks[0], 1, "B")
        self.layer2, ch = _stage(block, ch, _channels(128, width), blocks[1], 2, "B")
        self.layer3, ch = _stage(block, ch, _channels(256, width), blocks[2], 2, "B")
        self.layer4, ch = _stage(block, ch, _channels(512, width), blocks[3], 2, "B")
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(ch, self.num_classes)
        _init_weights(self, zero_init_residual)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))



#: The architectures `build_model` knows by name: the built-in ResNets, then the user's own models
#: (`register_model`), then, on first use, models of installed packages (entry-point group below).
MODELS: dict[str, Callable[..., nn.Module]] = {
    **{f"resnet{d}": partial(CifarResNet, d) for d in CIFAR_DEPTHS},
    **{f"resnet{d}": partial(ResNet, d) for d in IMAGENET_LAYERS},
}
BUILTIN_MODELS = frozenset(MODELS)
#: A package makes its models buildable by name with ``[project.entry-points."apprentice.models"]``
#: ``mynet = "mypkg.models:MyNet"``; the entry point is loaded (its code run) only when that name is asked for.
ENTRY_POINT_GROUP = "apprentice.models"
#: Arguments every model receives from the data set; a model's own arguments go in ``model.args``.
DATA_ARGUMENTS = ("num_classes", "in_channels")
_HINT = ("; a model of your own: decorate its class with @apprentice.register_model(\"name\") and, on the "
         "command line, pass --import FILE.py (or MODULE) to every command; a stock network: timm:<model> or "
         "torchvision:<model>")


def register_model(name: str, *, replace: bool = False) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make a float ``nn.Module`` class (or factory) buildable by name, from Python and the CLI.

    The constructor must take ``num_classes`` and ``in_channels`` keyword arguments (the data set
    gives them); its other keyword arguments come from the recipe's ``model.args`` and are recorded
    with the run and the exported file, so ``build_model(**model.arch)`` rebuilds it wherever the
    same registration is present. The model must be float: ``prepare`` quantizes its Conv2d and
    Linear layers (grouped and depthwise convs included).

    Example:
        >>> @register_model("tiny_cnn", replace=True)
        ... class TinyCNN(nn.Module):
        ...     def __init__(self, num_classes: int = 10, in_channels: int = 1, channels: int = 8):
        ...         super().__init__()
        ...         self.conv = nn.Conv2d(in_channels, channels, 3, padding=1)
        ...         self.fc = nn.Linear(channels, num_classes)
        ...     def forward(self, x):
        ...         return self.fc(torch.relu(self.conv(x)).mean((2, 3)))
        >>> build_model("tiny_cnn", num_classes=3, in_channels=1, channels=4).arch
        {'name': 'tiny_cnn', 'num_classes': 3, 'in_channels': 1, 'channels': 4}

    Raises:
        ApprenticeError: a bad name, a name already taken (pass ``replace=True`` to rebind one of
            your own; built-in names are never replaced), or a constructor without the data arguments.
    """
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", name):
        raise ApprenticeError(f"register_model: a model name is letters, digits, _ . -; got {name!r}")

    def add(constructor: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in BUILTIN_MODELS or (name in MODELS and not replace and MODELS[name] is not constructor):
            raise ApprenticeError(f"register_model: model name {name!r} is taken" + (
                "" if name in BUILTIN_MODELS else " (pass replace=True to rebind it)"))
        missing = [a for a in DATA_ARGUMENTS if not _takes(constructor, a)]
        if missing:
            raise ApprenticeError(f"register_model({name!r}): the constructor must take {' and '.join(missing)} "
                                  f"keyword arguments (the data set gives them)")
        MODELS[name] = constructor
        return constructor

    return add


def _takes(constructor: Callable[..., Any], argument: str) -> bool:
    params = inspect.signature(constructor).parameters.values()
    return any(p.name == argument or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def model_names() -> list[str]:
    """Every name `build_model` accepts now: built-in, registered, and installed packages' entry points."""
    return sorted(set(MODELS) | set(_entry_points()))


def model_constructor(name: str) -> Callable[..., nn.Module]:
    """The constructor registered as ``name`` (loading an installed package's entry point on first use).

    Raises:
        ApprenticeError: unknown name (the message lists the known ones and how to add your own), or
            an entry point that fails to load.
    """
    if is_stock_name(name):
        return stock_constructor(name)
    if isinstance(name, str) and name not in MODELS and name in (eps := _entry_points()):
        try:
            constructor = eps[name].load()
        except Exception as e:  # noqa: BLE001 - any failure in the package's code is reported as one line
            raise ApprenticeError(f"model {name!r}: loading entry point {eps[name].value!r} failed: "
                                  f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        register_model(name)(constructor)
    if not isinstance(name, str) or name not in MODELS:
        raise ApprenticeError(f"unknown model {name!r}; choose from {model_names()}{_HINT}")
    return MODELS[name]


def takes_argument(name: str, argument: str) -> bool:
    """Whether model ``name``'s constructor takes ``argument`` (or any keyword argument)."""
    return _takes(model_constructor(name), argument)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a float model by name: a built-in ResNet or a model registered with `register_model`.

    Args:
        name: a name from `model_names` (resnet8..resnet110 CIFAR style, resnet18..resnet152
            ImageNet, and the user's registered models), or a stock network ``timm:<model>`` /
            ``torchvision:<model>`` (`apprentice.stock_models`; the package is an optional extra).
        **kwargs: the model's keyword arguments: ``num_classes``, ``in_channels``; for the ResNets
            ``width``, ``zero_init_residual``, and ``shortcut`` (CIFAR) or ``small_input`` (ImageNet);
            a registered model's own arguments (plain values: numbers, strings, booleans, null).

    Returns:
        The model, with an ``arch`` attribute (its name and arguments; set here when the constructor
        does not set it) such that ``build_model(**model.arch)`` builds the same architecture.

    Raises:
        ApprenticeError: unknown name, an argument the model does not take, a bad value, or a
            constructor that fails or returns something other than an ``nn.Module``.
    """
    constructor = model_constructor(name)
    allowed = list(inspect.signature(constructor).parameters)
    for key, value in kwargs.items():
        if not _takes(constructor, key):
            raise ApprenticeError(f"model {name!r} takes no argument {key!r}; allowed: {allowed}")
        if not (value is None or isinstance(value, (bool, int, float, str))):
            raise ApprenticeError(f"model {name!r}: argument {key}={value!r} must be a plain value "
                                  f"(number, string, true/false or null) so the run can record it")
    model = _construct(name, constructor, kwargs)
    if not isinstance(getattr(model, "arch", None), dict):
        model.arch = {"name": name, **kwargs}
    return model


def _construct(name: str, constructor: Callable[..., nn.Module], kwargs: dict[str, Any]) -> nn.Module:
    if name in BUILTIN_MODELS:
        return constructor(**kwargs)  # the built-ins raise ApprenticeError themselves
    try:
        model = constructor(**kwargs)
    except ApprenticeError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's constructor failing is reported as one line
        raise ApprenticeError(f"model {name!r} failed to build with {kwargs}: {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(model, nn.Module):
        raise ApprenticeError(f"model {name!r}: its constructor returned {type(model).__name__}, not an nn.Module")
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not) of ``model``; buffers are not counted."""
    return sum(p.numel() for p in model.parameters())


def check_outputs(model: nn.Module, *, channels: int, image_size: int, num_classes: int, what: str) -> None:
    """``model`` takes the data's ``channels``×``image_size``² images and returns logits [N, ``num_classes``].

    One zero image through it (eval mode, no gradient; its mode restored): a model that returns a
    tuple or a dict, sizes its classifier otherwise, or wants other inputs is named before a run
    folder is made or a step is taken (a wrong class count would train to 0 % and exit 0).

    Raises:
        ApprenticeError: naming ``what`` and how it does not fit.
    """
    x = torch.zeros(1, channels, image_size, image_size)
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except Exception as e:  # noqa: BLE001 - whatever the model raises on the data's images is one line naming it
        raise ApprenticeError(f"{what} cannot take the data's {channels}x{image_size}x{image_size} images: "
                              f"{type(e).__name__}: {' '.join(str(e).split())[:160]}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, Tensor):
        raise ApprenticeError(f"{what} returns a {type(out).__name__}, not a tensor of logits [N, {num_classes}]: "
                              f"make its forward return the logits alone")
    if tuple(out.shape) != (1, num_classes):
        raise ApprenticeError(f"{what} gives outputs of shape {tuple(out.shape)[1:]} but the data set has "
                              f"{num_classes} classes (size its classifier by the num_classes argument)")
