"""CPU latency of a deployable student's ExecuTorch and LiteRT files against each runtime's own FP32 and int8
models of the same float network, and against the student's int8 ONNX file in ONNX Runtime.

For each model and precision (random weights; latency does not depend on their values), the
variants of `VARIANTS`, all at batch 1 (what a phone runs):

* ``et-fp32``, ``et-anchor``: the float network lowered to ExecuTorch's XNNPACK delegate, and ExecuTorch's
  own int8 model of it (PT2E post-training quantization with ``XNNPACKQuantizer``: every conv and the
  classifier int8, calibrated on random images) — the reference the student's file should match;
* ``et-int8``: ``apprentice export --format executorch`` of the deployable student (first conv and
  classifier float, as trained by default); ``et-int8-ends8``: the same student with its first conv and
  classifier at 8-bit activations too (`onnx_speed.ENDS8`), the like-for-like comparison with the anchor;
* ``litert-fp32``, ``litert-anchor``, ``litert-int8``, ``litert-int8-ends8``: the same in LiteRT
  (``litert_torch.convert``; the anchor through LiteRT's own PT2E quantizer), run by the LiteRT
  interpreter with its default XNNPACK delegate;
* ``ort-int8``: the student's int8 ONNX file in ONNX Runtime.

Protocol as `onnx_speed.py`: per (model, precision, threads) every variant is loaded and warmed up,
then timed ``--runs`` times in alternation with ``--pause-ms`` of idle time before each call; median,
p10, p90. ExecuTorch's XNNPACK thread pool, LiteRT's interpreter and ONNX Runtime get the same thread
count. Beside each timing: where its convs run (XNNPACK int8/float, portable ops; LiteRT kernels by input
type) and, for the student's files, top-1 agreement and largest logit difference with the fake-quant
student on the timing input.

    .venv/bin/python benchmarks/phone_speed.py --wait-load 0.5   # see benchmarks/README.md
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _phone_runtimes as phone
from _runtimes import ort_runner
from _stamp import load_average, markdown_table, stamp, stamp_markdown, write_results
from _timing import quiet_sentence, timing_arguments, wait_quiet
from onnx_speed import ENDS8, MODELS, time_alternating

import apprentice as ap
from apprentice.export import export_onnx
from apprentice.export.pte import export_executorch
from apprentice.export.tflite import export_litert

#: variant -> (runtime, file): the float network's files are built once a model, the student's per precision
VARIANTS = {
    "et-fp32": ("executorch", "et-fp32"), "et-anchor": ("executorch", "et-anchor"),
    "et-int8": ("executorch", "et-int8"), "et-int8-ends8": ("executorch", "et-int8e"),
    "litert-fp32": ("litert", "litert-fp32"), "litert-anchor": ("litert", "litert-anchor"),
    "litert-int8": ("litert", "litert-int8"), "litert-int8-ends8": ("litert", "litert-int8e"),
    "ort-int8": ("ort", "ort-int8"),
}
FLOAT_FILES = {"et-fp32": phone.executorch_fp32, "et-anchor": phone.executorch_anchor,
               "litert-fp32": phone.litert_fp32, "litert-anchor": phone.litert_anchor}
#: the student's files: (student, exporter); which fake-quant model each must equal
STUDENT_FILES = {"et-int8": "student", "et-int8e": "student8", "litert-int8": "student", "litert-int8e": "student8",
                 "ort-int8": "student"}
#: each runtime's variants are compared with its own FP32 and anchor
BASELINES = {"executorch": ("et-fp32", "et-anchor"), "litert": ("litert-fp32", "litert-anchor")}


def float_files(model_name: str, files: list[str], tmp: str, seed: int) -> tuple[torch.nn.Module, dict, dict]:
    """The float model and each runtime's FP32 and anchor file of it (paths, kernel reports)."""
    kwargs, shape = MODELS[model_name]
    torch.manual_seed(seed)
    float_model = ap.build_model(**kwargs).eval()
    paths, kernels = {}, {}
    for name in files:
        paths[name] = os.path.join(tmp, f"{model_name}_{name}.{'pte' if name.startswith('et') else 'tflite'}")
        t0 = time.perf_counter()
        kernels[name] = FLOAT_FILES[name](copy.deepcopy(float_model), shape, paths[name])
        print(f"{model_name}: {name} built in {time.perf_counter() - t0:.0f} s", flush=True)
    return float_model, paths, kernels


