"""Does the exported model predict what the trained PyTorch student predicts? (full test set)

Loads a trained run (``apprentice.run.runs.load_run``: the fake-quant student, ``eval()``), runs the
whole Fashion-MNIST test set (10,000 images, normalised by ``TensorLoader(shuffle=False)``) through

* the PyTorch fake-quant student (the reference),
* the ONNX file from ``export_onnx`` in ONNX Runtime (CPUExecutionProvider, default options): the
  int8 graph for a run trained with ``quant.deploy=int8`` (QLinearConv/QLinearAdd), else the QDQ graph,
* the same file in OpenVINO (CPU), when the optional extra ``openvino`` is installed,
* the packed file from ``save_packed`` reloaded with ``load_packed``,

and reports top-1 agreement with the reference, the largest absolute logit difference and every
model's accuracy; ONNX rows also record the export's mode and ONNX Runtime's optimized op counts.
``--fold-bn`` adds the same checks for exports written with ``fold_bn=True`` (QDQ runs only; the
int8 graph always folds). The export issue requires >= 99.9 % ONNX/PyTorch agreement.

    .venv/bin/python benchmarks/onnx_agreement.py runs/qs1/student      # ~1 min on 2 cores
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runtimes import openvino_available, openvino_runner
from _stamp import markdown_table, stamp, stamp_markdown, write_results

from apprentice.data import TensorLoader, load_tensors
from apprentice.export import export_onnx, load_packed, save_packed
from apprentice.export.int8_onnx import runtime_ops
from apprentice.run.runs import load_run

REQUIRED = 0.999


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def compare(name: str, logits: np.ndarray, reference: np.ndarray, labels: np.ndarray, **extra: Any) -> dict:
    pred, ref_pred = logits.argmax(1), reference.argmax(1)
    agree = float((pred == ref_pred).mean())
    disagree = np.flatnonzero(pred != ref_pred)
    # Margin of the reference between its top two logits where the two disagree: a near-tie explains a flip.
    top2 = np.sort(reference, axis=1)[:, -2:]
    margins = (top2[:, 1] - top2[:, 0])[disagree]
    return {
        "model": name, "images": len(labels), "top1_agreement": agree,
        "disagreements": len(disagree), "disagreeing_indices": disagree[:50].tolist(),
        "reference_margin_at_disagreements": [round(float(m), 6) for m in margins[:50]],
        "max_abs_logit_diff": float(np.abs(logits - reference).max()),
        "mean_abs_logit_diff": float(np.abs(logits - reference).mean()),
        "accuracy": float((pred == labels).mean()),
        "meets_99_9": agree >= REQUIRED, **extra,
    }


def reference_spread(model: Any, batches: list, reference: np.ndarray, labels: np.ndarray) -> list[dict]:
    """The same PyTorch model computed two other ways, against the reference: in float64, and one image at a
    time. A fake-quant model's rounding puts some values on a quantization boundary, where float32's summation
    order decides the code; how often that changes a prediction is the floor any exported file can reach."""
    import copy

    with torch.no_grad():
        wide = copy.deepcopy(model).double()
        in_f64 = torch.cat([wide(x.double()).float() for x, _ in batches]).numpy()
        one = torch.cat([model(x[i:i + 1]) for x, _ in batches for i in range(len(x))]).numpy()
    return [compare("pytorch float64 (same model)", in_f64, reference, labels, fold_bn=False),
            compare("pytorch batch 1 (same model)", one, reference, labels, fold_bn=False)]


def check_exports(model: Any, batches: list, reference: np.ndarray, labels: np.ndarray, shape: tuple[int, ...],
                  fold: bool, tmp: str, threads: int) -> list[dict]:
    """The ONNX file in ONNX Runtime (and OpenVINO) and the packed reload, compared with the reference."""
    import onnxruntime as ort

    suffix = "-foldbn" if fold else ""
    onnx_path = os.path.join(tmp, f"model{suffix}.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmap = export_onnx(model, onnx_path, input_shape=shape, fold_bn=fold)
    mode = qmap["onnx"]["mode"]
    graph = {"onnx_mode": mode, "float_layers": qmap["onnx"].get("float_layers"),
             "ops_after_optimization": runtime_ops(onnx_path, os.path.join(tmp, "optimized.onnx"))["ops"]}
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    logits = np.concatenate([sess.run(None, {"input": x.numpy()})[0] for x, _ in batches])
    extra = {"fold_bn": fold, "file_bytes": os.path.getsize(onnx_path), "sha256": sha256(onnx_path)}
    rows = [compare(f"onnxruntime {mode}{suffix}", logits, reference, labels, **extra, **graph)]
    if openvino_available():
        run = openvino_runner(onnx_path, threads)
        logits = np.concatenate([run(x.numpy()) for x, _ in batches])
        rows.append(compare(f"openvino {mode}{suffix}", logits, reference, labels, **extra, onnx_mode=mode))
    packed_path = os.path.join(tmp, f"model{suffix}.safetensors")
    save_packed(model, packed_path, fold_bn=fold)
    reloaded = load_packed(packed_path).eval()
    with torch.inference_mode():
        logits = torch.cat([reloaded(x) for x, _ in batches]).numpy()
    rows.append(compare(f"load_packed{suffix}", logits, reference, labels, fold_bn=fold,
                        file_bytes=os.path.getsize(packed_path), sha256=sha256(packed_path)))
    return rows


def check_phone_exports(model: Any, batches: list, reference: np.ndarray, labels: np.ndarray, shape: tuple[int, ...],
                        runtimes: list[str], tmp: str) -> list[dict]:
    """A deployable student's ExecuTorch program (XNNPACK) and LiteRT model, each run in its own runtime at
    batch 1 (as the file takes it), compared with the reference; their int8 kernels by layer or op."""
    from apprentice.export.pte import ExecuTorchModel, export_executorch
    from apprentice.export.tflite import LiteRTModel, export_litert

    table = {"executorch": (export_executorch, ExecuTorchModel, "pte"), "litert": (export_litert, LiteRTModel, "tflite")}
    rows = []
    for runtime in runtimes:
        export, runner, suffix = table[runtime]
        path = os.path.join(tmp, f"model.{suffix}")
        start = time.perf_counter()
        qmap = export(model, path, input_shape=shape[1:] if len(shape) == 4 else shape)
        seconds = round(time.perf_counter() - start, 1)
        program = runner(path)
        logits = torch.cat([program(x) for x, _ in batches]).numpy()
        rows.append(compare(f"{runtime} int8", logits, reference, labels, file_bytes=os.path.getsize(path),
                            sha256=sha256(path), export_seconds=seconds, kernels=qmap[runtime]))
    return rows


def _kernels_md(results: list[dict]) -> str:
    """The phone runtimes' int8 kernels, per file: XNNPACK's by layer, LiteRT's by op."""
    lines = []
    for r in results:
        k = r.get("kernels")
        if not k:
            continue
        if "delegated" in k:
            lines.append(f"- {r['model']}: {len(k['delegated']['int8'])} convs as XNNPACK int8 kernels "
                         f"({', '.join(k['delegated']['int8'])}); float in XNNPACK: {', '.join(k['delegated']['float'])}; "
                         f"portable ops: {k['portable'] or 'none'}; export {r['export_seconds']} s")
        else:
            named = k.get("layers", {"int8": [], "float": []})
            lines.append(f"- {r['model']}: {len(named['int8'])} convs as int8 kernels ({', '.join(named['int8'])}); "
                         f"float: {', '.join(named['float']) or 'none'}; ops: int8 {k['ops']['int8']}, float "
                         f"{k['ops']['float']}; export {r['export_seconds']} s")
    return ("\nInteger kernels of the phone files:\n\n" + "\n".join(lines) + "\n") if lines else ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", nargs="?", default="runs/qs1/student", help="run folder or checkpoint (default runs/qs1/student)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "onnx_agreement.json"),
                   help="result JSON; a .md table is written next to it (default benchmarks/results/onnx_agreement.json)")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--fold-bn", action="store_true", help="also check exports written with fold_bn=True")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="FILE",
                   help="a user's model file to import first (as apprentice's --import), for a run of its model")
    p.add_argument("--reference-spread", action="store_true",
                   help="also the PyTorch model in float64 and one image at a time, against the reference")
    p.add_argument("--runtimes", nargs="*", default=[], choices=["executorch", "litert"],
                   help="a deployable run: also its ExecuTorch and/or LiteRT file (extras executorch, litert)")
    args = p.parse_args(argv)
    import onnxruntime as ort

    from apprentice.cli.user_code import import_user_code

    for spec in args.imports:
        import_user_code(spec)

    torch.set_num_threads(args.threads)
    st = stamp()
    t0 = time.perf_counter()
    loaded = load_run(args.run)
    model = loaded.model.eval()
    data = load_tensors(args.dataset, "test", data_dir=args.data_dir)
    batches = list(TensorLoader(data, batch_size=args.batch_size, shuffle=False))
    labels = torch.cat([y for _, y in batches]).numpy()
    with torch.inference_mode():
        reference = torch.cat([model(x) for x, _ in batches]).numpy()
    results = [compare("pytorch fake-quant (reference)", reference, reference, labels, fold_bn=False)]
    if args.reference_spread:
        results += reference_spread(model, batches, reference, labels)

    with tempfile.TemporaryDirectory() as tmp:
        deployable = any(getattr(m, "deploy", None) for m in model.modules())
        for fold in ([False, True] if args.fold_bn and not deployable else [False]):
            results += check_exports(model, batches, reference, labels, tuple(data.images.shape[1:]), fold, tmp,
                                     args.threads)
        if args.runtimes:
            results += check_phone_exports(model, batches, reference, labels, tuple(data.images.shape[1:]),
                                           args.runtimes, tmp)
    summary = loaded.summary or {}
    run_info = {"run": args.run, "checkpoint": loaded.checkpoint_path, "checkpoint_sha256": sha256(loaded.checkpoint_path),
                "precision": summary.get("precision"), "model": summary.get("model"),
                "scheme": summary.get("scheme"), "run_git_commit": summary.get("git_commit"),
                "summary_top1": summary.get("final_top1")}
    ov = __import__("openvino").__version__ if openvino_available() else None
    out = {"benchmark": "onnx_agreement", "stamp": st, "onnxruntime": ort.__version__, "openvino": ov, "run": run_info,
           "dataset": args.dataset, "split": "test", "required_agreement": REQUIRED,
           "seconds": round(time.perf_counter() - t0, 1), "results": results}
    table = markdown_table(
        ["model", "images", "top-1 agreement", "disagreements", "max |logit diff|", "mean |logit diff|", "accuracy",
         ">= 99.9 %", "file bytes"],
        [[r["model"], r["images"], f"{100 * r['top1_agreement']:.2f} %", r["disagreements"],
          f"{r['max_abs_logit_diff']:.3g}", f"{r['mean_abs_logit_diff']:.3g}", f"{100 * r['accuracy']:.2f} %",
          "yes" if r["meets_99_9"] else "NO", f"{r['file_bytes']:,}" if r.get("file_bytes") else "-"]
         for r in results])
    md = (f"# ONNX / packed reload agreement with the PyTorch student\n\n{stamp_markdown(st)}\n\n"
          f"Run `{args.run}` ({run_info['model']}, {run_info['precision']}, scheme {run_info['scheme']}; "
          f"checkpoint `{loaded.checkpoint_path}` sha256 `{run_info['checkpoint_sha256'][:16]}…`), {args.dataset} test "
          f"set, onnxruntime {ort.__version__}, openvino {ov or 'not installed'}.\n\n{table}\n{_kernels_md(results)}")
    write_results(args.out, out, md, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
