"""Learned quantizer steps in the first training steps: how large their gradients are against them, and
whether an optimizer pushes them through zero (issue 31, part 2: why EfficientNet-B0 goes to NaN).

Each variant trains the same freshly initialised network (same seed, same batches) for ``--steps``
steps and records, per step: the loss, the lowest learned step (LSQ/asym ``act_step``/``weight_step``,
the deployable graph's output quantizers' too) and the largest |∂L/∂s| / s before the update (the gradient at the first step: before any update). The
variants are optimizer × learning rate × ``optim.quant_domain`` (linear: the optimizer steps s; log:
it steps ln s, `apprentice.train.optim`), plus the float network under the same optimizer, which
says whether the float network itself survives that learning rate.

    .venv/bin/python benchmarks/quant_steps.py --import tests/torchvision_shim.py \
        --model timm:efficientnet_b0 --out benchmarks/results/quant_steps_efficientnet.json
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stamp import markdown_table, stamp, stamp_markdown, write_results

from apprentice.cli.user_code import import_user_code
from apprentice.data import load_tensors, normalize
from apprentice.models import build_model
from apprentice.quant import is_quantizer_parameter, prepare
from apprentice.train.layout import to_memory_format
from apprentice.train.optim import lr_factor, make_optimizer, param_groups, set_lr

#: variant name -> (optimizer, peak lr, quant_domain, quantized): a linear warm-up of --warmup steps each
VARIANTS: dict[str, tuple[str, float, str, bool]] = {
    "fp-sgd-0.1": ("sgd", 0.1, "linear", False),
    "sgd-0.1-linear": ("sgd", 0.1, "linear", True),
    "sgd-0.1-log": ("sgd", 0.1, "log", True),
    "fp-adamw-0.002": ("adamw", 0.002, "linear", False),
    "adamw-0.002-linear": ("adamw", 0.002, "linear", True),
    "adamw-0.002-log": ("adamw", 0.002, "log", True),
}


def _network(args: argparse.Namespace, quantized: bool) -> torch.nn.Module:
    torch.manual_seed(args.seed)
    net = build_model(args.model, num_classes=10, in_channels=1)
    if quantized:
        prepare(net, args.precision, act_quantizer=args.act_quantizer, deploy=args.deploy)
    to_memory_format(net, torch.device("cpu"), channels_last=True)  # as training lays it out
    return net.train()


def _steps(net: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in net.named_parameters() if is_quantizer_parameter(n)}


def run_variant(args: argparse.Namespace, name: str, images: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """One variant's per-step records; stops at the first non-finite loss."""
    optimizer, lr, domain, quantized = VARIANTS[name]
    net = _network(args, quantized)
    opt = make_optimizer(optimizer, param_groups([net], weight_decay=args.weight_decay, quant_domain=domain),
                         lr=lr, momentum=0.9, nesterov=optimizer == "sgd")
    records = []
    for i in range(args.steps):
        set_lr(opt, lr * lr_factor(i, schedule="constant", total_steps=args.steps, warmup_steps=args.warmup))
        at = (i * args.batch) % (len(labels) - args.batch + 1)
        x = images[at:at + args.batch].contiguous(memory_format=torch.channels_last)
        loss = torch.nn.functional.cross_entropy(net(x), labels[at:at + args.batch])
        opt.zero_grad()
        loss.backward()
        steps = _steps(net)
        ratio = max((float(p.grad.abs().max() / p.detach().abs().max().clamp(min=1e-12)), n)
                    for n, p in steps.items() if p.grad is not None) if steps else (None, None)
        opt.step()
        low = min((float(p.detach().min()), n) for n, p in steps.items()) if steps else (None, None)
        records.append({"step": i, "loss": float(loss), "grad_over_step": ratio[0], "grad_over_step_at": ratio[1],
                        "lowest_step": low[0], "lowest_step_at": low[1]})
        print(f"{name} step {i}: loss {float(loss):.3f}, lowest step {low[0]}", flush=True)
        if not math.isfinite(float(loss)):
            break
    return {"variant": name, "optimizer": optimizer, "lr": lr, "quant_domain": domain, "quantized": quantized,
            "records": records}


def summary_row(r: dict[str, Any]) -> list[Any]:
    recs = r["records"]
    finite = [x for x in recs if math.isfinite(x["loss"])]
    crossed = next((x["step"] for x in recs if x["lowest_step"] is not None and not x["lowest_step"] > 0), None)
    nan = next((x["step"] for x in recs if not math.isfinite(x["loss"])), None)
    first = recs[0]["grad_over_step"]
    lows = [x["lowest_step"] for x in recs if x["lowest_step"] is not None]
    return [r["variant"], "yes" if r["quantized"] else "FP", r["optimizer"], r["lr"], r["quant_domain"],
            None if first is None else float(f"{first:.3g}"), None if not lows else float(f"{min(lows):.3g}"),
            crossed, round(max(x["loss"] for x in finite), 2) if finite else None,
            round(finite[-1]["loss"], 3) if finite else None, nan]


HEADER = ["variant", "quantized", "optimizer", "peak lr", "quant_domain", "largest grad / step at step 0",
          "lowest step seen", "first step ≤ 0 at", "highest loss", "last finite loss", "NaN at step"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="timm:efficientnet_b0")
    ap.add_argument("--precision", default="4W/8A")
    ap.add_argument("--act-quantizer", default="asym")
    ap.add_argument("--deploy", default="int8", help="the deployable graph (quant.deploy), or 'none'")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=39, help="linear warm-up steps (0.5 epoch of 10,000 images)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--images", type=int, default=4096, help="the first N Fashion-MNIST training images")
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--import", dest="imports", action="append", default=[], metavar="FILE")
    ap.add_argument("--out", default="benchmarks/results/quant_steps.json")
    args = ap.parse_args(argv)
    args.deploy = None if args.deploy == "none" else args.deploy
    for spec in args.imports:
        import_user_code(spec)
    torch.set_num_threads(args.threads)
    data = load_tensors("fashion_mnist", "train", download=False, limit=args.images)
    images = normalize(data.images, data.mean, data.std)
    results = [run_variant(args, v, images, data.labels) for v in args.variants]
    settings = {k: getattr(args, k) for k in ("model", "precision", "act_quantizer", "deploy", "steps", "warmup",
                                                "batch", "images", "weight_decay", "seed", "threads")}
    table = markdown_table(HEADER, [summary_row(r) for r in results])
    s = stamp(argv)
    md = (f"# Learned quantizer steps in the first {args.steps} training steps\n\n{stamp_markdown(s)}\n\n"
          f"`{args.model}`, {args.precision}, `{args.act_quantizer}` activations, deployable graph "
          f"{args.deploy or 'no'}; the first {args.images} Fashion-MNIST training images in order, batch {args.batch}, "
          f"a linear warm-up of {args.warmup} steps, weight decay {args.weight_decay} (quantizer steps none), "
          f"SGD with Nesterov momentum 0.9 or AdamW (β1 0.9); seed {args.seed}, every variant from the same "
          f"initial weights. grad / step: the largest |∂L/∂s| / s of a learned step, before the "
          f"first update. Per-step records in the JSON file.\n\n{table}\n")
    write_results(args.out, {**s, "settings": settings, "variants": results}, md, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
