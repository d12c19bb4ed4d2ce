"""The `apprentice` command line: train, eval, info, export, compare, predict and cache-teacher.

Each subcommand parses its arguments and calls library functions; nothing here knows how training
or packing works. Errors a user can fix (an `ApprenticeError`, a missing file, bad YAML) print one
line ``apprentice: error: <message>`` on stderr and exit 2; failures during a run (a non-finite
loss, a full disk while checkpointing, a lost torchrun peer, an out-of-memory error) exit 1; Ctrl-C exits 130, and a training run stopped by a signal
after checkpointing exits with the status its `runtime.TrainingInterrupted` carries (130 or 143).
``--debug`` adds the traceback. docs/bad-inputs.md lists the bad inputs the tests try and what each prints.

Example:
    apprentice train configs/fashion_mnist/teacher.yaml optim.lr=0.05 train.epochs=1
    apprentice eval runs/quickstart/teacher
    apprentice export runs/quickstart/student_b --format packed --out student_b.safetensors
    apprentice compare runs/quickstart/*
    apprentice predict student_b.safetensors shirt.png photos/ --top-k 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apprentice.errors import ApprenticeError

if TYPE_CHECKING:
    from apprentice.build import LoadedModel

PROG = "apprentice"
EXIT_USER, EXIT_RUNTIME, EXIT_INTERRUPT = 2, 1, 130


# ---------------------------------------------------------------------------------------------
# Loading runs, checkpoints and packed files


def _load(path_text: str) -> LoadedModel:
    from apprentice.build import (
        load_model_file,  # lazily: `apprentice --help` needs no torch
    )

    return load_model_file(path_text)


# ---------------------------------------------------------------------------------------------
# Tables


def _table(rows: list[list[str]], header: list[str]) -> str:
    """A plain text table with left-aligned text and right-aligned numbers."""
    cells = [header] + rows
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        out = []
        for i, c in enumerate(row):
            numeric = c.replace(",", "").replace(".", "", 1).replace("%", "").replace("x", "").lstrip("-").isdigit()
            out.append(c.rjust(widths[i]) if numeric else c.ljust(widths[i]))
        return "  ".join(out).rstrip()

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows])


def _pct(x: Any) -> str:
    return f"{float(x):.2f}" if isinstance(x, (int, float)) else "-"


# ---------------------------------------------------------------------------------------------
# Subcommands


def cmd_train(args: argparse.Namespace) -> int:
    from apprentice.config import load_config

    cfg = load_config(args.config, args.overrides)
    from apprentice.loop import fit

    summary = fit(cfg, resume=args.resume, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only the first process reports
        return 0
    best, final = summary.get("best_top1"), summary.get("final_top1")
    print(f"{PROG}: done: {cfg.train.out}  best top-1 {_pct(best)} %  final top-1 {_pct(final)} %")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    loaded = _load(args.path)
    cfg = loaded.config
    if cfg is None:
        raise ApprenticeError(f"{args.path!r} carries no training config, so its data set is unknown")
    from apprentice.build import eval_data
    from apprentice.train import evaluate
    from apprentice.train.runtime import resolve_device

    device = resolve_device(args.device, "--device")

    batches = eval_data(cfg, args.split, data_dir=args.data_dir, batch_size=args.batch_size, device=device)
    model = loaded.model.to(device).eval()
    metrics = evaluate(model, batches, device=device, amp=args.amp)
    result = {"path": str(loaded.path), "kind": loaded.kind, "data": cfg.data.name, "split": args.split,
              "top1": metrics["top1"], "top5": metrics.get("top5"), "images": int(metrics["images"])}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{loaded.path} ({loaded.kind}) on {cfg.data.name} {args.split}: "
              f"top-1 {_pct(result['top1'])} %  top-5 {_pct(result['top5'])} %  ({result['images']} images)")
    return 0


def _precision_rows(model: Any, qmap: dict | None = None) -> list[list[str]]:
    """One row per Conv2d/Linear: name, kind, precision ("2W/8A"), weights, activations, parameters.

    A packed model holds dequantized float weights, so its weight precision comes from the map.
    """
    from torch import nn

    from apprentice import quant

    plans = quant.quantized_layers(model)
    layers = (qmap or {}).get("layers", {})
    rows = []
    for name, mod in model.named_modules():
        if not isinstance(mod, (nn.Conv2d, nn.Linear)):
            continue
        plan = plans.get(name)
        wq = layers[name].get("weights") if name in layers else (
            dataclasses.asdict(plan.weights) if plan is not None and plan.weights is not None else None)
        w = "fp32" if not wq else (
            f"{wq['quantizer']} {wq['bits']}-bit" + (" per-channel" if wq.get("per_channel") else "")
            + (f" ({wq['packing']})" if "packing" in wq else ""))
        acts = plan.activations if plan is not None else None  # a learned clip or step: its value now
        if acts is None or not acts.enabled:
            a = "fp32"
        elif acts.learns_step:
            a = acts.describe()
        else:
            a = f"{acts.bits}-bit clip {acts.clip:.3g}" + (" (learned)" if acts.learned else "")
        precision = f"{wq['bits'] if wq else 32}W/{acts.bits if acts is not None else 32}A"
        kind = "conv2d" if isinstance(mod, nn.Conv2d) else "linear"
        rows.append([name, kind, precision, w, a, f"{sum(p.numel() for p in mod.parameters()):,}"])
    return rows


def _sizes(loaded: LoadedModel) -> tuple[int, int, str]:
    """(packed bytes, fp32 bytes, printable report) of a run's model or of a packed file."""
    from apprentice import export

    if loaded.kind == "packed":
        # The rebuilt model holds dequantized float weights, so measure the file's own tensors.
        tensors, _ = export.read_packed(loaded.path)
        packed = sum(t.nbytes for t in tensors.values())
        # The map records the float model's size; a folded file's model has lost its BatchNorm.
        fp32 = (loaded.qmap or {}).get("fp32_bytes")
        if not isinstance(fp32, int) or isinstance(fp32, bool):  # written before the map had it
            fp32 = sum(export.fp32_bytes(loaded.model).values())
        text = (f"packed tensors: {packed:,} B (file {loaded.path.stat().st_size:,} B) "
                f"vs {fp32:,} B fp32 ({fp32 / max(packed, 1):.1f}x smaller)")
        return packed, fp32, text
    rows = export.size_report(loaded.model)
    totals = export.size_totals(rows)
    return int(totals["packed_bytes"]), int(totals["fp32_bytes"]), export.format_size_report(rows)


