"""The benchmarks' grid runner (benchmarks/_runner.py): run states, resume, and rows committed in
another checkout counting as done. Its end-to-end run (a tiny grid, resumed): test_benchmarks.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
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


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def _fake_launch(job, runs, threads, imports=()):
    """A stand-in for `apprentice train`: writes a run's checkpoint, then trains (sleeps) until stopped."""
    folder = runs / job.name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "job.json").write_text(json.dumps(job.overrides))
    code = ("import pathlib, sys, time; f = pathlib.Path(sys.argv[1]); (f / 'checkpoints').mkdir(exist_ok=True); "
            "(f / 'config.yaml').write_text('x: 1'); (f / 'checkpoints' / 'best.pt').write_bytes(b'best'); "
            "(f / 'checkpoints' / 'last.pt').write_bytes(b'epoch 3'); time.sleep(120)")
    return subprocess.Popen([sys.executable, "-c", code, str(folder)])


def test_a_run_stopped_half_way_is_kept_committed_and_resumed_on_a_fresh_machine(tmp_path, monkeypatch):
    repo, runs = tmp_path / "repo", tmp_path / "runs"
    out = repo / "results" / "grid.json"
    out.parent.mkdir(parents=True)
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "t@example.com")
    _git(repo, "config", "user.name", "t")
    job = _runner.Job("s-s0", {"distill.teacher": str(runs / "teacher"), "train.seed": 0}, meta={"role": "student"})
    rows: list[dict] = []
    hooks = _runner.AfterRuns([job], runs, out, lambda: out.write_text(json.dumps({"rows": rows})), True, "grid", repo)
    monkeypatch.setattr(_runner, "launch", _fake_launch)

    def stop_when_checkpointed():  # SIGTERM to this process, as `pkill -TERM -f accuracy.py` sends
        last = runs / job.name / "checkpoints" / "last.pt"
        for _ in range(600):
            if last.is_file() and last.read_bytes():
                break
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_when_checkpointed, daemon=True).start()
    with pytest.raises(SystemExit) as stopped:
        _runner.run_jobs([job], runs, 1, 1, hooks, on_stop=hooks.interrupted)
    assert stopped.value.code == 128 + signal.SIGTERM
    snap = out.parent / "grid_runs" / job.name
    assert (snap / "checkpoints" / "last.pt").read_bytes() == b"epoch 3" and (snap / "checkpoints" / "best.pt").is_file()
    assert _git(repo, "log", "-1", "--format=%s") == "grid: stopped; s-s0 kept half way to resume\n"
    assert "results/grid_runs/s-s0/checkpoints/last.pt" in _git(repo, "show", "--name-only", "--format=", "HEAD")

    shutil.rmtree(runs)  # a fresh machine: the run resumes from the committed checkpoint
    assert _runner.restore_snapshots([job], runs, snap.parent, "runs") == ["s-s0"]
    assert _runner.state(runs / job.name, job) == "resume"
    (runs / job.name / "checkpoints" / "last.pt").write_bytes(b"epoch 5")  # trained on here: never put back
    assert _runner.restore_snapshots([job], runs, snap.parent, "runs") == []
    assert (runs / job.name / "checkpoints" / "last.pt").read_bytes() == b"epoch 5"
    shutil.rmtree(runs)
    moved = _runner.Job(job.name, {**job.overrides, "distill.teacher": "/elsewhere/runs/teacher"})
    assert _runner.restore_snapshots([moved], runs, snap.parent, "runs") == []  # its resume would refuse the paths
    assert _runner.restore_snapshots([_runner.Job(job.name, {"train.seed": 1})], runs, snap.parent, "runs") == []

    assert _runner.restore_snapshots([job], runs, snap.parent, "runs") == ["s-s0"]
    (runs / job.name / "summary.json").write_text(json.dumps({"status": "finished"}))
    rows.append({"name": job.name})
    hooks()  # it finished: its row is the result, the half-way checkpoint goes
    assert not snap.exists()
    assert _git(repo, "log", "-1", "--format=%s") == "grid: s-s0 finished (1 rows)\n"
    assert "results/grid_runs" not in _git(repo, "ls-files")


def test_a_finished_snapshot_of_another_grids_run_of_the_same_name_is_not_put_back(tmp_path):
    # the width-0.5 grid's finished "fp-s0" beside a width-1 grid's "fp-s0": restoring it would make the
    # width-1 grid stop on "run with other settings" (or, worse, start its C cells from the wrong twin)
    snaps, runs = tmp_path / "grid_runs", tmp_path / "runs"
    for name, overrides in (("fp-s0", {"model.width": 0.5, "train.seed": 0}), ("teacher", {"train.seed": 0})):
        (snaps / name / "checkpoints").mkdir(parents=True)
        (snaps / name / "job.json").write_text(json.dumps(overrides))
        (snaps / name / "summary.json").write_text(json.dumps({"status": "finished"}))
        (snaps / name / "checkpoints" / "best.pt").write_bytes(b"w")
    wide = _runner.Job("fp-s0", {"model.width": 1.0, "train.seed": 0})
    teacher = _runner.Job("teacher", {"train.seed": 0})
    assert _runner.restore_snapshots([wide, teacher], runs, snaps, "runs") == ["teacher"]
    assert not (runs / "fp-s0").exists() and _runner.state(runs / "teacher", teacher) == "done"
    same = _runner.Job("fp-s0", {"model.width": 0.5, "train.seed": 0})
    assert _runner.restore_snapshots([same], runs, snaps, "runs") == ["fp-s0"]


