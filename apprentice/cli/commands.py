"""The bodies of the ``apprentice`` subcommands: train, eval, info, export, compare, predict, cache-teacher.

Each takes the parsed arguments (`apprentice.cli.build_parser`), calls library functions and
prints; nothing here knows how training or packing works. Library modules are imported inside the
commands, so that ``apprentice --help`` needs no torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apprentice.errors import EXIT_USER, ApprenticeError

if TYPE_CHECKING:
    from apprentice.run.runs import LoadedModel

__all__ = [
    "EXPORT_SUFFIXES", "PROG", "cmd_cache_teacher", "cmd_compare", "cmd_eval", "cmd_export", "cmd_info", "cmd_predict", "cmd_train",
]

PROG = "apprentice"

#: ``apprentice export --format``: the suffix each format's file is offered with.
EXPORT_SUFFIXES = {"packed": "safetensors", "onnx": "onnx", "executorch": "pte", "litert": "tflite"}


# ---------------------------------------------------------------------------------------------
# Loading runs, checkpoints and packed files


def _load(path_text: str, *, runtimes: bool = False) -> LoadedModel:
    # lazily: `apprentice --help` needs no torch
    from apprentice.run.runs import load_model_file

    return load_model_file(path_text, runtimes=runtimes)


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


# How a run chose its best.pt (summary "best_on"); summaries of older versions have none: they chose on test.
_BEST_ON = {"holdout": "best holdout top-1", "last": "the last epoch", None: "best test top-1, an older version"}


def _best(summary: dict[str, Any]) -> str:
    """What ``best.pt`` holds, for a summary line: its test top-1, epoch and how it was chosen."""
    why = _BEST_ON.get(summary.get("best_on"), str(summary.get("best_on")))
    return f"best.pt top-1 {_pct(summary.get('best_top1'))} % (epoch {summary.get('best_epoch', '-')}: {why})"


# ---------------------------------------------------------------------------------------------
# Subcommands


def cmd_train(args: argparse.Namespace) -> int:
    from apprentice.config import load_config

    cfg = load_config(args.config, args.overrides)
    from apprentice.run.loop import fit

    summary = fit(cfg, resume=args.resume, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only the first process reports
        return 0
    print(f"{PROG}: done: {cfg.train.out}  final top-1 {_pct(summary.get('final_top1'))} %  {_best(summary)}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    loaded = _load(args.path, runtimes=True)
    cfg = loaded.config
    if cfg is None:
        raise ApprenticeError(f"{args.path!r} carries no training config, so its data set is unknown")
    from apprentice.run.build import eval_data
    from apprentice.train import evaluate
    from apprentice.train.runtime import resolve_device

    device = resolve_device(args.device, "--device") if loaded.kind not in ("executorch", "litert") else "cpu"

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
        precision = quant.format_precision(wq["bits"] if wq else None, acts)
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
        print(f"accuracy: final top-1 {_pct(s.get('final_top1'))} %  top-5 {_pct(s.get('final_top5'))} %  {_best(s)}")
    print()
    print(_table(_precision_rows(model, loaded.qmap), ["layer", "kind", "precision", "weights", "activations", "params"]))
    print()
    print(_sizes(loaded)[2])
    return 0


def _teacher(c: Any) -> str:
    if c.distill.teacher:
        return c.distill.teacher if isinstance(c.distill.teacher, str) else " + ".join(c.distill.teacher)
    return c.distill.teacher_model.name if c.distill.teacher_model is not None else "-"


def cmd_export(args: argparse.Namespace) -> int:
    loaded = _load(args.path)
    if loaded.kind == "packed":
        raise ApprenticeError(f"{args.path!r} is already a packed file; export a run folder or checkpoint")
    from apprentice import export
    from apprentice.config import config_to_dict
    from apprentice.run.build import preprocess_from_config

    out = _export_target(args.out, args.format, loaded.path)
    pre = preprocess_from_config(loaded.config, int(loaded.model.arch["num_classes"]))  # for apprentice predict
    if args.format == "packed":
        meta = {"config": config_to_dict(loaded.config), "summary": loaded.summary, "source": str(loaded.path),
                **pre.to_metadata()}
        export.save_packed(loaded.model, out, ternary_packing=args.ternary_packing, fold_bn=args.fold_bn,
                           metadata=json.loads(json.dumps(meta, default=str)))
    elif args.format == "onnx":
        # export_onnx itself explains how to install onnx when it is missing.
        from apprentice.export import export_onnx

        qmap = export_onnx(loaded.model, out, input_shape=(1, pre.channels, pre.image_size, pre.image_size),
                           fold_bn=args.fold_bn, metadata=pre.to_metadata(), mode=args.onnx_mode)
    else:
        qmap = _export_runtime(loaded, args.format, out, pre)
    print(f"{PROG}: wrote {out} ({out.stat().st_size:,} bytes, {args.format})")
    if args.format == "onnx":
        from apprentice.export.int8_onnx import describe_export

        for line in describe_export(qmap, out):
            print(f"{PROG}: {line}")
    elif args.format != "packed":
        from apprentice.export.pt2e import describe_runtime_export

        for line in describe_runtime_export(qmap, args.format):
            print(f"{PROG}: {line}")
    return 0


def _export_runtime(loaded: LoadedModel, fmt: str, out: Path, pre: Any) -> dict[str, Any]:
    """An ExecuTorch or LiteRT file of a deployable student, its config and preprocessing in its metadata."""
    from apprentice.config import config_to_dict

    if fmt == "executorch":
        from apprentice.export.pte import export_executorch as export
    else:
        from apprentice.export.tflite import export_litert as export
    meta = json.loads(json.dumps({"config": config_to_dict(loaded.config), "summary": loaded.summary,
                                  "source": str(loaded.path), **pre.to_metadata()}, default=str))
    return export(loaded.model, out, input_shape=(pre.channels, pre.image_size, pre.image_size), metadata=meta)


def _checkpoint_read(source: Path) -> Path:
    """The checkpoint file that loading ``source`` (a run folder or a checkpoint) read."""
    from apprentice.train.checkpoint import find_checkpoint

    return find_checkpoint(source) if source.is_dir() else source


def _export_target(text: str, fmt: str, source: Path) -> Path:
    """``--out`` as a path, refusing to replace anything but an earlier export of the same format."""
    from apprentice.run.file_checks import check_output_apart, is_packed_export

    out = Path(text)
    if out.is_dir():
        example = out / f"model.{EXPORT_SUFFIXES[fmt]}"
        raise ApprenticeError(f"--out {text!r} is a folder; give a file name, e.g. {str(example)!r}")
    check_output_apart(out, "--out", {"the checkpoint being exported": _checkpoint_read(source)})
    if not out.exists():
        return out
    inside = source.is_dir() and out.resolve().is_relative_to(source.resolve())
    if is_packed_export(out) if fmt == "packed" else out.suffix == f".{EXPORT_SUFFIXES[fmt]}":
        return out  # replacing an earlier export is what re-exporting means
    if inside:
        raise ApprenticeError(f"--out {text!r} would overwrite the run being exported; choose another file")
    raise ApprenticeError(f"--out {text!r} already exists and is not an earlier {fmt} export; "
                          f"refusing to overwrite it (choose another file or remove it)")


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
    from apprentice.cli.predict import load_predictor, predict
    from apprentice.data.images import image_files
    from apprentice.train.runtime import resolve_device

    images = image_files([Path(p) for p in args.images], missing_ok=True)  # a missing one: an error line, the rest predicted
    if not images:
        raise ApprenticeError(f"no image files in {' '.join(args.images)}")
    device = "cpu" if Path(args.model).suffix.lower() in (".onnx", ".pte", ".tflite") else resolve_device(args.device, "--device")
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
    from apprentice.data import cache_teacher
    from apprentice.ensemble import Ensemble, check_members
    from apprentice.run.file_checks import check_output_apart
    from apprentice.train import keep_freed_memory

    # argparse gives every word to the first list: the data.key=value words are the overrides
    args.overrides = [w for w in args.teacher if "=" in w and not Path(w).exists()] + list(args.overrides)
    args.teacher = [w for w in args.teacher if w not in args.overrides]
    if not args.teacher:
        raise ApprenticeError("give the teacher's run folder or checkpoint (several: an ensemble)")
    members = [_load(path) for path in args.teacher]
    for path, loaded in zip(args.teacher, members):
        if loaded.kind == "packed" or loaded.config is None:
            raise ApprenticeError(f"{path!r} is a packed export; cache-teacher needs the teacher's run folder or "
                                  f"checkpoint (its data set and full-precision weights)")
    if args.weights is not None and len(args.weights) != len(members):
        raise ApprenticeError(f"--weights: {len(args.weights)} weights for {len(members)} teachers")
    loaded = members[0]  # the data settings: the first teacher's, with the students' overrides
    out = Path(args.out)
    if out.is_dir():
        raise ApprenticeError(f"--out {args.out!r} is a folder; give a file name, e.g. {str(out / 'teacher.cache')!r}")
    check_output_apart(out, "--out", {"the teacher's checkpoint" if len(members) == 1 else
                                      f"the checkpoint of teacher {i}": _checkpoint_read(m.path)
                                      for i, m in enumerate(members)})
    if out.exists():
        raise ApprenticeError(f"--out {args.out!r} already exists; a finished cache is never replaced (remove it "
                              f"or choose another file)")
    report = lambda line: print(f"{PROG}: {line}", file=sys.stderr)
    cfg = _students_data(loaded.config, args.overrides, report)
    from apprentice.run.build import data_spec
    from apprentice.train.runtime import resolve_device

    data = cfg.data
    spec = data_spec(cfg, report=report)
    models = [m.model for m in members]
    check_members(models, channels=spec.preprocess.channels, image_size=spec.preprocess.image_size,
                  num_classes=spec.num_classes, names=args.teacher)
    teacher = models[0] if len(models) == 1 else Ensemble(models, args.weights)
    device = resolve_device(args.device, "--device")
    teacher = teacher.to(device).eval()
    if device.type == "cpu":  # the forwards free and take the same blocks: keep them (a third of the time
        keep_freed_memory()   # went to the kernel's page faults with glibc's defaults, as for training)
    cache_teacher(str(out), teacher, spec.name, download=data.download, holdout=data.holdout,
                  limit=data.limit, dtype=args.dtype, views=args.views, topk=args.topk, seed=args.seed,
                  batch_size=args.batch_size, report=report, spec=spec)
    erased = f" data.erase={data.erase}" if data.erase else ""
    print(f"{PROG}: wrote {out} ({out.stat().st_size:,} bytes); train students with distill.teacher_cache={out}{erased}")
    return 0


def _students_data(teacher_config: Any, overrides: list[str], report: Callable[[str], None]) -> Any:
    """The teacher's config with the students' data.* overrides: what the cache is built for.

    The teacher's own random erasing trained the teacher and is not taken: the cache serves the
    students' views, whose erasing (keyed by image and view, so a cache can hold it) is given like
    any of their settings."""
    from apprentice.config import config_from_dict, config_to_dict
    from apprentice.config.schema import Config
    from apprentice.config.typed_yaml import apply_override

    tree = config_to_dict(teacher_config)
    own = tree.setdefault("data", {}).get("erase") or 0.0
    tree["data"]["erase"] = 0.0
    for text in overrides:
        if not text.startswith("data."):
            raise ApprenticeError(f"{text!r}: only data.* settings can be given (the data the students train on)")
        apply_override(tree, text, Config)
    if own and not any(text.startswith("data.erase=") for text in overrides):
        report(f"the teacher trained with data.erase={own}; this cache holds unerased views (students with "
               f"random erasing need a cache built with their data.erase=P)")
    return config_from_dict(tree)
