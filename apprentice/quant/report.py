"""What each layer's activation quantizer does to a batch: its kind, zero point, and how much it clips.

An unsigned quantizer ([0, c], LSQ) on a layer whose input is signed clips every negative value to 0,
silently; a clip c below the input's range saturates the rest. `activation_report` measures both on a
batch (training uses its first, the batch that calibrated the asym quantizers), so a run says which
layers got which quantizer and what each loses (printed by `apprentice.fit`, kept in metrics.jsonl).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from apprentice.quant.modules import _QuantMixin

__all__ = ["LayerClipping", "activation_report", "summarize_report"]

#: A share of clipped inputs worth a warning line (a negative value lost, or a value saturated).
WARN_SHARE = 0.01


@dataclass(frozen=True)
class LayerClipping:
    """One layer's input quantizer on a batch: ``below``/``above`` the shares of input values under its
    lowest level (−z·s; 0 for an unsigned quantizer) and over its highest; ``negative`` the share < 0."""

    quantizer: str
    zero_point: int
    below: float
    above: float
    negative: float

    @property
    def signed(self) -> bool:
        return self.zero_point > 0


@torch.no_grad()
def activation_report(model: nn.Module, images: Tensor) -> dict[str, LayerClipping]:
    """Run ``images`` through ``model`` in eval mode (its mode restored) and measure every quantized layer's input.

    Returns:
        ``{layer name: LayerClipping}`` for the layers with quantized input activations, in module order.
    """
    found: dict[str, LayerClipping] = {}

    def watch(name: str, layer: _QuantMixin):
        def hook(_mod: nn.Module, inputs: tuple) -> None:
            x = inputs[0].detach().float()
            low, high = layer.activation_range()
            found[name] = LayerClipping(layer.act_quant.quantizer, layer.activation_zero_point(),
                                        float((x < low).float().mean()), float((x > high).float().mean()),
                                        float((x < 0).float().mean()))
        return hook

    handles = [m.register_forward_pre_hook(watch(n, m)) for n, m in model.named_modules()
               if isinstance(m, _QuantMixin) and m.act_quant.enabled]
    was_training = model.training
    try:
        model.eval()(images)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return found


def summarize_report(report: dict[str, LayerClipping]) -> list[str]:
    """Console lines: how many layers got a zero point, the worst clipping, and each layer losing >= 1 %.

    Example:
        >>> summarize_report({"a": LayerClipping("asym", 12, 0.0, 0.002, 0.3), "b": LayerClipping("clip", 0, 0.35, 0.0, 0.35)})[0]
        'activation quantizers on the first batch: 1 of 2 layers signed (a zero point), 1 unsigned; clipped below / above: worst 35.0 % / 0.2 %'
    """
    if not report:
        return []
    signed = sum(r.signed for r in report.values())
    below, above = (100 * max(getattr(r, side) for r in report.values()) for side in ("below", "above"))
    lines = [(f"activation quantizers on the first batch: {signed} of {len(report)} layers signed (a zero point), "
              f"{len(report) - signed} unsigned; clipped below / above: worst {below:.1f} % / {above:.1f} %")]
    for name, r in report.items():
        if r.below >= WARN_SHARE and not r.signed:
            lines.append(f"  layer {name!r}: {100 * r.below:.1f} % of its input is negative and its unsigned "
                         f"{r.quantizer!r} quantizer makes it 0 (quant.act_quantizer=asym keeps it)")
        elif r.above >= WARN_SHARE:
            lines.append(f"  layer {name!r}: {100 * r.above:.1f} % of its input lies above its highest level "
                         f"and saturates")
    return lines