def cmd_info(args: argparse.Namespace) -> int:
    loaded = _load(args.path)
    model = loaded.model
    arch = dict(getattr(model, "arch", {}) or {})
    name = arch.pop("name", type(model).__name__)
    print(f"{loaded.path} ({loaded.kind})")
    print(f"model: {name} " + " ".join(f"{k}={v}" for k, v in arch.items()))
    if loaded.config is not None:
        c = loaded.config
        print(f"precision: {c.quant.precision}  scheme: {c.distill.scheme}  teacher: {_teacher(c)}  data: {c.data.name}")
    print(f"parameters: {sum(p.numel() for p in model.parameters()):,}")
    if loaded.summary:
        s = loaded.summary
        print(f"accuracy: best top-1 {_pct(s.get('best_top1'))} % (epoch {s.get('best_epoch', '-')})  "
              f"final top-1 {_pct(s.get('final_top1'))} %  top-5 {_pct(s.get('final_top5'))} %")
    print()
    print(_table(_precision_rows(model, loaded.qmap), ["layer", "kind", "precision", "weights", "activations", "params"]))
    print()
    print(_sizes(loaded)[2])
    return 0


def _teacher(c: Any) -> str:
    if c.distill.teacher:
        return c.distill.teacher
    return c.distill.teacher_model.name if c.distill.teacher_model is not None else "-"


