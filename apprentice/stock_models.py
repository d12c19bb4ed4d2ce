"""Stock networks by name: ``timm:<model>`` and ``torchvision:<model>``, no file of one's own needed.

`apprentice.models.build_model` reads a name with a source prefix here. The data's ``num_classes``
and ``in_channels`` go to the model's own arguments: timm's ``num_classes``/``in_chans``; torchvision's
``num_classes``, and a first conv rebuilt for the data's channels when they are not 3 (torchvision's
constructors take no channel count; the layer is replaced as its docs show for fine-tuning). Models
are built untrained (``pretrained=False`` / ``weights=None``): nothing is downloaded. The name and
arguments are recorded in the run and the packed file like any model's, so eval, export, predict
and reload rebuild it by name wherever the same package is installed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

from torch import nn

from apprentice.errors import ApprenticeError, lookup

__all__ = ["STOCK_SOURCES", "is_stock_name", "stock_constructor"]


def _import(package: str, name: str) -> ModuleType:
    try:
        return importlib.import_module(package)
    except ModuleNotFoundError as e:
        if e.name not in (package, "torchvision"):
            raise
        raise ApprenticeError(f"model {name!r} needs {e.name}, an optional extra: pip install 'apprentice-kd[{package}]'"
                              ) from None
    except Exception as e:  # noqa: BLE001 - e.g. a torchvision built for another torch ("operator ... does not exist")
        import torch

        raise ApprenticeError(f"model {name!r}: {package} is installed but cannot be imported ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:120]}); install the torchvision built for torch "
                              f"{torch.__version__}") from None


def _timm(model: str, name: str) -> Callable[..., nn.Module]:
    timm = _import("timm", name)
    if not timm.is_model(model):
        raise ApprenticeError(f"unknown model {name!r}: timm has no model {model!r} (timm.list_models() lists them)")

    def build(num_classes: int = 1000, in_channels: int = 3, **kwargs: Any) -> nn.Module:
        return timm.create_model(model, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)

    return build


def _first_conv_for(net: nn.Module, in_channels: int) -> None:
    """Rebuild the first Conv2d of ``net`` to take ``in_channels`` (same shape otherwise, fresh weights)."""
    name, conv = next((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d))
    if conv.in_channels == in_channels:
        return
    if conv.groups != 1:
        raise ApprenticeError(f"the first conv {name!r} is grouped; it cannot be rebuilt for {in_channels} channels")
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                    dilation=conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode)
    parent, _, leaf = name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, leaf, new)


def _torchvision(model: str, name: str) -> Callable[..., nn.Module]:
    models = _import("torchvision", name).models
    if model not in models.list_models():
        raise ApprenticeError(f"unknown model {name!r}: torchvision has no model {model!r} "
                              f"(torchvision.models.list_models() lists them)")

    def build(num_classes: int = 1000, in_channels: int = 3, **kwargs: Any) -> nn.Module:
        net = models.get_model(model, weights=None, num_classes=num_classes, **kwargs)
        _first_conv_for(net, in_channels)
        return net

    return build


#: Source prefix -> f(model name in that package, full name) -> constructor(num_classes, in_channels, **args).
STOCK_SOURCES: dict[str, Callable[[str, str], Callable[..., nn.Module]]] = {"timm": _timm, "torchvision": _torchvision}


def is_stock_name(name: object) -> bool:
    """``name`` has the form ``<source>:<model>`` (a stock network, not a registered one)."""
    return isinstance(name, str) and ":" in name


def stock_constructor(name: str) -> Callable[..., nn.Module]:
    """The constructor of ``timm:<model>`` or ``torchvision:<model>``, its package imported now.

    Raises:
        ApprenticeError: an unknown source or model, or the package missing (names the extra) or
            failing to import.
    """
    source, _, model = name.partition(":")
    return lookup(STOCK_SOURCES, source, "model source")(model, name)
