"""Quantized Conv2d/Linear modules and `prepare`, the module swap that makes a float model low-precision.

Models stay float; :func:`prepare` swaps their Conv2d/Linear layers in place for QConv2d/QLinear,
which fake-quantize their shadow weights and input activations with the pure functions of
:mod:`apprentice.quantizers` (re-exported here). The paper (Mishra & Marr, "Apprentice", ICLR
2018) keeps the first conv and the last linear in full precision; so does the default exclude.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from .errors import ApprenticeError, lookup
from .quantizers import (  # noqa: F401  (re-exported: the public quantization API lives here)
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

DEFAULT_EXCLUDE: tuple[str, ...] = ("@first", "@last")
"""Keep the first and the last Conv2d/Linear (in registration order) in full precision, as the paper does."""


@dataclass(frozen=True)
class LayerPlan:
    """How one layer is quantized: its kind ("conv2d" | "linear"), weights (None = float) and input activations."""

    kind: str
    weights: WeightQuant | None
    activations: ActQuant

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "weights": None if self.weights is None else asdict(self.weights),
            "activations": asdict(self.activations),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> LayerPlan:
        if not isinstance(d, Mapping):
            raise ApprenticeError(f"malformed layer plan {d!r}: expected a mapping")
        try:
            kind = d["kind"]
            weights = None if d.get("weights") is None else WeightQuant(**d["weights"])
            activations = ActQuant(**d["activations"])
        except KeyError as e:
            raise ApprenticeError(f"malformed layer plan {dict(d)!r}: missing {e}") from None
        except TypeError as e:
            raise ApprenticeError(f"malformed layer plan {dict(d)!r}: {e}") from None
        lookup(_QMODULES, kind, "layer kind")
        return cls(kind, weights, activations)

    def describe(self) -> str:
        w = "float" if self.weights is None else self.weights.describe()
        return f"W: {w}, A: {self.activations.describe()}"


class _QuantMixin:
    """Shared state and behaviour of QConv2d and QLinear (the float module's parameters are reused)."""

    weight: nn.Parameter
    kind: str

    def _init_quant(self, weights: WeightQuant | None, activations: ActQuant) -> None:
        self.weight_quant = weights
        self.act_quant = activations
        clip = nn.Parameter(self.weight.new_tensor(float(activations.clip))) if activations.enabled and activations.learned else None
        self.register_parameter("act_clip", clip)
        self._wq_cache: tuple[tuple, Tensor] | None = None

    def quantized_weight(self) -> Tensor:
        """The weight used in the forward pass (fake-quantized shadow weight, or the float weight)."""
        if self.weight_quant is None:
            return self.weight
        if self.training or torch.is_grad_enabled():
            self._wq_cache = None
            return fake_quant_weight(self.weight, self.weight_quant)
        # Inference: re-quantizing unchanged weights on every batch is wasted work. The tensor's
        # version counter moves on every in-place update (optimizer step, load_state_dict).
        key = (self.weight._version, self.weight.data_ptr(), self.weight.dtype, self.weight.device)
        if self._wq_cache is None or self._wq_cache[0] != key:
            self._wq_cache = (key, fake_quant_weight(self.weight, self.weight_quant))
        return self._wq_cache[1]

    def quantize_input(self, x: Tensor) -> Tensor:
        if not self.act_quant.enabled:
            return x
        clip = self.act_clip if self.act_clip is not None else self.act_quant.clip
        return fake_quant_activation(x, self.act_quant.bits, clip)

    def weight_codes(self) -> tuple[Tensor, Tensor]:
        """(codes, scale) of the current shadow weight; see :func:`weight_codes`."""
        if self.weight_quant is None:
            raise ApprenticeError("this layer's weights are not quantized; it has no integer codes")
        return weight_codes(self.weight, self.weight_quant)

    def activation_clip(self) -> float:
        """The clip c the forward uses now, as a number: a learned (PACT) clip as clamped by
        :func:`effective_clip`, else the fixed setting. Plans and exported maps record this value."""
        if self.act_clip is None:
            return float(self.act_quant.clip)
        return float(effective_clip(self.act_clip.detach()))

    def plan(self) -> LayerPlan:
        acts = self.act_quant
        if self.act_clip is not None:
            acts = ActQuant(acts.bits, self.activation_clip(), learned=True)
        return LayerPlan(self.kind, self.weight_quant, acts)

    @classmethod
    def from_float(cls, mod: nn.Module, weights: WeightQuant | None, activations: ActQuant):
        """Build the quantized module around ``mod``'s own parameters (shared, not copied)."""
        q = _empty(cls, mod)
        q.weight = mod.weight
        q.bias = mod.bias
        q._init_quant(weights, activations)
        q.train(mod.training)
        return q

    def to_float(self) -> nn.Module:
        """The float module with the shadow weights (shared, not copied)."""
        m = _empty(self._float_cls, self)
        m.weight = self.weight
        m.bias = self.bias
        m.train(self.training)
        return m

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.plan().describe()}"


class QConv2d(_QuantMixin, nn.Conv2d):
    """nn.Conv2d whose weights and (optionally) input activations are fake-quantized."""

    kind = "conv2d"
    _float_cls = nn.Conv2d

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.quantize_input(x), self.quantized_weight(), self.bias)


class QLinear(_QuantMixin, nn.Linear):
    """nn.Linear whose weights and (optionally) input activations are fake-quantized."""

    kind = "linear"
    _float_cls = nn.Linear

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(self.quantize_input(x), self.quantized_weight(), self.bias)


_QMODULES: dict[str, tuple[type, type]] = {"conv2d": (nn.Conv2d, QConv2d), "linear": (nn.Linear, QLinear)}


def _empty(cls: type, mod: nn.Module) -> nn.Module:
    """A ``cls`` with ``mod``'s hyper-parameters, built on the meta device (its parameters get replaced)."""
    if isinstance(mod, nn.Conv2d):
        return cls(mod.in_channels, mod.out_channels, mod.kernel_size, stride=mod.stride, padding=mod.padding,
                   dilation=mod.dilation, groups=mod.groups, bias=mod.bias is not None,
                   padding_mode=mod.padding_mode, device="meta")
    return cls(mod.in_features, mod.out_features, bias=mod.bias is not None, device="meta")


# ---------------------------------------------------------------------------------------------
# The module swap
# ---------------------------------------------------------------------------------------------


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
