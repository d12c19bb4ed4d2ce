"""Two CNNs of a user's own, made buildable by name for apprentice.

Nothing here belongs to apprentice: this is the file an engineer writes for their own network. The
decorator `apprentice.register_model` gives each class a name; the command line reads this file only
when told to (``apprentice train --import examples/my_models.py examples/tinyvgg_b.yaml``), and a
recipe names the model (``model.name: tinyvgg``) and its arguments (``model.args: {channels: 32}``).

A registered model is a plain float ``nn.Module`` whose constructor takes ``num_classes`` and
``in_channels`` (the data set gives them) plus any arguments of its own with plain values. apprentice
quantizes its Conv2d and Linear layers (grouped and depthwise convs included); by default the first
conv and the last linear stay float, as in the paper.
"""

from __future__ import annotations

from torch import Tensor, nn

import apprentice


def _conv_bn_relu(in_ch: int, out_ch: int, *, stride: int = 1, groups: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


@apprentice.register_model("tinyvgg")
class TinyVGG(nn.Module):
    """VGG-style: two stages of two 3x3 conv-BN-ReLU and a 2x2 max-pool, then a two-layer classifier.

    Args:
        num_classes: classes of the data set.
        in_channels: image channels.
        channels: width of the first stage (the second has twice as many).
        hidden: width of the hidden classifier layer.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, channels: int = 32, hidden: int = 128) -> None:
        super().__init__()
        c = channels
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, c), _conv_bn_relu(c, c), nn.MaxPool2d(2),
            _conv_bn_relu(c, 2 * c), _conv_bn_relu(2 * c, 2 * c), nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * c, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)))


class _SeparableBlock(nn.Module):
    """MobileNet's depthwise-separable conv (3x3 depthwise, then 1x1 pointwise), with a residual add
    when the shape is kept."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.depthwise = _conv_bn_relu(in_ch, in_ch, stride=stride, groups=in_ch)
        self.pointwise = _conv_bn_relu(in_ch, out_ch, kernel=1)
        self.residual = stride == 1 and in_ch == out_ch
        # apprentice's Add rather than `x + y`: a float add all the same (no state), but one that a
        # deployable graph (quant.deploy: int8) can quantize, so the add and the convs before it run as
        # integer kernels in the ONNX export.
        self.add = apprentice.quant.Add()

    def forward(self, x: Tensor) -> Tensor:
        y = self.pointwise(self.depthwise(x))
        return self.add(x, y) if self.residual else y


@apprentice.register_model("sepnet")
class SeparableNet(nn.Module):
    """MobileNet-style: a 3x3 stem, then depthwise-separable blocks (strides 1, 2, 1, 2, 1), pooling, fc.

    Args:
        num_classes: classes of the data set.
        in_channels: image channels.
        channels: width of the stem (doubled at each stride-2 block).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, channels: int = 16) -> None:
        super().__init__()
        c = channels
        self.stem = _conv_bn_relu(in_channels, c)
        self.blocks = nn.Sequential(
            _SeparableBlock(c, c, 1), _SeparableBlock(c, 2 * c, 2), _SeparableBlock(2 * c, 2 * c, 1),
            _SeparableBlock(2 * c, 4 * c, 2), _SeparableBlock(4 * c, 4 * c, 1),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))