def student_files(float_model: torch.nn.Module, model_name: str, precision: str, files: list[str], tmp: str,
                  seed: int) -> tuple[dict, dict, dict]:
    """The calibrated deployable students (plain and ENDS8) and their files in each runtime."""
    _, shape = MODELS[model_name]
    models = {"student": copy.deepcopy(float_model), "student8": copy.deepcopy(float_model)}
    ap.prepare(models["student"], precision, deploy="int8")
    ap.prepare(models["student8"], precision, deploy="int8", layers=ENDS8)
    with torch.no_grad():  # one train-mode batch calibrates the adds' quantizers (and moves BN statistics)
        for m in models.values():
            m.train()(torch.randn(8, *shape, generator=torch.Generator().manual_seed(seed)))
            m.eval()
    stem = os.path.join(tmp, f"{model_name}_{precision.replace('/', '_')}")
    paths, kernels = {}, {}
    for name in files:
        student = models[STUDENT_FILES[name]]
        t0 = time.perf_counter()
        if name.startswith("et"):
            paths[name] = f"{stem}_{name}.pte"
            report = export_executorch(student, paths[name], input_shape=shape)["executorch"]
            kernels[name] = phone.counted(report)
        elif name.startswith("litert"):
            paths[name] = f"{stem}_{name}.tflite"
            kernels[name] = {"ops": export_litert(student, paths[name], input_shape=shape)["litert"]["ops"]}
        else:
            paths[name] = f"{stem}_{name}.onnx"
            export_onnx(student, paths[name], input_shape=shape)
        print(f"{model_name} {precision}: {name} built in {time.perf_counter() - t0:.0f} s", flush=True)
    return models, paths, kernels


def runners(variants: list[str], paths: dict[str, str], threads: int) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    phone.executorch_threads(threads)
    out = {}
    for v in variants:
        runtime, file = VARIANTS[v]
        out[v] = {"executorch": lambda p: phone.executorch_runner(p), "litert": lambda p: phone.litert_runner(p, threads),
                  "ort": lambda p: ort_runner(p, threads)}[runtime](paths[file])
    return out


def bench_cell(model_name: str, precision: str, threads: int, variants: list[str], models: dict, paths: dict,
               kernels: dict, args: argparse.Namespace) -> list[dict]:
    """Every variant at one thread count, batch 1, timed in alternation."""
    torch.set_num_threads(threads)
    _, shape = MODELS[model_name]
    x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(args.seed)).numpy()
    run = runners(variants, paths, threads)
    with torch.inference_mode():
        reference = {k: models[k](torch.from_numpy(x)).numpy() for k in ("student", "student8")}
    timings = time_alternating({v: (lambda f=f: f(x)) for v, f in run.items()}, warmup=args.warmup, runs=args.runs,
                               pause_ms=args.pause_ms, pin=threads if args.pin else 1)
    rows = []
    for v in variants:
        file = VARIANTS[v][1]
        check = {}
        if file in STUDENT_FILES:
            out, ref = run[v](x), reference[STUDENT_FILES[file]]
            check = {"max_abs_diff_vs_fakequant": float(np.abs(out - ref).max()),
                     "top1_agreement_vs_fakequant": float((out.argmax(1) == ref.argmax(1)).mean())}
        row = {"model": model_name, "input_shape": list(shape), "precision": precision, "variant": v, "batch": 1,
               "threads": threads, **timings[v], "kernels": kernels.get(file, {}), **check}
        rows.append(row)
        print(f"{model_name:9s} {precision:6s} t{threads} {v:18s} median {row['median_ms']:9.3f} ms "
              f"(p10 {row['p10_ms']:.3f}, p90 {row['p90_ms']:.3f})", flush=True)
    return rows


def ratios(rows: list[dict]) -> list[dict]:
    """Per cell and student file: its speed-up over its runtime's FP32 and the anchor's, and its time
    over the anchor's (the goal: within 1.10x of the anchor, and at least the anchor's speed-up)."""
    out = []
    by = {(r["model"], r["precision"], r["threads"], r["variant"]): r["median_ms"] for r in rows}
    for r in rows:
        runtime, file = VARIANTS[r["variant"]]
        if file not in STUDENT_FILES or runtime == "ort":
            continue
        fp32, anchor = (by.get((r["model"], r["precision"], r["threads"], b)) for b in BASELINES[runtime])
        if fp32 is None or anchor is None:
            continue
        out.append({"model": r["model"], "precision": r["precision"], "threads": r["threads"], "variant": r["variant"],
                    "speedup_vs_fp32": fp32 / r["median_ms"], "anchor_speedup_vs_fp32": fp32 / anchor,
                    "time_vs_anchor": r["median_ms"] / anchor, "within_10pct_of_anchor": r["median_ms"] <= 1.10 * anchor})
    return out


