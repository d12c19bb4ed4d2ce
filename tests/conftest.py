"""Fixtures shared by several test files."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor

# The tests mirror the packages (tests/quant/, tests/data/, ...); the helper modules beside this
# file (tiny_runs, format_writers, bad_input_cases) and the tests that lend helpers to others
# (config/test_config, data/test_teacher_cache, export/test_export) import by their plain names from any of them.
_TESTS = Path(__file__).resolve().parent
for _folder in (_TESTS, _TESTS / "cli", _TESTS / "config", _TESTS / "data", _TESTS / "export"):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

import torchvision_shim  # noqa: F401 - this machine's CUDA torchvision beside the CPU torch (see the module)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A two-class ImageNet-style folder: train/ (6 images a class) and val/ (3), 20x24 PNGs."""
    PIL = pytest.importorskip("PIL.Image")
    root, g = tmp_path / "inet", torch.Generator().manual_seed(0)
    for split, n in (("train", 6), ("val", 3)):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = torch.randint(0, 256, (20, 24, 3), generator=g, dtype=torch.uint8).numpy()
                PIL.fromarray(pixels).save(root / split / c / f"{i}.png")
    return root


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # Tiny tensors: on an idle 2-core box a second intra-op thread saves ~3 % of the suite; on a
    # busy one (other jobs, pytest -n) it makes the in-process tests ~3x slower. Subprocesses
    # (CLI, torchrun) keep their own settings.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _spoil_loss(monkeypatch: pytest.MonkeyPatch, spoil: Callable[[Tensor], Tensor]) -> Callable[..., None]:
    """``install(*steps)`` makes ``spoil`` replace the total loss of those 1-based steps of `fit`."""
    from apprentice import distill

    def install(*steps: int) -> None:
        original, calls = distill.apprentice_loss, [0]

        def patched(*args, **kwargs):
            losses = original(*args, **kwargs)
            calls[0] += 1
            if calls[0] in steps:
                losses["loss"] = spoil(losses["loss"])
            return losses

        monkeypatch.setattr(distill, "apprentice_loss", patched)

    return install


@pytest.fixture
def nan_at(monkeypatch):
    """Make the loss of the given (1-based) steps NaN."""
    return _spoil_loss(monkeypatch, lambda loss: loss * float("nan"))


@pytest.fixture
def nan_grad_at(monkeypatch):
    """Make the gradient (not the loss) of the given 1-based steps NaN: loss + sqrt(0 * loss)."""
    return _spoil_loss(monkeypatch, lambda loss: loss + (loss * 0).sqrt())  # value +0, gradient 0 * inf


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def user_models():
    """examples/my_models.py loaded as a user's file (registers ``tinyvgg`` and ``sepnet``); the model
    table is restored afterwards so other tests see the built-ins only."""
    import importlib.util

    from apprentice import models

    before = dict(models.MODELS)
    spec = importlib.util.spec_from_file_location("my_models", EXAMPLES / "my_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    models.MODELS.clear()
    models.MODELS.update(before)
