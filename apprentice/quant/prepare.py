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
from apprentice.quant.add import Add, AddPlan, QAdd
from apprentice.quant.deploy import deploy_plan
from apprentice.quant.modules import _QMODULES, LayerPlan, _QuantMixin
from apprentice.quant.quantizers import (
    ACT_QUANTIZERS,
    FIXED_SCALE,
    FLOAT_BITS,
    LEARNED_STEP,
    ActQuant,
    WeightQuant,
    parse_precision,
    precision_bits,
)

__all__ = [
    "DEFAULT_EXCLUDE", "LayerRules", "LayerSettings", "Plan", "apply_plan", "default_act_quantizer",
    "default_per_channel", "paper_quantization", "parse_layer_rules", "plan_from_dict",
    "prepare", "quantized_layers", "replace_module", "to_float",
]

DEFAULT_EXCLUDE: tuple[str, ...] = ("@first", "@last")
"""Keep the first and the last Conv2d/Linear (in registration order) in full precision, as the paper does."""


LayerSettings = tuple[WeightQuant | None, ActQuant]
"""One layer's quantizer settings: weights (None = float) and input activations."""
LayerRules = Mapping[str, "str | LayerSettings"] | Sequence[tuple[str, "str | LayerSettings"]]
"""Ordered (layer-name pattern -> precision text or settings) rules; the first match wins."""
Plan = dict[str, "LayerPlan | AddPlan"]
"""A model's quantization: ``{module name: LayerPlan}`` for layers, `AddPlan` for a deployable graph's adds."""


def paper_quantization(model: nn.Module) -> bool:
    """Whether ``model`` takes the paper's automatic choices (class attribute ``paper_quantization``: the
    built-in ResNets), else the ones made for modern networks (`default_per_channel`, `default_act_quantizer`)."""
    return bool(getattr(model, "paper_quantization", False))


def default_per_channel(model: nn.Module, quantizer: str | None = None) -> bool:
    """The weight scale that ``per_channel=None`` (``quant.per_channel: null``) picks for ``model``.

    One scale per output channel, unless the model takes the paper's choices (`paper_quantization`:
    the built-in ResNets, one scale per layer) or the quantizer's scale is fixed ("wrpn"). Why per
    channel for every other network: at one scale per layer, a few large weights round every other
    channel's weights to zero, and the BatchNorm after such a dead channel divides by √ε, so its
    weights' gradient is ~300× too large and the next step kills more channels. timm's EfficientNet-B0
    at 4W/8A diverged that way (NaN gradient at step 3, up to every channel of some depthwise and
    pointwise convs zero); per channel it trains. Per-channel weight scales are the usual choice for
    depthwise networks (Krishnamoorthi 2018, "Quantizing deep convolutional networks for efficient
    inference: a whitepaper", sec. 3.1) and cost the integer export nothing: folding BatchNorm gives
    every conv per-channel scales anyway.
    """
    return quantizer not in FIXED_SCALE and not paper_quantization(model)


def default_act_quantizer(model: nn.Module, quantizer: str | None = None) -> str | None:
    """The activation quantizer that ``act_quantizer=None`` (``quant.act_quantizer: null``) picks for ``model``.

    None — `parse_precision`'s own choice, unsigned: "lsq" beside LSQ weights, else "clip" [0, c] — for
    a model that takes the paper's choices (`paper_quantization`: every quantized layer of the
    built-in ResNets reads a ReLU's output); "asym" for any other model, so each layer's zero point
    comes from the range its first training batch shows: z = 0 (unsigned) after a ReLU, z > 0 where
    the input is signed (SiLU, hard-swish, GELU, squeeze-excitation, linear bottlenecks, depthwise
    outputs without a ReLU), which an unsigned quantizer would clip to 0 (on torchvision's
    MobileNetV3-Small, 37 of 52 quantized layers read signed inputs, about 35 % of their values < 0).
    """
    del quantizer  # every weight quantizer pairs with asym activations (its step learns as LSQ's)
    return None if paper_quantization(model) else "asym"


def _candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if n and type(m) in (nn.Conv2d, nn.Linear)]


def _hits(pattern: str, names: list[str]) -> list[str]:
    if pattern == "@first":
        return names[:1]
    if pattern == "@last":
        return names[-1:]
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def _no_match(what: str, pattern: str, names: list[str]) -> ApprenticeError:
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    return ApprenticeError(f"{what} pattern {pattern!r} matches no Conv2d/Linear layer (layers: {shown})")


