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

import inspect
import math
import numbers
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from apprentice.errors import ApprenticeError, lookup

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

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


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

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


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



MODELS: dict[str, Callable[..., nn.Module]] = {
    **{f"resnet{d}": partial(CifarResNet, d) for d in CIFAR_DEPTHS},
    **{f"resnet{d}": partial(ResNet, d) for d in IMAGENET_LAYERS},
}


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a float model from the ``MODELS`` table.

    Args:
        name: a key of ``MODELS`` (resnet8..resnet110 CIFAR style, resnet18..resnet152 ImageNet).
        **kwargs: the model's keyword arguments: ``num_classes``, ``in_channels``, ``width``,
            ``zero_init_residual``, and ``shortcut`` (CIFAR) or ``small_input`` (ImageNet).

    Returns:
        The model, with ``num_classes``, ``in_channels`` and ``arch`` attributes;
        ``build_model(**model.arch)`` builds the same architecture.

    Raises:
        ApprenticeError: unknown name, an argument the model does not take, or a bad value.
    """
    constructor = lookup(MODELS, name, "model")
    allowed = list(inspect.signature(constructor).parameters)
    for key in kwargs:
        if key not in allowed:
            raise ApprenticeError(f"model {name!r} takes no argument {key!r}; allowed: {allowed}")
    return constructor(**kwargs)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not) of ``model``; buffers are not counted."""
    return sum(p.numel() for p in model.parameters())
