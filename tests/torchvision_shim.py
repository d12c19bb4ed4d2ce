"""This machine's packaging, not a user's: the only torchvision wheel here is a CUDA build, whose compiled
operators do not load beside the CPU torch, so ``import torchvision`` (and timm, which imports it) fails
with "operator torchvision::nms does not exist". Defining the two schemas its Python code registers
fake kernels for lets it import; no test runs those detection operators. The library itself names the
problem in one line (`apprentice.stock_models`). Imported by conftest.py, and given to subprocesses of
the tests as ``--import tests/torchvision_shim.py``."""

from __future__ import annotations

import importlib.util

import torch

_LIBRARY: list[torch.library.Library] = []  # kept alive: the schemas live as long as the library object


def install() -> None:
    """Import torchvision if it is installed, defining its nms/qnms schemas first when its operators fail."""
    if importlib.util.find_spec("torchvision") is None:
        return
    try:
        import torchvision
    except RuntimeError as e:
        if "torchvision::nms" not in str(e):
            raise
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
        _LIBRARY.append(lib)
        import torchvision  # noqa: F401


install()
