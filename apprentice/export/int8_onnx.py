"""The integer ONNX graph of a deployable model: what ONNX Runtime runs as QLinearConv and QLinearAdd.

A model trained with ``quant.deploy: int8`` (`apprentice.quant.deploy`) fake-quantizes exactly the
tensors that an integer runtime quantizes. This module writes that graph in ONNX's QDQ form, which
ONNX Runtime's graph optimizer turns into integer operators:

* each quantized tensor once: ``QuantizeLinear -> DequantizeLinear`` with a uint8 zero point (0 for a
  layer's input: scale c/255, or LSQ's step; the add's own quantizers: their step and zero point),
  the one dequantized tensor feeding every reader (a block's conv1, projection conv and identity);
* int8 weights behind ``DequantizeLinear`` (BatchNorm folded into a per-channel scale: the codes stay
  exact, a negative BatchNorm scale flips the codes' sign so every scale is positive; 2- and 4-bit
  codes are stored as int8 too: ONNX Runtime has no sub-8-bit convolution);
* an int32 bias behind ``DequantizeLinear`` with scale s_x·s_w (per output channel), b_q = round(b / (s_x·s_w)),
  as ONNX's QLinearConv takes it.

ONNX Runtime then computes (ONNX QLinearConv, QLinearAdd; Jacob et al., CVPR 2018, eq. 7)

    y_q = saturate(round((Σ (x_q − z_x)·w_q + b_q) · s_x·s_w / s_y) + z_y),
    C_q = saturate(round((s_A·(A_q − z_A) + s_B·(B_q − z_B)) / s_C) + z_C),

which is the fake-quant model's arithmetic but for the rounding of the folded bias and of the
requantization: the two agree within integer rounding (a code that sits on a rounding tie may land
one step away).

A layer that cannot run as an integer kernel (`apprentice.quant.integer_layers` says why: float
weights or activations, activations below 8 bits, an output that no quantizer reads) is exported
exactly as the QDQ export writes it, and stays a float Conv in ONNX Runtime.
"""

from __future__ import annotations

import collections
import os
import tempfile
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from apprentice.errors import ApprenticeError
from apprentice.export.onnx_ops import ClipQuantize, DequantizeConst, QuantizeUint8
from apprentice.export.packed import find_conv_bn_pairs
from apprentice.export.packing import unpack_codes
from apprentice.export.rebuild import model_from_packed
from apprentice.quant import (
    QAdd,
    QConv2d,
    QLinear,
    integer_layers,
    pools_read_by,
    replace_module,
)
from apprentice.quant.integer import (
    bn_affine,
    folded_bias,
    integer_weights,
    rounded_bias,
)

__all__ = ["SAFE_U8S8_BITS", "describe_export", "int8_module", "quantized_layers", "runtime_ops",
           "share_quantized"]

#: Widest weights whose uint8·int8 pair sums fit int16 (2·255·63 < 2^15): exact in ONNX Runtime's u8s8 kernels on
#: x86 without VNNI (``vpmaddubsw`` saturates); 8-bit codes up to ±127 can overflow there (measured on an AVX2
#: CPU: a ResNet-18 stem at 8W/8A, 2 % of its outputs off by up to 20 steps; at 7W/8A, exact).
SAFE_U8S8_BITS = 7



class _Cache(dict):
    """One export's quantized tensors: ``(quantizer, id(x)) -> (x, quantized x)``, so a tensor read by
    several layers is quantized once in the graph (its readers share the one DequantizeLinear)."""


