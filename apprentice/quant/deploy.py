"""Deployable graphs: fake-quantize what an integer runtime computes, so the export equals the model as trained.

Without a deploy mode a quantized layer quantizes its own input and nothing else: a residual block's
identity reads the float activation and its add is float, so an integer runtime (ONNX Runtime's
``QLinearConv``/``QLinearAdd``, which need every input and output of an op quantized) either runs
those ops in float or computes something other than the trained model. ``deploy="int8"`` makes the
training graph the integer one (`DEPLOY_MODES`):

* a tensor read by several quantized layers is quantized once: the first of them (in module order)
  owns the quantizer, the others use it (`LayerPlan.input_from`) — a block's ``conv1`` and projection;
* a residual add must be apprentice's `apprentice.quant.Add` (a plain ``+`` cannot be swapped); it
  becomes a `QAdd`: an input that is (a selection or zero-padding of) a tensor some layer quantizes
  uses that layer's quantizer — the block's identity is the very tensor ``conv1`` reads —, any other
  input (a conv's output after its BatchNorm) gets an 8-bit uint8 quantizer of its own;
* the add's output is left to the layers that read it (after a ReLU: the next block's input
  quantizer) when they all share one quantizer; otherwise (the last block, read by a float pooling
  and classifier) the add quantizes its output itself.

BatchNorm stays in training and is folded at export. Everything is found by tracing the model with
torch.fx once, when the layers are prepared; the result is recorded in the plan (checkpoints and packed
files), so reloading never traces. `integer_layers` says, layer by layer, whether the export can run
it as an integer kernel and if not why, so a user can see what to change.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from collections.abc import Collection, Mapping
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.nn import functional as F

from apprentice.errors import ApprenticeError, lookup
from apprentice.quant.add import Add, AddInput, AddPlan, QAdd
from apprentice.quant.modules import LayerPlan, _QuantMixin

__all__ = ["DEPLOY_MODES", "INTEGER_ACT_BITS", "deploy_plan", "integer_layers", "pools_read_by", "trace"]

#: Deployable graphs `prepare(deploy=...)` and ``quant.deploy`` know.
DEPLOY_MODES: dict[str, str] = {
    "int8": "ONNX Runtime's integer graph: uint8 activations (each tensor quantized once), int8 weights, "
            "int32 bias, residual adds on uint8 inputs and outputs (QLinearConv, QLinearAdd)",
}
#: Activation bits an integer kernel reads: uint8 codes whose full range is the clip (saturation at 255).
INTEGER_ACT_BITS = 8

# Ops that move, select or zero-pad elements: a quantized tensor stays on its grid through them.
_SAME_GRID_FUNCTIONS = {operator.getitem, torch.flatten, torch.reshape}
_SAME_GRID_METHODS = {"view", "reshape", "flatten", "contiguous"}
_SAME_GRID_MODULES = (nn.Identity, nn.MaxPool2d, nn.Flatten)
# Ops between a layer and the quantizer after it that the export folds or the runtime fuses (a max-pool
# module: the export quantizes its input, see `pools_read_by`; a functional one it cannot reach).
_FUSED_AFTER_LAYER = (nn.BatchNorm2d, nn.ReLU, nn.Identity, nn.MaxPool2d)
_RELUS = (nn.ReLU,)


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (_QuantMixin, Add, QAdd)) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> torch.fx.Graph:
    """The model's graph, quantized layers and adds kept as single nodes.

    Raises:
        ApprenticeError: the model cannot be traced by torch.fx (data-dependent control flow).
    """
    try:
        return _Tracer().trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure means "cannot analyse"
        raise ApprenticeError(f"a deployable graph needs a torch.fx-traceable model: {str(e).splitlines()[0]}") from None


def _module(node: torch.fx.Node, modules: Mapping[str, nn.Module]) -> nn.Module | None:
    return modules.get(node.target) if node.op == "call_module" else None  # type: ignore[arg-type]


def _same_grid(node: torch.fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    """Whether ``node`` keeps its first input's values on their quantization grid (select, move, zero-pad)."""
    if node.op == "call_function" and node.target is F.pad:
        mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
        value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None)
        return mode == "constant" and value in (None, 0, 0.0)
    if node.op == "call_function":
        return node.target in _SAME_GRID_FUNCTIONS
    if node.op == "call_method":
        return node.target in _SAME_GRID_METHODS
    return isinstance(_module(node, modules), _SAME_GRID_MODULES)


