"""CPU latency of the exported ONNX models in ONNX Runtime and OpenVINO, against PyTorch and ORT FP32.

For each model and precision (random weights; latency does not depend on their values), the
variants of `VARIANTS`:

* ``torch-fp32``, ``torch-fakequant``: PyTorch eager, ``eval()``, ``inference_mode``: the float model,
  and the deployable student (``prepare(..., deploy="int8")``, calibrated by one train-mode batch);
* ``ort-fp32``: the float model exported to ONNX (BatchNorm folded by the exporter) in ONNX Runtime;
* ``ort-anchor``: ONNX Runtime's own ``quantize_static`` int8 model of that float file (QDQ, uint8
  activations, int8 per-channel weights) — what an integer graph should match;
* ``ort-int8``: apprentice's int8 export of the deployable student (QLinearConv/QLinearAdd);
* ``ort-qdq``: apprentice's QDQ export (``--fold-bn``) of the same precision without ``deploy``
  (today's graph: convs before residual adds stay float);
* ``ort-int8-ends8``, ``ov-int8-ends8``: the int8 export of the same deployable student with its first
  conv and classifier at 8-bit activations too (`ENDS8`), which is what the anchor quantizes: the
  like-for-like comparison (the plain int8 rows keep them float). The stem's weights are 7-bit: 8-bit
  ones can saturate ONNX Runtime's u8s8 kernels on x86 without VNNI (``SAFE_U8S8_BITS``); the kernel
  and its time are the same;
* ``ov-fp32``, ``ov-anchor``, ``ov-int8``: the fp32, anchor and int8 files in OpenVINO (CPU), when the
  optional extra ``openvino`` is installed.

Protocol: per (model, precision, threads, batch) every variant is built and warmed up (``--warmup``
calls), then timed ``--runs`` times in alternation (variant 1, 2, ..., 1, 2, ...), so a change in
machine load touches every variant alike; median, p10 and p90 of ``time.perf_counter`` wall times.
Torch, ORT (intra-op threads, one inter-op thread, sequential) and OpenVINO (inference threads) get
the same thread count, each count of ``--threads`` in turn. Beside each timing: the op counts of the
graph ONNX Runtime runs (``SessionOptions.optimized_model_filepath``) or the precision of each
convolution OpenVINO runs, and for int8 rows the top-1 agreement and largest logit difference with
the fake-quant student on the timing input. The 1-minute load average is recorded before every cell.

    .venv/bin/python benchmarks/onnx_speed.py --wait-load 0.5 --wait-max 1200   # see benchmarks/README.md
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runtimes import (
    openvino_available,
    openvino_convs,
    openvino_runner,
    ort_anchor,
    ort_ops,
    ort_runner,
)
from _stamp import load_average, markdown_table, stamp, stamp_markdown, write_results
from _timing import (
    pinned_threads,
    quiet_sentence,
    summarize,
    timing_arguments,
    wait_quiet,
)

import apprentice as ap
from apprentice.export import export_onnx

#: name -> (build_model kwargs, input shape C,H,W); "tiny" is for the tests.
MODELS = {
    "resnet20": ({"name": "resnet20", "num_classes": 10, "in_channels": 3}, (3, 32, 32)),
    "resnet18": ({"name": "resnet18", "num_classes": 1000, "in_channels": 3}, (3, 224, 224)),
    "tiny": ({"name": "resnet8", "num_classes": 10, "in_channels": 1, "width": 0.5, "shortcut": "B"}, (1, 16, 16)),
}
#: variant -> (runtime, ONNX file it runs or None for PyTorch)
VARIANTS = {
    "torch-fp32": ("torch", None), "torch-fakequant": ("torch", None),
    "ort-fp32": ("ort", "fp32"), "ort-anchor": ("ort", "anchor"), "ort-int8": ("ort", "int8"), "ort-qdq": ("ort", "qdq"),
    "ov-fp32": ("openvino", "fp32"), "ov-anchor": ("openvino", "anchor"), "ov-int8": ("openvino", "int8"),
    "ort-int8-ends8": ("ort", "int8e"), "ov-int8-ends8": ("openvino", "int8e"),
}
# The deployable student with its first conv and classifier quantized too (like the anchor, which
# quantizes every conv and the classifier); the plain int8 variants keep them float, as trained by default.
# 7-bit stem weights: exact in ORT's u8s8 kernels on CPUs without VNNI (the classifier's QGemm was exact at 8).
ENDS8 = [("@first", "7W/8A"), ("@last", "8W/8A")]
CHECKED = {"int8": "student", "int8e": "student8"}  # integer files, and the fake-quant model each must equal
BASELINE = "ort-fp32"


def build_files(model_name: str, precision: str, tmp: str, seed: int) -> tuple[dict[str, Any], dict[str, str]]:
    """The float model, the calibrated deployable student, and the ONNX files of every variant."""
    kwargs, shape = MODELS[model_name]
    torch.manual_seed(seed)
    float_model = ap.build_model(**kwargs).eval()
    student, student8 = copy.deepcopy(float_model), copy.deepcopy(float_model)
    ap.prepare(student, precision, deploy="int8")
    ap.prepare(student8, precision, deploy="int8", layers=ENDS8)
    plain = copy.deepcopy(float_model)
    ap.prepare(plain, precision)
    with torch.no_grad():  # one train-mode batch calibrates the adds' quantizers (and moves BN statistics)
        for m in (student, student8):
            m.train()(torch.randn(8, *shape, generator=torch.Generator().manual_seed(seed)))
            m.eval()
    stem = os.path.join(tmp, f"{model_name}_{precision.replace('/', '_')}")
    files = {k: f"{stem}_{k}.onnx" for k in ("fp32", "anchor", "int8", "int8e", "qdq")}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(float_model, (torch.zeros(1, *shape),), files["fp32"], dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        export_onnx(student, files["int8"], input_shape=shape)
        export_onnx(student8, files["int8e"], input_shape=shape)
        export_onnx(plain.eval(), files["qdq"], input_shape=shape, fold_bn=True)
    ort_anchor(files["fp32"], files["anchor"], (1, *shape), seed=seed)
    return {"float": float_model, "student": student, "student8": student8}, files


def runners(variants: list[str], models: dict[str, Any], files: dict[str, str],
            threads: int) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    out: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    for v in variants:
        runtime, file = VARIANTS[v]
        if runtime == "torch":
            m = models["float" if v == "torch-fp32" else "student"]
            out[v] = lambda x, m=m: m(torch.from_numpy(x)).numpy()
        elif runtime == "ort":
            out[v] = ort_runner(files[file], threads)
        else:
            out[v] = openvino_runner(files[file], threads)
    return out


def graph_info(variant: str, files: dict[str, str], threads: int) -> dict[str, Any]:
    """Op counts (ONNX Runtime) or conv precisions (OpenVINO) of what a variant runs."""
    runtime, file = VARIANTS[variant]
    if runtime == "ort":
        return {"ops_after_optimization": ort_ops(files[file], threads)}
    if runtime == "openvino":
        return {"openvino_layers": openvino_convs(files[file], threads)}
    return {}


def time_alternating(fns: dict[str, Callable[[], Any]], *, warmup: int, runs: int,
                     pause_ms: float = 0.0, pin: int = 1) -> dict[str, dict[str, Any]]:
    """Wall-clock ms of each ``fn()``: ``warmup`` calls each, then ``runs`` rounds calling each once in turn.

    ``pause_ms`` of idle time (not timed) precede each call: with several threads every runtime's pool
    (OpenMP in PyTorch, ONNX Runtime's, OpenVINO's) spins for a while after its call before it sleeps,
    and without the pause those spinning threads take the cores from the next variant (measured on
    the 2-core VM without it: PyTorch FP32 ResNet-20 at 2 threads 83 ms against 8 ms at 1 thread).
    ``pin``: the thread count to pin the process's threads for after the warm-up (`pinned_threads`; 1: none)."""
    load_before = load_average()
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    with pinned_threads(pin) as pinning:
        for _ in range(runs):
            for k, fn in fns.items():
                time.sleep(pause_ms / 1e3)
                t0 = time.perf_counter()
                fn()
                times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: {**summarize(t), "warmup": warmup, "load_average_before": load_before, "pinning": pinning}
            for k, t in times.items()}