class _Uint8Input(nn.Module):
    """One activation quantizer of the integer graph: QuantizeLinear -> DequantizeLinear, uint8; for
    k < 8 bits a Clip at c = s·(2^k − 1) first (the uint8 codes then end at 2^k − 1).

    In a PT2E graph (``pt2e=True``) the same codes as PyTorch's ``quantized_decomposed`` int8 pair, the
    form ``convert_pt2e`` writes and ExecuTorch and LiteRT lower: int8 codes q − 128 with zero point
    z − 128 (the same values), scale and zero point as constants of the graph.
    """

    def __init__(self, scale: float, zero_point: int, cache: _Cache, bits: int = 8, pt2e: bool = False) -> None:
        super().__init__()
        self.bits = bits
        object.__setattr__(self, "_cache", cache)
        # codes round(x/s) + z in 0..2^k − 1, as int8: −128..2^k − 129
        self.pt2e = (float(scale), int(zero_point) - 128, -128, 2**bits - 129) if pt2e else None
        self.register_buffer("scale", torch.tensor(float(scale)))
        if pt2e:  # constants of the graph; LiteRT's converter cannot lift a uint8 buffer
            return
        self.register_buffer("zero_point", torch.tensor(int(zero_point), dtype=torch.uint8))
        if bits < 8:  # codes round(x/s) + z in 0..2^k − 1: x in [−z·s, (2^k − 1 − z)·s]
            self.register_buffer("low", torch.tensor(-int(zero_point) * float(scale)))
            self.register_buffer("high", torch.tensor(float(scale) * (2**bits - 1 - int(zero_point))))

    def forward(self, x: Tensor) -> Tensor:
        # In a PT2E graph, quantizers of equal settings reading one tensor (a block input read by its first
        # conv and by its residual add) share one quantize: the codes are the same, and a tensor with two
        # quantize readers cannot become one int8 kernel's int8 output in XNNPACK. Each reader then gets a
        # dequantize of its own, as convert_pt2e writes it: a dequantize with two readers split ExecuTorch's
        # XNNPACK partition at every block (9 delegate calls for ResNet-18 instead of 1; one call is 1-6 %
        # faster by file and thread count: benchmarks/README.md, "phone_speed.py").
        key = (self.pt2e if self.pt2e is not None else id(self), id(x))
        hit = self._cache.get(key)
        if hit is None or hit[0] is not x:
            if self.pt2e is not None:
                y = pt2e_codes(x, *self.pt2e)
            elif self.bits < 8:
                y = ClipQuantize.apply(x, self.low, self.high, self.scale, self.zero_point, self.bits)
            else:
                y = QuantizeUint8.apply(x, self.scale, self.zero_point)
            hit = self._cache[key] = (x, y)
        return pt2e_dequantize(hit[1], *self.pt2e) if self.pt2e is not None else hit[1]


