"""Ship a genuinely small model: the packed safetensors file, written and read.

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

This module writes that file (`packed_tensors`, `save_packed`) and reads it back checked
(`read_packed`: safetensors only, no pickle; no NaN or inf). `apprentice.export.rebuild` turns
what it holds back into the model (`model_from_packed`, `load_packed`), the dequantized weights
already in place, so its logits equal the fake-quant model's. ONNX export lives in
`apprentice.export.onnx`, the size report in `apprentice.export.sizes`, bit packing in
`apprentice.export.packing`.
"""

from __future__ import annotations

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
from apprentice.export.packing import pack_codes
from apprentice.quant import (
    QUANTIZER_STATE,
    Add,
    QAdd,
    QConv2d,
    QLinear,
    effective_step,
    format_precision,
)
from apprentice.version import __version__
from apprentice.weights import check_finite

__all__ = [
    "FORMAT_VERSION", "MAP_KEY", "TERNARY_PACKINGS", "check_packed_finite", "code_packing", "find_conv_bn_pairs",
    "fp32_bytes", "layer_geometry", "package_version", "packed_tensors", "read_packed", "save_packed", "write_export",
]

#: Version of the packed file layout; `load_packed` refuses any other.
FORMAT_VERSION = 1

# ----------------------------------------------------------------------------------------------
# Model -> packed tensors + quantization map
# ----------------------------------------------------------------------------------------------

#: Safetensors metadata key holding the JSON quantization map.
MAP_KEY = "apprentice"
TERNARY_PACKINGS = ("base3", "2bit")
_BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def code_packing(bits: int, ternary_packing: str) -> str:
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
        elif isinstance(mod, (QConv2d, QLinear)):
            layers[name] = _pack_layer(name, mod, tensors, scales, ternary_packing)
    folded = _fold_batchnorm(model, tensors, layers, scales) if fold_bn else {}
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


def _pack_layer(name: str, mod: QConv2d | QLinear, tensors: dict[str, Tensor], scales: dict[str, Tensor],
                ternary_packing: str) -> dict[str, Any]:
    """One quantized layer's map entry; its float weight and quantizer state leave ``tensors`` and its
    packed codes enter them (the weight scale goes to ``scales``, which BatchNorm folding may still scale)."""
    for key in QUANTIZER_STATE:  # the values are the map's numbers (an output quantizer's too)
        tensors.pop(f"{name}.{key}", None)
        tensors.pop(f"{name}.out_quant.{key}", None)
    entry: dict[str, Any] = {"kind": mod.kind, "precision": format_precision(mod.weight_quant, mod.act_quant),
                             "geometry": layer_geometry(mod), "weights": None, "activations": _activation_entry(mod)}
    entry.update({k: v for k, v in mod.plan().to_dict().items() if k in ("input_from", "deploy", "batchnorm", "output")})
    if mod.weight_quant is not None:
        spec = mod.weight_quant
        codes, scales[name] = mod.weight_codes()
        packing = code_packing(spec.bits, ternary_packing)
        tensors.pop(f"{name}.weight")
        tensors[f"{name}.weight_codes"] = pack_codes(codes, packing)
        entry["weights"] = {
            "quantizer": spec.quantizer, "bits": spec.bits, "per_channel": spec.per_channel,
            "threshold": spec.threshold, "shape": list(mod.weight.shape),
            "count": mod.weight.numel(), "packing": packing,
        }
    return entry


def _fold_batchnorm(model: nn.Module, tensors: dict[str, Tensor], layers: dict[str, Any],
                    scales: dict[str, Tensor]) -> dict[str, str]:
    """Fold each BatchNorm that follows a conv into it (``fold_bn``): {bn name: conv name}. A quantized
    conv keeps its codes exact and takes the BatchNorm scale into its per-output-channel weight scale."""
    folded = find_conv_bn_pairs(model)
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
            scales[conv_name] = scales[conv_name] * per_out
        else:
            tensors[f"{conv_name}.weight"] = (conv.weight * per_out).contiguous()
        tensors[f"{conv_name}.bias"] = shift.detach().clone().contiguous()
        for key in _BN_KEYS:
            tensors.pop(f"{bn_name}.{key}", None)
        if conv_name in layers:  # folded: the layer's bias rounding has no BatchNorm left to take into account
            layers[conv_name].pop("batchnorm", None)
    return folded


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
    if mod.act_step is not None:  # LSQ, asym; a step no training batch has set is its placeholder, as eval uses it
        entry = {"bits": mod.act_quant.bits, "quantizer": mod.act_quant.quantizer,
                 "step": float(effective_step(mod.act_step))}
        return entry | ({"zero_point": mod.activation_zero_point()} if mod.act_quant.has_zero_point else {})
    return {"bits": mod.act_quant.bits, "clip": mod.activation_clip()}  # a learned PACT clip is frozen here


def layer_geometry(module: nn.Module) -> dict[str, Any]:
    """What a layer computes besides its weights' shape (two convs with equal weight shapes may differ here)."""
    if isinstance(module, nn.Conv2d):
        return {"in": module.in_channels, "out": module.out_channels, "stride": list(module.stride),
                "padding": list(module.padding) if not isinstance(module.padding, str) else module.padding,
                "dilation": list(module.dilation), "groups": module.groups, "padding_mode": module.padding_mode}
    return {"in": module.in_features, "out": module.out_features}


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


