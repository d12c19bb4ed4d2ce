"""Quantization: quantizer math (pure functions), quantized modules, and the `prepare` module swap.

- `apprentice.quant.quantizers`: weight quantizers (TWN ternary, uniform, WRPN, DoReFa, LSQ), activation
  fake-quantization (fixed or PACT-learned clip, LSQ step), and their settings (`WeightQuant`,
  `ActQuant`, `parse_precision`).
- `apprentice.quant.lsq`: LSQ's math (Esser et al., ICLR 2020): learned step sizes.
- `apprentice.quant.ste`: the one straight-through estimator.
- `apprentice.quant.modules`: QConv2d/QLinear and `LayerPlan`.
- `apprentice.quant.prepare`: `prepare`/`apply_plan`/`to_float`, with include/exclude patterns and
  per-layer precision rules.
- `apprentice.quant.add`: `Add`, the residual add a model uses, and `QAdd`, its 8-bit deployable form.
- `apprentice.quant.deploy`: deployable graphs (``prepare(deploy="int8")``): what the integer graph of
  the export quantizes, found by tracing the model; `integer_layers` says which layers run as integer kernels.

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(64, 2))
    >>> list(prepare(net, "2W/8A"))
    ['2']
"""

from apprentice.quant.add import (
    UINT8_MAX,
    Add,
    AddInput,
    AddPlan,
    QAdd,
    calibrate_uint8,
    uint8_fake_quant,
)
from apprentice.quant.deploy import (
    DEPLOY_MODES,
    INTEGER_ACT_BITS,
    deploy_plan,
    integer_layers,
    pools_read_by,
)
from apprentice.quant.lsq import (
    MIN_LEARNED_STEP,
    calibrate_zero_point,
    effective_step,
    lsq_activation,
    lsq_grad_scale,
    lsq_init_step,
    lsq_quantize,
    lsq_weight,
    zero_point_activation,
)
from apprentice.quant.modules import (
    QUANTIZER_PARAMETERS,
    QUANTIZER_STATE,
    LayerPlan,
    QConv2d,
    QLinear,
    is_quantizer_parameter,
)
from apprentice.quant.prepare import (
    DEFAULT_EXCLUDE,
    LayerRules,
    LayerSettings,
    Plan,
    apply_plan,
    default_act_quantizer,
    default_per_channel,
    paper_quantization,
    parse_layer_rules,
    plan_from_dict,
    prepare,
    quantized_layers,
    replace_module,
    to_float,
)
from apprentice.quant.quantizers import (
    ACT_QUANTIZERS,
    FLOAT_BITS,
    LEARNED_STEP,
    MAX_BITS,
    MIN_BITS,
    MIN_LEARNED_CLIP,
    WEIGHT_QUANTIZERS,
    ZERO_POINT,
    ActQuant,
    WeightQuant,
    dorefa,
    effective_clip,
    fake_quant_activation,
    fake_quant_weight,
    format_precision,
    parse_precision,
    precision_bits,
    ternary_twn,
    uniform_max,
    weight_codes,
    wrpn,
)
from apprentice.quant.ste import ste

__all__ = [
    "ACT_QUANTIZERS",
    "DEFAULT_EXCLUDE",
    "DEPLOY_MODES",
    "FLOAT_BITS",
    "INTEGER_ACT_BITS",
    "LEARNED_STEP",
    "MAX_BITS",
    "MIN_BITS",
    "MIN_LEARNED_CLIP",
    "MIN_LEARNED_STEP",
    "QUANTIZER_PARAMETERS",
    "QUANTIZER_STATE",
    "UINT8_MAX",
    "WEIGHT_QUANTIZERS",
    "ZERO_POINT",
    "ActQuant",
    "Add",
    "AddInput",
    "AddPlan",
    "LayerPlan",
    "LayerRules",
    "LayerSettings",
    "Plan",
    "QAdd",
    "QConv2d",
    "QLinear",
    "WeightQuant",
    "apply_plan",
    "calibrate_uint8",
    "calibrate_zero_point",
    "default_act_quantizer",
    "default_per_channel",
    "deploy_plan",
    "dorefa",
    "effective_clip",
    "effective_step",
    "fake_quant_activation",
    "fake_quant_weight",
    "format_precision",
    "integer_layers",
    "is_quantizer_parameter",
    "lsq_activation",
    "lsq_grad_scale",
    "lsq_init_step",
    "lsq_quantize",
    "lsq_weight",
    "paper_quantization",
    "parse_layer_rules",
    "parse_precision",
    "plan_from_dict",
    "pools_read_by",
    "precision_bits",
    "prepare",
    "quantized_layers",
    "replace_module",
    "ste",
    "ternary_twn",
    "to_float",
    "uint8_fake_quant",
    "uniform_max",
    "weight_codes",
    "wrpn",
    "zero_point_activation",
]