def _fold(codes: Tensor, scale: Tensor, bias: Tensor | None,
          bn: nn.BatchNorm2d | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """(codes, unit, bias) of the integer layer: BatchNorm folded in (`apprentice.quant.integer`)."""
    alpha, shift = bn_affine(bn) if bn is not None else (None, None)
    codes, unit = integer_weights(codes.float(), scale, alpha)
    return codes, unit, folded_bias(bias, alpha, shift)


class _Int8Layer(nn.Module):
    """A Conv2d/Linear of the integer graph: uint8 input, int8 weights, int32 bias.

    In a PT2E graph (``pt2e``): the int8 codes behind ``dequantize_per_channel`` ("folded", as
    ``convert_pt2e`` writes them), or as ``convert_pt2e(fold_quantize=False)`` writes them, the float
    codes·scale behind ``quantize_per_channel -> dequantize_per_channel`` ("unfolded"; round(codes·s/s)
    = codes exactly); zero points 0, codes −127..127; the bias as the float b_q·s_x·s_w, which the runtime quantizes back to b_q (XNNPACK and
    LiteRT take a float bias beside int8 weights and derive its int32 codes themselves).
    """

    def __init__(self, module: nn.Module, codes: Tensor, scale: Tensor, bias: Tensor | None,
                 act: _Uint8Input, pt2e: str | None = None) -> None:
        super().__init__()
        self.conv = module if isinstance(module, nn.Conv2d) else None
        self.act = act
        self.pt2e = pt2e
        self.register_buffer("codes", codes.round().to(torch.int8))
        self.axis = 0 if scale.dim() else None
        if pt2e:  # one scale per output channel always: per_tensor's scale would have to be a Python float
            scale = scale.expand(codes.shape[0]).contiguous()
            if pt2e == "unfolded" or self.conv is None:  # folded: see pt2e_weights
                self.register_buffer("weight", self.codes.float() * scale.view(-1, *[1] * (codes.dim() - 1)))
        self.register_buffer("scale", scale)
        self.register_buffer("zero", torch.zeros(scale.shape, dtype=torch.int64 if pt2e else torch.int8))
        self.has_bias = bias is not None
        if bias is not None:
            q, bias_scale = rounded_bias(bias, float(act.scale), scale)  # int32 codes, s_x·s_w per channel
            if pt2e:
                self.register_buffer("bias", (q * bias_scale).contiguous())
            else:
                self.register_buffer("bias_codes", q.to(torch.int32))
                self.register_buffer("bias_scale", bias_scale.contiguous())
                self.register_buffer("bias_zero", torch.zeros(bias.shape, dtype=torch.int32))

    def quantize_input(self, x: Tensor) -> Tensor:
        return self.act(x)

    def _weights(self) -> tuple[Tensor, Tensor | None]:
        if self.pt2e:
            return pt2e_weights(self), self.bias if self.has_bias else None
        w = DequantizeConst.apply(self.codes, self.scale, self.zero, self.axis)
        b = DequantizeConst.apply(self.bias_codes, self.bias_scale, self.bias_zero, 0) if self.has_bias else None
        return w, b

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(x)
        w, b = self._weights()
        if self.conv is None:
            return F.linear(x, w, b)
        c = self.conv
        return F.conv2d(x, w, b, c.stride, c.padding, c.dilation, c.groups)


def _decomposed() -> Any:
    """``torch.ops.quantized_decomposed``, defined by the module that registers it on first import."""
    import torch.ao.quantization.fx._decomposed  # registers the ops

    return torch.ops.quantized_decomposed


def pt2e_weights(layer: nn.Module) -> Tensor:
    """A layer's per-output-channel int8 weights as a PT2E graph carries them: its int8 ``codes``
    behind dq ("folded"), or its float ``weight`` behind q -> dq ("unfolded"; `_Int8Layer`); zero points
    ``zero``, scales ``scale``. A folded linear carries codes·scale as plain float constants (the same
    values): its float logits are no int8 output, so XNNPACK would not take an int8 linear and the
    partitioner would leave it, with a dequantize of its weights on every call, to the portable kernels;
    as a float linear on the dequantized input it is delegated (measured: ResNet-18's classifier)."""
    ops = _decomposed()
    args = (layer.scale, layer.zero, 0, -127, 127, torch.int8)
    if getattr(layer, "pt2e", None) == "folded" and hasattr(layer, "weight"):
        return layer.weight
    if hasattr(layer, "weight"):
        return ops.dequantize_per_channel(ops.quantize_per_channel(layer.weight, *args), *args)
    return ops.dequantize_per_channel(layer.codes, *args)


def pt2e_codes(x: Tensor, scale: float, zero_point: int, low: int, high: int) -> Tensor:
    """The int8 codes clamp(round(x/s) + z, low, high) of PyTorch's ``quantized_decomposed``
    ``quantize_per_tensor``: the first node of the pair a PT2E graph carries for each quantized tensor."""
    return _decomposed().quantize_per_tensor(x, scale, zero_point, low, high, torch.int8)


def pt2e_dequantize(codes: Tensor, scale: float, zero_point: int, low: int, high: int) -> Tensor:
    """(codes − z)·s, ``dequantize_per_tensor``: the pair's second node, one per reader of the codes."""
    return _decomposed().dequantize_per_tensor(codes, scale, zero_point, low, high, torch.int8)


class _Int8Add(nn.Module):
    """A residual add of the integer graph: uint8 inputs (a layer's input quantizer or its own), output."""

    def __init__(self, name: str, add: QAdd, layers: dict[str, nn.Module],
                 quantizer: Callable[[float, int], _Uint8Input]) -> None:
        super().__init__()
        plan = add.plan()
        own = [i for i in (*plan.inputs, plan.output) if i is not None and i.source is None]
        if any(i.step is None for i in own):
            raise ApprenticeError(f"add {name!r}: its quantizers are not calibrated yet (no training batch has run "
                                  f"through it); train, or run one batch in train mode, before exporting")
        self.own = nn.ModuleDict({k: quantizer(i.step, i.zero_point)  # type: ignore[arg-type]
                                  for k, i in zip(("a", "b", "out"), (*plan.inputs, plan.output))
                                  if i is not None and i.source is None})
        # An input quantized by a layer's input quantizer: that layer's, called on this tensor.
        object.__setattr__(self, "_quantize", [layers[i.source].quantize_input if i.source is not None else self.own[k]
                                               for k, i in zip("ab", plan.inputs)])

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        y = self._quantize[0](a) + self._quantize[1](b)
        return self.own["out"](y) if "out" in self.own else y


class _QuantizedPool(nn.Module):
    """A max-pool whose input is quantized with the quantizer of the layer reading its output
    (`apprentice.quant.pools_read_by`): the conv before it ends in a QuantizeLinear (QLinearConv) and
    ONNX Runtime pools the uint8 codes; the same values, as quantizing and max-pooling commute."""

    def __init__(self, pool: nn.Module, act: _Uint8Input) -> None:
        super().__init__()
        self.pool, self.act = pool, act

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.act(x))


