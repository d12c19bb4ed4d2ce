"""How much smaller the packed model is: per-layer storage against float32.

`size_report` measures the very tensors `apprentice.export.save_packed` writes, layer by layer;
`size_totals` sums them, and `format_size_report` prints them as a table (``apprentice info``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from apprentice.export.packed import fp32_bytes, packed_tensors
from apprentice.quant import format_precision

__all__ = ["SizeRow", "format_size_report", "size_report", "size_totals"]


@dataclass(frozen=True)
class SizeRow:
    """Storage of one Conv2d/Linear layer (or of all other tensors, ``name="(other)"``).

    Attributes:
        name: dotted layer name, or "(other)" for BatchNorm and every tensor outside the layers.
        shape: weight shape (empty for "(other)").
        precision: paper notation, e.g. "2W/8A"; "32W/32A" for a float layer.
        packing: "base3", "2bit", "4bit", "8bit", or "float".
        params: values stored (weight + bias, or all elements of the other tensors).
        code_bytes: bytes of packed integer codes alone (0 for float layers).
        packed_bytes: bytes in the packed file (codes + scales + bias, or float tensors).
        fp32_bytes: bytes of the same values in the float32 model.
    """

    name: str
    shape: tuple[int, ...]
    precision: str
    packing: str
    params: int
    code_bytes: int
    packed_bytes: int
    fp32_bytes: int

    @property
    def quantized(self) -> bool:
        return self.packing != "float"


def size_report(model: nn.Module, *, ternary_packing: str = "base3", fold_bn: bool = False) -> list[SizeRow]:
    """Per-layer storage of the packed model against float32, from the very tensors `save_packed` writes.

    Returns one row per Conv2d/Linear layer in module order, then one "(other)" row; see
    `size_totals` for sums and ratios and `format_size_report` for a printable table.
    """
    tensors, qmap = packed_tensors(model, ternary_packing=ternary_packing, fold_bn=fold_bn)
    fp32 = fp32_bytes(model)
    rows = []
    for name, mod in model.named_modules():
        if not isinstance(mod, (nn.Conv2d, nn.Linear)):
            continue
        entry = qmap["layers"].get(name)
        weights = entry["weights"] if entry else None
        parts = ("weight", "weight_codes", "weight_scale", "bias")
        stored = {p: tensors.pop(f"{name}.{p}") for p in parts if f"{name}.{p}" in tensors}
        params = mod.weight.numel() + (stored["bias"].numel() if "bias" in stored else 0)
        precision = format_precision(mod.weight_quant, mod.act_quant) if entry else format_precision(None, None)
        rows.append(SizeRow(
            name, tuple(mod.weight.shape), precision, weights["packing"] if weights else "float", params,
            stored["weight_codes"].nbytes if weights else 0, sum(t.nbytes for t in stored.values()),
            sum(fp32.pop(f"{name}.{p}", 0) for p in ("weight", "bias")),
        ))
    rows.append(SizeRow("(other)", (), "", "float", sum(t.numel() for t in tensors.values()), 0,
                        sum(t.nbytes for t in tensors.values()), sum(fp32.values())))
    return rows


def size_totals(rows: list[SizeRow]) -> dict[str, float]:
    """Sums and compression ratios of `size_report` rows, for the whole model and the quantized layers.

    Keys: ``params``, ``packed_bytes``, ``fp32_bytes``, ``ratio`` (fp32 / packed), and the same
    with a ``quantized_`` prefix for the layers with quantized weights alone.
    """
    out: dict[str, float] = {}
    for prefix, chosen in (("", rows), ("quantized_", [r for r in rows if r.quantized])):
        packed, full = sum(r.packed_bytes for r in chosen), sum(r.fp32_bytes for r in chosen)
        out[f"{prefix}params"] = sum(r.params for r in chosen)
        out[f"{prefix}packed_bytes"], out[f"{prefix}fp32_bytes"] = packed, full
        out[f"{prefix}ratio"] = full / packed if packed else float("nan")
    return out


def format_size_report(rows: list[SizeRow]) -> str:
    """A plain-text table of `size_report` rows with totals for the quantized layers and the model."""
    head = ("layer", "shape", "precision", "packing", "params", "packed B", "fp32 B", "ratio")
    table = [head] + [
        (r.name, "x".join(map(str, r.shape)), r.precision, r.packing, f"{r.params:,}",
         f"{r.packed_bytes:,}", f"{r.fp32_bytes:,}",
         f"{r.fp32_bytes / r.packed_bytes:.1f}x" if r.packed_bytes else "-")
        for r in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
             for line in table]
    t = size_totals(rows)
    for label, p in (("quantized layers", "quantized_"), ("whole model", "")):
        ratio = f"{t[p + 'ratio']:.1f}x smaller" if t[p + "packed_bytes"] else "none"
        lines.append(f"{label}: {int(t[p + 'params']):,} params, {int(t[p + 'packed_bytes']):,} B packed "
                     f"vs {int(t[p + 'fp32_bytes']):,} B fp32 ({ratio})")
    return "\n".join(lines)