def bench_cell(model_name: str, precision: str, threads: int, batch: int, variants: list[str], models: dict,
               files: dict[str, str], args: argparse.Namespace) -> list[dict]:
    """Every variant at one thread count and batch size, timed in alternation."""
    torch.set_num_threads(threads)
    _, shape = MODELS[model_name]
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(batch)).numpy()
    run = runners(variants, models, files, threads)
    with torch.inference_mode():
        reference = {k: models[k](torch.from_numpy(x)).numpy() for k in CHECKED.values()}
        timings = time_alternating({v: (lambda f=f: f(x)) for v, f in run.items()}, warmup=args.warmup, runs=args.runs,
                                   pause_ms=args.pause_ms, pin=threads if args.pin else 1)
        outputs = {v: run[v](x) for v in variants if VARIANTS[v][1] in CHECKED}
    rows = []
    for v in variants:
        check = {}
        if v in outputs:
            ref = reference[CHECKED[VARIANTS[v][1]]]
            check = {"max_abs_diff_vs_fakequant": float(np.abs(outputs[v] - ref).max()),
                     "top1_agreement_vs_fakequant": float((outputs[v].argmax(1) == ref.argmax(1)).mean())}
        row = {"model": model_name, "input_shape": list(shape), "precision": precision, "variant": v, "batch": batch,
               "threads": threads, **timings[v], **graph_info(v, files, threads), **check}
        rows.append(row)
        print(f"{model_name:9s} {precision:6s} t{threads} b{batch:<3d} {v:15s} median {row['median_ms']:9.3f} ms "
              f"(p10 {row['p10_ms']:.3f}, p90 {row['p90_ms']:.3f})", flush=True)
    return rows