class _Root(nn.Module):
    """The export model: clears the cache of quantized tensors around each forward."""

    def __init__(self, model: nn.Module, cache: _Cache) -> None:
        super().__init__()
        self.model = model
        object.__setattr__(self, "_cache", cache)

    def forward(self, x: Tensor) -> Tensor:
        self._cache.clear()
        try:
            return self.model(x)
        finally:
            self._cache.clear()


def _codes(tensors: dict[str, Tensor], name: str, entry: dict[str, Any]) -> tuple[Tensor, Tensor]:
    w = entry["weights"]
    codes = unpack_codes(tensors[f"{name}.weight_codes"], w["packing"], w["count"]).view(w["shape"])
    return codes, tensors[f"{name}.weight_scale"].to(torch.float32)


def int8_module(tensors: dict[str, Tensor], qmap: dict[str, Any], template: nn.Module | None,
                fallback: Callable[[nn.Module, Tensor | None, Tensor | None], nn.Module], *, pt2e: str | None = None,
                ) -> tuple[nn.Module, dict[str, str | None]]:
    """The export model of a deployable packed model, and ``{layer: None | why it stays float}``.

    ``fallback(module, codes, scale)`` builds the QDQ export's layer for a layer that cannot be integer.
    ``pt2e``: the quantized tensors as PyTorch's ``quantized_decomposed`` int8 ops instead of ONNX's
    QDQ pair, for ``torch.export`` (`apprentice.export.pt2e`), the weights "folded" (int8 constants
    behind ``dequantize_per_channel``: ExecuTorch's XNNPACK partitioner) or "unfolded" (float weights
    behind ``quantize_per_channel -> dequantize_per_channel``: LiteRT's converter).
    """
    model = model_from_packed(tensors, qmap, template).float()
    entries = qmap["layers"]
    reasons = integer_layers(model, quantized_weights={n for n, e in entries.items() if e.get("weights")})
    pools = pools_read_by(model)
    bn_of = {conv: bn for bn, conv in find_conv_bn_pairs(model).items()}
    cache, built = _Cache(), {}

    def quantizer(scale: float, zero_point: int, bits: int = 8) -> _Uint8Input:
        return _Uint8Input(scale, zero_point, cache, bits, pt2e=pt2e is not None)

    owners: dict[str, _Uint8Input] = {}
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (QConv2d, QLinear))}
    for name, module in sorted(layers.items(), key=lambda kv: kv[1].input_layer is not None):
        entry = entries[name]
        codes, scale = _codes(tensors, name, entry) if entry.get("weights") else (None, None)
        bn = model.get_submodule(bn_of[name]) if name in bn_of and codes is not None else None
        if codes is not None:
            codes, scale, bias = _fold(codes, scale, module.bias, bn)  # type: ignore[arg-type]
        if reasons.get(name) is not None:
            if codes is not None:  # the bias the model adds: rounded where its eval forward rounds it
                if bias is not None and module.bias_correction() is not None:
                    q, bias_scale = rounded_bias(bias, module.activation_scale(), scale)
                    bias = q * bias_scale
                module.bias = None if bias is None else nn.Parameter(bias)
            built[name] = fallback(module, None if codes is None else codes.to(torch.int8), scale)
        else:
            owner = module.input_layer[0] if module.input_layer is not None else name
            if owner not in owners:
                owners[owner] = quantizer(layers[owner].activation_scale(), layers[owner].activation_zero_point(),
                                          layers[owner].act_quant.bits)
            built[name] = _Int8Layer(module, codes, scale, bias, act=owners[owner], pt2e=pt2e)  # type: ignore[arg-type]
            if module.out_quant is not None:  # its own output quantizer: the integer kernel writes uint8 codes
                out = module.out_quant.setting()
                if out.step is None:
                    raise ApprenticeError(f"layer {name!r}: its output quantizer is not calibrated yet (no training "
                                          f"batch has run)")
                built[name] = nn.Sequential(built[name], quantizer(out.step, out.zero_point))
        if bn is not None:
            replace_module(model, bn_of[name], nn.Identity())
        replace_module(model, name, built[name])
    for name, add in [(n, m) for n, m in model.named_modules() if isinstance(m, QAdd)]:
        replace_module(model, name, _Int8Add(name, add, built, quantizer))
    for pool, (before, reader) in pools.items():
        if before is None or reasons.get(before, "not quantized") is not None:
            continue  # after a float conv, quantizing before the pool gains no integer kernel and costs time
        if reader not in owners:  # its reader stays float: quantized before the pool all the same (exact)
            owners[reader] = quantizer(layers[reader].activation_scale(), layers[reader].activation_zero_point(),
                                       layers[reader].act_quant.bits)
        replace_module(model, pool, _QuantizedPool(model.get_submodule(pool), owners[reader]))
    return _Root(model, cache).eval(), reasons


