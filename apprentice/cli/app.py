"""The `apprentice` command line: train, eval, info, export, compare, predict and cache-teacher.

The argument parser (`build_parser`) and the entry point (`main`); the subcommands' bodies are
`apprentice.cli.commands`, ``--import`` is `apprentice.cli.user_code`. Errors a user can fix (an
`ApprenticeError`, a missing file, bad YAML) print one line ``apprentice: error: <message>`` on
stderr and exit 2; failures during a run (a non-finite loss, a full disk while checkpointing, a
lost torchrun peer, an out-of-memory error) exit 1; Ctrl-C exits 130, and a training run stopped by
a signal after checkpointing exits with the status its `runtime.TrainingInterrupted` carries (130
or 143). ``--debug`` adds the traceback. docs/bad-inputs.md lists the bad inputs the tests try and
what each prints.

Example:
    apprentice train configs/fashion_mnist/teacher.yaml optim.lr=0.05 train.epochs=1
    apprentice eval runs/quickstart/teacher
    apprentice export runs/quickstart/student_b --format packed --out student_b.safetensors
    apprentice compare runs/quickstart/*
    apprentice predict student_b.safetensors shirt.png photos/ --top-k 3
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from apprentice.cli.commands import (
    EXPORT_SUFFIXES,
    PROG,
    cmd_cache_teacher,
    cmd_compare,
    cmd_eval,
    cmd_export,
    cmd_info,
    cmd_predict,
    cmd_train,
)
from apprentice.cli.user_code import import_user_code
from apprentice.errors import EXIT_INTERRUPT, EXIT_RUNTIME, EXIT_USER, ApprenticeError

__all__ = ["build_parser", "main"]


# ---------------------------------------------------------------------------------------------
# Parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argparse tree of the subcommands: all of them in full, or only ``command`` in full and the
    others as names with their one-line help (what `main` builds, so that ``apprentice --help``
    imports no torch: some subcommands' options list choices from the library's tables)."""
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
    for name, (summary, add) in SUBCOMMANDS.items():
        if command in (None, name):
            add(sub, common)
        else:
            sub.add_parser(name, help=summary, add_help=False)
    return parser


def _command_in(argv: Sequence[str]) -> str:
    """The subcommand ``argv`` names ("" for none): the first word that is one."""
    return next((word for word in argv if word in SUBCOMMANDS), "")


def _add_train(sub: Any, common: argparse.ArgumentParser) -> None:
    from apprentice.config import help_text

    p = sub.add_parser(
        "train", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        help=SUBCOMMANDS["train"][0],
        description="Train from a YAML recipe; key=value arguments override its values\n"
                    "(defaults < file < overrides; values are YAML: 0.05, [conv1,fc], null).",
        epilog="config keys:\n" + help_text())
    p.add_argument("config", help="YAML recipe, e.g. configs/fashion_mnist/teacher.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=0.05")
    p.add_argument("--resume", action="store_true", help="continue the run in train.out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder train.out")
    p.set_defaults(func=cmd_train)


