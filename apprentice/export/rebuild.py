"""A model rebuilt from a packed file: `model_from_packed` and `load_packed`.

The file's quantization map (`apprentice.export.packed`) says how each layer was quantized; each
entry is checked against the tensors and against the model it is loaded into (kind, geometry,
shapes, code range) before a weight is placed, so a damaged or foreign file is one line naming the
first layer or key that does not fit, never a model that silently computes something else.
"""

from __future__ import annotations

import copy
import math
import os
from typing import Any

import torch
from torch import Tensor, nn

from apprentice.errors import ApprenticeError
from apprentice.export.packed import (
    FORMAT_VERSION,
    TERNARY_PACKINGS,
    code_packing,
    layer_geometry,
    read_packed,
)
from apprentice.export.packing import unpack_codes
from apprentice.models import build_model
from apprentice.quant import (
    ZERO_POINT,
    ActQuant,
    Add,
    AddInput,
    AddPlan,
    LayerPlan,
    apply_plan,
    replace_module,
    to_float,
)

__all__ = ["load_packed", "model_from_packed"]


def _activation_settings(acts: dict, where: str) -> ActQuant:
    bits = _get(acts, "bits", int, where)
    try:
        if acts.get("quantizer", "clip") == "clip":
            return ActQuant(bits, float(_get(acts, "clip", (int, float), where)))
        quantizer = _get(acts, "quantizer", str, where)
        zero = _get(acts, "zero_point", int, where) if quantizer in ZERO_POINT else None
        return ActQuant(bits, quantizer=quantizer, step=float(_get(acts, "step", (int, float), where)), zero_point=zero)
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
    allowed = TERNARY_PACKINGS if bits == 2 else (code_packing(bits, ""),)
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
    step (and asym's zero point) from the map (held as the layer's ``act_step``, already initialised).

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
            if lp.activations.has_zero_point:
                tensors[f"{name}.zero_point"] = expected[f"{name}.zero_point"]
        if isinstance(lp, LayerPlan) and lp.output is not None:
            tensors.update({k: v for k, v in expected.items() if k.startswith(f"{name}.out_quant.")})
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
        if geometry is not None and geometry != layer_geometry(module):
            diff = {k: v for k, v in layer_geometry(module).items() if geometry.get(k) != v}
            raise _bad(where, f"the file's layer has {', '.join(f'{k}={geometry.get(k)}' for k in diff)}, "
                              f"the model's has {', '.join(f'{k}={v}' for k, v in diff.items())}")
        shared = {k: entry.get(k) for k in ("input_from", "deploy", "batchnorm")}
        if not all(v is None or isinstance(v, str) for v in shared.values()):
            raise _bad(where, "input_from, deploy and batchnorm must be names")
        plan[name] = LayerPlan(kind, None, _activation_settings(_get(entry, "activations", dict, where), where),
                               **shared, output=_output_setting(entry.get("output"), where))
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


def _output_setting(output: Any, where: str) -> AddInput | None:
    """A deployable layer's own output quantizer (`LayerPlan.output`), from the map's numbers."""
    if output is None:
        return None
    try:
        if not isinstance(output, dict):
            raise ApprenticeError("a mapping of step and zero_point")
        return AddInput(**output)
    except (ApprenticeError, TypeError) as e:
        raise _bad(where, f"output quantizer: {e}") from None


def _add_plan(entry: dict[str, Any], module: nn.Module, where: str) -> AddPlan:
    if type(module) is not Add:
        raise _bad(where, f"map says 'add', the model has {type(module).__name__} (not apprentice.quant.Add)")
    try:
        return AddPlan.from_dict(entry)
    except ApprenticeError as e:
        raise _bad(where, str(e)) from None




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
