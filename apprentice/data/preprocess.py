"""`Preprocess`: how an image file becomes a model's input, and what the model's outputs are called.

A data set's resolved facts (`apprentice.data.spec.DataSpec`) hold one; an export records it in
its metadata (`Preprocess.to_metadata`) so that ``apprentice predict`` prepares an image file as
the model's evaluation images were prepared (`Preprocess.image`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from apprentice.data.images import center_tensor, read_image
from apprentice.errors import ApprenticeError

__all__ = ["Preprocess"]


@dataclass(frozen=True)
class Preprocess:
    """How an image file becomes a model's input, and what its outputs are called.

    Attributes:
        channels: 1 (greyscale) or 3 (RGB).
        image_size: side of the square the model sees.
        resize: the shorter side is resized to this before the centre ``image_size`` crop.
        mean, std: per-channel normalisation on the [0, 1] scale.
        classes: class names in output order.
    """

    channels: int
    image_size: int
    resize: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]

    def to_metadata(self) -> dict[str, Any]:
        """``{"preprocess": {...}, "classes": [...]}``: what an export records (JSON values)."""
        return {"preprocess": {"channels": self.channels, "image_size": self.image_size, "resize": self.resize,
                               "mean": list(self.mean), "std": list(self.std)}, "classes": list(self.classes)}

    @classmethod
    def from_metadata(cls, preprocess: Any, classes: Any, where: str) -> Preprocess:
        """Read back `to_metadata` (from an export's metadata; checked, never trusted)."""
        try:
            p = cls(int(preprocess["channels"]), int(preprocess["image_size"]), int(preprocess["resize"]),
                    tuple(float(v) for v in preprocess["mean"]), tuple(float(v) for v in preprocess["std"]),
                    tuple(str(c) for c in classes))
        except (TypeError, KeyError, ValueError) as e:
            raise ApprenticeError(f"{where}: its recorded preprocessing is malformed ({type(e).__name__}: {e})") from None
        ok = p.channels in (1, 3) and p.image_size > 0 and p.resize >= p.image_size and p.classes
        ok = ok and len(p.mean) == len(p.std) == p.channels and all(math.isfinite(v) and v > 0 for v in p.std)
        if not ok:
            raise ApprenticeError(f"{where}: its recorded preprocessing is inconsistent: {preprocess}, {len(p.classes)} classes")
        return p

    def image(self, path: str | Path) -> Tensor:
        """Image file ``path`` as the model's uint8 input C×S×S (ApprenticeError naming an unreadable file)."""
        return center_tensor(read_image(path, self.channels), size=self.image_size, resize=self.resize)
