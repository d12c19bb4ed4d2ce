"""Fixtures shared by several test files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


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
