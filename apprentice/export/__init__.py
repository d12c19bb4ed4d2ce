"""Export: bit packing, the packed safetensors file (and its reload), ONNX with integer weights, sizes.

- `apprentice.export.packing`: integer codes packed 2/4/8 bits per weight or 5 ternary weights a byte.
- `apprentice.export.packed`: `save_packed`/`read_packed`, the one-file artifact with its quantization map.
- `apprentice.export.rebuild`: `load_packed`/`model_from_packed`, the model rebuilt from that file.
- `apprentice.export.onnx`: `export_onnx`, a QDQ graph with int8 weight initializers (extra ``onnx``).
- `apprentice.export.sizes`: the per-layer size report of ``apprentice info``.
"""

from apprentice.export.onnx import DEFAULT_OPSET, export_onnx
from apprentice.export.packed import (
    FORMAT_VERSION,
    MAP_KEY,
    TERNARY_PACKINGS,
    find_conv_bn_pairs,
    fp32_bytes,
    package_version,
    packed_tensors,
    read_packed,
    save_packed,
)
from apprentice.export.packing import (
    PACKINGS,
    pack,
    pack_codes,
    pack_ternary_base3,
    packed_length,
    unpack,
    unpack_codes,
    unpack_ternary_base3,
)
from apprentice.export.rebuild import load_packed, model_from_packed
from apprentice.export.sizes import (
    SizeRow,
    format_size_report,
    size_report,
    size_totals,
)

__all__ = [
    "DEFAULT_OPSET", "FORMAT_VERSION", "MAP_KEY", "PACKINGS", "TERNARY_PACKINGS", "SizeRow", "export_onnx",
    "find_conv_bn_pairs",
    "format_size_report", "fp32_bytes", "load_packed", "model_from_packed", "pack", "pack_codes",
    "pack_ternary_base3", "package_version", "packed_length", "packed_tensors", "read_packed", "save_packed",
    "size_report", "size_totals", "unpack", "unpack_codes", "unpack_ternary_base3",
]
