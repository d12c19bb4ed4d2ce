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
