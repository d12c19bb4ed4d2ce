"""Quantized Conv2d/Linear modules: fake-quantized shadow weights and input activations.

QConv2d and QLinear reuse the float module's own parameters (`from_float` shares, never copies);
each forward quantizes the shadow weight with the pure functions of `apprentice.quant.quantizers`
and, where the plan says so, the layer's input activations. `LayerPlan` is what one layer's
quantization is, as data: checkpoints and packed files store it, `apply_plan` rebuilds from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from apprentice.errors import ApprenticeError, lookup
from apprentice.quant.quantizers import (
    ActQuant,
    WeightQuant,
    effective_clip,
    fake_quant_activation,
    fake_quant_weight,
    weight_codes,
)


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