def test_a_teacher_snapshotted_beside_a_continued_grid_is_not_copied_again(tmp_path):
    runs, results = tmp_path / "runs", tmp_path / "results"
    teacher = _runner.Job("teacher", {"train.epochs": 2}, meta={"role": "teacher"})
    twin = _runner.Job("fp-s0", {"train.seed": 0}, meta={"role": "fp_twin"})
    for j in (teacher, twin):  # both finished here
        (runs / j.name / "checkpoints").mkdir(parents=True)
        (runs / j.name / "job.json").write_text(json.dumps(j.overrides))
        (runs / j.name / "summary.json").write_text(json.dumps({"status": "finished"}))
        (runs / j.name / "checkpoints" / "best.pt").write_bytes(b"weights")
    earlier = results / "earlier.json"  # the grid this one continues: its teacher's snapshot is committed
    _runner.save_snapshot(runs / "teacher", _runner.snapshot_dir(earlier))
    out = results / "levers.json"
    _runner.AfterRuns([teacher, twin], runs, out, lambda: None, False, "grid", shared=(earlier,))()
    mine = _runner.snapshot_dir(out)
    assert not (mine / "teacher").exists() and (mine / "fp-s0" / "checkpoints" / "best.pt").is_file()
    (_runner.snapshot_dir(earlier) / "teacher" / "job.json").write_text(json.dumps({"train.epochs": 3}))
    _runner.AfterRuns([teacher], runs, out, lambda: None, False, "grid", shared=(earlier,))()
    assert (mine / "teacher" / "summary.json").is_file()  # another run of that name there: this one is kept
    second = _runner.Job("teacher-s1", {"train.seed": 1}, meta={"role": "teacher"})  # trained outside the grid
    (runs / "teacher-s1").mkdir()
    for name, text in (("config.yaml", "train:\n  seed: 1\n"), ("summary.json", json.dumps({"status": "finished"}))):
        (runs / "teacher-s1" / name).write_text(text)
    _runner.save_snapshot(runs / "teacher-s1", _runner.snapshot_dir(earlier))  # no job.json on either side
    _runner.AfterRuns([second], runs, out, lambda: None, False, "grid", shared=(earlier,))()
    assert not (mine / "teacher-s1").exists()
    (runs / "teacher-s1" / "config.yaml").write_text("train:\n  seed: 2\n")
    _runner.AfterRuns([second], runs, out, lambda: None, False, "grid", shared=(earlier,))()
    assert (mine / "teacher-s1" / "config.yaml").is_file()  # another config: kept


def test_each_finished_run_reports_its_time_the_count_and_the_time_left(tmp_path, monkeypatch, capsys):
    def finishing_launch(job, runs, threads, imports=()):  # a run that ends at once, finished
        (runs / job.name).mkdir(parents=True, exist_ok=True)
        (runs / job.name / "job.json").write_text(json.dumps(job.overrides))
        (runs / job.name / "summary.json").write_text(json.dumps({"status": "finished"}))
        return subprocess.Popen([sys.executable, "-c", "pass"])

    monkeypatch.setattr(_runner, "launch", finishing_launch)
    jobs = [_runner.Job("a", {"train.seed": 0}), _runner.Job("b", {"train.seed": 1}, ("a",))]
    calls = []
    assert _runner.run_jobs(jobs, tmp_path, 1, 1, lambda: calls.append(1)) == []
    lines = [ln.split("] ", 1)[1] for ln in capsys.readouterr().out.splitlines() if "] done" in ln]
    assert lines == ["done a in 0:00 h: 1/2 runs, about 0:00 h left", "done b in 0:00 h: 2/2 runs"]
    assert len(calls) == 2


def test_portable_writes_run_paths_relative_to_the_runs_folder_in_lists_too():
    o = {"distill.teacher": ["/a/x/runs/p/teacher", "/b/runs/p/teacher-s1"], "distill.student_init": "/c/runs/p/fp-s0",
         "train.epochs": 32}
    assert _runner.portable(o, "runs/p") == {"distill.teacher": ["{runs}/teacher", "{runs}/teacher-s1"],
                                     "distill.student_init": "{runs}/fp-s0", "train.epochs": 32}
