"""Ship a genuinely small model: bit packing, the packed safetensors file, reload.

A trained student is fake-quantized: its weights are float shadow copies that each forward rounds
to integer codes times a scale. Exporting keeps only what inference needs:

* the integer codes, packed densely (`pack`: 2, 4 or 8 bits per weight; `pack_ternary_base3`:
  5 ternary weights per byte, 1.6 bits per weight) plus one float scale per layer or per output
  channel;
* float tensors for everything that was never quantized (first conv, classifier, BatchNorm);
* a JSON quantization map (safetensors metadata) saying how every layer was quantized (its
  precision, e.g. "8W/8A", and quantizer settings), including the learned PACT clip or LSQ
  activation step frozen as a number (a learned LSQ weight step is the layer's scale), and which
  architecture rebuilds the model.

`load_packed` rebuilds the model from that one file (safetensors only, no pickle) with the
dequantized weights already in place, so its logits equal the fake-quant model's. ONNX export
lives in `apprentice.export.onnx`, the size report in `apprentice.export.sizes`, bit packing in
`apprentice.export.packing`.
"""

from __future__ import annotations

import copy
import json
import math
import os
from typing import Any

import torch
import torch.fx
from safetensors import safe_open
from safetensors.torch import save
from torch import Tensor, nn

from apprentice.atomic import atomic_write_bytes
from apprentice.errors import ApprenticeError
from apprentice.export.packing import pack_codes, unpack_codes
from apprentice.models import build_model
from apprentice.quant import (
    QUANTIZER_STATE,
    ActQuant,
    Add,
    AddPlan,
    LayerPlan,
    QAdd,
    QConv2d,
    QLinear,
    apply_plan,
    effective_step,
    format_precision,
    replace_module,
    to_float,
)
from apprentice.version import __version__
from apprentice.weights import check_finite

__all__ = [
    "FORMAT_VERSION", "MAP_KEY", "TERNARY_PACKINGS", "check_packed_finite", "find_conv_bn_pairs", "fp32_bytes", "load_packed",
    "model_from_packed",
    "package_version", "packed_tensors", "read_packed", "save_packed", "write_export",
]

#: Version of the packed file layout; `load_packed` refuses any other.
FORMAT_VERSION = 1

# ----------------------------------------------------------------------------------------------
# Model -> packed tensors + quantization map, and back
# ----------------------------------------------------------------------------------------------

#: Safetensors metadata key holding the JSON quantization map.
MAP_KEY = "apprentice"
TERNARY_PACKINGS = ("base3", "2bit")
_BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _container(bits: int, ternary_packing: str) -> str:
    """Packing for k-bit codes: base3 or 2 bits for three levels, else the smallest of 4/8 bits."""
    if bits == 2:
        return ternary_packing
    return "4bit" if bits <= 4 else "8bit"


def package_version() -> str:
    """The apprentice version that writes the file (`apprentice.version.__version__`)."""
    return __version__


