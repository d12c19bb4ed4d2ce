"""Tests of the benchmarks added for the phone files (onnx_agreement.py --runtimes) and the teacher ensemble
(ensemble_teacher.py), run as a user runs them; the helpers are test_benchmarks.py's."""

from __future__ import annotations

import json
import sys

import pytest
from test_benchmarks import ROOT, _benchmark_process


def test_onnx_agreement_runs_the_phone_files_of_a_deployable_run(tmp_path):
    pytest.importorskip("executorch")
    pytest.importorskip("litert_torch")

    from apprentice.run.loop import fit

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_runs import tiny

    run = tmp_path / "run"
    fit(tiny(run, "quant.precision=4W/8A", "quant.deploy=int8", "data.limit=64"))
    out = tmp_path / "agreement.json"
    _benchmark_process("onnx_agreement.py", str(run), "--dataset", "synthetic", "--threads", "1", "--out", str(out),
                       "--runtimes", "executorch", "litert")
    rows = {r["model"]: r for r in json.loads(out.read_text())["results"]}
    # tiny = ResNet-8 with zero-pad shortcuts: 6 quantized convs (+ 2 shortcut convs in XNNPACK), 3 adds.
    assert len(rows["executorch int8"]["kernels"]["delegated"]["int8"]) == 8
    assert rows["litert int8"]["kernels"]["ops"]["int8"] == {"CONV_2D": 6, "ADD": 3}
    for name in ("executorch int8", "litert int8"):
        assert rows[name]["images"] == 512 and rows[name]["top1_agreement"] >= 0.99 and rows[name]["file_bytes"] > 0
    assert "Integer kernels of the phone files" in out.with_suffix(".md").read_text()


def test_ensemble_teacher_scores_the_members_and_their_mean(tmp_path):
    from apprentice.run.loop import fit

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_runs import tiny

    runs = [tmp_path / f"t{seed}" for seed in (0, 1)]
    for seed, run in enumerate(runs):
        fit(tiny(run, f"train.seed={seed}", "model.width=0.5", "data.holdout=64"))
    out = tmp_path / "ensemble.json"
    _benchmark_process("ensemble_teacher.py", *map(str, runs), "--out", str(out))
    rows = json.loads(out.read_text())["rows"]
    assert [r["teacher"] for r in rows] == [str(runs[0]), str(runs[1]), "ensemble of t0 + t1"]
    assert all(0 <= r["test"] <= 100 and 0 <= r["holdout"] <= 100 for r in rows)
    assert "| ensemble of t0 + t1 |" in out.with_suffix(".md").read_text()


def test_phone_speed_times_the_students_files_beside_each_runtimes_own_anchors(tmp_path):
    pytest.importorskip("executorch")
    pytest.importorskip("litert_torch")
    out = tmp_path / "phone_speed.json"
    variants = ["et-fp32", "et-anchor", "et-int8", "litert-anchor", "ort-int8"]  # LiteRT's anchor takes int8 input
    _benchmark_process("phone_speed.py", "--models", "tiny", "--threads", "1", "--runs", "2", "--warmup", "1",
                       "--pause-ms", "0", "--out", str(out), "--variants", *variants)
    result = json.loads(out.read_text())
    rows = {r["variant"]: r for r in result["results"]}
    assert list(rows) == variants and all(r["median_ms"] > 0 for r in rows.values())
    assert rows["et-anchor"]["kernels"]["xnnpack"]["int8"] > 0 == rows["et-fp32"]["kernels"]["xnnpack"]["int8"]
    assert rows["litert-anchor"]["kernels"]["ops"]["int8"]["CONV_2D"] > 0
    for v in ("et-int8", "ort-int8"):  # the student's files compute the student
        assert rows[v]["top1_agreement_vs_fakequant"] == 1.0 and rows[v]["max_abs_diff_vs_fakequant"] < 1e-3
    # tiny = ResNet-8 with zero-pad shortcuts: 6 quantized convs + 2 shortcut convs in XNNPACK, stem and fc float
    assert rows["et-int8"]["kernels"]["xnnpack"] == {"int8": 8, "float": 2}
    (ratio,) = result["against_anchors"]  # only the ExecuTorch file has both its runtime's anchors here
    fp32, anchor, mine = (rows[v]["median_ms"] for v in ("et-fp32", "et-anchor", "et-int8"))
    assert ratio["variant"] == "et-int8" and ratio["time_vs_anchor"] == pytest.approx(mine / anchor)
    assert ratio["speedup_vs_fp32"] == pytest.approx(fp32 / mine)
    assert "Against each runtime's own anchors" in out.with_suffix(".md").read_text()