def cmd_export(args: argparse.Namespace) -> int:
    loaded = _load(args.path)
    if loaded.kind == "packed":
        raise ApprenticeError(f"{args.path!r} is already a packed file; export a run folder or checkpoint")
    from apprentice import export
    from apprentice.config import config_to_dict
    from apprentice.predict import Preprocess

    out = _export_target(args.out, args.format, loaded.path)
    pre = Preprocess.from_config(loaded.config, int(loaded.model.arch["num_classes"]))  # for apprentice predict
    if args.format == "packed":
        meta = {"config": config_to_dict(loaded.config), "summary": loaded.summary, "source": str(loaded.path),
                **pre.to_metadata()}
        export.save_packed(loaded.model, out, ternary_packing=args.ternary_packing, fold_bn=args.fold_bn,
                           metadata=json.loads(json.dumps(meta, default=str)))
    else:
        # export_onnx itself explains how to install onnx when it is missing.
        from apprentice.export import export_onnx

        qmap = export_onnx(loaded.model, out, input_shape=(1, pre.channels, pre.image_size, pre.image_size),
                           fold_bn=args.fold_bn, metadata=pre.to_metadata(), mode=args.onnx_mode)
    print(f"{PROG}: wrote {out} ({out.stat().st_size:,} bytes, {args.format})")
    if args.format == "onnx":
        from apprentice.export.int8_onnx import describe_export

        for line in describe_export(qmap, out):
            print(f"{PROG}: {line}")
    return 0


def _checkpoint_read(source: Path) -> Path:
    """The checkpoint file that loading ``source`` (a run folder or a checkpoint) read."""
    from apprentice.train.checkpoint import find_checkpoint

    return find_checkpoint(source) if source.is_dir() else source


def _export_target(text: str, fmt: str, source: Path) -> Path:
    """``--out`` as a path, refusing to replace anything but an earlier export of the same format."""
    from apprentice.build import check_output_apart, is_packed_export

    out = Path(text)
    if out.is_dir():
        raise ApprenticeError(f"--out {text!r} is a folder; give a file name, e.g. {str(out / ('model.' + _SUFFIX[fmt]))!r}")
    check_output_apart(out, "--out", {"the checkpoint being exported": _checkpoint_read(source)})
    if not out.exists():
        return out
    inside = source.is_dir() and out.resolve().is_relative_to(source.resolve())
    if is_packed_export(out) if fmt == "packed" else out.suffix == ".onnx":
        return out  # replacing an earlier export is what re-exporting means
    if inside:
        raise ApprenticeError(f"--out {text!r} would overwrite the run being exported; choose another file")
    raise ApprenticeError(f"--out {text!r} already exists and is not an earlier {fmt} export; "
                          f"refusing to overwrite it (choose another file or remove it)")


_SUFFIX = {"packed": "safetensors", "onnx": "onnx"}


def _compare_row(path: str) -> dict[str, Any]:
    loaded = _load(path)
    c, s = loaded.config, loaded.summary or {}
    packed, fp32, _ = _sizes(loaded)
    return {
        "run": path, "model": getattr(loaded.model, "arch", {}).get("name", "?"),
        "precision": c.quant.precision if c else "?", "scheme": c.distill.scheme if c else "?",
        "teacher": _teacher(c) if c else "?", "best_top1": s.get("best_top1"), "final_top1": s.get("final_top1"),
        "fp32_mb": fp32 / 1e6, "packed_mb": packed / 1e6, "ratio": fp32 / max(packed, 1),
    }


def cmd_compare(args: argparse.Namespace) -> int:
    rows = [_compare_row(p) for p in args.runs]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ["run", "model", "precision", "scheme", "teacher", "best top-1", "final top-1",
              "FP32 MB", "packed MB", "ratio"]
    print(_table([[r["run"], r["model"], r["precision"], r["scheme"], r["teacher"], _pct(r["best_top1"]),
                   _pct(r["final_top1"]), f"{r['fp32_mb']:.2f}", f"{r['packed_mb']:.3f}", f"{r['ratio']:.1f}x"]
                  for r in rows], header))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """The class of each image (or the top k) as the model sees it; unreadable images get one line each."""
    from apprentice.data.images import image_files
    from apprentice.predict import load_predictor, predict
    from apprentice.train.runtime import resolve_device

    images = image_files([Path(p) for p in args.images])
    if not images:
        raise ApprenticeError(f"no image files in {' '.join(args.images)}")
    device = resolve_device(args.device, "--device") if not args.model.lower().endswith(".onnx") else "cpu"
    predictor = load_predictor(args.model, device=device)
    results = predict(predictor, images, top_k=args.top_k, batch_size=args.batch_size,
                      on_error=lambda r: print(f"{PROG}: error: {r.error}", file=sys.stderr))
    if args.json:
        print(json.dumps({"model": str(predictor.path), "kind": predictor.kind,
                          "predictions": [r.to_json() for r in results]}, indent=2))
    else:
        for r in results:
            if r.error is None:
                print(f"{r.image}: " + ", ".join(f"{name} {100 * p:.1f} %" for name, _, p in r.top))
    return EXIT_USER if any(r.error is not None for r in results) else 0