def fp32_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of each state-dict entry in the float32 model, the baseline the packed size is compared with.

    Quantizer state (a PACT clip, LSQ steps) is left out: the float model has none; exporting
    freezes activation values into the map as numbers and makes a weight step the layer's scale.
    """
    return {k: v.numel() * 4 if v.is_floating_point() else v.nbytes
            for k, v in model.state_dict().items() if k.rsplit(".", 1)[-1] not in QUANTIZER_STATE}


def find_conv_bn_pairs(model: nn.Module) -> dict[str, str]:
    """``{bn name: conv name}`` for every BatchNorm2d whose only input is a Conv2d used only by it.

    Found by tracing the model with torch.fx (quantized layers are kept as leaves), so it holds for
    any traceable model, not only for names like ``conv1``/``bn1``.
    """
    class _Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return isinstance(m, (QConv2d, QLinear, Add, QAdd)) or super().is_leaf_module(m, qualname)

    try:
        graph = _Tracer().trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure means "cannot fold"
        raise ApprenticeError(f"fold_bn needs a torch.fx-traceable model: {str(e).splitlines()[0]}") from None
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = {}
    for node in graph.nodes:
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, nn.BatchNorm2d) or bn.running_var is None or calls[node.target] != 1:
            continue
        src = node.args[0]
        if (isinstance(src, torch.fx.Node) and src.op == "call_module" and len(src.users) == 1
                and isinstance(modules[src.target], nn.Conv2d) and calls[src.target] == 1):
            pairs[node.target] = src.target
    return pairs


@torch.no_grad()
def packed_tensors(
    model: nn.Module, *, ternary_packing: str = "base3", fold_bn: bool = False
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors and the quantization map that `save_packed` writes, without writing them.

    For each quantized layer ``L`` the float ``L.weight`` (and quantizer state: a PACT ``L.act_clip``,
    LSQ's ``L.weight_step``, ``L.act_step``, ``L.act_step_initialized``) is replaced by
    ``L.weight_codes`` (packed uint8) and ``L.weight_scale`` (float; LSQ: the learned step); every
    other state-dict entry is kept as is. See `save_packed` for the arguments and the map layout.
    """
    if ternary_packing not in TERNARY_PACKINGS:
        raise ApprenticeError(f"ternary_packing must be one of {list(TERNARY_PACKINGS)}, got {ternary_packing!r}")
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    layers: dict[str, Any] = {}
    scales: dict[str, Tensor] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, QAdd):  # its quantizers' values are frozen into the map as numbers
            for key in [k for k in tensors if k.startswith(f"{name}.")]:
                tensors.pop(key)
            layers[name] = mod.plan().to_dict()
            continue
        if not isinstance(mod, (QConv2d, QLinear)):
            continue
        for key in QUANTIZER_STATE:
            tensors.pop(f"{name}.{key}", None)
        entry: dict[str, Any] = {"kind": mod.kind, "precision": format_precision(mod.weight_quant, mod.act_quant),
                                 "geometry": _geometry(mod), "weights": None, "activations": _activation_entry(mod)}
        entry.update({k: v for k, v in mod.plan().to_dict().items() if k in ("input_from", "deploy", "batchnorm")})
        if mod.weight_quant is not None:
            spec = mod.weight_quant
            codes, scales[name] = mod.weight_codes()
            packing = _container(spec.bits, ternary_packing)
            tensors.pop(f"{name}.weight")
            tensors[f"{name}.weight_codes"] = pack_codes(codes, packing)
            entry["weights"] = {
                "quantizer": spec.quantizer, "bits": spec.bits, "per_channel": spec.per_channel,
                "threshold": spec.threshold, "shape": list(mod.weight.shape),
                "count": mod.weight.numel(), "packing": packing,
            }
        layers[name] = entry
    folded = find_conv_bn_pairs(model) if fold_bn else {}
    modules = dict(model.named_modules())
    for bn_name, conv_name in folded.items():
        bn, conv = modules[bn_name], modules[conv_name]
        # BatchNorm in eval mode is the per-channel affine y = x * alpha + (beta - mean * alpha).
        alpha = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            alpha = alpha * bn.weight
        shift = -bn.running_mean * alpha + (bn.bias if bn.bias is not None else 0)
        if conv.bias is not None:
            shift = shift + conv.bias * alpha
        per_out = alpha.reshape(-1, 1, 1, 1)
        if conv_name in scales:
            # Codes stay exact; the BN scale goes into a per-output-channel weight scale.
            scales[conv_name] = scales[conv_name] * per_out
        else:
            tensors[f"{conv_name}.weight"] = (conv.weight * per_out).contiguous()
        tensors[f"{conv_name}.bias"] = shift.detach().clone().contiguous()
        for key in _BN_KEYS:
            tensors.pop(f"{bn_name}.{key}", None)
        if conv_name in layers:  # folded: the layer's bias rounding has no BatchNorm left to take into account
            layers[conv_name].pop("batchnorm", None)
    for name, scale in scales.items():
        tensors[f"{name}.weight_scale"] = scale.detach().cpu().contiguous()
        layers[name]["weights"]["scale_shape"] = list(scale.shape)
    qmap = {
        "format": "apprentice-packed", "format_version": FORMAT_VERSION,
        "package_version": package_version(), "arch": _arch(model),
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "layers": layers, "folded_bn": folded,
        **({"deploy": deploy} if (deploy := _deploy(layers)) else {}),
        # Recorded because a reloaded folded model has lost its BatchNorm tensors.
        "fp32_bytes": sum(fp32_bytes(model).values()),
    }
    return tensors, qmap


def _deploy(layers: dict[str, Any]) -> str | None:
    """The deployable graph every quantized layer of the map belongs to (`apprentice.quant.deploy`), or None."""
    modes = {entry.get("deploy") for entry in layers.values()}
    return modes.pop() if len(modes) == 1 else None


def _arch(model: nn.Module) -> dict[str, Any] | None:
    """``model.arch`` (what `build_model` rebuilds it from) when it is one; None for a model built by hand."""
    arch = getattr(model, "arch", None)
    return arch if isinstance(arch, dict) and isinstance(arch.get("name"), str) else None