def _kernels(r: dict[str, Any]) -> str:
    """Integer vs float kernels beside a timing: ORT's QLinearConv/Conv counts, OpenVINO's conv precisions."""
    if "ops_after_optimization" in r:
        ops = r["ops_after_optimization"]
        parts = [f"{ops[k]} {k}" for k in ("QLinearConv", "QLinearAdd", "QGemm", "Conv", "FusedConv", "Add") if ops.get(k)]
        return ", ".join(parts)
    if "openvino_layers" in r:
        return ", ".join(f"{n} {k}" for k, n in sorted(r["openvino_layers"].items()))
    return "-"


def report(rows: list[dict], st: dict, settings: dict, quiet: Any) -> tuple[str, str]:
    base = {(r["model"], r["precision"], r["threads"], r["batch"]): r["median_ms"] for r in rows if r["variant"] == BASELINE}
    table = markdown_table(
        ["model", "input", "precision", "threads", "batch", "variant", "median ms", "p10 ms", "p90 ms",
         f"vs {BASELINE}", "kernels (ORT: optimized graph; OpenVINO: runtime precision)"],
        [[r["model"], "x".join(map(str, r["input_shape"])), r["precision"], r["threads"], r["batch"], r["variant"],
          f"{r['median_ms']:.2f}", f"{r['p10_ms']:.2f}", f"{r['p90_ms']:.2f}",
          (f"{base[k] / r['median_ms']:.2f}x" if (k := (r["model"], r["precision"], r["threads"], r["batch"])) in base
           else "-"), _kernels(r)] for r in rows])
    md = (f"# CPU latency: ONNX Runtime and OpenVINO, int8 and FP32\n\n{stamp_markdown(st)}\n\n"
          f"onnxruntime {settings['onnxruntime']}, openvino {settings['openvino'] or 'not installed'}; median of "
          f"{settings['runs']} alternating runs after {settings['warmup']} warm-up runs; random weights. "
          f"\"vs {BASELINE}\" = {BASELINE} median / this median (> 1 is faster). "
          + ("At two or more threads the calling thread is pinned to one core and every other thread to the others "
             "(`_timing.pinned_threads`)." if settings.get("pinned") else "Threads placed by the OS.")
          + quiet_sentence(quiet)
          + f"\n\n{table}\n")
    return md, table


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "onnx_speed.json"),
                   help="result JSON; a .md table is written next to it (default benchmarks/results/onnx_speed.json)")
    p.add_argument("--models", nargs="+", default=["resnet18", "resnet20"], choices=list(MODELS))
    p.add_argument("--precisions", nargs="+", default=["4W/8A", "2W/8A"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="thread counts, each in turn")
    p.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS),
                   help="default: all (the OpenVINO ones when openvino is installed)")
    timing_arguments(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import onnxruntime as ort

    has_ov = openvino_available()
    variants = args.variants or [v for v, (rt, _) in VARIANTS.items() if rt != "openvino" or has_ov]
    if not has_ov and any(VARIANTS[v][0] == "openvino" for v in variants):
        raise SystemExit("OpenVINO variants need the optional extra: pip install 'apprentice-kd[openvino]'")
    quiet = wait_quiet(args.wait_load, args.wait_max) if args.wait_load is not None else None
    st, t0, rows = stamp(), time.perf_counter(), []
    with tempfile.TemporaryDirectory() as tmp:
        for m in args.models:
            for precision in args.precisions:
                models, files = build_files(m, precision, tmp, args.seed)
                for threads in args.threads:
                    for batch in args.batches:
                        rows += bench_cell(m, precision, threads, batch, variants, models, files, args)
    settings = {"threads": args.threads, "ort_inter_op_threads": 1, "pause_ms": args.pause_ms, "onnxruntime": ort.__version__,
                "openvino": _openvino_version() if has_ov else None, "runs": args.runs, "warmup": args.warmup,
                "seed": args.seed, "variants": variants, "protocol": "alternating", "pinned": args.pin}
    out = {"benchmark": "onnx_speed", "stamp": st, "settings": settings, "quiet_wait": quiet,
           "load_average_end": load_average(), "seconds": round(time.perf_counter() - t0, 1), "results": rows}
    md, table = report(rows, st, settings, quiet)
    write_results(args.out, out, md, table)
    return 0


def _openvino_version() -> str:
    import openvino

    return openvino.__version__


if __name__ == "__main__":
    raise SystemExit(main())
