"""Tests of apprentice.export.sizes: per-layer packed storage against float32, and the file it predicts."""

from __future__ import annotations

import math
import os

import pytest
import torch
from torch import nn

from apprentice.export import format_size_report, save_packed, size_report, size_totals
from apprentice.models import build_model
from apprentice.quant import QConv2d, parse_precision, prepare


def _student(name: str, precision: str, options: dict | None = None) -> tuple[nn.Module, None]:
    """A quantized model; sizes depend on its structure only, not on its values."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=10)
    w, a = parse_precision(precision, **(options or {}))
    prepare(model, weights=w, activations=a)
    return model.eval(), None


@pytest.mark.parametrize(("precision", "options", "ternary", "per_byte"),
                         [("2W/8A", {}, "base3", 5), ("2W/8A", {}, "2bit", 4),
                          ("2W/32A", {"quantizer": "wrpn"}, "base3", 5), ("4W/8A", {}, "base3", 2),
                          ("3W/8A", {}, "base3", 2), ("8W/8A", {"per_channel": True}, "base3", 1)])
def test_size_report_bytes(precision, options, ternary, per_byte) -> None:
    model, _ = _student("resnet20", precision, options)
    rows = size_report(model, ternary_packing=ternary)
    quantized = {n for n, m in model.named_modules() if isinstance(m, QConv2d)}
    assert {r.name for r in rows if r.quantized} == quantized
    assert [r.name for r in rows][-1] == "(other)"
    for r in rows:
        if r.quantized:
            n = math.prod(r.shape)
            assert r.code_bytes == math.ceil(n / per_byte)
            scales = r.shape[0] if options.get("per_channel") else 1
            assert r.packed_bytes == r.code_bytes + 4 * scales
            assert r.fp32_bytes == 4 * n and r.precision == precision
        elif r.name != "(other)":
            assert r.packed_bytes == r.fp32_bytes == 4 * r.params and r.precision == "32W/32A"
    totals = size_totals(rows)
    assert totals["packed_bytes"] == sum(r.packed_bytes for r in rows)
    assert totals["quantized_ratio"] == pytest.approx(
        sum(r.fp32_bytes for r in rows if r.quantized) / sum(r.packed_bytes for r in rows if r.quantized))
    text = format_size_report(rows)
    assert "layer3.2.conv2" in text and "whole model" in text and "quantized layers" in text


def test_packed_file_is_genuinely_small(tmp_path) -> None:
    from safetensors.torch import save_file

    model, _ = _student("resnet20", "2W/8A")
    rows = size_report(model)
    totals = size_totals(rows)
    path = tmp_path / "packed.safetensors"
    save_packed(model, path)
    header = int.from_bytes(path.read_bytes()[:8], "little")
    # The file is the 8-byte length, the JSON header (tensor index + map) and exactly the payload
    # the size report predicts.
    assert os.path.getsize(path) == 8 + header + totals["packed_bytes"]
    float_model = build_model(**model.arch)
    float_model.load_state_dict({k: v for k, v in model.state_dict().items() if not k.endswith("act_clip")})
    save_file(float_model.state_dict(), str(tmp_path / "fp32.safetensors"))
    fp32_size = os.path.getsize(tmp_path / "fp32.safetensors")
    assert totals["fp32_bytes"] <= fp32_size <= totals["fp32_bytes"] * 1.05
    # Ternary inner convs at 1.6 bits: ~20x on those layers, ~16x on the payload of the whole
    # ResNet-20 (float conv1/fc/BN), a bit less on disk because of the JSON header.
    assert 19.5 <= totals["quantized_ratio"] <= 20.1
    assert totals["ratio"] >= 15
    assert fp32_size / os.path.getsize(path) >= 0.75 * totals["ratio"]


@pytest.mark.parametrize("fold_bn", [False, True])
def test_the_packed_map_records_the_float32_size(tmp_path, fold_bn) -> None:
    model, _ = _student("resnet8", "2W/8A", {"learned": True})
    qmap = save_packed(model, tmp_path / "m.safetensors", fold_bn=fold_bn)
    # The float model's size, also when folding has taken the BatchNorm tensors out of the file.
    assert qmap["fp32_bytes"] == size_totals(size_report(model))["fp32_bytes"]