# ONNX ops that select, move or zero-pad elements: a tensor on a quantization grid stays on it.
_SAME_GRID_OPS = frozenset({"Slice", "Pad", "Reshape", "Flatten", "MaxPool", "Identity", "Squeeze", "Unsqueeze"})


def share_quantized(graph: Any) -> int:
    """Make a quantized tensor's other readers read its dequantized value, where they lead to the same quantizer.

    A block's zero-padded shortcut (option A) slices and pads the block input, which conv1 quantizes,
    and the add quantizes the padded tensor with conv1's quantizer again. Read from the dequantized
    block input instead, the values are the same (the grid is kept and re-quantizing on it changes
    nothing), and the block input has one reader left, the QuantizeLinear: ONNX Runtime fuses the
    ReLU before it and the add before that into QLinearAdd. Returns the number of readers moved.
    """
    readers: dict[str, list[Any]] = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)
    moved = 0
    for q in [n for n in graph.node if n.op_type == "QuantizeLinear"]:
        dq = next((d for d in readers[q.output[0]] if d.op_type == "DequantizeLinear" and d.input[1:] == q.input[1:]), None)
        if dq is None:
            continue
        for node in readers[q.input[0]]:
            if node is not q and node.op_type in _SAME_GRID_OPS and _ends_in(node, q, readers):
                node.input[0] = dq.output[0]
                moved += 1
    if moved:
        _sort(graph)
    return moved


def _sort(graph: Any) -> None:
    """Order the nodes so each comes after the producers of its inputs (ONNX requires it), else as they were."""
    made = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = next(n for n in pending if all(i in made for i in n.input))
        pending.remove(ready)
        ordered.append(ready)
        made.update(ready.output)
    copies = [type(n)() for n in ordered]
    for c, n in zip(copies, ordered):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)