def report(rows: list[dict], summary: list[dict], st: dict, settings: dict, quiet: Any) -> tuple[str, str]:
    table = markdown_table(
        ["model", "input", "precision", "threads", "variant", "median ms", "p10 ms", "p90 ms", "kernels",
         "top-1 / max |Δ| vs fake-quant"],
        [[r["model"], "x".join(map(str, r["input_shape"])), r["precision"], r["threads"], r["variant"],
          f"{r['median_ms']:.2f}", f"{r['p10_ms']:.2f}", f"{r['p90_ms']:.2f}",
          phone.count_ops(r["kernels"]) if r["kernels"] else "-",
          f"{r['top1_agreement_vs_fakequant']:.0%} / {r['max_abs_diff_vs_fakequant']:.2g}"
          if "top1_agreement_vs_fakequant" in r else "-"] for r in rows])
    goals = markdown_table(
        ["model", "precision", "threads", "student file", "× faster than FP32", "anchor: × faster than FP32",
         "time / anchor's", "within 10 % of the anchor"],
        [[s["model"], s["precision"], s["threads"], s["variant"], f"{s['speedup_vs_fp32']:.2f}",
          f"{s['anchor_speedup_vs_fp32']:.2f}", f"{s['time_vs_anchor']:.2f}", "yes" if s["within_10pct_of_anchor"] else "no"]
         for s in summary])
    md = (f"# CPU latency: ExecuTorch and LiteRT files of the student, against each runtime's FP32 and int8 anchors\n\n"
          f"{stamp_markdown(st)}\n\nexecutorch {settings['executorch']}, litert-torch {settings['litert_torch']}, "
          f"ai-edge-litert {settings['ai_edge_litert']}, onnxruntime {settings['onnxruntime']}; batch 1; median of "
          f"{settings['runs']} alternating runs after {settings['warmup']} warm-up runs, {settings['pause_ms']} ms idle "
          "before each call; random weights. "
          + ("At two or more threads the calling thread is pinned to one core and every other thread to the others "
             "(`_timing.pinned_threads`)." if settings.get("pinned") else "Threads placed by the OS (`--no-pin`).")
          + quiet_sentence(quiet)
          + f"\n\n## Against each runtime's own anchors\n\n{goals}\n\n## Every timing\n\n{table}\n")
    return md, goals


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "phone_speed.json"),
                   help="result JSON; a .md table is written next to it (default benchmarks/results/phone_speed.json)")
    p.add_argument("--models", nargs="+", default=["resnet18", "resnet20"], choices=list(MODELS))
    p.add_argument("--precisions", nargs="+", default=["4W/8A"])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="thread counts, each in turn")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    timing_arguments(p)
    return p.parse_args(argv)


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"executorch": version("executorch"), "litert_torch": version("litert-torch"),
            "ai_edge_litert": version("ai-edge-litert"), "onnxruntime": version("onnxruntime")}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    files = {VARIANTS[v][1] for v in args.variants}
    st, t0, rows, built = stamp(argv), time.perf_counter(), [], []
    with tempfile.TemporaryDirectory() as tmp:
        for m in args.models:  # every file first (slow, untimed), then the timings on a quiet machine
            float_model, paths, kernels = float_files(m, [f for f in FLOAT_FILES if f in files], tmp, args.seed)
            for precision in args.precisions:
                models, spaths, skernels = student_files(float_model, m, precision,
                                                         [f for f in STUDENT_FILES if f in files], tmp, args.seed)
                built.append((m, precision, models, {**paths, **spaths}, {**kernels, **skernels}))
        quiet = wait_quiet(args.wait_load, args.wait_max) if args.wait_load is not None else None
        for m, precision, models, paths, kernels in built:
            for threads in args.threads:
                rows += bench_cell(m, precision, threads, args.variants, models, paths, kernels, args)
    summary = ratios(rows)
    settings = {"threads": args.threads, "pause_ms": args.pause_ms, "runs": args.runs, "warmup": args.warmup,
                "seed": args.seed, "variants": args.variants, "protocol": "alternating", "pinned": args.pin, **_versions()}
    out = {"benchmark": "phone_speed", "stamp": st, "settings": settings, "quiet_wait": quiet,
           "load_average_end": load_average(), "seconds": round(time.perf_counter() - t0, 1), "results": rows,
           "against_anchors": summary}
    md, table = report(rows, summary, st, settings, quiet)
    write_results(args.out, out, md, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