def _activation_entry(mod: QConv2d | QLinear) -> dict[str, Any]:
    """A layer's activation quantizer with its learned value frozen as the number the forward uses now."""
    if mod.input_layer is not None:  # it uses another layer's quantizer: record that one's values
        mod = mod.input_layer[1]
    if mod.act_step is not None:  # LSQ; a step no training batch has set is its placeholder, as eval uses it
        return {"bits": mod.act_quant.bits, "quantizer": mod.act_quant.quantizer,
                "step": float(effective_step(mod.act_step))}
    return {"bits": mod.act_quant.bits, "clip": mod.activation_clip()}  # a learned PACT clip is frozen here


def _activation_settings(acts: dict, where: str) -> ActQuant:
    bits = _get(acts, "bits", int, where)
    try:
        if acts.get("quantizer", "clip") == "clip":
            return ActQuant(bits, float(_get(acts, "clip", (int, float), where)))
        return ActQuant(bits, quantizer=_get(acts, "quantizer", str, where),
                        step=float(_get(acts, "step", (int, float), where)))
    except ApprenticeError as e:
        raise _bad(where, str(e)) from None


def _bad(where: str, what: str) -> ApprenticeError:
    return ApprenticeError(f"packed model: {where}: {what}")


def _get(mapping: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise _bad(where, f"quantization map lacks {key!r}")
    value = mapping[key]
    if not isinstance(value, kind) or isinstance(value, bool):  # bool is an int to isinstance
        raise _bad(where, f"{key!r} has the wrong type ({type(value).__name__})")
    return value


def _dequantize(name: str, w: dict, tensors: dict[str, Tensor], module: nn.Module) -> Tensor:
    """Check one layer's map entry against its tensors and the module; return codes * scale."""
    where = f"layer {name!r}"
    bits = _get(w, "bits", int, where)
    packing = _get(w, "packing", str, where)
    allowed = TERNARY_PACKINGS if bits == 2 else (_container(bits, ""),)
    if not 2 <= bits <= 8 or packing not in allowed:
        raise _bad(where, f"packing {packing!r} does not fit {bits}-bit codes")
    shape, count = _get(w, "shape", list, where), _get(w, "count", int, where)
    if shape != list(module.weight.shape) or count != math.prod(shape):
        raise _bad(where, f"map says weight shape {shape} ({count} values), model has {list(module.weight.shape)}")
    codes_t, scale = tensors.pop(f"{name}.weight_codes", None), tensors.pop(f"{name}.weight_scale", None)
    if codes_t is None or scale is None:
        raise _bad(where, f"missing tensor {name}.weight_codes or {name}.weight_scale")
    scale_shape = _get(w, "scale_shape", list, where)
    if list(scale.shape) != scale_shape or scale_shape not in ([], [shape[0]] + [1] * (len(shape) - 1)):
        raise _bad(where, f"scale shape {list(scale.shape)} does not match the map ({scale_shape}) or the weight {shape}")
    if not scale.is_floating_point():
        raise _bad(where, f"scale has dtype {scale.dtype}, expected float")
    try:
        codes = unpack_codes(codes_t, packing, count)
    except ApprenticeError as e:
        raise _bad(where, str(e)) from None
    n = 2 ** (bits - 1) - 1
    if count and int(codes.abs().max()) > n:
        raise _bad(where, f"codes exceed the {bits}-bit range [-{n}, {n}]")
    return codes.view(shape).to(scale.dtype) * scale


def model_from_packed(tensors: dict[str, Tensor], qmap: dict[str, Any], model: nn.Module | None = None) -> nn.Module:
    """Rebuild the eval-mode model from `packed_tensors` output (or a file's contents).

    Quantized layers become QConv2d/QLinear with ``weights=None`` holding ``codes * scale``: the
    weights are already quantized, and re-quantizing them would change them for quantizers that
    are not idempotent (DoReFa). Their activation quantization uses the frozen clip, or the LSQ
    step from the map (held as the layer's ``act_step``, already initialised).

    Args:
        tensors, qmap: the file's tensors and quantization map.
        model: the float model to load into (a copy is made; a prepared model is turned back to
            float first). None: rebuilt from the map's ``arch`` (built-in or registered models).

    Raises:
        ApprenticeError: one line naming the key or layer that is missing, extra or inconsistent.
    """
    tensors = dict(tensors)
    if not isinstance(qmap, dict) or qmap.get("format") != "apprentice-packed":
        raise _bad("metadata", "not an apprentice packed model (format != 'apprentice-packed')")
    if qmap.get("format_version") != FORMAT_VERSION:
        raise _bad("metadata", f"unknown format_version {qmap.get('format_version')!r}; this apprentice reads {FORMAT_VERSION}")
    model = _float_template(model) if model is not None else _model_from_arch(qmap)
    # Come back in the dtype the model was saved in (float32 normally, float64 in exactness tests).
    dtypes = [t.dtype for t in tensors.values() if t.is_floating_point()]
    model.to(max(set(dtypes), key=dtypes.count) if dtypes else torch.float32)
    _unfold_placeholders(model, _get(qmap, "folded_bn", dict, "metadata"))
    integer = {k: v for k, v in tensors.items() if k.endswith((".weight_codes", ".weight_scale"))}
    plan, weights = _layer_plan(model, _get(qmap, "layers", dict, "metadata"), tensors)
    apply_plan(model, plan)
    _give_integer_weights(model, qmap["layers"], integer)
    expected = model.state_dict()
    for key in tensors:
        if key not in expected:
            raise _bad(f"tensor {key!r}", "not part of the model (extra tensor)")
    tensors.update(weights)
    for name, lp in plan.items():  # an LSQ step or an add's quantizers come from the map (numbers): as built
        if isinstance(lp, AddPlan):
            tensors.update({k: v for k, v in expected.items() if k.startswith(f"{name}.")})
        elif lp.activations.learns_step and lp.input_from is None:
            tensors[f"{name}.act_step"] = expected[f"{name}.act_step"]
            tensors[f"{name}.act_step_initialized"] = expected[f"{name}.act_step_initialized"]
    for key, ref in expected.items():
        if key not in tensors:
            raise _bad(f"tensor {key!r}", "missing from the file")
        if tensors[key].shape != ref.shape:
            raise _bad(f"tensor {key!r}", f"shape {list(tensors[key].shape)}, the model expects {list(ref.shape)}")
    model.load_state_dict(tensors, strict=True)
    return model.eval()


def _unfold_placeholders(model: nn.Module, folded: dict[str, Any]) -> None:
    """Give each folded conv a bias and drop its BatchNorm, as the file was written."""
    for bn_name, conv_name in folded.items():
        bn, conv = _submodule(model, bn_name), _submodule(model, conv_name)
        if not isinstance(bn, nn.BatchNorm2d) or type(conv) is not nn.Conv2d:
            raise _bad(f"folded_bn {bn_name!r}", f"expected a BatchNorm2d after a Conv2d {conv_name!r}")
        if conv.bias is None:
            conv.bias = nn.Parameter(conv.weight.new_zeros(conv.out_channels))
        replace_module(model, bn_name, nn.Identity())


def _layer_plan(model: nn.Module, layers: dict[str, Any],
                tensors: dict[str, Tensor]) -> tuple[dict[str, LayerPlan | AddPlan], dict[str, Tensor]]:
    """Each quantized layer's plan and dequantized weight, checked against the model layer by layer."""
    plan: dict[str, LayerPlan | AddPlan] = {}
    weights = {}
    for name, entry in layers.items():
        where = f"layer {name!r}"
        module = _submodule(model, name)
        kind = _get(entry, "kind", str, where)
        if kind == "add":
            plan[name] = _add_plan(entry, module, where)
            continue
        if (kind, type(module)) not in (("conv2d", nn.Conv2d), ("linear", nn.Linear)):
            raise _bad(where, f"map says {kind!r}, the model has {type(module).__name__}")
        geometry = entry.get("geometry")
        if geometry is not None and geometry != _geometry(module):
            diff = {k: v for k, v in _geometry(module).items() if geometry.get(k) != v}
            raise _bad(where, f"the file's layer has {', '.join(f'{k}={geometry.get(k)}' for k in diff)}, "
                              f"the model's has {', '.join(f'{k}={v}' for k, v in diff.items())}")
        shared = {k: entry.get(k) for k in ("input_from", "deploy", "batchnorm")}
        if not all(v is None or isinstance(v, str) for v in shared.values()):
            raise _bad(where, "input_from, deploy and batchnorm must be names")
        plan[name] = LayerPlan(kind, None, _activation_settings(_get(entry, "activations", dict, where), where),
                               **shared)
        if entry.get("weights") is not None:
            weights[f"{name}.weight"] = _dequantize(name, _get(entry, "weights", dict, where), tensors, module)
    return plan, weights


def _give_integer_weights(model: nn.Module, layers: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    """A deployable layer's eval forward rounds its bias as the integer graph does: it needs its codes."""
    for name, entry in layers.items():
        w = entry.get("weights")
        if entry.get("deploy") is not None and w is not None:
            codes = unpack_codes(tensors[f"{name}.weight_codes"], w["packing"], w["count"]).view(w["shape"])
            model.get_submodule(name).set_integer_weights(codes, tensors[f"{name}.weight_scale"])


def _add_plan(entry: dict[str, Any], module: nn.Module, where: str) -> AddPlan:
    if type(module) is not Add:
        raise _bad(where, f"map says 'add', the model has {type(module).__name__} (not apprentice.quant.Add)")
    try:
        return AddPlan.from_dict(entry)
    except ApprenticeError as e:
        raise _bad(where, str(e)) from None


def _geometry(module: nn.Module) -> dict[str, Any]:
    """What a layer computes besides its weights' shape (two convs with equal weight shapes may differ here)."""
    if isinstance(module, nn.Conv2d):
        return {"in": module.in_channels, "out": module.out_channels, "stride": list(module.stride),
                "padding": list(module.padding) if not isinstance(module.padding, str) else module.padding,
                "dilation": list(module.dilation), "groups": module.groups, "padding_mode": module.padding_mode}
    return {"in": module.in_features, "out": module.out_features}


def _float_template(model: nn.Module) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise ApprenticeError(f"model must be an nn.Module (the float architecture), got {type(model).__name__}")
    template = copy.deepcopy(model)
    to_float(template)
    return template


def _model_from_arch(qmap: dict[str, Any]) -> nn.Module:
    if qmap.get("arch") is None:
        raise _bad("arch", f"the file holds a model built by hand ({qmap.get('model_class', 'unknown class')}) that "
                           "apprentice cannot rebuild by itself: pass the float model, load_packed(path, model=MyNet()), "
                           "or register its class with @apprentice.register_model before training")
    arch = _get(qmap, "arch", dict, "metadata")
    try:
        return build_model(**arch)
    except TypeError as e:
        raise _bad("arch", f"cannot build {arch!r}: {e}") from None
    except ApprenticeError as e:
        raise _bad("arch", str(e)) from None


def _submodule(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise _bad(f"layer {name!r}", "the model has no such module") from None


# ----------------------------------------------------------------------------------------------
# The packed file
# ----------------------------------------------------------------------------------------------


def save_packed(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    ternary_packing: str = "base3",
    fold_bn: bool = False,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the model as one small safetensors file: packed integer codes plus a JSON map.

    Each quantized layer ``L`` (QConv2d/QLinear with weight quantization) is stored as
    ``L.weight_codes`` (uint8: 5 ternary codes a byte with "base3", else 2/4/8 bits a code, 3-bit
    codes in 4 bits and 5..7-bit codes in 8 bits) and ``L.weight_scale`` (the model's float dtype,
    shape [] per layer or [C_out, 1, ...] per channel; LSQ: the learned step). Everything else (excluded layers, biases, BatchNorm
    parameters and buffers) stays float. The safetensors metadata key ``"apprentice"`` holds the
    JSON quantization map::

        {"format": "apprentice-packed", "format_version": 1, "package_version": "0.1.0",
         "arch": {"name": "resnet20", ...},          # build_model(**arch) rebuilds the float model
         "model_class": "apprentice.models.CifarResNet",  # (arch null: built by hand, load with model=)
         "layers": {"layer1.0.conv1": {"kind": "conv2d", "precision": "2W/8A",
                    "geometry": {"in": 16, "out": 16, "stride": [1, 1], "padding": [1, 1],
                                 "dilation": [1, 1], "groups": 1, "padding_mode": "zeros"},
                    "activations": {"bits": 8, "clip": 1.73},       # a learned PACT clip, frozen
                    # LSQ: "activations": {"bits": 8, "quantizer": "lsq", "step": 0.021}
                    "weights": {"quantizer": "ternary", "bits": 2, "per_channel": false,
                                "threshold": 0.7, "shape": [16, 16, 3, 3], "count": 2304,
                                "packing": "base3", "scale_shape": []}}, ...},   # weights: null
         "folded_bn": {"layer1.0.bn1": "layer1.0.conv1", ...},     # BN -> conv it was folded into
         "fp32_bytes": 1100304,                                    # the float32 model's state dict
         "metadata": {...}}                                        # the caller's dict

    BatchNorm folding (``fold_bn=True``) replaces every BatchNorm2d that directly follows a conv
    by that conv's bias. For a float conv the weights are scaled by gamma/sigma. For a quantized
    conv the integer codes are kept exactly and gamma/sigma multiplies the scale, which therefore
    becomes per output channel: ``conv(x, codes * s) * gamma/sigma == conv(x, codes * (s * gamma/sigma))``.
    The folded model matches the unfolded one up to float rounding (the scale may be negative);
    with quantized activations that rounding can move a value sitting on a rounding tie of the
    activation grid by one step, so folded float32 logits are close rather than identical.

    Args:
        model: any ``nn.Module`` whose Conv2d/Linear layers `apprentice.quant.prepare` swapped
            (usually after training). Its ``arch`` (set by `apprentice.build_model` for built-in and
            registered models) is recorded so `load_packed` rebuilds it alone; a model built by hand
            reloads with ``load_packed(path, model=...)``. Not modified.
        path: destination; written atomically (a temporary file in the same folder, then replaced).
        ternary_packing: "base3" (1.6 bits a weight) or "2bit" for 2-bit / ternary codes.
        fold_bn: fold BatchNorm into the preceding convs.
        metadata: JSON-serialisable extras stored in the map (training config, accuracy, ...).

    Returns:
        The quantization map that was written.
    """
    tensors, qmap = packed_tensors(model, ternary_packing=ternary_packing, fold_bn=fold_bn)
    qmap["metadata"] = {} if metadata is None else metadata
    try:
        text = json.dumps(qmap, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise ApprenticeError(f"save_packed metadata must be JSON-serialisable: {e}") from None
    data = save(tensors, metadata={"format": "pt", MAP_KEY: text})
    write_export(os.fspath(path), data)
    return qmap


def write_export(path: str, data: bytes) -> None:
    """Write an exported file atomically; a missing folder is one clear error, not an OSError."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ApprenticeError(f"cannot write {path!r}: folder {folder!r} does not exist")
    atomic_write_bytes(path, data)


def read_packed(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors and the quantization map of a packed file (safetensors only, never pickle)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ApprenticeError(f"packed model file {path!r} does not exist")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    except Exception as e:  # noqa: BLE001 - safetensors raises several error types for bad files
        raise ApprenticeError(f"{path!r} is not a readable safetensors file: {str(e).splitlines()[0]}") from None
    if MAP_KEY not in meta:
        raise ApprenticeError(f"{path!r} has no apprentice quantization map (metadata key {MAP_KEY!r})")
    try:
        qmap = json.loads(meta[MAP_KEY])
    except json.JSONDecodeError as e:
        raise ApprenticeError(f"{path!r}: quantization map is not valid JSON ({e})") from None
    check_packed_finite(tensors, qmap, path)
    return tensors, qmap


def check_packed_finite(tensors: dict[str, Tensor], qmap: Any, path: str) -> None:
    """Refuse a packed file holding NaN or inf in a float tensor (a weight scale, a float layer,
    BatchNorm) or in an activation clip or step of its map: its model would load and give NaN logits.

    Raises:
        ApprenticeError: one line naming the file and the first tensors or the layer.
    """
    why = "its logits would be NaN: export the model again from a healthy run"
    check_finite(tensors, f"packed model {path!r}", why=why)
    layers = qmap.get("layers") if isinstance(qmap, dict) else None
    for name, entry in layers.items() if isinstance(layers, dict) else ():
        acts = entry.get("activations") if isinstance(entry, dict) else None
        for key in ("clip", "step"):
            value = acts.get(key) if isinstance(acts, dict) else None
            if isinstance(value, float) and not math.isfinite(value):
                raise ApprenticeError(f"packed model {path!r} holds a non-finite activation {key} ({value}) in "
                                      f"layer {name!r}; {why}")


def load_packed(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Rebuild the eval-mode model saved by `save_packed`; its logits equal the fake-quant model's.

    Args:
        path: the packed file.
        model: the float model to load into, for a model apprentice cannot rebuild by name (one you
            built by hand); checked layer by layer against the file. None: the file's recorded
            architecture is rebuilt (a built-in model, or one registered with `register_model`).

    Raises:
        ApprenticeError: unreadable file, unknown format version or model, or tensors that do
            not match the quantization map or ``model`` (one line naming the first layer or key).
    """
    tensors, qmap = read_packed(path)
    return model_from_packed(tensors, qmap, model)