class _Graph:
    """The traced model with the plan: which layers quantize which tensor, and who owns each quantizer."""

    def __init__(self, model: nn.Module, plan: Mapping[str, Any]) -> None:
        self.graph = trace(model)
        self.plan = plan
        self.modules = dict(model.named_modules())
        order = {name: i for i, name in enumerate(self.modules)}
        calls: dict[str, int] = defaultdict(int)
        for node in self.graph.nodes:
            if node.op == "call_module":
                calls[node.target] += 1
        self.calls = calls
        readers: dict[torch.fx.Node, list[str]] = defaultdict(list)
        for node in self.graph.nodes:
            p = plan.get(node.target) if node.op == "call_module" else None
            if isinstance(p, LayerPlan) and p.activations.enabled:
                readers[node.args[0]].append(node.target)
        self.owner: dict[torch.fx.Node, str] = {}
        self.input_from: dict[str, str] = {}
        for src, names in readers.items():
            names = sorted(set(names), key=order.__getitem__)
            self.owner[src] = names[0]
            for other in names[1:]:
                same = plan[other].activations == plan[names[0]].activations
                if same and calls[other] == 1 and calls[names[0]] == 1:
                    self.input_from[other] = names[0]

    def batchnorms(self) -> dict[str, str]:
        """``{layer: the BatchNorm2d that alone reads its output}``, for the layers called once."""
        out = {}
        for node in self.graph.nodes:
            if node.op == "call_module" and self.calls[node.target] == 1 and len(node.users) == 1:
                user = next(iter(node.users))
                if isinstance(_module(user, self.modules), nn.BatchNorm2d) and self.calls[user.target] == 1:
                    out[node.target] = user.target
        return out

    def own_outputs(self, batchnorms: Mapping[str, str]) -> set[str]:
        """The quantized convs (8-bit input, called once) whose output, after their BatchNorm and any ReLU,
        goes on to something other than 8-bit quantizers and adds (a SiLU, a hard-swish, a plain '+', a
        pooling, squeeze-excitation's product): they quantize it themselves (`LayerPlan.output`, after the
        BatchNorm, so a ReLU runs on the codes' values), and the export runs them as integer kernels. An
        output that reaches a max-pool is left to `pools_read_by` (`integer_layers` says why)."""
        nodes = {n.target: n for n in self.graph.nodes if n.op == "call_module"}
        out = set()
        for name, lp in self.plan.items():
            node = nodes.get(name)
            if node is None or not isinstance(lp, LayerPlan) or lp.kind != "conv2d" or lp.weights is None \
                    or lp.activations.bits != INTEGER_ACT_BITS or self.calls[name] != 1:
                continue
            tensor = next(iter(node.users)) if name in batchnorms else node
            relu = self.after_relus(tensor)
            if relu is not tensor:  # after a ReLU: only where float ops alone read it (`_float_reason` names the rest)
                if relu.users and all(self._plain_float(u) for u in relu.users):
                    out.add(name)
                continue
            users = list(tensor.users)
            if users and not any(_fused_after(u, self.modules) for u in users) \
                    and not all(self._reads_8bit(u, tensor) for u in users):
                out.add(name)
        return out

    def _plain_float(self, user: torch.fx.Node) -> bool:
        """Whether ``user`` is a float op that no quantizer, add or max-pool is part of (a pooling for
        squeeze-excitation, its product)."""
        if user.op == "call_module":
            return user.target not in self.plan and not isinstance(
                _module(user, self.modules), (Add, QAdd, _QuantMixin, nn.Conv2d, nn.Linear, nn.MaxPool2d))
        return user.op in ("call_function", "call_method") and user.target not in (
            operator.add, torch.add, "add", "add_", F.max_pool2d, torch.max_pool2d)

    def _reads_8bit(self, user: torch.fx.Node, tensor: torch.fx.Node) -> bool:
        """Whether ``user`` (of a plan being made) quantizes ``tensor`` to 8 bits: an 8-bit layer input, or an add."""
        if isinstance(_module(user, self.modules), (Add, QAdd)):
            return True
        lp = self.plan.get(user.target) if user.op == "call_module" else None  # type: ignore[arg-type]
        return isinstance(lp, LayerPlan) and lp.activations.bits == INTEGER_ACT_BITS and user.args[0] is tensor

    def adds(self) -> list[torch.fx.Node]:
        return [n for n in self.graph.nodes if isinstance(_module(n, self.modules), (Add, QAdd))]

    def shares_owner(self, node: torch.fx.Node, user: torch.fx.Node) -> bool:
        """Whether ``user`` quantizes ``node`` with the quantizer of ``node``'s owner."""
        owner = self.owner[node]
        if user.op == "call_module" and user.target in (owner, *[k for k, v in self.input_from.items() if v == owner]):
            return user.args[0] is node
        mod = _module(user, self.modules)
        if isinstance(mod, QAdd):  # a prepared add: what its plan records
            return owner in mod.sources
        if isinstance(mod, Add):  # being planned: what add_plan will choose
            return self.source(node) is node
        return _same_grid(user, self.modules) and all(self.shares_owner(node, u) for u in user.users)

    def pools(self) -> dict[str, tuple[str | None, str]]:
        """`pools_read_by` of the traced model (found once: `_float_reason` asks for every layer)."""
        if getattr(self, "_pools", None) is not None:
            return self._pools
        out: dict[str, tuple[str | None, str]] = {}
        for node in self.graph.nodes:
            if isinstance(_module(node, self.modules), nn.MaxPool2d) and self.calls[node.target] == 1 \
                    and node in self.owner and all(self.shares_owner(node, u) for u in node.users):
                out[str(node.target)] = (self.layer_before(node.args[0]), self.owner[node])
        self._pools = out
        return out

    def layer_before(self, node: Any) -> str | None:
        """The Conv2d/Linear whose output reaches ``node`` through BatchNorm and ReLU alone, if any."""
        while isinstance(node, torch.fx.Node) and len(node.users) == 1 and _fused_after(node, self.modules) \
                and not isinstance(_module(node, self.modules), nn.MaxPool2d) and node.args:
            node = node.args[0]
        if isinstance(node, torch.fx.Node) and isinstance(_module(node, self.modules), (nn.Conv2d, nn.Linear)) \
                and len(node.users) == 1:
            return str(node.target)
        return None

    def source(self, node: Any) -> torch.fx.Node | None:
        """The quantized tensor whose grid ``node``'s values sit on: the nearest one it selects, pads or
        max-pools its values from (a block's identity after ResNet-18's stem max-pool is the tensor layer1's
        conv1 reads); None if there is none. A max-pool after a float conv does not count: that pool runs in
        float and the add quantizes the identity itself (quantizing the pool's larger input for a float conv
        measured 26 % slower in ONNX Runtime: ResNet-18, 224 px, one thread, 31 → 39 ms)."""
        while isinstance(node, torch.fx.Node):
            if node in self.owner and not self.pool_after_float(node):
                return node
            if not (_same_grid(node, self.modules) and isinstance(node.args[0], torch.fx.Node)):
                return None
            node = node.args[0]
        return None

    def pool_after_float(self, node: torch.fx.Node) -> bool:
        """Whether ``node`` is a max-pool whose input comes from a layer that is not quantized (or from no layer)."""
        if not isinstance(_module(node, self.modules), nn.MaxPool2d):
            return False
        lp = self.plan.get(self.layer_before(node.args[0]))  # type: ignore[arg-type]
        return not (isinstance(lp, LayerPlan) and lp.weights is not None and lp.activations.enabled)

    def after_relus(self, node: torch.fx.Node) -> torch.fx.Node:
        while len(node.users) == 1:
            user = next(iter(node.users))
            is_relu = isinstance(_module(user, self.modules), _RELUS) or (
                user.op == "call_function" and user.target in (F.relu, torch.relu))
            if not is_relu:
                break
            node = user
        return node

    def add_plan(self, node: torch.fx.Node, mode: str) -> AddPlan:
        inputs = []
        for arg in node.args[:2]:
            src = self.source(arg)
            inputs.append(AddInput(source=self.owner[src]) if src is not None else AddInput())
        out = self.after_relus(node)
        downstream = out in self.owner and all(self.shares_owner(out, u) for u in out.users)
        return AddPlan((inputs[0], inputs[1]), None if downstream else AddInput(), mode)


