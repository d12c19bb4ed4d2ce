"""Bytes on disk: the packed safetensors file against the float32 safetensors state dict.

For each model (random weights; sizes do not depend on the values) and each weight setting, the
float model's ``state_dict()`` is written with ``safetensors.torch.save_file`` and the prepared
(fake-quantized) copy with ``apprentice.export.save_packed``; both files are measured with
``os.path.getsize``. The quantized layers alone are compared from the size report's rows (codes +
scales + bias of every quantized layer against the float32 bytes of the same weights and biases).
Activations do not change the file, so every setting uses 32-bit activations. ``prepare`` keeps its
default exclusions (the first conv and the classifier stay float), except in the "ternary-8bit-ends"
setting, whose per-layer rules quantize them at 8 bits (as LSQ does) and the rest ternary.

The export issue's goal: ternary inner (quantized) layers at least 19x smaller than float32.

    .venv/bin/python benchmarks/size.py            # ~1 min on 2 cores
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stamp import markdown_table, stamp, stamp_markdown, write_results

import apprentice as ap
from apprentice.export import save_packed, size_report, size_totals

#: name -> (build_model kwargs, input shape C,H,W)
MODELS = {
    "resnet20": ({"name": "resnet20", "num_classes": 10, "in_channels": 3}, (3, 32, 32)),
    "resnet56": ({"name": "resnet56", "num_classes": 10, "in_channels": 3}, (3, 32, 32)),
    "resnet18": ({"name": "resnet18", "num_classes": 1000, "in_channels": 3}, (3, 224, 224)),
    "resnet50": ({"name": "resnet50", "num_classes": 1000, "in_channels": 3}, (3, 224, 224)),
}
#: setting label -> (precision, ternary_packing, per-layer rules for `prepare(layers=...)` or None)
SETTINGS = {
    "ternary-2bit": ("2W/32A", "2bit", None),
    "ternary-base3": ("2W/32A", "base3", None),
    "4bit": ("4W/32A", "base3", None),
    "8bit": ("8W/32A", "base3", None),
    "ternary-8bit-ends": ("2W/32A", "base3", [("@first", "8W/32A"), ("@last", "8W/32A")]),
}
GOAL = 19.0


def measure(model_name: str, setting: str, tmp: str, seed: int) -> dict:
    kwargs, shape = MODELS[model_name]
    precision, packing, layers = SETTINGS[setting]
    torch.manual_seed(seed)
    float_model = ap.build_model(**kwargs).eval()
    fp32_path = os.path.join(tmp, f"{model_name}_fp32.safetensors")
    save_file({k: v.contiguous() for k, v in float_model.state_dict().items()}, fp32_path)
    student = copy.deepcopy(float_model)
    plan = ap.prepare(student, precision, layers=layers)
    packed_path = os.path.join(tmp, f"{model_name}_{setting}.safetensors")
    save_packed(student, packed_path, ternary_packing=packing)
    rows = size_report(student, ternary_packing=packing)
    t = size_totals(rows)
    fp32_file, packed_file = os.path.getsize(fp32_path), os.path.getsize(packed_path)
    with open(packed_path, "rb") as f:
        header = 8 + int.from_bytes(f.read(8), "little")  # safetensors: u64 length + JSON header
    os.unlink(packed_path)
    q_ratio = t["quantized_ratio"]
    return {
        "model": model_name, "setting": setting, "precision": precision,
        "packing": packing if precision.startswith("2W") else ("4bit" if precision.startswith("4W") else "8bit"),
        "layers": layers,
        "input_shape": list(shape), "num_classes": kwargs["num_classes"],
        "params": sum(v.numel() for v in float_model.state_dict().values() if v.is_floating_point()),
        "quantized_layers": len(plan), "float_layers": [r.name for r in rows if not r.quantized and r.name != "(other)"],
        "fp32_file_bytes": fp32_file, "packed_file_bytes": packed_file,
        "packed_header_bytes": header,
        "file_ratio": round(fp32_file / packed_file, 3),
        "quantized_params": int(t["quantized_params"]),
        "quantized_fp32_bytes": int(t["quantized_fp32_bytes"]),
        "quantized_packed_bytes": int(t["quantized_packed_bytes"]),
        "quantized_code_bytes": sum(r.code_bytes for r in rows if r.quantized),
        "quantized_ratio": round(q_ratio, 3),
        "report_packed_bytes": int(t["packed_bytes"]), "report_fp32_bytes": int(t["fp32_bytes"]),
        "goal_19x_met": (q_ratio >= GOAL) if precision.startswith("2W") and not layers else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "size.json"),
                   help="result JSON; a .md table is written next to it (default benchmarks/results/size.json)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    st = stamp()
    t0 = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in args.models:
            for s in args.settings:
                r = measure(m, s, tmp, args.seed)
                results.append(r)
                print(f"{m:9s} {s:14s} fp32 {r['fp32_file_bytes']:>12,} B  packed {r['packed_file_bytes']:>11,} B  "
                      f"file {r['file_ratio']:6.2f}x  quantized layers {r['quantized_ratio']:6.2f}x", flush=True)
    out = {"benchmark": "size", "stamp": st, "size_report_from": size_report.__module__, "goal": f"ternary quantized layers >= {GOAL}x smaller than float32",
           "seconds": round(time.perf_counter() - t0, 1), "results": results}
    table = markdown_table(
        ["model", "weights", "packing", "FP32 file B", "packed file B", "file ratio",
         "quantized layers FP32 B", "quantized layers packed B", "quantized ratio", ">= 19x"],
        [[r["model"], r["precision"].split("/")[0] + (" (8W first/last)" if r["layers"] else ""), r["packing"], f"{r['fp32_file_bytes']:,}",
          f"{r['packed_file_bytes']:,}", f"{r['file_ratio']:.2f}x", f"{r['quantized_fp32_bytes']:,}",
          f"{r['quantized_packed_bytes']:,}", f"{r['quantized_ratio']:.2f}x",
          "-" if r["goal_19x_met"] is None else ("yes" if r["goal_19x_met"] else "no")] for r in results])
    md = (f"# Size on disk: packed safetensors vs float32 safetensors\n\n{stamp_markdown(st)}\n\n"
          f"Random weights; first conv and classifier stay float (prepare's default exclusions) except in "
          f"\"ternary-8bit-ends\" (8-bit first conv and classifier, ternary elsewhere); 32-bit "
          f"activations (they do not change the file). \"Quantized ratio\" is float32 bytes of the quantized "
          f"layers over their packed bytes (codes + scale + bias), from the size report. "
          f"Goal: ternary >= {GOAL}x.\n\n{table}\n")
    write_results(args.out, out, md, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
