"""Quantization: quantizer math (pure functions), quantized modules, and the `prepare` module swap.

- `apprentice.quant.quantizers`: weight quantizers (TWN ternary, uniform, WRPN, DoReFa), activation
  fake-quantization (fixed or PACT-learned clip), the one straight-through estimator, and their
  settings (`WeightQuant`, `ActQuant`, `parse_precision`).
- `apprentice.quant.modules`: QConv2d/QLinear and `LayerPlan`.
- `apprentice.quant.prepare`: `prepare`/`apply_plan`/`to_float`, with include/exclude patterns.

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(64, 2))
    >>> list(prepare(net, "2W/8A"))
    ['2']
"""

from apprentice.quant.modules import LayerPlan, QConv2d, QLinear
from apprentice.quant.prepare import (
    DEFAULT_EXCLUDE,
    apply_plan,
    prepare,
    quantized_layers,
    replace_module,
    to_float,
)
from apprentice.quant.quantizers import (
    FLOAT_BITS,
    MAX_BITS,
    MIN_BITS,
    MIN_LEARNED_CLIP,
    WEIGHT_QUANTIZERS,
    ActQuant,
    WeightQuant,
    dorefa,
    effective_clip,
    fake_quant_activation,
    fake_quant_weight,
    format_precision,
    parse_precision,
    ste,
    ternary_twn,
    uniform_max,
    weight_codes,
    wrpn,
)

__all__ = [
    "DEFAULT_EXCLUDE", "FLOAT_BITS", "MAX_BITS", "MIN_BITS", "MIN_LEARNED_CLIP", "WEIGHT_QUANTIZERS",
    "ActQuant", "LayerPlan", "QConv2d", "QLinear", "WeightQuant", "apply_plan", "dorefa", "effective_clip",
    "fake_quant_activation", "fake_quant_weight", "format_precision", "parse_precision", "prepare",
    "quantized_layers", "replace_module", "ste", "ternary_twn", "to_float", "uniform_max", "weight_codes", "wrpn",
]