def deploy_plan(model: nn.Module, plan: Mapping[str, Any], mode: str) -> dict[str, Any]:
    """``plan`` (from `prepare`, for the float ``model``) made deployable: the layers marked with
    ``mode``, shared input quantizers (`LayerPlan.input_from`) and one `AddPlan` per `Add`.

    Raises:
        ApprenticeError: unknown mode, or a model torch.fx cannot trace.
    """
    lookup(DEPLOY_MODES, mode, "deploy mode")
    g = _Graph(model, plan)
    out: dict[str, Any] = {}
    batchnorms = g.batchnorms()
    own = g.own_outputs(batchnorms)
    for name, lp in plan.items():
        out[name] = LayerPlan(lp.kind, lp.weights, lp.activations, g.input_from.get(name), mode, batchnorms.get(name),
                              AddInput() if name in own else None)
    for node in g.adds():
        if g.calls[node.target] != 1:
            raise ApprenticeError(f"add {node.target!r} is called {g.calls[node.target]} times; give each "
                                  f"residual add its own apprentice.quant.Add module")
        out[node.target] = g.add_plan(node, mode)
    return out


def integer_layers(model: nn.Module, *, quantized_weights: Collection[str] | None = None) -> dict[str, str | None]:
    """For each Conv2d/Linear of a prepared model: None if the int8 export runs it as an integer kernel,
    else why not (one line a user can act on).

    ``quantized_weights``: the layers with integer weights, where the model cannot say (a packed
    file's model holds its weights dequantized); None: the layers' own plans.
    """
    plan = _plans(model)
    g = _Graph(model, plan)
    out: dict[str, str | None] = {}
    for node in g.graph.nodes:
        mod = _module(node, g.modules)
        if isinstance(mod, (nn.Conv2d, nn.Linear)) and node.target not in out:
            lp = plan.get(node.target)  # type: ignore[arg-type]
            integer_weights = node.target in quantized_weights if quantized_weights is not None else (
                lp is not None and lp.weights is not None)
            out[node.target] = _float_reason(node, lp, integer_weights, g)  # type: ignore[index]
    return out


