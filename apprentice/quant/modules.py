"""Quantized Conv2d/Linear modules: fake-quantized shadow weights and input activations.

QConv2d and QLinear reuse the float module's own parameters (`from_float` shares, never copies);
each forward quantizes the shadow weight with the pure functions of `apprentice.quant.quantizers`
and, where the plan says so, the layer's input activations. `LayerPlan` is what one layer's
quantization is, as data: checkpoints and packed files store it, `apply_plan` rebuilds from it.

Learned quantizer state lives in the layer: a PACT clip ``act_clip``; LSQ steps ``weight_step``
(initialised from the weights when the layer is built) and ``act_step`` with the buffer
``act_step_initialized`` (set by the first training batch, saved in the state dict so that a resume
or a reload never initialises again).

In a deployable model (``LayerPlan.deploy``, `apprentice.quant.deploy`) a layer that reads the same
tensor as an earlier layer (a block's projection conv beside its ``conv1``) has no input quantizer of
its own: ``LayerPlan.input_from`` names the layer whose quantizer it uses, so the tensor is
quantized once, as in the integer graph.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

import torch
import torch.distributed as dist
from torch import Tensor, nn

from apprentice.errors import ApprenticeError, lookup
from apprentice.quant.add import AddInput, Uint8Quantizer
from apprentice.quant.integer import (
    bn_affine,
    folded_bias,
    integer_weights,
    rounded_bias,
)
from apprentice.quant.lsq import calibrate_zero_point, effective_step, lsq_init_step
from apprentice.quant.quantizers import (
    ACT_QUANTIZERS,
    ActQuant,
    WeightQuant,
    effective_clip,
    fake_quant_weight,
    weight_codes,
)

#: Trainable parameters of the quantizers themselves (no weight decay; see `apprentice.train.optim`).
QUANTIZER_PARAMETERS: tuple[str, ...] = ("act_clip", "act_step", "weight_step")


def is_quantizer_parameter(name: str) -> bool:
    """Whether a parameter's (dotted) name is a quantizer's own (`QUANTIZER_PARAMETERS`): ``"layer1.0.conv1.act_step"``."""
    return name.rsplit(".", 1)[-1] in QUANTIZER_PARAMETERS


#: Everything a quantized layer holds beyond its float module's state: not part of a float model.
QUANTIZER_STATE: tuple[str, ...] = (*QUANTIZER_PARAMETERS, "act_step_initialized", "zero_point")


_DEPLOY_FIELDS = ("input_from", "deploy", "batchnorm")


@dataclass(frozen=True)
class LayerPlan:
    """How one layer is quantized: its kind ("conv2d" | "linear"), weights (None = float) and input activations.

    ``deploy``: the deployable graph the layer belongs to ("int8", `apprentice.quant.deploy`), or None.
    ``input_from``: in a deployable graph, the layer whose input quantizer this one uses (both read the
    same tensor); ``activations`` are then that layer's.
    ``batchnorm``: in a deployable graph, the BatchNorm right after the layer, which the export folds
    into it; the layer's eval-mode bias rounding (`apprentice.quant.integer`) takes it into account.
    ``output``: in a deployable graph, a uint8 quantizer of the layer's own on its output (after
    ``batchnorm``), for a conv whose output no 8-bit quantizer reads (a SiLU, a hard-swish, a plain
    ``+`` follows): the integer kernel writes that tensor, the float op after it reads it dequantized.
    """

    kind: str
    weights: WeightQuant | None
    activations: ActQuant
    input_from: str | None = None
    deploy: str | None = None
    batchnorm: str | None = None
    output: AddInput | None = None

    def to_dict(self) -> dict:
        d = {
            "kind": self.kind,
            "weights": None if self.weights is None else asdict(self.weights),
            "activations": asdict(self.activations),
        }
        # Written only when set, so the plans of runs without a deployable graph stay as they were.
        d.update({k: getattr(self, k) for k in _DEPLOY_FIELDS if getattr(self, k) is not None})
        if self.output is not None:
            d["output"] = asdict(self.output)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> LayerPlan:
        if not isinstance(d, Mapping):
            raise ApprenticeError(f"malformed layer plan {d!r}: expected a mapping")
        try:
            kind = d["kind"]
            weights = None if d.get("weights") is None else WeightQuant(**d["weights"])
            activations = ActQuant(**d["activations"])
            names = {k: d.get(k) for k in _DEPLOY_FIELDS}
            if not all(v is None or isinstance(v, str) for v in names.values()):
                raise TypeError(f"{', '.join(_DEPLOY_FIELDS)} are names")
            if d.get("output") is not None and not isinstance(d["output"], Mapping):
                raise TypeError("output is a mapping")
            output = None if d.get("output") is None else AddInput(**d["output"])
        except KeyError as e:
            raise ApprenticeError(f"malformed layer plan {dict(d)!r}: missing {e}") from None
        except TypeError as e:
            raise ApprenticeError(f"malformed layer plan {dict(d)!r}: {e}") from None
        lookup(_QMODULES, kind, "layer kind")
        return cls(kind, weights, activations, **names, output=output)

    def describe(self) -> str:
        w = "float" if self.weights is None else self.weights.describe()
        a = self.activations.describe() + (f" (as {self.input_from}'s input)" if self.input_from else "")
        return f"W: {w}, A: {a}" + ("" if self.output is None else f", output: {self.output.describe()}")


class _QuantMixin:
    """Shared state and behaviour of QConv2d and QLinear (the float module's parameters are reused)."""

    weight: nn.Parameter
    kind: str

    def _init_quant(self, weights: WeightQuant | None, activations: ActQuant, deploy: str | None = None,
                    input_layer: tuple[str, _QuantMixin] | None = None,
                    batchnorm: tuple[str, nn.BatchNorm2d] | None = None, output: AddInput | None = None) -> None:
        self.weight_quant = weights
        self.act_quant = activations
        self.deploy = deploy
        # The layer whose input quantizer this one uses, and the BatchNorm after it: plain references,
        # not second parents of those modules.
        object.__setattr__(self, "_input_layer", input_layer)
        object.__setattr__(self, "_batchnorm", batchnorm)
        self._bias_cache: tuple[tuple, Tensor | None] | None = None
        own = input_layer is None  # a layer using another's input quantizer holds no quantizer state of its own
        pact = own and activations.enabled and activations.learned
        self.register_parameter("act_clip", nn.Parameter(self.weight.new_tensor(float(activations.clip))) if pact else None)
        step = None
        if weights is not None and weights.learns_step:  # LSQ: from the weights as they are now (pretrained or not)
            step = nn.Parameter(lsq_init_step(self.weight.detach(), weights.levels, per_channel=weights.per_channel))
        self.register_parameter("weight_step", step)
        self.register_parameter("act_step", None)
        if own and activations.learns_step:  # a placeholder until the first training batch, unless the plan gives it
            given = activations.step is not None
            self.act_step = nn.Parameter(self.weight.new_tensor(activations.step if given else 1.0))
            self.register_buffer("act_step_initialized", torch.tensor(given, device=self.weight.device))
        if own and activations.has_zero_point:  # an integer held as float, as the quantizer's arithmetic takes it
            self.register_buffer("zero_point", self.weight.new_tensor(float(activations.zero_point or 0)))
        self._wq_cache: tuple[tuple, Tensor] | None = None
        self._init_output(output)

    def _init_output(self, output: AddInput | None) -> None:
        """A deployable layer's own output quantizer: after its BatchNorm (a hook on it, a bound method so
        that a deep copy of the model hooks the copy's quantizer), else in the layer's forward."""
        self.out_quant = None if output is None else Uint8Quantizer(output.step, output.zero_point)
        self._out_hook = None
        if self.out_quant is not None and self._batchnorm is not None:
            self._out_hook = self._batchnorm[1].register_forward_hook(self.out_quant.quantize_output)

    def _output(self, out: Tensor) -> Tensor:
        out = self._add_bias_correction(out)
        return out if self.out_quant is None or self._out_hook is not None else self.out_quant(out)

    def quantized_weight(self) -> Tensor:
        """The weight used in the forward pass (fake-quantized shadow weight, or the float weight)."""
        if self.weight_quant is None:
            return self.weight
        if self.training or torch.is_grad_enabled():
            self._wq_cache = None
            return fake_quant_weight(self.weight, self.weight_quant, self.weight_step)
        # Inference: re-quantizing unchanged weights on every batch is wasted work. A tensor's
        # version counter moves on every in-place update (optimizer step, load_state_dict).
        key = tuple((t._version, t.data_ptr(), t.dtype, t.device) for t in (self.weight, self.weight_step) if t is not None)
        if self._wq_cache is None or self._wq_cache[0] != key:
            self._wq_cache = (key, fake_quant_weight(self.weight, self.weight_quant, self.weight_step))
        return self._wq_cache[1]

    def quantize_input(self, x: Tensor) -> Tensor:
        if self._input_layer is not None:
            return self._input_layer[1].quantize_input(x)
        acts = self.act_quant
        if not acts.enabled:
            return x
        if self.act_step is not None:
            if self.training and not bool(self.act_step_initialized):
                self._init_act_step(x)
            param: float | Tensor = self.act_step
        else:
            param = self.act_clip if self.act_clip is not None else acts.clip
        if acts.has_zero_point:
            return ACT_QUANTIZERS[acts.quantizer](x, acts.bits, param, self.zero_point)
        return ACT_QUANTIZERS[acts.quantizer](x, acts.bits, param)

    @torch.no_grad()
    def _init_act_step(self, x: Tensor) -> None:
        """From this (first training) batch, alike on every process: asym's step and zero point from its
        range (`calibrate_zero_point`: the union of the ranks'), or LSQ's 2·mean|x|/√Q_P (their mean)."""
        if self.act_quant.has_zero_point:
            step, zero_point = calibrate_zero_point(x, self.act_quant.bits)
            self.zero_point.copy_(zero_point)
        else:
            step = lsq_init_step(x.detach().float(), 2**self.act_quant.bits - 1)
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                dist.all_reduce(step)
                step /= dist.get_world_size()
        self.act_step.copy_(step)
        self.act_step_initialized.fill_(True)

    def weight_codes(self) -> tuple[Tensor, Tensor]:
        """(codes, scale) of the current shadow weight; see :func:`weight_codes`."""
        if self.weight_quant is None:
            raise ApprenticeError("this layer's weights are not quantized; it has no integer codes")
        return weight_codes(self.weight, self.weight_quant, self.weight_step)

    def set_integer_weights(self, codes: Tensor, scale: Tensor) -> None:
        """Give a layer whose weight is already dequantized (a packed file's) the codes and scale it came
        from, which its deployable bias rounding needs. Not part of the state dict."""
        self.register_buffer("integer_codes", codes.to(torch.int8), persistent=False)
        self.register_buffer("integer_scale", scale.to(self.weight.dtype), persistent=False)

    def _integer_weights(self) -> tuple[Tensor, Tensor] | None:
        if self.weight_quant is not None:
            return self.weight_codes()
        if "integer_codes" in self._buffers:
            return self.integer_codes, self.integer_scale
        return None

    def bias_correction(self) -> Tensor | None:
        """What the eval-mode forward adds to the output of a deployable layer (per output channel):
        the integer kernel's rounding of the (BatchNorm-folded) bias to its accumulator unit, divided
        by the BatchNorm's α so that the BatchNorm after the layer passes it on unchanged; None where
        the export keeps the bias float (float weights or activations, no bias)."""
        if self.deploy is None or not self.act_quant.enabled or (
                self.weight_quant is None and "integer_codes" not in self._buffers):
            return None
        bn = self._batchnorm[1] if self._batchnorm is not None else None
        # Recomputed only when something it depends on changes (a tensor's version moves on every in-place update).
        tensors = [self.weight, self.weight_step, self.bias, self._buffers.get("integer_codes"),
                   self._buffers.get("integer_scale")]
        tensors += [] if bn is None else [bn.running_mean, bn.running_var, bn.weight, bn.bias]
        key = tuple((t.data_ptr(), None if t.is_inference() else t._version) for t in tensors if t is not None)
        key += (self.activation_scale(),)
        if self._bias_cache is None or self._bias_cache[0] != key:
            self._bias_cache = (key, self._bias_rounding(self._integer_weights(), bn))  # type: ignore[arg-type]
        return self._bias_cache[1]

    def _bias_rounding(self, integer: tuple[Tensor, Tensor], bn: nn.BatchNorm2d | None) -> Tensor | None:
        alpha, shift = bn_affine(bn) if bn is not None else (None, None)
        bias = folded_bias(self.bias, alpha, shift)
        if bias is None:
            return None
        _, unit = integer_weights(integer[0].float(), integer[1], alpha)
        codes, scale = rounded_bias(bias, self.activation_scale(), unit)
        delta = codes * scale - bias.float()
        if alpha is not None:  # before the BatchNorm: it scales by α (a zero α passes nothing on)
            delta = torch.where(alpha != 0, delta / torch.where(alpha != 0, alpha, 1), 0)
        return delta.to(self.weight.dtype)

    def _add_bias_correction(self, out: Tensor) -> Tensor:
        if self.training or self.deploy is None:
            return out
        delta = self.bias_correction()
        return out if delta is None else out + delta.reshape([-1] + [1] * (out.dim() - 2))

    def activation_clip(self) -> float:
        """The clip c the forward uses now, as a number: a learned (PACT) clip as clamped by
        :func:`effective_clip`, else the fixed setting. Plans and exported maps record this value."""
        if self._input_layer is not None:
            return self._input_layer[1].activation_clip()
        if self.act_clip is None:
            return float(self.act_quant.clip)
        return float(effective_clip(self.act_clip.detach()))

    def activation_step(self) -> float | None:
        """The LSQ step the forward uses now, as a number (floored as the forward floors it); None
        for a layer without an LSQ activation step or one not yet initialised by a training batch."""
        if self._input_layer is not None:
            return self._input_layer[1].activation_step()
        if self.act_step is None or not bool(self.act_step_initialized):
            return None
        return float(effective_step(self.act_step))

    def activation_zero_point(self) -> int:
        """z of the input quantizer as the forward uses it now (asym's; 0 for the unsigned quantizers)."""
        if self._input_layer is not None:
            return self._input_layer[1].activation_zero_point()
        return int(self.zero_point) if self.act_quant.has_zero_point else 0

    def activation_range(self) -> tuple[float, float]:
        """[lowest, highest] level of the input quantizer as the forward uses it now: [−z·s, (2^b − 1 − z)·s]
        for a learned step (LSQ, asym), [0, c] for a clip."""
        owner = self if self._input_layer is None else self._input_layer[1]
        if owner.act_step is None:
            return 0.0, owner.activation_clip()
        s, z = owner.activation_scale(), owner.activation_zero_point()
        return -z * s, (2**owner.act_quant.bits - 1 - z) * s

    def activation_scale(self) -> float:
        """s_x, the value of one step of the input quantizer as the forward uses it now: LSQ's step
        (its placeholder before the first training batch, as packed files record it), or c/(2^bits − 1)."""
        if self._input_layer is not None:
            return self._input_layer[1].activation_scale()
        if self.act_step is not None:
            return float(effective_step(self.act_step))
        return self.activation_clip() / (2**self.act_quant.bits - 1)

    def plan(self) -> LayerPlan:
        """This layer's settings with learned activation values (PACT clip, LSQ step) as numbers."""
        bn = self._batchnorm[0] if self._batchnorm is not None else None
        if self._input_layer is not None:
            name, layer = self._input_layer
            return LayerPlan(self.kind, self.weight_quant, layer.plan().activations, name, self.deploy, bn, self._out_setting())
        acts = self.act_quant
        if self.act_clip is not None:
            acts = ActQuant(acts.bits, self.activation_clip(), learned=True)
        if self.act_step is not None:
            step = self.activation_step()
            zero = self.activation_zero_point() if acts.has_zero_point and step is not None else None
            acts = replace(acts, step=step, zero_point=zero)
        return LayerPlan(self.kind, self.weight_quant, acts, None, self.deploy, bn, self._out_setting())

    def _out_setting(self) -> AddInput | None:
        return None if self.out_quant is None else self.out_quant.setting()

    @property
    def input_layer(self) -> tuple[str, nn.Module] | None:
        """(name, layer) whose input quantizer this layer uses (`LayerPlan.input_from`), or None."""
        return self._input_layer

    @classmethod
    def from_float(cls, mod: nn.Module, weights: WeightQuant | None, activations: ActQuant, *,
                   deploy: str | None = None, input_layer: tuple[str, nn.Module] | None = None,
                   batchnorm: tuple[str, nn.BatchNorm2d] | None = None, output: AddInput | None = None):
        """Build the quantized module around ``mod``'s own parameters (shared, not copied).

        ``input_layer``: (name, quantized layer) whose input quantizer this layer uses (a deployable
        graph's shared input, `LayerPlan.input_from`); ``batchnorm``: (name, the BatchNorm after it).
        """
        q = _empty(cls, mod)
        q.weight = mod.weight
        q.bias = mod.bias
        q._init_quant(weights, activations, deploy, input_layer, batchnorm, output)
        q.train(mod.training)
        return q

    def to_float(self) -> nn.Module:
        """The float module with the shadow weights (shared, not copied)."""
        if self._out_hook is not None:  # the float model's BatchNorm is plain again
            self._out_hook.remove()
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
        return self._output(self._conv_forward(self.quantize_input(x), self.quantized_weight(), self.bias))


class QLinear(_QuantMixin, nn.Linear):
    """nn.Linear whose weights and (optionally) input activations are fake-quantized."""

    kind = "linear"
    _float_cls = nn.Linear

    def forward(self, x: Tensor) -> Tensor:
        return self._output(nn.functional.linear(self.quantize_input(x), self.quantized_weight(), self.bias))


_QMODULES: dict[str, tuple[type, type]] = {"conv2d": (nn.Conv2d, QConv2d), "linear": (nn.Linear, QLinear)}


def _empty(cls: type, mod: nn.Module) -> nn.Module:
    """A ``cls`` with ``mod``'s hyper-parameters, built on the meta device (its parameters get replaced)."""
    if isinstance(mod, nn.Conv2d):
        return cls(mod.in_channels, mod.out_channels, mod.kernel_size, stride=mod.stride, padding=mod.padding,
                   dilation=mod.dilation, groups=mod.groups, bias=mod.bias is not None,
                   padding_mode=mod.padding_mode, device="meta")
    return cls(mod.in_features, mod.out_features, bias=mod.bias is not None, device="meta")
