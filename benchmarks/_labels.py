"""The accuracy grids' precision labels: "2W/8A" (the default quantizers), "lsq:2W/8A" (a weight quantizer
named), "pc:2W/32A" or "uniform+pc:4W/8A" (one weight scale per output channel), "4W/8A@asym" (an activation
quantizer named). One parser for the grid's plan (`accuracy.py`), its report and its goals."""

from __future__ import annotations

from typing import Any

from apprentice.errors import ApprenticeError
from apprentice.quant import parse_precision

PER_CHANNEL = "pc"  # the weight-quantizer marker of a label for one scale per output channel


def _weight_tokens(label: str) -> list[str]:
    prefix = label.rpartition(":")[0]
    return prefix.split("+") if prefix else []


def split_label(label: str) -> tuple[str | None, str]:
    """A label's (weight quantizer or None, precision): "uniform+pc:4W/8A@asym" gives ("uniform", "4W/8A")."""
    quantizer = next((t for t in _weight_tokens(label) if t != PER_CHANNEL), None)
    return quantizer, label.rpartition(":")[2].partition("@")[0]


def base_label(label: str) -> str:
    """A label without its variant options: "pc:4W/8A@asym" → "4W/8A", "lsq+pc:2W/2A" → "lsq:2W/2A"."""
    quantizer, precision = split_label(label)
    return f"{quantizer}:{precision}" if quantizer else precision


def per_channel(label: str) -> bool:
    """Whether a label asks for one weight scale per output channel ("pc:2W/32A": quant.per_channel)."""
    return PER_CHANNEL in _weight_tokens(label)


def act_quantizer(label: str) -> str | None:
    """The activation quantizer a label names after "@" ("4W/8A@asym": "asym"), else None (the default)."""
    return label.partition("@")[2] or None


def parse_label(label: str) -> tuple[Any, Any]:
    """A label's (weight, activation) quantizer settings, `apprentice.quant.parse_precision`'s."""
    quantizer, precision = split_label(label)
    if per_channel(label) and precision.upper().startswith("32W"):
        raise ApprenticeError(f"precision label {label!r}: per-channel scales ({PER_CHANNEL}:) need quantized weights, not 32W")
    return parse_precision(precision, quantizer=quantizer, per_channel=per_channel(label),
                           act_quantizer=act_quantizer(label))