def _plans(model: nn.Module) -> dict[str, Any]:
    """The recorded plan of every quantized layer and deployable add of a prepared model."""
    return {n: m.plan() for n, m in model.named_modules() if isinstance(m, (_QuantMixin, QAdd))}


def pools_read_by(model: nn.Module) -> dict[str, tuple[str | None, str]]:
    """``{max-pool: (layer before, layer after)}`` for each ``nn.MaxPool2d`` module (called once) whose output
    only the input quantizer of ``layer after`` reads (directly, through ops that keep the grid, or as a
    residual add's input); ``layer before`` is the conv whose output reaches the pool through BatchNorm
    and ReLU alone (None if there is none).

    Where ``layer before`` runs as an integer kernel, the int8 export quantizes the pool's input with the
    quantizer of ``layer after``: ONNX Runtime fuses a conv into ``QLinearConv`` only when a QuantizeLinear
    follows it (its ReLU at most between), and runs the pool on the uint8 codes. The values are the same,
    since a quantizer q is monotone and max-pooling pads with −∞: max_i q(x_i) = q(max_i x_i) (ResNet-18's
    stem: conv → BN → ReLU → max-pool → layer1). After a float conv it does not: quantizing the larger
    tensor before the pool costs time and gains no integer kernel.
    """
    return _Graph(model, _plans(model)).pools()


