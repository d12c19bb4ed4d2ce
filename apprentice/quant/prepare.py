"""`prepare`, the module swap that makes a float model low-precision, and its inverse `to_float`.

Models stay float; `prepare` swaps their Conv2d/Linear layers in place for QConv2d/QLinear
(`apprentice.quant.modules`). The paper (Mishra & Marr, "Apprentice", ICLR 2018) keeps the first
conv and the last linear in full precision; so does the default exclude.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence

from torch import nn

from apprentice.errors import ApprenticeError, lookup
from apprentice.quant.modules import _QMODULES, LayerPlan, _QuantMixin
from apprentice.quant.quantizers import ActQuant, WeightQuant, parse_precision

__all__ = ["DEFAULT_EXCLUDE", "apply_plan", "prepare", "quantized_layers", "replace_module", "to_float"]

DEFAULT_EXCLUDE: tuple[str, ...] = ("@first", "@last")
"""Keep the first and the last Conv2d/Linear (in registration order) in full precision, as the paper does."""


def _candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if n and type(m) in (nn.Conv2d, nn.Linear)]


def _match(patterns: Sequence[str], names: list[str], what: str) -> set[str]:
    if isinstance(patterns, str):
        raise ApprenticeError(f"{what} must be a list of patterns, got the string {patterns!r}")
    matched: set[str] = set()
    for p in patterns:
        if p == "@first":
            hits = names[:1]
        elif p == "@last":
            hits = names[-1:]
        else:
            hits = [n for n in names if fnmatch.fnmatchcase(n, p)]
        if not hits:
            shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            raise ApprenticeError(f"{what} pattern {p!r} matches no Conv2d/Linear layer (layers: {shown})")
        matched.update(hits)
    return matched


def prepare(
    model: nn.Module,
    precision: str | None = None,
    *,
    weights: WeightQuant | None = None,
    activations: ActQuant | None = None,
    include: Sequence[str] = ("*",),
    exclude: Sequence[str] | None = None,
) -> dict[str, LayerPlan]:
    """Quantize a model in place by swapping its Conv2d/Linear layers for QConv2d/QLinear.

    Give either ``precision`` in the paper's notation ("2W/32A", "4W/8A") or explicit ``weights``
    and ``activations`` settings. Layers are chosen by dotted name with fnmatch patterns; the
    special patterns "@first" and "@last" name the first and last Conv2d/Linear in registration
    order, and the default ``exclude`` (:data:`DEFAULT_EXCLUDE`) keeps those two in full precision.
    A pattern that matches no layer is an error (a typo would otherwise quantize the wrong layers).

    Returns:
        ``{layer name: LayerPlan}`` of the layers swapped; empty for a full-precision setting.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(64, 2))
        >>> list(prepare(net, "2W/8A"))
        ['2']
    """
    if precision is not None:
        if weights is not None or activations is not None:
            raise ApprenticeError("give either precision or weights/activations settings, not both")
        weights, activations = parse_precision(precision)
    activations = ActQuant() if activations is None else activations
    if weights is not None and not isinstance(weights, WeightQuant):
        raise ApprenticeError(f"weights must be a WeightQuant or None, got {type(weights).__name__}")
    if not isinstance(activations, ActQuant):
        raise ApprenticeError(f"activations must be an ActQuant or None, got {type(activations).__name__}")
    already = [n for n, m in model.named_modules() if isinstance(m, _QuantMixin)]
    if already:
        raise ApprenticeError(f"model is already quantized (layer {already[0]!r}); call to_float(model) first")
    if weights is None and not activations.enabled:
        return {}
    names = [n for n, _ in _candidates(model)]
    if not names:
        raise ApprenticeError("model has no Conv2d or Linear layer to quantize")
    chosen = _match(include, names, "include") - _match(DEFAULT_EXCLUDE if exclude is None else exclude, names, "exclude")
    if not chosen:
        raise ApprenticeError("include/exclude patterns leave no layer to quantize")
    modules = dict(_candidates(model))
    plan = {n: LayerPlan("conv2d" if isinstance(modules[n], nn.Conv2d) else "linear", weights, activations)
            for n in names if n in chosen}
    apply_plan(model, plan)
    return plan


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` in place of the submodule at dotted ``name`` (the one module-swap primitive)."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def apply_plan(model: nn.Module, plan: Mapping[str, LayerPlan]) -> None:
    """Swap exactly the layers named in ``plan`` (from :func:`prepare` or a checkpoint), in place."""
    for name, lp in plan.items():
        try:
            mod = model.get_submodule(name)
        except AttributeError:
            raise ApprenticeError(f"quantization plan names layer {name!r}, which the model does not have") from None
        float_cls, q_cls = lookup(_QMODULES, lp.kind, "layer kind")
        if type(mod) is not float_cls:
            raise ApprenticeError(f"quantization plan says layer {name!r} is a float {lp.kind}, "
                                  f"but the model has {type(mod).__name__}")
        replace_module(model, name, q_cls.from_float(mod, lp.weights, lp.activations))


def quantized_layers(model: nn.Module) -> dict[str, LayerPlan]:
    """The plan of an already prepared model: ``{layer name: LayerPlan}``."""
    return {n: m.plan() for n, m in model.named_modules() if isinstance(m, _QuantMixin)}


def to_float(model: nn.Module) -> list[str]:
    """Swap every quantized layer back to its float module (shadow weights), in place; return their names."""
    names = [n for n, m in model.named_modules() if isinstance(m, _QuantMixin)]
    for n in names:
        replace_module(model, n, model.get_submodule(n).to_float())
    return names