def _match(patterns: Sequence[str], names: list[str], what: str) -> set[str]:
    if isinstance(patterns, str):
        raise ApprenticeError(f"{what} must be a list of patterns, got the string {patterns!r}")
    matched: set[str] = set()
    for p in patterns:
        hits = _hits(p, names)
        if not hits:
            raise _no_match(what, p, names)
        matched.update(hits)
    return matched


def _rule_settings(pattern: str, value: object, options: Mapping[str, object]) -> LayerSettings:
    if isinstance(value, str):
        opts = dict(options)
        text, _, last = value.strip().rpartition(" ")
        if text and last in ACT_QUANTIZERS:  # "4W/8A asym": this rule's own activation quantizer
            value, opts["act_quantizer"] = text, last
        w_bits, _ = precision_bits(value)
        if w_bits == FLOAT_BITS:  # a float-weights rule in a shared list: the weight quantizer is not its
            if opts.get("act_quantizer") is None:
                opts["act_quantizer"] = "lsq" if opts.get("quantizer") in LEARNED_STEP else "clip"
            opts["quantizer"] = None
        return parse_precision(value, **opts)  # type: ignore[arg-type]
    if (isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[1], ActQuant)
            and (value[0] is None or isinstance(value[0], WeightQuant))):
        return value[0], value[1]
    raise ApprenticeError(f"layers rule {pattern!r}: expected a precision like '4W/8A' or a (WeightQuant | None, "
                          f"ActQuant) pair, got {value!r}")


def parse_layer_rules(rules: LayerRules, **options: object) -> list[tuple[str, LayerSettings]]:
    """Per-layer precision rules as settings, in order: ``[(pattern, (weights, activations)), ...]``.

    ``rules`` is a mapping (YAML keeps its order) or a list of pairs; a value is precision text
    (optionally followed by an activation quantizer of its own, a word of ``ACT_QUANTIZERS``:
    ``"4W/8A asym"``, ``"4W/8A clip"``),
    read by `parse_precision` with ``options`` (``quantizer``, ``per_channel``, ``clip``, ``learned``,
    ``act_quantizer``; in a "32W/..." rule the weight quantizer is ignored, as the rule keeps weights
    float), or a ``(WeightQuant | None, ActQuant)`` pair taken as is.

    Example:
        >>> [(p, w.bits, a.bits) for p, (w, a) in parse_layer_rules({"conv1": "8W/8A", "*": "2W/8A"})]
        [('conv1', 8, 8), ('*', 2, 8)]
    """
    if isinstance(rules, Mapping):
        pairs = list(rules.items())
    elif isinstance(rules, Sequence) and not isinstance(rules, str) and all(
            isinstance(r, (tuple, list)) and len(r) == 2 for r in rules):
        pairs = [tuple(r) for r in rules]
    else:
        raise ApprenticeError(f"layers must be a mapping or a list of (pattern, precision) pairs, got {rules!r}")
    out = []
    for pattern, value in pairs:
        if not isinstance(pattern, str) or not pattern:
            raise ApprenticeError(f"layers rule pattern must be a non-empty string, got {pattern!r}")
        out.append((pattern, _rule_settings(pattern, value, options)))
    return out


def _default_settings(precision: str | None, weights: WeightQuant | None, activations: ActQuant | None,
                      options: Mapping[str, object]) -> LayerSettings:
    if precision is not None:
        if weights is not None or activations is not None:
            raise ApprenticeError("give either precision or weights/activations settings, not both")
        return parse_precision(precision, **options)  # type: ignore[arg-type]
    activations = ActQuant() if activations is None else activations
    if weights is not None and not isinstance(weights, WeightQuant):
        raise ApprenticeError(f"weights must be a WeightQuant or None, got {type(weights).__name__}")
    if not isinstance(activations, ActQuant):
        raise ApprenticeError(f"activations must be an ActQuant or None, got {type(activations).__name__}")
    return weights, activations


def _float(settings: LayerSettings) -> bool:
    return settings[0] is None and not settings[1].enabled


def _excluded(exclude: Sequence[str] | None, names: list[str], rules: list[tuple[str, LayerSettings]]) -> set[str]:
    """Layers kept float: ``exclude``'s, or the default @first/@last less the layers a rule names exactly."""
    named = {n for p, _ in rules if p in ("@first", "@last") or p in names for n in _hits(p, names)}
    if exclude is None:
        return _match(DEFAULT_EXCLUDE, names, "exclude") - named
    excluded = _match(exclude, names, "exclude")
    clash = sorted(excluded & named)
    if clash:
        raise ApprenticeError(f"layer {clash[0]!r} is named by a layers rule and also matched by exclude; "
                              f"remove one of the two")
    return excluded