def _ends_in(node: Any, q: Any, readers: dict[str, list[Any]]) -> bool:
    """Whether ``node``'s output reaches, through same-grid ops alone, only QuantizeLinears like ``q``."""
    nxt = readers[node.output[0]]
    return bool(nxt) and all(
        (n.op_type == "QuantizeLinear" and n.input[1:] == q.input[1:])
        or (n.op_type in _SAME_GRID_OPS and n.input[0] == node.output[0] and _ends_in(n, q, readers)) for n in nxt)


def runtime_ops(path: str, optimized_path: str) -> dict[str, Any]:
    """What ONNX Runtime (CPU, all graph optimizations) makes of an exported file: op counts of the
    optimized graph and the layers whose Conv/Gemm/MatMul stayed float (by the exporter's node names)."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = optimized_path
    so.log_severity_level = 3  # the NCHWc "hardware specific" note when saving the optimized graph
    ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    nodes = onnx.load(optimized_path).graph.node
    floats = [n.name for n in nodes if n.op_type in ("Conv", "FusedConv", "Gemm", "MatMul", "FusedGemm", "FusedMatMul")]
    return {"ops": dict(collections.Counter(n.op_type for n in nodes).most_common()),
            "float_layers": sorted({_layer_name(n) for n in floats})}


def _layer_name(node_name: str) -> str:
    """``/model/blocks/blocks.0/pointwise/pointwise.0/Conv`` -> ``blocks.0.pointwise.0`` (the exporter's scopes:
    one per module, a child of a container named ``container.index``)."""
    parts = [p for p in node_name[node_name.find("/"):].split("/") if p][:-1]  # ORT prefixes fused nodes' names
    if parts and parts[0] == "model":
        parts = parts[1:]
    full, prev = "", ""
    for p in parts:
        full = full + p[len(prev):] if prev and p.startswith(prev + ".") else (f"{full}.{p}" if full else p)
        prev = p
    return full or node_name


def quantized_layers(qmap: dict[str, Any]) -> list[str]:
    """The quantized convs and linears of a quantization map (its residual adds left out), in its order."""
    return [n for n, e in qmap["layers"].items() if e.get("kind") != "add"]


def describe_export(qmap: dict[str, Any], path: str | os.PathLike) -> list[str]:
    """Lines saying which graph `export_onnx` wrote, which quantized layers stay float and why, and
    (with onnxruntime installed) what ONNX Runtime's optimized graph holds."""
    info = qmap.get("onnx", {})
    if info.get("mode") == "qdq":
        return [("QDQ graph: the model was not trained with quant.deploy=int8; ONNX Runtime makes a conv an "
                "integer kernel only where its input, weights and output are all quantized, so a conv whose output "
                "no quantizer reads (before a residual add, before pooling) runs in float; train or fine-tune "
                "with quant.deploy=int8 for an integer graph")]
    floats = info.get("float_layers", {})
    quantized = quantized_layers(qmap)
    lines = [(f"int8 graph: {len([n for n in quantized if n not in floats])} of {len(quantized)} quantized layers "
             f"run as integer kernels in ONNX Runtime")]
    lines += [f"  float: {name}: {why}" for name, why in floats.items()]
    wide = [n for n in quantized if n not in floats and (qmap["layers"][n].get("weights") or {}).get("bits", 0) > SAFE_U8S8_BITS]
    if wide:
        lines.append(f"  note: {', '.join(wide)} {'has' if len(wide) == 1 else 'have'} 8-bit weights: ONNX Runtime's u8s8 "
                     f"kernels on x86 CPUs without VNNI add two uint8·int8 products in int16, which can saturate, so "
                     f"these layers can differ from the model there; weights of at most {SAFE_U8S8_BITS} bits are exact")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            check = runtime_ops(os.fspath(path), os.path.join(tmp, "optimized.onnx"))
    except ImportError:
        return lines
    ops = check["ops"]
    found = [f"{ops[op]} {op}" for op in ("QLinearConv", "QLinearAdd", "QGemm", "Conv", "FusedConv", "Gemm") if ops.get(op)]
    float_layers = f"; float: {', '.join(check['float_layers'])}" if check["float_layers"] else ""
    return lines + [f"ONNX Runtime's optimized graph: {', '.join(found)}{float_layers}"]
