"""CPU latency of the exported ONNX model (ONNX Runtime) against PyTorch eager, float and fake-quant.

For each model and precision (random weights; latency does not depend on their values):

* ``torch-fp32``: the float model, ``eval()``, under ``torch.inference_mode()``;
* ``torch-fakequant``: the prepared (fake-quantized) model, ``eval()``, ``inference_mode``;
* ``ort``: ``export_onnx`` of the fake-quant model (int8 weights behind DequantizeLinear, Q/DQ
  around 8-bit activations), ONNX Runtime CPUExecutionProvider, default graph optimization
  (``ORT_ENABLE_ALL``);
* ``ort-noqdq``: the same file with the session option ``session.disable_quant_qdq=1``: ORT then
  treats Q/DQ as ordinary ops, so constant folding turns each weight DequantizeLinear into a float
  initializer and BatchNorm fuses into the convs; arithmetic unchanged (codes * scale once);
* ``ort-foldbn``: ``export_onnx(..., fold_bn=True)`` (the CLI's ``--fold-bn``), default ORT options:
  with BatchNorm folded a quantized conv followed by ReLU and the next layer's QuantizeLinear
  matches ORT's QDQ pattern and runs as QLinearConv (int8).

Latency is wall time of one forward on one fixed input (``time.perf_counter``), ``--warmup`` runs
discarded, then ``--runs`` timed runs; median, p10 and p90 are reported. Torch and ORT both get
``--threads`` intra-op threads (ORT: one inter-op thread, sequential execution). The ORT graph
after optimization is saved through ``SessionOptions.optimized_model_filepath`` and its op types
are counted; a short profiled session (``enable_profiling``) says which kernels ran and their share
of the time. The 1-minute load average is recorded before and after every measurement.

    .venv/bin/python benchmarks/onnx_speed.py --wait-load 0.5 --wait-max 1200   # ~14 min on 2 cores (+ the wait)
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
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
from _stamp import load_average, markdown_table, stamp, stamp_markdown, write_results
from _timing import summarize, wait_quiet

import apprentice as ap
from apprentice.export import export_onnx

#: name -> (build_model kwargs, input shape C,H,W)
MODELS = {
    "resnet20": ({"name": "resnet20", "num_classes": 10, "in_channels": 1}, (1, 28, 28)),
    "resnet18": ({"name": "resnet18", "num_classes": 1000, "in_channels": 3}, (3, 224, 224)),
}
ORT_VARIANTS = {
    # name: (export with fold_bn, session config entries)
    "ort": (False, {}),
    "ort-noqdq": (False, {"session.disable_quant_qdq": "1"}),
    "ort-foldbn": (True, {}),
}


def time_it(fn: Callable[[], Any], *, warmup: int, runs: int) -> dict[str, Any]:
    """Wall-clock milliseconds of ``fn()``: warm-up runs discarded, then ``runs`` timed runs."""
    load_before = load_average()
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return {**summarize(times), "warmup": warmup, "load_average_before": load_before}


def ort_session(path: str, config: dict[str, str], threads: int, *, optimized: str | None = None,
                profile: str | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3  # the NCHWc "hardware specific" warning when saving the optimized graph
    for k, v in config.items():
        so.add_session_config_entry(k, v)
    if optimized:
        so.optimized_model_filepath = optimized
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def op_counts(path: str) -> dict[str, int]:
    import onnx

    graph = onnx.load(path).graph
    return dict(collections.Counter(n.op_type for n in graph.node).most_common())


def kernel_profile(path: str, config: dict[str, str], threads: int, x: np.ndarray, tmp: str, runs: int = 3) -> dict:
    """Which kernels ran (op type -> node count, share of kernel time), from an ORT profile."""
    sess = ort_session(path, config, threads, profile=os.path.join(tmp, "prof"))
    for _ in range(1 + runs):
        sess.run(None, {"input": x})
    prof = sess.end_profiling()
    events = json.loads(Path(prof).read_text())
    os.unlink(prof)
    dur: dict[str, float] = collections.Counter()
    nodes: dict[str, set] = collections.defaultdict(set)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e["args"].get("op_name", "?")
            dur[op] += e["dur"]
            nodes[op].add(e["name"])
    total = sum(dur.values()) or 1.0
    return {op: {"nodes": len(nodes[op]), "time_share": round(d / total, 4)}
            for op, d in sorted(dur.items(), key=lambda kv: -kv[1])}


def bench_model(model_name: str, precisions: list[str], batches: list[int], variants: list[str],
                args: argparse.Namespace, tmp: str) -> list[dict]:
    import onnxruntime as ort  # noqa: F401  (fail early with the import error)

    kwargs, shape = MODELS[model_name]
    torch.manual_seed(args.seed)
    float_model = ap.build_model(**kwargs).eval()
    inputs = {b: torch.randn(b, *shape, generator=torch.Generator().manual_seed(b)) for b in batches}
    rows = []

    def add(variant: str, precision: str, batch: int, timing: dict, **extra: Any) -> None:
        row = {"model": model_name, "input_shape": list(shape), "num_classes": kwargs["num_classes"],
               "precision": precision, "variant": variant, "batch": batch, **timing, **extra}
        rows.append(row)
        print(f"{model_name:9s} {precision:7s} {variant:16s} b{batch:<3d} median {row['median_ms']:10.3f} ms "
              f"(p10 {row['p10_ms']:.3f}, p90 {row['p90_ms']:.3f}) load {timing['load_average_before']}",
              flush=True)

    with torch.inference_mode():
        for b in batches:
            x = inputs[b]
            add("torch-fp32", "32W/32A", b, time_it(lambda x=x: float_model(x), warmup=args.warmup, runs=args.runs))
    for precision in precisions:
        student = copy.deepcopy(float_model)
        ap.prepare(student, precision)
        student.eval()
        with torch.inference_mode():
            reference = {b: student(inputs[b]).numpy() for b in batches}
            for b in batches:
                x = inputs[b]
                add("torch-fakequant", precision, b, time_it(lambda s=student, x=x: s(x), warmup=args.warmup, runs=args.runs))
        for variant in variants:
            fold_bn, config = ORT_VARIANTS[variant]
            path = os.path.join(tmp, f"{model_name}_{precision.replace('/', '_')}_{int(fold_bn)}.onnx")
            if not os.path.exists(path):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    export_onnx(student, path, input_shape=shape, fold_bn=fold_bn)
            optimized = os.path.join(tmp, "optimized.onnx")
            sess = ort_session(path, config, args.threads, optimized=optimized)
            ops_exported, ops_optimized = op_counts(path), op_counts(optimized)
            for b in batches:
                feed = {"input": inputs[b].numpy()}
                out = sess.run(None, feed)[0]
                ref = reference[b]
                check = {"max_abs_diff_vs_fakequant": float(np.abs(out - ref).max()),
                         "top1_agreement_vs_fakequant": float((out.argmax(1) == ref.argmax(1)).mean())}
                timing = time_it(lambda s=sess, f=feed: s.run(None, f), warmup=args.warmup, runs=args.runs)
                kernels = kernel_profile(path, config, args.threads, feed["input"], tmp) if args.profile else None
                add(variant, precision, b, timing, onnx_file_bytes=os.path.getsize(path), fold_bn=fold_bn,
                    session_config=config, graph_optimization_level="ORT_ENABLE_ALL",
                    ops_exported=ops_exported, ops_after_optimization=ops_optimized, kernels_run=kernels, **check)
            del sess
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "onnx_speed.json"),
                   help="result JSON; a .md table is written next to it (default benchmarks/results/onnx_speed.json)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--precisions", nargs="+", default=["2W/8A", "4W/8A"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    p.add_argument("--variants", nargs="+", default=list(ORT_VARIANTS), choices=list(ORT_VARIANTS),
                   help="ONNX Runtime variants besides the two PyTorch baselines")
    p.add_argument("--runs", type=int, default=30, help="timed runs per cell (median reported)")
    p.add_argument("--warmup", type=int, default=5, help="discarded runs before timing")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads for torch and ORT")
    p.add_argument("--no-profile", dest="profile", action="store_false",
                   help="skip the short profiled ORT session that records which kernels ran")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wait-load", type=float, default=None, metavar="LOAD",
                   help="first wait until the 1-minute load average is below LOAD and no pytest/apprentice "
                        "process runs (at most --wait-max seconds; the outcome is recorded)")
    p.add_argument("--wait-max", type=float, default=1200)
    args = p.parse_args(argv)
    import onnxruntime as ort

    quiet = wait_quiet(args.wait_load, args.wait_max) if args.wait_load is not None else None

    torch.set_num_threads(args.threads)
    st = stamp()
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in args.models:
            rows += bench_model(m, args.precisions, args.batches, args.variants, args, tmp)
    settings = {"threads": args.threads, "torch_num_threads": torch.get_num_threads(),
                "ort_intra_op_threads": args.threads, "ort_inter_op_threads": 1,
                "onnxruntime": ort.__version__, "ort_providers": ["CPUExecutionProvider"],
                "runs": args.runs, "warmup": args.warmup, "seed": args.seed,
                "torch_config_mkldnn": torch.backends.mkldnn.is_available()}
    out = {"benchmark": "onnx_speed", "stamp": st, "settings": settings, "quiet_wait": quiet,
           "load_average_end": load_average(), "seconds": round(time.perf_counter() - t0, 1), "results": rows}

    fp32 = {(r["model"], r["batch"]): r["median_ms"] for r in rows if r["variant"] == "torch-fp32"}
    table = markdown_table(
        ["model", "input", "precision", "variant", "batch", "median ms", "p10 ms", "p90 ms", "vs torch FP32",
         "QLinearConv", "load 1-min"],
        [[r["model"], "x".join(map(str, r["input_shape"])), r["precision"], r["variant"], r["batch"],
          f"{r['median_ms']:.2f}", f"{r['p10_ms']:.2f}", f"{r['p90_ms']:.2f}",
          f"{fp32[(r['model'], r['batch'])] / r['median_ms']:.2f}x",
          (r["ops_after_optimization"].get("QLinearConv", 0) if "ops_after_optimization" in r else "-"),
          (r["load_average_before"] or ["?"])[0]] for r in rows])
    md = (f"# CPU latency: ONNX Runtime vs PyTorch eager\n\n{stamp_markdown(st)}\n\n"
          f"onnxruntime {ort.__version__} (CPUExecutionProvider), {args.threads} intra-op threads for torch "
          f"and ORT; median of {args.runs} runs after {args.warmup} warm-up runs; random weights. "
          f"\"vs torch FP32\" = torch FP32 median / this median (> 1 is faster). Load average at start "
          f"{st['load_average_1_5_15']}, at end {out['load_average_end']}"
          + (f"; waited {quiet['waited_s']} s for load < {quiet['threshold']} "
             f"({'reached' if quiet['quiet'] else 'NOT reached: numbers contaminated by other work'})" if quiet else "")
          + f".\n\n{table}\n")
    write_results(args.out, out, md, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
