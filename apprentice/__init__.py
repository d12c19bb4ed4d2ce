"""apprentice: low-precision CNNs trained with knowledge distillation (Mishra & Marr, ICLR 2018).

The public API in one place (`fit`, `load_config`, `load_run`, `evaluate` are what the command line uses)::

    import apprentice as ap
    student = ap.build_model("resnet20", num_classes=10, in_channels=1)
    plan = ap.prepare(student, "2W/8A")                   # ternary weights, 8-bit activations
    distiller = ap.Distiller(student, teacher, scheme="B")
    logits, losses = distiller(images, labels)            # losses["loss"].backward()

A model of your own is any float ``nn.Module``: `prepare` quantizes it, `save_packed` ships it, and
``@register_model("mynet")`` on its class makes it buildable by name (recipes, the command line with
``--import``, and `load_packed` without a ``model=``).
"""

from apprentice.config import load_config
from apprentice.config_schema import Config
from apprentice.distill import SCHEMES, Distiller, Scheme, make_student
from apprentice.errors import ApprenticeError
from apprentice.export import load_packed, save_packed
from apprentice.loop import fit
from apprentice.losses import apprentice_loss, cross_entropy, soft_cross_entropy
from apprentice.models import (
    MODELS,
    build_model,
    count_parameters,
    model_names,
    register_model,
)
from apprentice.quant import (
    DEFAULT_EXCLUDE,
    WEIGHT_QUANTIZERS,
    ActQuant,
    LayerPlan,
    QConv2d,
    QLinear,
    WeightQuant,
    apply_plan,
    fake_quant_activation,
    fake_quant_weight,
    parse_precision,
    prepare,
    quantized_layers,
    to_float,
    weight_codes,
)
from apprentice.runs import LoadedRun, load_run
from apprentice.train import evaluate, reestimate_batchnorm
from apprentice.version import __version__

__all__ = [
    "DEFAULT_EXCLUDE",
    "MODELS",
    "SCHEMES",
    "WEIGHT_QUANTIZERS",
    "ActQuant",
    "ApprenticeError",
    "Config",
    "Distiller",
    "LayerPlan",
    "LoadedRun",
    "QConv2d",
    "QLinear",
    "Scheme",
    "WeightQuant",
    "__version__",
    "apply_plan",
    "apprentice_loss",
    "build_model",
    "count_parameters",
    "cross_entropy",
    "evaluate",
    "fake_quant_activation",
    "fake_quant_weight",
    "fit",
    "load_config",
    "load_packed",
    "load_run",
    "make_student",
    "model_names",
    "parse_precision",
    "prepare",
    "quantized_layers",
    "reestimate_batchnorm",
    "register_model",
    "save_packed",
    "soft_cross_entropy",
    "to_float",
    "weight_codes",
]
