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


def test_to_run_brings_back_what_a_pending_row_needs_and_nothing_else(tmp_path):
    teacher = _runner.Job("teacher", {"train.epochs": 2}, meta={"role": "teacher"})
    cache = _runner.Job(_runner.CACHE, {"data.pad": 0}, ("teacher",), {"role": "cache"})
    twin = _runner.Job("fp-s0", {"train.seed": 0}, meta={"role": "fp_twin"})
    student = _runner.Job("b-s0", {"distill.scheme": "B"}, ("teacher", _runner.CACHE), {"role": "student"})
    jobs = [teacher, cache, twin, student]
    rows = {j.name: {"config": {"overrides": j.overrides}} for j in (teacher, twin)}  # committed elsewhere
    # a fresh machine: the student's row is still to make, so its teacher runs again (its folder is
    # not here) and so does the cache; the committed twin, which nothing pending needs, does not
    assert _runner.to_run(jobs, tmp_path, rows, "runs") == [teacher, cache, student]
    rows[student.name] = {"config": {"overrides": student.overrides}}
    assert _runner.to_run(jobs, tmp_path, rows, "runs") == []  # every row committed: nothing to run
    for j in (teacher, twin):  # finished here, nothing committed: only the student and its cache
        (tmp_path / j.name).mkdir()
        (tmp_path / j.name / "summary.json").write_text(json.dumps({"status": "finished"}))
    assert _runner.to_run(jobs, tmp_path, {}, "runs") == [cache, student]