def _assign(names: list[str], chosen: set[str], rules: list[tuple[str, LayerSettings]],
            default: LayerSettings | None) -> dict[str, LayerSettings]:
    """First matching rule per chosen layer, else ``default``; every rule must apply to some layer."""
    hits = [set(_hits(p, names)) for p, _ in rules]
    for (pattern, _), h in zip(rules, hits):
        if not h:
            raise _no_match("layers", pattern, names)
    out: dict[str, LayerSettings] = {}
    used = [False] * len(rules)
    for name in names:
        if name not in chosen:
            continue
        i = next((i for i, h in enumerate(hits) if name in h), None)
        if i is not None:
            used[i] = True
        settings = default if i is None else rules[i][1]
        if settings is not None and not _float(settings):
            out[name] = settings
    for (pattern, _), u in zip(rules, used):
        if not u:
            raise ApprenticeError(
                f"layers rule {pattern!r} applies to no layer: an earlier rule takes every layer it matches, "
                f"or they are excluded (the first conv and the classifier are quantized only by a rule "
                f"naming them exactly, e.g. 'conv1' or '@last')")
    return out


def prepare(
    model: nn.Module,
    precision: str | None = None,
    *,
    weights: WeightQuant | None = None,
    activations: ActQuant | None = None,
    include: Sequence[str] = ("*",),
    exclude: Sequence[str] | None = None,
    layers: LayerRules | None = None,
    deploy: str | None = None,
    per_channel: bool | None = None,
    act_quantizer: str | None = None,
) -> Plan:
    """Quantize a model in place by swapping its Conv2d/Linear layers for QConv2d/QLinear.

    Give ``precision`` in the paper's notation ("2W/32A", "4W/8A") or explicit ``weights`` and
    ``activations`` settings, and/or per-layer ``layers`` rules. Layers are chosen by dotted name
    with fnmatch patterns; the special patterns "@first" and "@last" name the first and last
    Conv2d/Linear in registration order, and the default ``exclude`` (:data:`DEFAULT_EXCLUDE`) keeps
    those two in full precision. A pattern that matches no layer is an error (a typo would
    otherwise quantize the wrong layers).

    Per-layer precision: ``layers`` is an ordered list (or mapping) of ``(pattern, precision text or
    (WeightQuant | None, ActQuant))`` rules (`parse_layer_rules` reads texts with quantizer options);
    each layer takes the first rule that matches it, and a layer no rule matches takes ``precision``
    (or ``weights``/``activations``) if given, else stays float. A "32W/32A" rule keeps layers float.
    How rules meet the exclusions: ``include`` and ``exclude`` still choose which layers may be
    quantized; the *default* exclude spares a layer that a rule names exactly (its full name,
    "@first" or "@last": ``("conv1", "8W/8A")`` quantizes the first conv, ``("*", ...)`` does not);
    an explicit ``exclude`` that matches a layer a rule names exactly is an error. Every rule must
    decide at least one layer; one that matches none, or only layers taken by earlier rules or
    excluded, is an error.

    Automatic choices: ``per_channel`` and ``act_quantizer`` apply to settings given as text
    (``precision`` and ``layers`` rules); None picks `default_per_channel` (per output channel) and
    `default_act_quantizer` ("asym": a zero point where a layer's input is signed), except for the
    built-in ResNets, which keep the paper's (one weight scale per layer, unsigned activations).
    Settings given as `WeightQuant`/`ActQuant` objects keep their own.

    Deployable graph: ``deploy="int8"`` (`apprentice.quant.deploy.DEPLOY_MODES`) also fake-quantizes
    what the integer graph of the ONNX export quantizes — each tensor once, the residual adds written
    as `apprentice.quant.Add` (swapped for `QAdd`: quantized inputs and output) —, so the export runs
    every such layer as an integer kernel and equals the model as trained. None (default): off; the
    model and its state dict are exactly as without it.

    Returns:
        ``{layer name: LayerPlan}`` of the layers swapped, in module order (with ``deploy``: then
        ``{add name: AddPlan}``); empty for a full-precision setting.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(64, 2))
        >>> list(prepare(net, "2W/8A"))
        ['2']
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(64, 2))
        >>> {n: p.weights.bits for n, p in prepare(net, layers=[("0", "8W/8A"), ("*", "2W/8A")]).items()}
        {'0': 8, '2': 2}
    """
    given = precision is not None or weights is not None or activations is not None
    options = {"per_channel": default_per_channel(model) if per_channel is None else per_channel,
               "act_quantizer": default_act_quantizer(model) if act_quantizer is None else act_quantizer}
    default = _default_settings(precision, weights, activations, options) if given or layers is None else None
    rules = [] if layers is None else parse_layer_rules(layers, **options)
    already = [n for n, m in model.named_modules() if isinstance(m, (_QuantMixin, QAdd))]
    if already:
        raise ApprenticeError(f"model is already quantized (layer {already[0]!r}); call to_float(model) first")
    if not rules and default is not None and _float(default):
        return {}
    names = [n for n, _ in _candidates(model)]
    if not names:
        raise ApprenticeError("model has no Conv2d or Linear layer to quantize")
    chosen = _match(include, names, "include") - _excluded(exclude, names, rules)
    settings = _assign(names, chosen, rules, default)
    if not settings:
        raise ApprenticeError("include/exclude patterns and layers rules leave no layer to quantize")
    modules = dict(_candidates(model))
    plan: Plan = {n: LayerPlan("conv2d" if isinstance(modules[n], nn.Conv2d) else "linear", w, a)
                  for n, (w, a) in settings.items()}
    if deploy is not None:
        plan = deploy_plan(model, plan, deploy)
    apply_plan(model, plan)
    return plan


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` in place of the submodule at dotted ``name`` (the one module-swap primitive)."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _planned_module(model: nn.Module, name: str, kind: str) -> nn.Module:
    try:
        mod = model.get_submodule(name)
    except AttributeError:
        raise ApprenticeError(f"quantization plan names layer {name!r}, which the model does not have") from None
    float_cls = {"add": Add, "batchnorm": nn.BatchNorm2d}.get(kind) or lookup(_QMODULES, kind, "layer kind")[0]
    if type(mod) is not float_cls:
        raise ApprenticeError(f"quantization plan says layer {name!r} is a float {kind}, "
                              f"but the model has {type(mod).__name__}")
    return mod


def apply_plan(model: nn.Module, plan: Mapping[str, LayerPlan | AddPlan]) -> None:
    """Swap exactly the layers (and adds) named in ``plan`` (from :func:`prepare` or a checkpoint), in place.

    Layers with their own input quantizer come first, then those that use another's
    (`LayerPlan.input_from`), then the adds, which may use any layer's.
    """
    layers = {n: p for n, p in plan.items() if isinstance(p, LayerPlan)}
    swapped: dict[str, nn.Module] = {}
    for name, lp in sorted(layers.items(), key=lambda kv: kv[1].input_from is not None):
        mod = _planned_module(model, name, lp.kind)
        shared = None
        if lp.input_from is not None:
            if not isinstance(layers.get(lp.input_from), LayerPlan) or layers[lp.input_from].input_from is not None:
                raise ApprenticeError(f"layer {name!r} uses the input quantizer of {lp.input_from!r}, "
                                      f"which the plan does not quantize with its own")
            shared = (lp.input_from, swapped[lp.input_from])
        bn = None
        if lp.batchnorm is not None:
            bn = (lp.batchnorm, _planned_module(model, lp.batchnorm, "batchnorm"))
        q_cls = _QMODULES[lp.kind][1]
        swapped[name] = q_cls.from_float(mod, lp.weights, lp.activations, deploy=lp.deploy, input_layer=shared,
                                         batchnorm=bn, output=lp.output)
        replace_module(model, name, swapped[name])
    for name, ap in plan.items():
        if isinstance(ap, AddPlan):
            _planned_module(model, name, "add")
            replace_module(model, name, QAdd(ap, swapped))
        elif not isinstance(ap, LayerPlan):
            raise ApprenticeError(f"quantization plan entry {name!r} is a {type(ap).__name__}, not a LayerPlan or AddPlan")


def plan_from_dict(d: Mapping) -> LayerPlan | AddPlan:
    """One plan entry read back from its ``to_dict()`` form (checkpoints)."""
    if isinstance(d, Mapping) and d.get("kind") == "add":
        return AddPlan.from_dict(d)
    return LayerPlan.from_dict(d)


def quantized_layers(model: nn.Module) -> Plan:
    """The plan of an already prepared model: ``{layer name: LayerPlan}`` (and `AddPlan` for its `QAdd`)."""
    return {n: m.plan() for n, m in model.named_modules() if isinstance(m, (_QuantMixin, QAdd))}


def to_float(model: nn.Module) -> list[str]:
    """Swap every quantized layer (and add) back to its float module (shadow weights), in place; return their names."""
    names = [n for n, m in model.named_modules() if isinstance(m, (_QuantMixin, QAdd))]
    for n in names:
        replace_module(model, n, model.get_submodule(n).to_float())
    return names