def cmd_cache_teacher(args: argparse.Namespace) -> int:
    """Run a trained teacher over every training view once and store its logits (schemes B and C)."""
    from apprentice.build import check_output_apart
    from apprentice.config import Config, config_from_dict, config_to_dict
    from apprentice.data import cache_teacher
    from apprentice.typed_yaml import apply_override

    loaded = _load(args.teacher)
    if loaded.kind == "packed" or loaded.config is None:
        raise ApprenticeError(f"{args.teacher!r} is a packed export; cache-teacher needs the teacher's run folder or "
                              f"checkpoint (its data set and full-precision weights)")
    out = Path(args.out)
    if out.is_dir():
        raise ApprenticeError(f"--out {args.out!r} is a folder; give a file name, e.g. {str(out / 'teacher.cache')!r}")
    check_output_apart(out, "--out", {"the teacher's checkpoint": _checkpoint_read(loaded.path)})
    if out.exists():
        raise ApprenticeError(f"--out {args.out!r} already exists; a finished cache is never replaced (remove it "
                              f"or choose another file)")
    tree = config_to_dict(loaded.config)
    for text in args.overrides:
        if not text.startswith("data."):
            raise ApprenticeError(f"{text!r}: only data.* settings can be given (the data the students train on)")
        apply_override(tree, text, Config)
    cfg = config_from_dict(tree)
    from apprentice.build import data_spec
    from apprentice.train.runtime import resolve_device

    data, report = cfg.data, lambda line: print(f"{PROG}: {line}", file=sys.stderr)
    teacher = loaded.model.to(resolve_device(args.device, "--device")).eval()
    cache_teacher(str(out), teacher, data.name, data_dir=data.dir, download=data.download, holdout=data.holdout,
                  limit=data.limit, dtype=args.dtype, views=args.views, topk=args.topk, seed=args.seed,
                  batch_size=args.batch_size, report=report, spec=data_spec(cfg, report=report))
    print(f"{PROG}: wrote {out} ({out.stat().st_size:,} bytes); train students with distill.teacher_cache={out}")
    return 0


