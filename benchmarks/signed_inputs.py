"""What an unsigned activation quantizer loses on stock networks, and what the zero-point one keeps.

For each network (torchvision's MobileNetV3-Small and ResNet-18, timm's EfficientNet-B0; 1 input
channel, 10 classes, untrained, as a student starts) at 4W/8A, once with the unsigned "clip"
quantizer ([0, c], the paper's for ResNets) and once with "asym" (a zero point from the first
batch's range, the default for networks other than the built-in ResNets): the first 128 Fashion-MNIST
training images pass in training mode (the batch that calibrates "asym"), then
`apprentice.quant.report.activation_report` measures the next 128 images. Reported per network and
quantizer: quantized layers, layers whose input has negative values, the mean share of their input
clipped below the quantizer's range, and the mean share above it over every quantized layer.

Then each network's deployable graph (``deploy="int8"``, "asym" activations, the same calibration batch)
is exported to ONNX and optimized by ONNX Runtime (CPU): how many of its quantized convs run as
``QLinearConv``, which layers stay float and why (`apprentice.quant.integer_layers`), and the argmax
agreement of the file with the model on the next 128 images (untrained weights: a check of the
export, not of accuracy).

    .venv/bin/python benchmarks/signed_inputs.py     # needs the timm extra (pip install -e '.[timm]')

(On this project's dev machines torchvision's only wheel is a CUDA build: add
``--import tests/torchvision_shim.py``, as the tests do.)
"""

from __future__ import annotations

import argparse
import gzip
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stamp import markdown_table, stamp, stamp_markdown, write_results

from apprentice.cli.user_code import import_user_code
from apprentice.export import export_onnx
from apprentice.export.int8_onnx import runtime_ops
from apprentice.models import build_model
from apprentice.quant import QConv2d, integer_layers, prepare
from apprentice.quant.report import activation_report

NETWORKS = ["torchvision:mobilenet_v3_small", "timm:efficientnet_b0", "torchvision:resnet18"]
IMAGES = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST's training mean and std (apprentice.data.catalog)


def images(n: int) -> torch.Tensor:
    with gzip.open(IMAGES) as f:
        raw = np.frombuffer(f.read(), np.uint8, offset=16)
    return torch.tensor(raw.reshape(-1, 1, 28, 28)[:n].copy()).float().div(255).sub(MEAN).div(STD)


def measure(name: str, act_quantizer: str, x: torch.Tensor) -> dict:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=1)
    prepare(model, "4W/8A", act_quantizer=act_quantizer)
    with torch.no_grad():
        model.train()(x[:128])
    report = activation_report(model, x[128:])
    signed = [r for r in report.values() if r.negative > 0]
    return {"network": name, "act_quantizer": act_quantizer, "layers": len(report), "signed_layers": len(signed),
            "below_pct": 100 * float(np.mean([r.below for r in signed])) if signed else 0.0,
            "above_pct": 100 * float(np.mean([r.above for r in report.values()])),
            "per_layer": {n: vars(r) for n, r in report.items()}}


def integer_graph(name: str, x: torch.Tensor, folder: Path) -> dict:
    """Quantized convs, QLinearConv in ONNX Runtime's optimized graph, float layers and why, agreement."""
    import onnxruntime as ort

    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=1)
    prepare(model, "4W/8A", deploy="int8")
    with torch.no_grad():
        model.train()(x[:128])
    model.eval()
    convs = [n for n, m in model.named_modules() if isinstance(m, QConv2d)]
    path = folder / f"{name.replace(':', '_')}.onnx"
    export_onnx(model, path, input_shape=(1, 28, 28))
    ops = runtime_ops(str(path), str(folder / "optimized.onnx"))["ops"]
    with torch.no_grad():
        ref = model(x[128:])
    out = torch.from_numpy(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                           .run(None, {"input": x[128:].numpy()})[0])
    return {"network": name, "quantized_convs": len(convs), "qlinearconv": ops.get("QLinearConv", 0),
            "float_quantized": {n: r for n, r in integer_layers(model).items() if r is not None and n in convs},
            "agreement_pct": 100 * float((out.argmax(1) == ref.argmax(1)).float().mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="FILE",
                        help="a Python file to run first (as apprentice's --import)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "signed_inputs.json"))
    args = parser.parse_args()
    for spec in args.imports:
        import_user_code(spec)
    torch.set_num_threads(1)
    x = images(256)
    rows = [measure(n, q, x) for n in NETWORKS for q in ("clip", "asym")]
    table = markdown_table(
        ["network (4W/8A, untrained)", "activation quantizer", "quantized layers", "with signed input",
         "clipped below, signed layers (mean %)", "above the range, all layers (mean %)"],
        [[r["network"], r["act_quantizer"], r["layers"], r["signed_layers"], f"{r['below_pct']:.1f}",
          f"{r['above_pct']:.1f}"] for r in rows])
    with tempfile.TemporaryDirectory() as folder:
        graphs = [integer_graph(n, x, Path(folder)) for n in NETWORKS]
    table2 = markdown_table(
        ["network (4W/8A deployable, untrained)", "quantized convs", "QLinearConv in ONNX Runtime",
         "quantized convs left float", "argmax agreement with the model (%)"],
        [[g["network"], g["quantized_convs"], g["qlinearconv"], ", ".join(g["float_quantized"]) or "none",
          f"{g['agreement_pct']:.1f}"] for g in graphs])
    s = stamp()
    write_results(args.out, {**s, "rows": rows, "integer_graphs": graphs},
                  f"# Signed inputs on stock networks\n\n{stamp_markdown(s)}\n\n{table}\n\n{table2}\n",
                  f"{table}\n\n{table2}")


if __name__ == "__main__":
    main()
