"""Quantizer math: weight and activation quantizers as pure functions, and their settings.

Quantization is simulated in float during training ("fake quantization"): every forward pass
quantizes the full-precision *shadow* weights, the backward pass goes straight through the rounding
(straight-through estimator, Bengio et al. 2013), and the optimizer updates the shadow weights.

Each weight quantizer returns ``(surrogate, codes, scale)``: ``codes`` are integers in ``[-n, n]``
(stored as float), ``codes * scale`` is the quantized weight, and ``surrogate`` is the
differentiable tensor whose gradient the STE passes on. The one STE idiom is :func:`ste`.

References:
    Li & Liu, "Ternary Weight Networks", 2016 (TWN ternarizer).
    Mishra et al., "WRPN: Wide Reduced-Precision Networks", ICLR 2018 (clip-and-round weights, clipped-ReLU activations).
    Zhou et al., "DoReFa-Net", 2016 (tanh weight normalisation).
    Choi et al., "PACT: Parameterized Clipping Activation", 2018 (learned activation clip).
    Esser et al., "Learned Step Size Quantization", ICLR 2020 (learned step; `apprentice.quant.lsq`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from apprentice.errors import ApprenticeError, lookup
from apprentice.quant.lsq import lsq_activation, lsq_weight, zero_point_activation
from apprentice.quant.ste import ste

FLOAT_BITS = 32
MIN_BITS, MAX_BITS = 2, 8
# A learned clip could be pushed to or below 0 by a large step; keep the activation grid defined.
MIN_LEARNED_CLIP = 1e-3


# ---------------------------------------------------------------------------------------------
# Weight quantizers: f(w, spec) -> (surrogate, codes, scale); codes*scale is the quantized weight.
# ---------------------------------------------------------------------------------------------


def _rows(w: Tensor, per_channel: bool) -> Tensor:
    """View ``w`` as [C_out, -1] (per channel) or [1, -1] (per layer) for row-wise statistics."""
    return w.reshape(w.shape[0] if per_channel else 1, -1)


def _unrows(stat: Tensor, w: Tensor, per_channel: bool) -> Tensor:
    """Shape a per-row statistic [R, 1] to broadcast against ``w``: [C_out, 1, ...] or a scalar."""
    return stat.reshape((w.shape[0],) + (1,) * (w.dim() - 1)) if per_channel else stat.reshape(())


def ternary_twn(w: Tensor, spec: WeightQuant) -> tuple[Tensor, Tensor, Tensor]:
    """Ternary Weight Networks (Li & Liu 2016).

    Δ = t·mean|W|,  codes = sign(W)·[|W| > Δ],  α = mean(|W| over |W| > Δ),  W_t = α·codes,
    with t = ``spec.threshold`` (0.7). Statistics per layer or per output channel. The gradient
    passes to W unchanged (STE).

    Example:
        >>> w = torch.tensor([0.1, -0.5, 0.9, -0.05, 0.3, 0.0])
        >>> _, codes, alpha = ternary_twn(w, WeightQuant("ternary", 2))
        >>> codes.tolist(), round(alpha.item(), 4)   # Δ = 0.7·0.3083 = 0.2158
        ([0.0, -1.0, 1.0, -0.0, 1.0, 0.0], 0.5667)
    """
    a = _rows(w, spec.per_channel).abs()
    delta = spec.threshold * a.mean(dim=1, keepdim=True)
    kept = (a > delta).to(w.dtype)
    alpha = (a * kept).sum(dim=1, keepdim=True) / kept.sum(dim=1, keepdim=True).clamp(min=1)
    codes = torch.sign(w) * kept.reshape(w.shape)
    return w, codes, _unrows(alpha, w, spec.per_channel)


def uniform_max(w: Tensor, spec: WeightQuant) -> tuple[Tensor, Tensor, Tensor]:
    """Symmetric uniform k-bit weights with scale s = max|W| (per layer or per output channel).

    n = 2^(k−1) − 1,  codes = round(clip(W/s, −1, 1)·n),  W_q = (s/n)·codes. Rounding is half to
    even (torch.round). Nothing is clipped since s = max|W|, so the STE gradient is the identity.

    Example:
        >>> w = torch.tensor([0.7, -0.35, 0.1, -0.7])
        >>> _, codes, scale = uniform_max(w, WeightQuant("uniform", 4))   # n = 7, s/n = 0.1
        >>> codes.tolist(), round(scale.item(), 4)                     # -3.5 rounds to -4
        ([7.0, -4.0, 1.0, -7.0], 0.1)
    """
    n = spec.levels
    s = _rows(w, spec.per_channel).abs().amax(dim=1, keepdim=True)
    s = _unrows(s, w, spec.per_channel).clamp(min=torch.finfo(w.dtype).tiny)
    codes = torch.round((w / s).clamp(-1, 1) * n)
    return w, codes, s / n


def wrpn(w: Tensor, spec: WeightQuant) -> tuple[Tensor, Tensor, Tensor]:
    """WRPN weights (Mishra et al. 2018): clip W to [−1, 1], round to n levels a side, no scale.

    codes = round(clip(W, −1, 1)·n),  W_q = codes/n. At 2 bits this is the WRPN reading of ternary,
    {−1, 0, +1}. Gradient: STE inside [−1, 1], zero outside. Beware: He-initialised weights have
    |w| ≪ 0.5, so at 2 bits almost every weight rounds to 0 at the start of training.

    Example:
        >>> _, codes, scale = wrpn(torch.tensor([1.5, 0.6, 0.4, -0.51, -2.0]), WeightQuant("wrpn", 2))
        >>> codes.tolist(), scale.item()
        ([1.0, 1.0, 0.0, -1.0, -1.0], 1.0)
    """
    n = spec.levels
    clipped = w.clamp(-1, 1)
    return clipped, torch.round(clipped * n), w.new_tensor(1.0 / n)


def dorefa(w: Tensor, spec: WeightQuant) -> tuple[Tensor, Tensor, Tensor]:
    """DoReFa-style weights (Zhou et al. 2016), symmetric variant.

    t = tanh(W) / max|tanh(W)| (per layer or per output channel),  codes = round(t·n),  W_q = codes/n.
    DoReFa proper uses 2^k levels with no zero; we keep the symmetric 2^k − 1 levels so every
    quantizer shares one integer code layout. The gradient flows through the tanh normalisation.

    Example:
        >>> _, codes, scale = dorefa(torch.tensor([0.5, -1.0, 2.0]), WeightQuant("dorefa", 2))
        >>> codes.tolist(), scale.item()    # t = [0.479, -0.790, 1.0]
        ([0.0, -1.0, 1.0], 1.0)
    """
    n = spec.levels
    t = torch.tanh(w)
    m = _rows(t, spec.per_channel).abs().amax(dim=1, keepdim=True)
    t = t / _unrows(m, w, spec.per_channel).clamp(min=torch.finfo(w.dtype).tiny)
    return t, torch.round(t * n), w.new_tensor(1.0 / n)


# f(w, spec) -> (surrogate, codes, scale); a quantizer in LEARNED_STEP also takes step= (its parameter).
WeightQuantizerFn = Callable[..., tuple[Tensor, Tensor, Tensor]]
WEIGHT_QUANTIZERS: dict[str, WeightQuantizerFn] = {
    "ternary": ternary_twn,
    "uniform": uniform_max,
    "wrpn": wrpn,
    "dorefa": dorefa,
    "lsq": lsq_weight,
}
#: Quantizers whose scale is a fixed 1/n: a per-channel setting would silently do nothing.
FIXED_SCALE = frozenset({"wrpn"})
#: Quantizers whose step is a trainable parameter of the layer (``weight_step`` / ``act_step``).
LEARNED_STEP = frozenset({"lsq"})
#: Activation quantizers with a zero point (the layer's ``zero_point`` buffer), for inputs that can be
#: negative; their step learns as LSQ's (``act_step``).
ZERO_POINT = frozenset({"asym"})

# f(x, bits, clip or step[, zero_point]) -> fake-quantized x. "clip": clipped ReLU [0, c] (WRPN; PACT when
# c is a learned tensor); "lsq": c is replaced by LSQ's learned step s, the range by [0, s·(2^b − 1)];
# "asym": the step s and an integer zero point z, the range [−z·s, (2^b − 1 − z)·s] (signed inputs).
ActQuantizerFn = Callable[..., Tensor]


def _check_bits(bits: object, what: str, allow_float: bool) -> None:
    ok = isinstance(bits, int) and not isinstance(bits, bool)
    ok = ok and (MIN_BITS <= bits <= MAX_BITS or (allow_float and bits == FLOAT_BITS))
    if not ok:
        allowed = f"{MIN_BITS}..{MAX_BITS}" + (f" or {FLOAT_BITS} (off)" if allow_float else "")
        raise ApprenticeError(f"{what} must be an integer in {allowed}, got {bits!r}")


@dataclass(frozen=True)
class WeightQuant:
    """Settings of one weight quantizer.

    Args:
        quantizer: name in ``WEIGHT_QUANTIZERS``: "ternary" (TWN), "uniform" (scale max|W|),
            "wrpn" (clip to [−1, 1], no scale; at 2 bits the WRPN ternary), "dorefa" (tanh-normalised),
            "lsq" (learned step, `apprentice.quant.lsq`; the step is the layer's ``weight_step``).
        bits: 2..8. "ternary" takes 2 (three levels).
        per_channel: one scale per output channel instead of one per layer.
        threshold: TWN's t in Δ = t·mean|W|.
    """

    quantizer: str = "ternary"
    bits: int = 2
    per_channel: bool = False
    threshold: float = 0.7

    def __post_init__(self) -> None:
        lookup(WEIGHT_QUANTIZERS, self.quantizer, "weight quantizer")
        _check_bits(self.bits, "weight bits", allow_float=False)
        if self.quantizer == "ternary" and self.bits != 2:
            raise ApprenticeError(f"the 'ternary' quantizer has 3 levels and takes bits=2, got bits={self.bits}")
        if self.per_channel and self.quantizer in FIXED_SCALE:
            raise ApprenticeError(f"per_channel has no effect with the {self.quantizer!r} quantizer (its scale is fixed)")
        if not isinstance(self.threshold, (int, float)) or not 0 < self.threshold < 1.5:
            raise ApprenticeError(f"threshold must be a number in (0, 1.5), got {self.threshold!r}")

    @property
    def levels(self) -> int:
        """n: codes lie in [−n, n] (1 for ternary and 2 bits, 7 for 4 bits, 127 for 8 bits)."""
        return 2 ** (self.bits - 1) - 1

    @property
    def learns_step(self) -> bool:
        """The scale is a trainable step of the layer (LSQ), not a statistic of the weights."""
        return self.quantizer in LEARNED_STEP

    def describe(self) -> str:
        scope = "per-channel" if self.per_channel else "per-layer"
        if self.quantizer == "ternary":
            return f"ternary TWN {scope}"
        return f"{self.bits}-bit {self.quantizer}" + ("" if self.quantizer in FIXED_SCALE else f" {scope}")


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and value != float("inf")


@dataclass(frozen=True)
class ActQuant:
    """Settings of the activation quantizer applied to a quantized layer's input.

    Args:
        bits: 2..8, or 32 for full precision (off).
        clip: c of the clipped ReLU [0, c] (WRPN uses 1); the initial value when ``learned``.
            Quantizer "clip" only.
        learned: PACT: c is a trainable parameter (``act_clip``) of each quantized layer. Quantizer
            "clip" only (LSQ always learns its step).
        quantizer: name in ``ACT_QUANTIZERS``: "clip" (clipped ReLU [0, c]: WRPN, or PACT when
            ``learned``), "lsq" (learned step s, unsigned range [0, s·(2^b − 1)]; the step is the
            layer's ``act_step`` parameter), or "asym" (a zero point z and a learned step s, range
            [−z·s, (2^b − 1 − z)·s], `apprentice.quant.lsq.zero_point_activation`). "clip" and "lsq"
            are unsigned, made for inputs that come out of a ReLU: a layer whose input can be
            negative loses the negative part. "asym" takes z from the range its first training batch
            shows (z = 0 where nothing is negative: LSQ's unsigned quantizer), so it suits any input.
        step: LSQ and asym: the step as a number. None: the layer initialises it from the first
            training batch (LSQ: 2·mean|x|/√(2^b − 1); asym: the batch's range over 2^b − 1). A
            number starts the step there (never re-initialised); plans and packed files record the
            learned step this way, as PACT's clip.
        zero_point: asym only: the integer zero point in [0, 2^b − 1], given with ``step`` (both
            None until the first training batch sets them).
    """

    bits: int = FLOAT_BITS
    clip: float = 1.0
    learned: bool = False
    quantizer: str = "clip"
    step: float | None = None
    zero_point: int | None = None

    def __post_init__(self) -> None:
        _check_bits(self.bits, "activation bits", allow_float=True)
        lookup(ACT_QUANTIZERS, self.quantizer, "activation quantizer")
        if not _positive(self.clip):
            raise ApprenticeError(f"activation clip must be a positive number, got {self.clip!r}")
        self._check_zero_point()
        if self.quantizer in LEARNED_STEP | ZERO_POINT:
            if self.learned or self.clip != 1.0:
                raise ApprenticeError(f"the {self.quantizer!r} activation quantizer learns a step, not a clip: "
                                      f"leave clip and learned (PACT's) at their defaults")
            if self.step is not None and not _positive(self.step):
                raise ApprenticeError(f"activation step must be a positive number or None, got {self.step!r}")
        elif self.step is not None:
            raise ApprenticeError(f"an activation step is LSQ's; the {self.quantizer!r} quantizer takes clip")

    def _check_zero_point(self) -> None:
        z = self.zero_point
        if self.quantizer not in ZERO_POINT:
            if z is not None:
                raise ApprenticeError(f"an activation zero point is the asym quantizer's, not {self.quantizer!r}'s")
            return
        if (z is None) != (self.step is None):
            raise ApprenticeError("the asym activation quantizer takes step and zero_point together (or neither)")
        if z is not None and not (isinstance(z, int) and not isinstance(z, bool) and 0 <= z <= 2**self.bits - 1):
            raise ApprenticeError(f"activation zero point must be an integer in 0..{2**self.bits - 1}, got {z!r}")

    @property
    def enabled(self) -> bool:
        return self.bits != FLOAT_BITS

    @property
    def learns_step(self) -> bool:
        """The layer holds a trainable ``act_step`` (LSQ, asym)."""
        return self.enabled and self.quantizer in LEARNED_STEP | ZERO_POINT

    @property
    def has_zero_point(self) -> bool:
        """The layer holds a ``zero_point`` buffer (asym)."""
        return self.enabled and self.quantizer in ZERO_POINT

    def describe(self) -> str:
        if not self.enabled:
            return "float"
        if self.has_zero_point:
            return f"{self.bits}-bit asym (" + ("s, z from the first batch" if self.step is None
                                                else f"s={self.step:.4g}, z={self.zero_point}") + ")"
        if self.learns_step:
            return f"{self.bits}-bit LSQ (" + ("s from the first batch" if self.step is None else f"s={self.step:.4g}") + ")"
        return f"{self.bits}-bit PACT (c={self.clip:g})" if self.learned else f"{self.bits}-bit [0, {self.clip:g}]"


def _quantize_weight(w: Tensor, spec: WeightQuant, step: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    fn = WEIGHT_QUANTIZERS[spec.quantizer]
    if spec.learns_step:
        return fn(w, spec, step)
    if step is not None:
        raise ApprenticeError(f"the {spec.quantizer!r} weight quantizer has no learned step; step= is LSQ's")
    return fn(w, spec)


def fake_quant_weight(w: Tensor, spec: WeightQuant, step: Tensor | None = None) -> Tensor:
    """Quantized weight ``codes * scale`` in the forward pass, the quantizer's STE gradient backward.

    ``step``: the learned step of an LSQ quantizer (``spec.learns_step``), else None.
    """
    surrogate, codes, scale = _quantize_weight(w, spec, step)
    return ste(surrogate, codes * scale)


@torch.no_grad()
def weight_codes(w: Tensor, spec: WeightQuant, step: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Integer codes in [−n, n] (as float) and the scale, such that ``codes * scale`` is the weight.

    The scale is a scalar tensor per layer or shaped [C_out, 1, ...] per channel (LSQ: the learned
    ``step``, floored).
    """
    _, codes, scale = _quantize_weight(w, spec, step)
    return codes, scale


def effective_clip(clip: float | Tensor) -> float | Tensor:
    """The c that `fake_quant_activation` uses: a learned (tensor) clip held at >= MIN_LEARNED_CLIP.

    A fixed (float) clip is used as given; `ActQuant` already requires it to be positive.

    Example:
        >>> round(effective_clip(torch.tensor(-0.2)).item(), 6), effective_clip(0.5)
        (0.001, 0.5)
    """
    return clip.clamp(min=MIN_LEARNED_CLIP) if isinstance(clip, Tensor) else clip


def fake_quant_activation(x: Tensor, bits: int, clip: float | Tensor) -> Tensor:
    """Clipped-ReLU k-bit activations (WRPN; PACT when ``clip`` is a learned tensor).

    y = clip(x, 0, c),  A_q = c·round(y/c·(2^k − 1))/(2^k − 1). Gradient: STE inside [0, c], zero
    outside; for a tensor c, ∂A_q/∂c = 1 where x ≥ c (PACT).

    Example:
        >>> fake_quant_activation(torch.tensor([-0.5, 0.1, 0.2, 0.5, 0.9, 1.5]), 2, 1.0).mul(3).tolist()
        [0.0, 0.0, 1.0, 2.0, 3.0, 3.0]
    """
    if bits == FLOAT_BITS:
        return x
    steps = 2**bits - 1
    if isinstance(clip, Tensor):  # PACT: the clip learns, so the clamp stays in the graph
        c = effective_clip(clip).to(x.dtype)
        y = torch.minimum(x.clamp(min=0), c)
        return ste(y, torch.round(y / c * steps) * (c / steps))
    # A fixed clip: the levels computed outside the graph in place on one buffer (clip(x/c, 0, 1) is
    # clip(x, 0, c)/c, bit for bit: the PACT path's values), the STE's window giving the clamp's
    # gradient [0 <= x <= c] in one fused backward pass; no 0/1 mask is made in the forward
    # (benchmarks/results/speed_layout.md has the step times).
    with torch.no_grad():
        q = torch.div(x, clip).clamp_(0, 1).mul_(steps).round_().mul_(clip / steps)
    return ste(x, q, (0.0, float(clip)))


ACT_QUANTIZERS: dict[str, ActQuantizerFn] = {"clip": fake_quant_activation, "lsq": lsq_activation,
                                             "asym": zero_point_activation}


# ---------------------------------------------------------------------------------------------
# The paper's precision notation
# ---------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"^(\d+)([WA])$", re.IGNORECASE)


def precision_bits(text: str) -> tuple[int, int]:
    """(weight bits, activation bits) of the paper's notation; 32 = full precision, a missing "A" part 32.

    Example:
        >>> precision_bits("3W/3A"), precision_bits("8a, 2w"), precision_bits("2W")
        ((3, 3), (2, 8), (2, 32))
    """
    bad = (f"precision {text!r} is not like '2W/32A' or '4W/8A' "
           f"(weights {MIN_BITS}..{MAX_BITS} or {FLOAT_BITS}, activations {MIN_BITS}..{MAX_BITS} or {FLOAT_BITS})")
    if not isinstance(text, str):
        raise ApprenticeError(bad)
    bits: dict[str, int] = {}
    for token in filter(None, re.split(r"[\s,/]+", text.strip())):
        m = _TOKEN.match(token)
        if not m or m.group(2).upper() in bits:
            raise ApprenticeError(bad)
        bits[m.group(2).upper()] = int(m.group(1))
    if "W" not in bits:
        raise ApprenticeError(bad)
    w_bits, a_bits = bits["W"], bits.get("A", FLOAT_BITS)
    _check_bits(w_bits, f"weight bits in precision {text!r}", allow_float=True)
    _check_bits(a_bits, f"activation bits in precision {text!r}", allow_float=True)
    return w_bits, a_bits


def parse_precision(
    text: str,
    *,
    quantizer: str | None = None,
    per_channel: bool = False,
    clip: float = 1.0,
    learned: bool = False,
    act_quantizer: str | None = None,
) -> tuple[WeightQuant | None, ActQuant]:
    """Read the paper's notation: "2W/32A" (ternary weights, float activations), "4W/8A", "3W/3A", "8A, 4W".

    Any weight and activation width 2..8 combine, or 32 (full precision). 2-bit weights mean the
    ternary (TWN) quantizer unless ``quantizer`` names another ("lsq" at 2 bits: ternary codes with a
    learned step); 32W keeps weights float; a missing activation part means 32A. ``act_quantizer``
    ("clip" or "lsq", see `ActQuant`) defaults to "lsq" when ``quantizer`` is "lsq", else "clip";
    ``clip`` and ``learned`` are the "clip" quantizer's (PACT).

    Example:
        >>> parse_precision("4W/8A")
        (WeightQuant(quantizer='uniform', bits=4, per_channel=False, threshold=0.7), ActQuant(bits=8, clip=1.0, learned=False, quantizer='clip', step=None))
        >>> parse_precision("3W/3A", quantizer="lsq")[1].describe()
        '3-bit LSQ (s from the first batch)'
    """
    w_bits, a_bits = precision_bits(text)
    weights = None
    if w_bits != FLOAT_BITS:
        weights = WeightQuant(quantizer or ("ternary" if w_bits == 2 else "uniform"), w_bits, per_channel)
    elif quantizer is not None:
        raise ApprenticeError(f"quantizer {quantizer!r} given but precision {text!r} keeps weights in full precision")
    if act_quantizer is None:
        act_quantizer = "lsq" if quantizer in LEARNED_STEP else "clip"
    if a_bits == FLOAT_BITS:  # off: one spelling of "float activations", whatever the quantizer
        act_quantizer = "clip"
    return weights, ActQuant(a_bits, clip, learned, act_quantizer)


def format_precision(weights: WeightQuant | int | None, activations: ActQuant | None) -> str:
    """The paper's notation for a layer's settings, e.g. "2W/8A".

    ``weights`` may be given as its bits alone (a packed file's map records them); None, for
    either, is full precision (32).
    """
    w_bits = FLOAT_BITS if weights is None else weights if isinstance(weights, int) else weights.bits
    return f"{w_bits}W/{FLOAT_BITS if activations is None else activations.bits}A"