# ---------------------------------------------------------------------------------------------
# Parser and entry point


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of all subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback on errors")
    common.add_argument("--import", dest="imports", action="append", metavar="FILE_OR_MODULE",
                        default=argparse.SUPPRESS,
                        help="run this Python file (or import this module) first, e.g. one that registers your own "
                             "model with @apprentice.register_model; repeatable. Recipes never run code themselves.")
    parser = argparse.ArgumentParser(
        prog=PROG, parents=[common],
        description="Low-precision CNNs trained with knowledge distillation (Mishra & Marr, Apprentice, ICLR 2018).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_train, _add_eval, _add_info, _add_export, _add_compare, _add_predict, _add_cache_teacher):
        add(sub, common)
    return parser


def _add_train(sub: Any, common: argparse.ArgumentParser) -> None:
    from apprentice.config import help_text

    p = sub.add_parser(
        "train", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="train a model from a YAML recipe",
        description="Train from a YAML recipe; key=value arguments override its values\n"
                    "(defaults < file < overrides; values are YAML: 0.05, [conv1,fc], null).",
        epilog="config keys:\n" + help_text())
    p.add_argument("config", help="YAML recipe, e.g. configs/fashion_mnist/teacher.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=0.05")
    p.add_argument("--resume", action="store_true", help="continue the run in train.out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder train.out")
    p.set_defaults(func=cmd_train)


def _add_eval(sub: Any, common: argparse.ArgumentParser) -> None:
    from apprentice.train.runtime import DEVICE_NAMES
    from apprentice.train.step import AMP_MODES

    p = sub.add_parser("eval", parents=[common], help="evaluate a run, checkpoint or packed file",
                       description="Top-1/top-5 accuracy of a run folder, checkpoint or packed model "
                                   "on the data set it was trained on.")
    p.add_argument("path", help="run folder, checkpoint (.pt) or packed file (.safetensors)")
    p.add_argument("--data-dir", help="folder holding the data set (default: as in the run's config)")
    p.add_argument("--split", default="test", choices=["test", "val", "holdout", "train"],
                   help="which images (default test; an image folder's test/ when it has one, else val/)")
    p.add_argument("--batch-size", type=_positive_int, help="images per batch (default data.eval_batch_size)")
    p.add_argument("--device", default="auto", help=f"one of {DEVICE_NAMES} (default auto)")
    p.add_argument("--amp", default="off", choices=list(AMP_MODES), help="autocast (default off)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_eval)


def _add_info(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("info", parents=[common], help="architecture, per-layer precision and sizes",
                       description="Model, per-layer precision, parameters, accuracy and export sizes.")
    p.add_argument("path", help="run folder, checkpoint or packed file")
    p.set_defaults(func=cmd_info)


def _add_export(sub: Any, common: argparse.ArgumentParser) -> None:
    from apprentice.export import TERNARY_PACKINGS
    from apprentice.export.onnx import ONNX_MODES

    p = sub.add_parser("export", parents=[common], help="write a packed (or ONNX) model",
                       description="Export a trained run: 'packed' = safetensors with 2/4/8-bit or base-3 "
                                   "packed integer codes and a quantization map; 'onnx' = ONNX graph.")
    p.add_argument("path", help="run folder or checkpoint")
    p.add_argument("--format", required=True, choices=list(_SUFFIX), help="output format")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--ternary-packing", default="base3", choices=list(TERNARY_PACKINGS),
                   help="ternary layers: 5 weights per byte (base3, default) or 4 per byte (2bit)")
    p.add_argument("--fold-bn", action="store_true", help="fold BatchNorm into the preceding convs")
    p.add_argument("--onnx-mode", default="auto", choices=list(ONNX_MODES),
                   help="onnx: 'int8' integer graph (QLinearConv/QLinearAdd; needs a run trained with "
                        "quant.deploy=int8), 'qdq' float ops between QDQ pairs; auto (default): int8 when the run allows it")
    p.set_defaults(func=cmd_export)


def _add_compare(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("compare", parents=[common], help="table of runs: accuracy and sizes",
                       description="Compare runs: model, precision, scheme, teacher, accuracy, FP32 and packed size.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (or checkpoints / packed files)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_compare)


def _add_predict(sub: Any, common: argparse.ArgumentParser) -> None:
    from apprentice.train.runtime import DEVICE_NAMES

    p = sub.add_parser("predict", parents=[common], help="classify image files with a trained model",
                       description="The class name and probability of each image, as the model sees it (its "
                                   "recorded channels, size, crop and normalisation). An image that cannot be "
                                   "read gets one error line (exit status 2) and the others are still predicted.")
    p.add_argument("model", help="run folder, checkpoint, packed file (.safetensors) or ONNX file (.onnx)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    p.add_argument("--top-k", type=_positive_int, default=1, help="classes shown per image (default 1)")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--device", default="auto", help=f"one of {DEVICE_NAMES} (default auto; ONNX runs on the CPU)")
    p.set_defaults(func=cmd_predict)


def _add_cache_teacher(sub: Any, common: argparse.ArgumentParser) -> None:
    from apprentice.train.runtime import DEVICE_NAMES

    p = sub.add_parser(
        "cache-teacher", parents=[common], help="store a trained teacher's logits for every training view",
        description="Run a trained teacher once over every view a training image can take (pad-crop-flip: "
                    "every offset and flip; image folders: --views random-resized crops) and store its logits, "
                    "so students of schemes B and C train with distill.teacher_cache=FILE at the price of "
                    "training without a teacher. Resumable: run it again after an interruption.")
    p.add_argument("teacher", help="the teacher's run folder or checkpoint")
    p.add_argument("overrides", nargs="*", metavar="data.key=value",
                   help="the students' data settings where they differ from the teacher's, e.g. data.holdout=5000")
    p.add_argument("--out", required=True, help="the cache file to write")
    p.add_argument("--dtype", default="float16", help="stored logits: float16 (default) or float32")
    p.add_argument("--batch-size", type=_positive_int, default=500, help="images per teacher forward (default 500)")
    p.add_argument("--device", default="auto", help=f"one of {DEVICE_NAMES} (default auto)")
    p.add_argument("--views", type=_positive_int, default=10, help="image folders: crops stored per image (default 10)")
    p.add_argument("--topk", type=_positive_int, default=10, help="image folders: logits kept per crop (default 10)")
    p.add_argument("--seed", type=int, default=0, help="image folders: seed of the stored crops (default 0)")
    p.set_defaults(func=cmd_cache_teacher)


def import_user_code(spec: str) -> None:
    """Run the user's Python file, or import their module, named by ``--import`` (and only then).

    A file runs as a script would (its folder first on ``sys.path``, so it can import its neighbours);
    anything it raises becomes one line naming the file.
    """
    import importlib
    import importlib.util
    import re

    is_file = spec.endswith(".py") or os.sep in spec
    try:
        if not is_file:
            importlib.import_module(spec)
            return
        path = Path(spec).resolve()
        if not path.is_file():
            raise ApprenticeError(f"--import {spec!r}: no such file")
        name = "apprentice_user." + re.sub(r"\W", "_", path.stem)
        if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path):
            return  # imported already (a second --import of the same file)
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.path.insert(0, str(path.parent))
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
    except ApprenticeError as e:
        raise ApprenticeError(f"--import {spec!r}: {e}" if not str(e).startswith("--import") else str(e)) from None
    except ModuleNotFoundError as e:
        raise ApprenticeError(f"--import {spec!r}: no module named {e.name!r}" + (
            "" if is_file else " (a file needs its .py suffix or a path)")) from None
    except Exception as e:  # the user's code failing is one line naming it (--debug: the traceback)
        raise ApprenticeError(f"--import {spec!r} failed: {type(e).__name__}: {e}") from e


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        text = f"{e.strerror}: {e.filename!r}" if e.filename else e.strerror
    elif isinstance(e, (ApprenticeError, OSError)):
        text = str(e)
    else:
        text = f"{type(e).__name__}: {e}"
    return " ".join(text.split()) or type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 runtime failure, 2 bad input, 130 Ctrl-C)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser = build_parser()
        try:
            args, extra = parser.parse_known_args(argv)
            if extra:
                # key=value overrides may come after --resume and friends; argparse cannot intermix them.
                if getattr(args, "command", None) == "train" and all("=" in x and not x.startswith("-") for x in extra):
                    args.overrides += extra
                else:
                    parser.error(f"unrecognized arguments: {' '.join(extra)}")
        except SystemExit as e:  # --help (0) or a usage error (2, message already printed)
            return int(e.code or 0) if not isinstance(e.code, str) else EXIT_USER
        for spec in getattr(args, "imports", []):
            import_user_code(spec)
        return int(args.func(args) or 0)
    except KeyboardInterrupt as e:
        # Ctrl-C, or runtime.TrainingInterrupted (a KeyboardInterrupt that says where the run's
        # checkpoint is and carries 130 for SIGINT, 143 for SIGTERM).
        if debug:
            traceback.print_exc()
        message = " ".join(str(e).split())
        print(f"{PROG}: interrupted" + (f": {message}" if message else ""), file=sys.stderr)
        code = getattr(e, "exit_code", None)
        return code if isinstance(code, int) and not isinstance(code, bool) else EXIT_INTERRUPT
    except Exception as e:  # noqa: BLE001 - the one place that turns errors into exit codes
        import yaml

        user = isinstance(e, (ApprenticeError, OSError, yaml.YAMLError))
        # Failures that know their exit status (step.NonFiniteLossError) explain themselves;
        # anything else unexpected gets its type and a pointer to --debug.
        code = getattr(e, "exit_code", None)
        known = user or (isinstance(code, int) and not isinstance(code, bool))
        if debug:
            traceback.print_exc()
        text = _one_line(e) if user or not known else " ".join(str(e).split())
        hint = "" if debug or known else " (run with --debug for the traceback)"
        print(f"{PROG}: error: {text}{hint}", file=sys.stderr)
        if known and not user:
            return code
        return EXIT_USER if user else EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())
