"""Where a non-finite value first appeared: the layer a NaN/inf stop names.

A NaN loss says little: the value was born in one layer and spread. `locate_nonfinite` runs the
failed batch again with hooks on every module and names the first place it went wrong, in the order
the computation reached it: a module's output in the forward pass, else the gradient of a module's
output in the backward pass (the one nearest the loss, where the backward pass met it first), else
a parameter's gradient. It runs only after a step has failed, so the hooks (one host sync a module)
cost nothing in training; the model's buffers (BatchNorm statistics) and gradients are restored.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from apprentice.quant import is_quantizer_parameter

__all__ = ["collapsed_note", "collapsed_steps", "describe_module", "first_nonfinite_gradient", "locate_nonfinite"]


def _finite(t: object) -> bool:
    return not isinstance(t, Tensor) or not t.is_floating_point() or bool(torch.isfinite(t).all())


def describe_module(name: str, module: nn.Module) -> str:
    """How a stop message names a layer: ``layer 'blocks.2.conv' (QConv2d)``."""
    return f"layer {name!r} ({type(module).__name__})"


class _Watch:
    """Forward hooks on every named module: the first non-finite output, and grad hooks on the outputs."""

    def __init__(self, model: nn.Module) -> None:
        self.forward: str | None = None
        self.backward: str | None = None
        self.handles = [m.register_forward_hook(self._hook(n, m)) for n, m in model.named_modules() if n]

    def _hook(self, name: str, module: nn.Module) -> Callable:
        def on_output(_mod: nn.Module, _inputs: object, output: object) -> None:
            if not isinstance(output, Tensor):
                return
            if self.forward is None and not _finite(output):
                self.forward = f"the output of {describe_module(name, module)}"
            if output.requires_grad:
                output.register_hook(self._grad_hook(name, module))
        return on_output

    def _grad_hook(self, name: str, module: nn.Module) -> Callable:
        def on_grad(grad: Tensor) -> None:
            if self.backward is None and not _finite(grad):
                self.backward = f"the gradient of {describe_module(name, module)}'s output"
        return on_grad

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _first_bad_parameter(model: nn.Module) -> str | None:
    """Of the parameters with a non-finite gradient, the one registered last (nearest the output in most
    models, where the backward pass starts)."""
    bad = None
    for name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            if p.grad is not None and not _finite(p.grad):
                bad = f"the gradient of {describe_module(name, module)}'s parameter {p_name!r}"
    return bad


def first_nonfinite_gradient(named: list[tuple[str, nn.Module, str]], grads: list[Tensor | None]) -> str | None:
    """Name the parameter of ``named`` ``(module name, module, parameter name)`` whose gradient in ``grads``
    (same order) is non-finite, the last one if several (nearest the output); None if all are finite.

    One host sync for the whole check; the name is looked up only when one is bad.
    """
    present = [(i, g) for i, g in enumerate(grads) if g is not None]
    if not present:
        return None
    ok = torch.stack([torch.isfinite(g).all() for _, g in present])
    if bool(ok.all()):
        return None
    i = present[int(torch.nonzero(~ok).max())][0]
    name, module, p_name = named[i]
    return f"the gradient of {describe_module(name, module)}'s parameter {p_name!r}"


def collapsed_steps(model: nn.Module) -> list[str]:
    """The learned quantizer steps and clips (`QUANTIZER_PARAMETERS`) that an update pushed to or below zero,
    as ``"name = value"`` (the lowest value of a per-channel one). Such a quantizer runs at its floor (every
    value clipped) and the layers after it lose their scale: a sign that those parameters' learning rate is
    too high for their size (a step of 0.01 moved by lr 0.1), which ``optim.quant_lr_scale`` lowers and
    ``optim.quant_domain=log`` makes relative."""
    out = []
    for name, p in model.named_parameters():
        if is_quantizer_parameter(name) and p.numel() and float(p.detach().min()) <= 0:
            out.append(f"{name} = {float(p.detach().min()):.3g}")
    return out


def collapsed_note(model: nn.Module) -> str | None:
    """The sentence a non-finite stop adds when `collapsed_steps` finds any, else None."""
    collapsed = collapsed_steps(model)
    if not collapsed:
        return None
    return (f"{len(collapsed)} learned quantizer steps fell to or below zero (first: {collapsed[0]}): update them "
            f"in the log domain (optim.quant_domain=log) or lower their learning rate (optim.quant_lr_scale=0.1); in a "
            f"loop of your own, a param group of their own")


def locate_nonfinite(model: nn.Module, loss_of_batch: Callable[[], Tensor]) -> str:
    """Run one batch again and name where its first non-finite value appeared.

    Args:
        model: the module whose layers are watched (the student, or a `Distiller`).
        loss_of_batch: computes the failed batch's loss with ``model`` (forward only; this function
            runs the backward pass).

    Returns:
        e.g. "the output of layer 'features.3' (QConv2d)", "the gradient of layer 'blocks.2.0.conv_pw'
        (QConv2d)'s output", or, when the batch is finite this time (a fault that does not repeat),
        a sentence that says so. The model's buffers and gradients are as they were.
    """
    saved_buffers = [b.detach().clone() for b in model.buffers()]
    saved_grads = [(p, None if p.grad is None else p.grad.clone()) for p in model.parameters()]
    watch = _Watch(model)
    try:
        for p in model.parameters():
            p.grad = None
        loss = loss_of_batch()
        if watch.forward is not None:
            return watch.forward
        if not _finite(loss):
            return "the loss (every layer's output was finite)"
        if loss.requires_grad:
            loss.backward()
        return watch.backward or _first_bad_parameter(model) or "no layer: the batch was finite when run again"
    finally:
        watch.remove()
        with torch.no_grad():
            for b, s in zip(model.buffers(), saved_buffers):
                b.copy_(s)
        for p, g in saved_grads:
            p.grad = g