def _fused_after(node: torch.fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    """An op between a layer and the quantizer after it that the export folds (BatchNorm) or ONNX Runtime fuses."""
    if node.op == "call_function":
        return node.target in (F.relu, torch.relu)
    if node.op == "call_method":
        return node.target in ("relu", "relu_")
    return isinstance(_module(node, modules), _FUSED_AFTER_LAYER)


def _quantizes_8bit(user: torch.fx.Node, tensor: torch.fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    """Whether ``user`` reads ``tensor`` through an 8-bit uint8 quantizer (a layer's input, or an add's)."""
    mod = _module(user, modules)
    if isinstance(mod, QAdd):
        return True
    if not isinstance(mod, _QuantMixin) or user.args[0] is not tensor:
        return False
    return mod.plan().activations.bits == INTEGER_ACT_BITS


def _float_reason(node: torch.fx.Node, lp: LayerPlan | None, integer_weights: bool, g: _Graph) -> str | None:
    if lp is None:
        return "not quantized (kept float by the recipe's exclude or layers)"
    if lp.deploy is None:
        return "not trained deployable (quant.deploy is off)"
    if not integer_weights:
        return "its weights are float (32W)"
    if not lp.activations.enabled:
        return "its input activations are float (32A)"
    if g.calls[node.target] != 1:
        return "the module is called more than once"
    if isinstance(g.modules[node.target], nn.Linear):  # type: ignore[index]
        return None  # ONNX Runtime's QGemm may write float: the logits need no quantizer after them
    if lp.output is not None:
        return None  # it quantizes its output itself
    out, pools = node, g.pools()
    while len(out.users) == 1 and _fused_after(nxt := next(iter(out.users)), g.modules):
        if isinstance(_module(nxt, g.modules), nn.MaxPool2d) and nxt.target not in pools:
            break  # a pool the export cannot quantize before (called twice, or read by more than one quantizer)
        out = nxt
    users = list(out.users)
    if users and all(_quantizes_8bit(u, out, g.modules) for u in users):
        return None
    plain = [u.name for u in users if u.op == "call_function" and u.target in (operator.add, torch.add)]
    narrow = [(u.target, m.plan().activations.bits) for u in users
              if isinstance(m := _module(u, g.modules), _QuantMixin) and m.plan().activations.enabled]
    if narrow and not plain:
        return (f"its output goes to {narrow[0][0]}'s {narrow[0][1]}-bit input quantizer, whose clip stays a float op: "
                f"an integer kernel writes 8-bit codes (0..255), so it fuses only before an 8-bit quantizer")
    if plain:
        return (f"its output goes to a plain '+' ({plain[0]}), which stays float; write that add as an "
                f"apprentice.quant.Add module")
    what = ", ".join(sorted({str(u.target) if u.op == "call_module" else u.name for u in users})) or "the output"
    return (f"its output is not quantized after it (it goes to {what} in float): a quantized layer or an "
            f"apprentice.quant.Add must read it, after at most BatchNorm, ReLU and an nn.MaxPool2d module")
