"""The benchmarks' grid runner (benchmarks/_runner.py): run states, resume, and rows committed in
another checkout counting as done. Its end-to-end run (a tiny grid, resumed): test_benchmarks.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import _runner


def test_a_row_committed_in_another_checkout_counts_as_done(tmp_path):
    runs = tmp_path / "here" / "runs" / "accuracy"  # a scheme-C cell: its teacher and init are run folders
    job = _runner.Job("2w32a-C-s1", {"distill.teacher": str(runs / "teacher"), "distill.student_init": str(runs / "fp-s1"),
                                     "optim.lr": 0.01, "train.seed": 1})
    there = {k: v.replace(str(tmp_path / "here"), "/elsewhere/repo") if isinstance(v, str) else v
             for k, v in job.overrides.items()}
    assert there != job.overrides and _runner.is_committed(job, {job.name: {"config": {"overrides": there}}})
    changed = {**there, "optim.lr": 0.5}
    assert not _runner.is_committed(job, {job.name: {"config": {"overrides": changed}}})


def test_run_states_and_changed_settings(tmp_path):
    job = _runner.Job("x", {"train.epochs": 2})
    folder = tmp_path / "x"
    assert _runner.state(folder, job) == "fresh"
    folder.mkdir()
    assert _runner.state(folder, job) == "restart"
    (folder / "job.json").write_text(json.dumps(job.overrides))
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.pt").write_bytes(b"")
    assert _runner.state(folder, job) == "resume"
    (folder / "summary.json").write_text(json.dumps({"status": "interrupted"}))
    assert _runner.state(folder, job) == "resume"
    (folder / "summary.json").write_text(json.dumps({"status": "finished"}))
    assert _runner.state(folder, job) == "done"
    with pytest.raises(SystemExit, match="train.epochs"):
        _runner.state(folder, _runner.Job("x", {"train.epochs": 3}))
