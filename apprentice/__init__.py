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

import importlib
from typing import TYPE_CHECKING, Any

from apprentice.version import __version__

# Names are loaded on first use (PEP 562), so `import apprentice.config` and `apprentice --help`
# need no torch; a type checker sees the real imports below.
_PUBLIC: dict[str, str] = {  # public name -> the module that defines it, imported on first use
    "ActQuant": "apprentice.quant",
    "apply_plan": "apprentice.quant",
    "apprentice_loss": "apprentice.losses",
    "ApprenticeError": "apprentice.errors",
    "build_model": "apprentice.models",
    "Config": "apprentice.config.schema",
    "count_parameters": "apprentice.models",
    "cross_entropy": "apprentice.losses",
    "DEFAULT_EXCLUDE": "apprentice.quant",
    "Distiller": "apprentice.distill",
    "Ensemble": "apprentice.ensemble",
    "evaluate": "apprentice.train",
    "fake_quant_activation": "apprentice.quant",
    "fake_quant_weight": "apprentice.quant",
    "fit": "apprentice.run.loop",
    "keep_freed_memory": "apprentice.train",
    "LayerPlan": "apprentice.quant",
    "load_config": "apprentice.config",
    "LOSSES": "apprentice.losses",
    "load_packed": "apprentice.export",
    "load_run": "apprentice.run.runs",
    "LoadedRun": "apprentice.run.runs",
    "make_student": "apprentice.distill",
    "model_names": "apprentice.models",
    "MODELS": "apprentice.models",
    "NonFiniteLossError": "apprentice.train",
    "parse_precision": "apprentice.quant",
    "prepare": "apprentice.quant",
    "QConv2d": "apprentice.quant",
    "QLinear": "apprentice.quant",
    "quantized_layers": "apprentice.quant",
    "reestimate_batchnorm": "apprentice.train",
    "register_model": "apprentice.models",
    "save_packed": "apprentice.export",
    "Scheme": "apprentice.distill",
    "SCHEMES": "apprentice.distill",
    "soft_cross_entropy": "apprentice.losses",
    "to_float": "apprentice.quant",
    "weight_codes": "apprentice.quant",
    "WEIGHT_QUANTIZERS": "apprentice.quant",
    "WeightQuant": "apprentice.quant",
}


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        try:  # a subpackage or module: ap.data, ap.quant, ...
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module 'apprentice' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


if TYPE_CHECKING:
    from apprentice.config import load_config
    from apprentice.config.schema import Config
    from apprentice.distill import SCHEMES, Distiller, Scheme, make_student
    from apprentice.ensemble import Ensemble
    from apprentice.errors import ApprenticeError
    from apprentice.export import load_packed, save_packed
    from apprentice.losses import (
        LOSSES,
        apprentice_loss,
        cross_entropy,
        soft_cross_entropy,
    )
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
    from apprentice.run.loop import fit
    from apprentice.run.runs import LoadedRun, load_run
    from apprentice.train import (
        NonFiniteLossError,
        evaluate,
        keep_freed_memory,
        reestimate_batchnorm,
    )
    from apprentice.version import __version__

__all__ = [
    "DEFAULT_EXCLUDE",
    "LOSSES",
    "MODELS",
    "SCHEMES",
    "WEIGHT_QUANTIZERS",
    "ActQuant",
    "ApprenticeError",
    "Config",
    "Distiller",
    "Ensemble",
    "LayerPlan",
    "LoadedRun",
    "NonFiniteLossError",
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
    "keep_freed_memory",
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