def _add_eval(sub: Any, common: argparse.ArgumentParser) -> None:
    from apprentice.data.catalog import SPLITS
    from apprentice.train.runtime import DEVICE_NAMES
    from apprentice.train.step import AMP_MODES

    p = sub.add_parser("eval", parents=[common], help=SUBCOMMANDS["eval"][0],
                       description="Top-1/top-5 accuracy of a run folder, checkpoint, packed model or exported "
                                   "ExecuTorch/LiteRT file on the data set it was trained on.")
    p.add_argument("path", help="run folder, checkpoint (.pt), packed file (.safetensors), or an ExecuTorch (.pte) "
                                "or LiteRT (.tflite) export (run by its runtime, on the CPU)")
    p.add_argument("--data-dir", help="folder holding the data set (default: as in the run's config)")
    p.add_argument("--split", default="test", choices=list(SPLITS),
                   help="which images (default test; an image folder's test/ when it has one, else val/)")
    p.add_argument("--batch-size", type=_positive_int, help="images per batch (default data.eval_batch_size)")
    p.add_argument("--device", default="auto", help=f"one of {DEVICE_NAMES} (default auto)")
    p.add_argument("--amp", default="off", choices=list(AMP_MODES), help="autocast (default off)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_eval)


def _add_info(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("info", parents=[common], help=SUBCOMMANDS["info"][0],
                       description="Model, per-layer precision, parameters, accuracy and export sizes.")
    p.add_argument("path", help="run folder, checkpoint or packed file")
    p.set_defaults(func=cmd_info)


def _add_export(sub: Any, common: argparse.ArgumentParser) -> None:
    from apprentice.export import TERNARY_PACKINGS
    from apprentice.export.onnx import ONNX_MODES

    p = sub.add_parser("export", parents=[common], help=SUBCOMMANDS["export"][0],
                       description="Export a trained run: 'packed' = safetensors with 2/4/8-bit or base-3 "
                                   "packed integer codes and a quantization map; 'onnx' = ONNX graph; "
                                   "'executorch' = .pte program with XNNPACK int8 kernels, 'litert' = int8 .tflite "
                                   "(both for a run trained with quant.deploy=int8; extras executorch, litert).")
    p.add_argument("path", help="run folder or checkpoint")
    p.add_argument("--format", required=True, choices=list(EXPORT_SUFFIXES), help="output format")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--ternary-packing", default="base3", choices=list(TERNARY_PACKINGS),
                   help="ternary layers: 5 weights per byte (base3, default) or 4 per byte (2bit)")
    p.add_argument("--fold-bn", action="store_true", help="fold BatchNorm into the preceding convs")
    p.add_argument("--onnx-mode", default="auto", choices=list(ONNX_MODES),
                   help="onnx: 'int8' integer graph (QLinearConv/QLinearAdd; needs a run trained with "
                        "quant.deploy=int8), 'qdq' float ops between QDQ pairs; auto (default): int8 when the run allows it")
    p.set_defaults(func=cmd_export)


def _add_compare(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("compare", parents=[common], help=SUBCOMMANDS["compare"][0],
                       description="Compare runs: model, precision, scheme, teacher, accuracy, FP32 and packed size.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (or checkpoints / packed files)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_compare)


def _add_predict(sub: Any, common: argparse.ArgumentParser) -> None:
    from apprentice.train.runtime import DEVICE_NAMES

    p = sub.add_parser("predict", parents=[common], help=SUBCOMMANDS["predict"][0],
                       description="The class name and probability of each image, as the model sees it (its "
                                   "recorded channels, size, crop and normalisation). An image that cannot be "
                                   "read gets one error line (exit status 2) and the others are still predicted.")
    p.add_argument("model", help="run folder, checkpoint, packed file (.safetensors), or an ONNX (.onnx), "
                                 "ExecuTorch (.pte) or LiteRT (.tflite) export")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    p.add_argument("--top-k", type=_positive_int, default=1, help="classes shown per image (default 1)")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--device", default="auto", help=f"one of {DEVICE_NAMES} (default auto; exported files run on the CPU)")
    p.set_defaults(func=cmd_predict)


def _add_cache_teacher(sub: Any, common: argparse.ArgumentParser) -> None:
    from apprentice.data.cache_build import CACHE_BATCH
    from apprentice.train.runtime import DEVICE_NAMES

    p = sub.add_parser(
        "cache-teacher", parents=[common], help=SUBCOMMANDS["cache-teacher"][0],
        description="Run a trained teacher once over every view a training image can take (pad-crop-flip: "
                    "every offset and flip; image folders: --views random-resized crops) and store its logits, "
                    "so students of schemes B and C train with distill.teacher_cache=FILE at the price of "
                    "training without a teacher. Resumable: run it again after an interruption.")
    p.add_argument("teacher", nargs="+", help="the teacher's run folder or checkpoint; several: an ensemble (the mean "
                                              "of their logits), for distill.teacher set to the same list")
    p.add_argument("--weights", nargs="+", type=float, default=None, metavar="W",
                   help="an ensemble's weights, one a teacher (distill.teacher_weights); default equal")
    p.add_argument("overrides", nargs="*", metavar="data.key=value",
                   help="the students' data settings where they differ from the teacher's, e.g. data.holdout=5000; "
                        "data.erase=P stores the views erased as the students' loader erases them (the "
                        "teacher's own data.erase is not used)")
    p.add_argument("--out", required=True, help="the cache file to write")
    p.add_argument("--dtype", default="float16", help="stored logits: float16 (default) or float32")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help=f"images per teacher forward (default {CACHE_BATCH['cpu']} on a CPU, where larger batches' "
                        f"activations outgrow malloc's reuse; {CACHE_BATCH['gpu']} on a GPU)")
    p.add_argument("--device", default="auto", help=f"one of {DEVICE_NAMES} (default auto)")
    p.add_argument("--views", type=_positive_int, default=None,
                   help="views stored per image: tensor data sets K of their pad-crop-flip views, drawn once "
                        "(default: every view); image folders random-resized crops (default 10)")
    p.add_argument("--topk", type=_positive_int, default=10, help="image folders: logits kept per crop (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the stored views or crops (default 0)")
    p.set_defaults(func=cmd_cache_teacher)



#: ``apprentice COMMAND``: its one-line help and the function that adds its parser.
SUBCOMMANDS: dict[str, tuple[str, Any]] = {
    "train": ("train a model from a YAML recipe", _add_train),
    "eval": ("evaluate a run, checkpoint or packed file", _add_eval),
    "info": ("architecture, per-layer precision and sizes", _add_info),
    "export": ("write a packed (or ONNX) model", _add_export),
    "compare": ("table of runs: accuracy and sizes", _add_compare),
    "predict": ("classify image files with a trained model", _add_predict),
    "cache-teacher": ("store a trained teacher's logits for every training view", _add_cache_teacher),
}


# ---------------------------------------------------------------------------------------------
# Entry point


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
        parser = build_parser(_command_in(argv))
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
