"""The benchmark scripts' own logic: the accuracy grid's job plan and resume states (its report: test_accuracy_report.py), and
the speed benchmark's timing subprocess. Tiny settings only; the real runs are by hand."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import _runner
import accuracy


def _args(**kw) -> argparse.Namespace:
    base = {"student": "resnet8", "teacher": "resnet14", "precisions": ["2W/32A", "4W/8A"], "seeds": [0, 1],
            "epochs": 2, "train_images": 100, "holdout": 50, "c_lr": 0.01, "schemes": list(accuracy.SCHEMES),
            "teacher_cache": False}
    return argparse.Namespace(**{**base, **kw})


def test_grid_plan_dependencies_and_order(tmp_path):
    jobs = accuracy.grid_jobs(_args(), tmp_path)
    names = [j.name for j in jobs]
    assert names[0] == "teacher" and len(jobs) == 1 + 2 * (1 + 2 * 4)
    # seed-major: every seed-0 run comes before any seed-1 run, so a cut-short grid stays balanced
    assert max(i for i, n in enumerate(names) if n.endswith("-s0")) < min(i for i, n in enumerate(names) if n.endswith("-s1"))
    by = {j.name: j for j in jobs}
    assert by["2w32a-C-s1"].needs == ("teacher", "fp-s1")
    assert by["2w32a-C-s1"].overrides["distill.student_init"] == str(tmp_path / "fp-s1")
    assert by["2w32a-C-s1"].overrides["optim.lr"] == 0.01
    assert by["4w8a-B-s0"].needs == ("teacher",) and by["4w8a-A-s0"].needs == ()
    assert by["4w8a-A-s0"].overrides["distill.teacher_model.name"] == "resnet14"
    sweep = accuracy.sweep_jobs(_args(), tmp_path)
    assert len(sweep) == 8  # 3 x 3 minus the default cell, which is the grid's own run
    assert all(j.overrides["data.holdout"] == 50 for j in jobs + sweep)


def test_grid_plan_with_the_teacher_cache_and_named_quantizers(tmp_path):
    jobs = accuracy.grid_jobs(_args(teacher_cache=True, precisions=["lsq:2W/2A"], schemes=["baseline", "C"]), tmp_path)
    by = {j.name: j for j in jobs}
    assert [j.name for j in jobs][:2] == ["teacher", accuracy.CACHE] and by[accuracy.CACHE].needs == ("teacher",)
    assert by[accuracy.CACHE].overrides == {"data.holdout": 50, "data.limit": 100}  # the students' data
    assert set(by) == {"teacher", accuracy.CACHE, "fp-s0", "fp-s1", "lsq-2w2a-baseline-s0", "lsq-2w2a-C-s0",
                       "lsq-2w2a-baseline-s1", "lsq-2w2a-C-s1"}
    c = by["lsq-2w2a-C-s1"]
    assert c.needs == ("teacher", accuracy.CACHE, "fp-s1")
    assert c.overrides["distill.teacher_cache"] == str(accuracy.cache_file(tmp_path))
    assert (c.overrides["quant.precision"], c.overrides["quant.quantizer"]) == ("2W/2A", "lsq")
    assert "quant.quantizer" not in by["fp-s0"].overrides and "distill.teacher_cache" not in by["lsq-2w2a-baseline-s0"].overrides
    assert _runner.state(tmp_path / accuracy.CACHE, by[accuracy.CACHE]) == "resume"  # cache-teacher continues its file


def test_grid_labels_name_the_activation_quantizer_and_runs_get_the_imports(tmp_path, monkeypatch):
    jobs = {j.name: j for j in accuracy.grid_jobs(_args(precisions=["4W/8A@clip", "4W/8A@asym"], schemes=["baseline"]),
                                                  tmp_path)}
    assert {"4w8a-clip-baseline-s0", "4w8a-asym-baseline-s0"} <= set(jobs)
    o = jobs["4w8a-asym-baseline-s0"].overrides
    assert (o["quant.precision"], o["quant.act_quantizer"]) == ("4W/8A", "asym") and "quant.quantizer" not in o
    assert "quant.act_quantizer" not in jobs["fp-s0"].overrides
    (tmp_path / "logs").mkdir()
    started = []
    monkeypatch.setattr(_runner.subprocess, "Popen", lambda cmd, **kw: started.append(cmd))
    _runner.launch(jobs["fp-s0"], tmp_path, 1, ("shim.py", "my_models"))
    assert started[0][3:8] == ["train", "--import", "shim.py", "--import", "my_models"]
    for bad, word in (("4W/8A@bogus", "bogus"), ("5X/8A", "5X"), ("pc:32W/32A", "32W/32A")):
        with pytest.raises(SystemExit, match=f"accuracy: .*{word}"):
            accuracy.main(["--precisions", bad, "--runs-dir", str(tmp_path / "r"), "--report-only"])
    with pytest.raises(SystemExit, match="accuracy: .*nowhere.py"):
        accuracy.main(["--import", str(tmp_path / "nowhere.py"), "--runs-dir", str(tmp_path / "r"), "--report-only"])


def test_a_k_view_grid_names_its_cache_and_its_cached_cells_apart(tmp_path, monkeypatch):
    args = _args(teacher_cache=True, cache_views=4, precisions=["2W/8A"], schemes=["baseline", "B"], seeds=[0])
    jobs = {j.name: j for j in accuracy.grid_jobs(args, tmp_path)}
    assert set(jobs) == {"teacher", "teacher-cache-k4", "fp-s0", "2w8a-baseline-s0", "2w8a-B-k4-s0"}
    assert jobs["2w8a-B-k4-s0"].overrides["distill.teacher_cache"] == str(accuracy.cache_file(tmp_path, "teacher-cache-k4"))
    full = {j.name for j in accuracy.grid_jobs(_args(teacher_cache=True, precisions=["2W/8A"],
                                                     schemes=["baseline", "B"], seeds=[0]), tmp_path)}
    assert full & set(jobs) == {"teacher", "fp-s0", "2w8a-baseline-s0"}  # shared with the full-cache grid
    (tmp_path / "logs").mkdir()
    started = []
    monkeypatch.setattr(_runner.subprocess, "Popen", lambda cmd, **kw: started.append(cmd))
    _runner.launch(jobs["teacher-cache-k4"], tmp_path, 1)
    assert started[0][-2:] == ["--views", "4"] and "cache-teacher" in started[0]


def test_grid_plan_of_deployable_students(tmp_path):
    jobs = accuracy.grid_jobs(_args(precisions=["4W/8A"], schemes=["B", "C"], deploy="int8"), tmp_path)
    assert {j.name: j.overrides.get("quant.deploy") for j in jobs} == {
        "teacher": None, "fp-s0": None, "fp-s1": None, "4w8a-B-s0": "int8", "4w8a-C-s0": "int8",
        "4w8a-B-s1": "int8", "4w8a-C-s1": "int8"}
    assert all("quant.deploy" not in j.overrides for j in accuracy.grid_jobs(_args(), tmp_path))


def test_a_scheme_c_sweep_cell_tunes_gamma_temperature_and_its_lr(tmp_path):
    args = _args(teacher_cache=True, sweep_cell="lsq:4W/4A:C")
    jobs = {j.name: j for j in accuracy.sweep_jobs(args, tmp_path)}
    assert len(jobs) == 8 + 2 and all(n.startswith("sweep-lsq-4w4a-C-") for n in jobs)
    lr = jobs["sweep-lsq-4w4a-C-lr0.03"]
    assert (lr.overrides["optim.lr"], lr.overrides["distill.gamma"], lr.overrides["quant.quantizer"]) == (0.03, 0.5, "lsq")
    assert lr.needs == ("teacher", accuracy.CACHE, "fp-s0") and lr.overrides["train.seed"] == 0
    g = jobs["sweep-lsq-4w4a-C-g2-t4"]
    assert (g.overrides["optim.lr"], g.overrides["distill.temperature"]) == (0.01, 4.0)
    assert g.overrides["distill.teacher_cache"] == str(accuracy.cache_file(tmp_path))
    for bad in ("4W/8A", "4W/8A:baseline", ":C"):
        with pytest.raises(SystemExit, match="--sweep-cell"):
            accuracy.sweep_jobs(_args(sweep_cell=bad), tmp_path)
    jobs = accuracy.sweep_jobs(_args(teacher_cache=True, sweep_cell=["2W/32A:B", "4W/8A:C"]), tmp_path)
    assert len(jobs) == 8 + 10 and jobs[0].name == "sweep-g0.5-t2"  # the committed grid's sweep keeps its names


def test_an_axes_sweep_moves_one_of_gamma_and_temperature_at_a_time(tmp_path):
    full = {j.name: j for j in accuracy.sweep_jobs(_args(sweep_cell=["4W/8A:C"]), tmp_path)}
    axes = {j.name: j for j in accuracy.sweep_jobs(_args(sweep_cell=["4W/8A:C"], sweep_points="axes"), tmp_path)}
    assert set(axes) < set(full) and all(axes[n] == full[n] for n in axes)  # same runs, so either reuses the other's
    moved = [(j.meta["gamma"], j.meta["temperature"]) for j in axes.values() if j.meta["lr"] == 0.01]
    assert sorted(moved) == [(0.5, 2.0), (0.5, 4.0), (1.0, 1.0), (2.0, 1.0)]
    assert sum(j.meta["lr"] != 0.01 for j in axes.values()) == 2  # C's lr points stay


def test_the_converged_study_script_plans_its_steps_and_checks_names_first(tmp_path):
    import frontier
    script = ROOT / "benchmarks" / "converged_study.sh"
    env = {**os.environ, "DRY_RUN": "1"}  # the steps' commands printed, not run
    bad = subprocess.run([str(script), "grid", "bogus"], check=False, capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "unknown step 'bogus'" in bad.stderr and bad.stdout == ""  # not even the grid
    dry = subprocess.run([str(script)], capture_output=True, text=True, check=True,
                         env={**env, "SWEEP_CELLS": "2W/32A:C 4W/8A:C lsq:2W/2A:C"})
    lines = [line.split()[1:] for line in dry.stdout.splitlines()]
    assert [a[0] for a in lines] == ["benchmarks/accuracy.py", "benchmarks/frontier.py", "benchmarks/accuracy.py",
                                     "benchmarks/accuracy.py"]
    grid, sweep, teacher = (accuracy.parser().parse_args(lines[i][1:]) for i in (0, 2, 3))
    jobs = [{j.name: j for j in accuracy.plan(a, tmp_path)} for a in (grid, sweep, teacher)]
    assert len([j for j in jobs[0].values() if j.meta.get("role") != "cache"]) == 1 + 3 * 16 + 1 + 6  # 56 rows
    extra = {n: j for n, j in jobs[1].items() if n not in jobs[0]}
    assert len(extra) == 3 * (4 + 2) and {j.meta["scheme"] for j in extra.values()} == {"C"}
    # the script's default: the cells of the goals the committed grid misses, at their holdout's scheme
    default = subprocess.run([str(script), "sweep"], capture_output=True, text=True, check=True,
                             env={k: v for k, v in env.items() if k != "SWEEP_CELLS"}).stdout.split()
    assert default[default.index("--sweep-cell") + 1:default.index("--sweep-points")] == ["missed"]
    grid_json = tmp_path / "grid.json"
    grid_json.write_text(json.dumps({"analysis": {"fp_twin": {"mean": 91.0}, "precisions": {"4W/8A": {"schemes": {
        "B": {"final_holdout_top1": {"mean": 90.5}, "vs_fp_twin_points": {"mean": 0.1, "std": 0.2, "n": 3}},
        "C": {"final_holdout_top1": {"mean": 90.1}, "vs_fp_twin_points": {"mean": 0.9, "std": 0.2, "n": 3}}}}}}}))
    assert accuracy.with_missed_goals(["missed", "2W/8A:B"], grid_json) == ["4W/8A:B", "2W/8A:B"]
    with pytest.raises(SystemExit, match="no grid analysis"):
        accuracy.with_missed_goals(["missed"], tmp_path / "none.json")
    assert all(jobs[1][n] == j for n, j in jobs[0].items())  # the sweep step reuses every grid row
    assert jobs[2]["teacher"].overrides["train.epochs"] == 3 and {"lsq-2w2a-B-s0", "lsq-2w2a-C-s0"} <= set(jobs[2])
    assert "lsq-2w2a-baseline-s0" not in jobs[2]  # the grid's no-teacher row is the comparison, not rerun
    assert frontier.parse(lines[1][1:]).runs_dir == grid.runs_dir  # the frontier shares the grid's runs


def test_tiny_grid_runs_then_resumes_without_rerunning(tmp_path):
    out = tmp_path / "acc.json"
    cmd = [sys.executable, str(ROOT / "benchmarks/accuracy.py"), "--epochs", "1", "--train-images", "256",
           "--holdout", "128", "--seeds", "0", "--precisions", "2W/32A", "--no-sweep",
           "--runs-dir", str(tmp_path / "runs"), "--out", str(out)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["finished_runs"] == result["planned_runs"] == 6
    assert {r["name"] for r in result["rows"]} >= {"teacher", "fp-s0", "2w32a-C-s0"}
    cached = {r["name"] for r in result["rows"] if "distill.teacher_cache" in r["config"]["overrides"]}
    assert cached == {"2w32a-B-s0", "2w32a-C-s0"}  # B and C read the one teacher cache, A cannot
    assert (tmp_path / "runs" / "teacher-cache" / "teacher.cache").is_file()
    assert all(len(r["test_top1_per_epoch"]) == 1 for r in result["rows"])
    assert {r["machine"]["host"] for r in result["rows"]} == {socket.gethostname()}
    assert {r["machine"]["recorded_by"] for r in result["rows"]} == {"run"}
    assert (tmp_path / "acc.md").exists() and (tmp_path / "acc_epochs.png").stat().st_size > 0
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert second.returncode == 0 and " start " not in second.stdout  # nothing re-trained
    # A fresh machine: the run folders are gone, the committed results and snapshots are there.
    assert (tmp_path / "acc_runs" / "teacher" / "checkpoints" / "best.pt").is_file()
    shutil.rmtree(tmp_path / "runs")
    third = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert third.returncode == 0 and " start " not in third.stdout, third.stdout[-2000:] + third.stderr[-2000:]
    assert "restored teacher, fp-s0" in third.stdout
    again = json.loads(out.read_text())
    assert again["finished_runs"] == 6 and {r["name"]: r["final_top1"] for r in again["rows"]} == {
        r["name"]: r["final_top1"] for r in result["rows"]}


def test_speed_child_times_each_case():
    cmd = [sys.executable, str(ROOT / "benchmarks/speed.py"), "--child", "--cases", "fp", "ternary_8a", "ternary_B",
           "--steps", "3", "--warmup", "1", "--batch", "4", "--threads", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(next(ln for ln in out.stdout.splitlines() if ln.startswith("SPEED-JSON "))[11:])
    assert set(res) == {"fp", "ternary_8a", "ternary_B"}
    assert all(len(v["step_ms"]) == 3 and min(v["step_ms"]) > 0 for v in res.values())
    assert len(res["ternary_B"]["teacher_forward_ms"]) == 3 and "teacher_forward_ms" not in res["fp"]


def test_speed_layout_child_pairs_each_quantized_case_with_the_fp_step_of_its_layout():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import speed
    assert speed.same_layout_pairs(["fp", "ternary_8a", "4w8a_channels_last", "ternary_B", "fp_channels_last"]) == {
        "ternary_8a": "fp", "4w8a_channels_last": "fp_channels_last"}  # a teacher's case has no FP twin step
    cmd = [sys.executable, str(ROOT / "benchmarks/speed.py"), "--layout-child", "--cases", "fp", "4w8a_channels_last",
           "--steps", "3", "--warmup", "1", "--batch", "4", "--threads", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(next(ln for ln in out.stdout.splitlines() if ln.startswith("SPEED-JSON "))[11:])
    assert set(res) == {"4w8a_channels_last"} and all(len(t) == 3 for t in res["4w8a_channels_last"].values())
    an = speed.analyse({}, None, {"kept": {"c": {"fp": [10.0, 20.0, 30.0], "case": [11.0, 24.0, 30.0]}}})
    assert an["vs_fp_same_layout"]["kept"]["c"]["ratio_median_of_pairs"] == 1.1  # pairs 1.1, 1.2, 1.0


# -- the converged regime (accuracy.py options) and the frontier ----------------------------------


@pytest.mark.parametrize("result", ["accuracy.json", "accuracy_lsq.json"])
def test_committed_rows_still_match_their_jobs(result):
    # New regime options must not change the overrides of the committed grids' jobs (they would rerun).
    data = json.loads((ROOT / "benchmarks" / "results" / result).read_text())
    args = argparse.Namespace(**{"teacher_cache": False, "schemes": list(accuracy.SCHEMES), **data["settings"]})
    runs = Path("/x") / data["settings"]["runs_dir"]
    jobs = {j.name: j for j in accuracy.grid_jobs(args, runs) + accuracy.sweep_jobs(args, runs)}
    rows = [r for r in data["rows"] if r["name"] in jobs]
    assert len(rows) == len(data["rows"]) > 5
    for r in rows:
        assert _runner.is_committed(jobs[r["name"]], {r["name"]: r}, data["settings"]["runs_dir"]), r["name"]


def test_regime_jobs_plateau_and_convergence(tmp_path):
    args = _args(teacher_cache=True, plateau=True, convergence=True, milestones=[0.5, 0.75], train_images=0,
                 student_width=0.5, teacher_width=2.0, teacher_epochs=30, channels_last=True, pad=0)
    jobs = {j.name: j for j in accuracy.regime_jobs(args, tmp_path)}
    assert sorted(jobs) == ["conv-A-s0", "conv-A-s1", "conv-B-s0", "conv-B-s1", "fp-long-s0"]
    names = [j.name for j in accuracy.ordered(accuracy.grid_jobs(args, tmp_path), list(jobs.values()))]
    assert names[names.index("fp-s0") + 1] == "fp-long-s0" and names[-4:] == ["conv-A-s0", "conv-B-s0", "conv-A-s1", "conv-B-s1"]
    assert jobs["fp-long-s0"].overrides["train.epochs"] == 2 * args.epochs
    a, b = jobs["conv-A-s1"], jobs["conv-B-s1"]
    for j in (a, b):
        assert j.overrides["optim.schedule"] == "step" and j.overrides["optim.milestones"] == [0.5, 0.75]
        assert j.overrides["data.limit"] is None and j.overrides["model.width"] == 0.5
        assert j.overrides["train.channels_last"] is True and j.overrides["data.pad"] == 0
    assert a.needs == () and a.overrides["distill.teacher_model.width"] == 2.0
    assert b.needs == ("teacher", accuracy.CACHE)
    teacher = accuracy.teacher_overrides(args)
    assert teacher["train.epochs"] == 30 and teacher["model.width"] == 2.0 and teacher["model.name"] == "resnet14"
    assert "data.pad" not in teacher  # the teacher keeps the data set's augmentation; the cache takes the students'
    cache = next(j for j in accuracy.grid_jobs(args, tmp_path) if j.name == accuracy.CACHE)
    assert cache.overrides["data.pad"] == 0


def test_frontier_plan_shares_the_grids_width_one_runs(tmp_path):
    import frontier

    args = _args(teacher_cache=True, precisions=["2W/8A", "8W/8A"], widths=[1.0, 2.0], seeds=[0], student_width=1.0)
    jobs = {j.name: j for j in frontier.frontier_jobs(args, tmp_path)}
    grid = {j.name: j for j in accuracy.grid_jobs(_args(teacher_cache=True, precisions=["2W/8A", "8W/8A"],
                                                        schemes=["C"], seeds=[0]), tmp_path)}
    for name in ("teacher", accuracy.CACHE, "fp-s0", "2w8a-C-s0", "8w8a-C-s0"):
        assert jobs[name].overrides == grid[name].overrides
    wide = jobs["2w8a-C-x2-s0"]
    assert wide.overrides["model.width"] == 2.0 and wide.needs == ("teacher", accuracy.CACHE, "fp-x2-s0")
    assert wide.overrides["distill.student_init"] == str(tmp_path / "fp-x2-s0")


def test_frontier_points_pareto_and_budgets(monkeypatch):
    import frontier

    sizes = {("2W/8A", 1.0): 10_000, ("2W/8A", 2.0): 30_000, ("8W/8A", 1.0): 40_000, ("32W/32A", 1.0): 100_000}
    monkeypatch.setattr(frontier, "packed_bytes", lambda student, w, p: sizes[(p, w)])
    acc = {("2W/8A", 1.0): [88.0, 88.4], ("2W/8A", 2.0): [90.0, 90.2], ("8W/8A", 1.0): [89.0, 89.2],
           ("32W/32A", 1.0): [90.5, 90.7]}
    rows = [{"role": "student" if p != "32W/32A" else "fp_twin", "precision": p, "width": w, "final_top1": a}
            for (p, w), v in acc.items() for a in v]
    pts = frontier.points(rows, "resnet8")
    assert [(p["precision"], p["width"], p["pareto"]) for p in pts] == [
        ("2W/8A", 1.0, True), ("2W/8A", 2.0, True), ("8W/8A", 1.0, False), ("32W/32A", 1.0, True)]
    lines = frontier.winners(pts)
    assert lines[0] == "- up to 9.8 KiB: 2W/8A at width 1 (88.20 % ± 0.28)"
    assert lines[1] == "- up to 29.3 KiB: 2W/8A at width 2 (90.10 % ± 0.14): +1.90 ± 0.32 points over the smaller budget's winner"
    assert lines[2] == "- up to 39.1 KiB: 2W/8A at width 2 (90.10 % ± 0.14)"  # 8W/8A is less accurate: same winner
    pts[-1]["mean"], pts[-1]["std"] = 90.2, 0.3  # the FP point 0.1 ahead, within the spread
    assert frontier.winners(pts)[3].endswith(": +0.10 ± 0.33 points over the smaller budget's winner, noise")


def _finished_run(folder: Path, overrides: dict, top1: float) -> None:
    """A run folder as a finished training run leaves it (job, summary, one epoch of metrics)."""
    folder.mkdir(parents=True)
    (folder / "job.json").write_text(json.dumps(overrides))
    (folder / "summary.json").write_text(json.dumps({"status": "finished", "final_top1": top1, "best_top1": top1}))
    (folder / "metrics.jsonl").write_text(json.dumps({"type": "epoch", "epoch": 1, "test_top1": top1,
                                                      "holdout_top1": top1, "epoch_time_s": 1.0}) + "\n")


def test_frontier_report_from_finished_runs_marks_the_pareto_front(tmp_path):
    # The training path is the grid's (test_tiny_grid_runs_then_resumes_without_rerunning); here the
    # frontier's own part: its jobs' folders -> rows -> points with real packed sizes -> table and plot.
    import frontier

    runs, out = tmp_path / "runs", tmp_path / "frontier.json"
    argv = ["--precisions", "2W/8A", "8W/8A", "--widths", "1", "2", "--seeds", "0", "1", "--train-images", "100",
            "--holdout", "50", "--runs-dir", str(runs), "--out", str(out)]
    top1 = {"fp": 90.0, "2w8a-C": 88.0, "8w8a-C": 89.0, "fp-x2": 91.0, "2w8a-C-x2": 90.5, "8w8a-C-x2": 90.0}
    grid_rows = []  # the grid's width-1 FP twins and 2W/8A cells: committed rows only, their folders gone
    for job in frontier.frontier_jobs(frontier.parse(argv), runs):
        stem = job.name.rsplit("-s", 1)[0]
        if stem not in top1:  # the teacher and its cache make no point
            continue
        value = top1[stem] + 0.2 * job.meta["seed"]
        if stem in ("fp", "2w8a-C"):
            grid_rows.append({"name": job.name, "role": job.meta["role"], "precision": job.meta["precision"],
                              "seed": job.meta["seed"], "final_top1": value,
                              "config": {"overrides": job.overrides}})
        else:
            _finished_run(runs / job.name, job.overrides, value)
    (tmp_path / "grid.json").write_text(json.dumps({"rows": grid_rows}))
    assert frontier.main([*argv, "--report-only", "--shared-results", str(tmp_path / "grid.json")]) == 0
    result = json.loads(out.read_text())
    pts = {(p["precision"], p["width"]): p for p in result["points"]}
    assert len(pts) == 6 and all(p["n"] == 2 for p in pts.values())
    assert pts[("2W/8A", 1.0)]["bytes"] < pts[("8W/8A", 1.0)]["bytes"] < pts[("32W/32A", 1.0)]["bytes"]
    assert pts[("2W/8A", 2.0)]["pareto"] and not pts[("8W/8A", 2.0)]["pareto"]  # 8W x2: larger and less accurate
    text = out.with_suffix(".md").read_text()
    assert "| 2W/8A | 2 |" in text and "## The most accurate choice at each size budget" in text
    assert out.with_suffix(".png").stat().st_size > 0


def test_commit_takes_the_results_new_rows_and_nothing_else(tmp_path):
    import _commit

    def git(*args):
        return subprocess.run(["git", *args], cwd=tmp_path, capture_output=True, text=True, check=True).stdout

    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    (tmp_path / "other.py").write_text("a = 1\n")
    git("add", "other.py")
    git("commit", "-q", "-m", "start")
    out = tmp_path / "results" / "grid.json"
    committer = _commit.RowCommitter(out, "accuracy grid", repo=tmp_path)
    (tmp_path / "other.py").write_text("a = 2\n")  # work in progress, edited and staged: not the grid's to commit
    (tmp_path / "staged.py").write_text("b = 1\n")
    git("add", "staged.py")
    out.parent.mkdir()
    out.write_text(json.dumps({"rows": [{"name": "fp-s0"}]}))
    out.with_suffix(".md").write_text("table")
    (out.parent / "grid_epochs.png").write_bytes(b"png")
    (out.parent / "grid_runs" / "fp-s0").mkdir(parents=True)
    (out.parent / "grid_runs" / "fp-s0" / "summary.json").write_text("{}")
    committer()
    assert git("log", "-1", "--format=%s") == "accuracy grid: fp-s0 finished (1 rows)\n"
    assert sorted(git("show", "--name-only", "--format=", "HEAD").split()) == [
        "results/grid.json", "results/grid.md", "results/grid_epochs.png", "results/grid_runs/fp-s0/summary.json"]
    assert git("status", "--porcelain").splitlines() == [" M other.py", "A  staged.py"]
    committer()  # nothing new: no commit
    assert git("rev-list", "--count", "HEAD") == "2\n"
    out.write_text(json.dumps({"rows": [{"name": "fp-s0", "final_top1": 93.02}]}))  # run again elsewhere
    (out.parent / "grid_runs" / "fp-s0" / "summary.json").write_text('{"final_top1": 93.02}')
    committer()
    assert git("log", "-1", "--format=%s") == "accuracy grid: fp-s0 updated (1 rows)\n"
    assert "results/grid_runs/fp-s0/summary.json" in git("show", "--name-only", "--format=", "HEAD")
    with pytest.raises(SystemExit, match="outside the repository"):
        _commit.check_committable(tmp_path.parent / "elsewhere.json", repo=tmp_path)


def test_folder_vs_idx_writes_pngs_whose_natural_order_is_the_label_order(tmp_path):
    import folder_vs_idx
    import numpy as np

    from apprentice.data import resolve_spec

    names = [folder_vs_idx.class_folder(k) for k in range(10)]
    assert names[0] == "0_T-shirt-top" and all("/" not in n for n in names)
    images = np.arange(10 * 28 * 28, dtype=np.int64).reshape(10, 28, 28).astype(np.uint8)
    for split in ("train", "val"):
        folder_vs_idx.write_png_folder(tmp_path, images, np.arange(10)[::-1], split)
    spec = resolve_spec("folder", str(tmp_path), mean=(0.5,), std=(0.25,))
    pre = spec.preprocess
    assert list(pre.classes) == names and pre.channels == 1 and pre.image_size == 28


def _benchmark_process(script: str, *args: str) -> None:
    """Run a benchmark in its own process: OpenVINO's threading runtime, once loaded into the test
    process, crashes later torch tests there (SIGSEGV seen in test_build)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                          env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_onnx_speed_tiny_times_every_runtime_and_counts_integer_kernels(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx_speed

    out = tmp_path / "speed.json"
    _benchmark_process("onnx_speed.py", "--models", "tiny", "--precisions", "4W/8A", "--batches", "2", "--threads", "1",
                       "--runs", "2", "--warmup", "1", "--out", str(out))
    rows = {r["variant"]: r for r in json.loads(out.read_text())["results"]}
    has_openvino = subprocess.run([sys.executable, "-c", "import openvino"], capture_output=True, check=False).returncode == 0
    expected = {v for v, (runtime, _) in onnx_speed.VARIANTS.items() if runtime != "openvino" or has_openvino}
    assert set(rows) == expected and all(len(r["times_ms"]) == 2 for r in rows.values())
    # tiny = ResNet-8 with projection shortcuts: 8 quantized convs (the stem stays float), 3 adds.
    assert rows["ort-int8"]["ops_after_optimization"]["QLinearConv"] == 8
    assert rows["ort-int8"]["ops_after_optimization"]["QLinearAdd"] == 3
    assert rows["ort-int8"]["top1_agreement_vs_fakequant"] == 1.0
    assert "QLinearConv" in rows["ort-anchor"]["ops_after_optimization"]
    assert "QLinearConv" not in rows["ort-fp32"]["ops_after_optimization"]
    assert "| tiny | 1x16x16 | 4W/8A | 1 | 2 | ort-int8 |" in out.with_suffix(".md").read_text()


def test_onnx_agreement_on_a_tiny_deployable_run(tmp_path):
    pytest.importorskip("onnxruntime")

    from apprentice.run.loop import fit

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_runs import tiny

    run = tmp_path / "run"
    fit(tiny(run, "quant.precision=4W/8A", "quant.deploy=int8", "model.shortcut=B"))
    out = tmp_path / "agreement.json"
    _benchmark_process("onnx_agreement.py", str(run), "--dataset", "synthetic", "--threads", "1", "--out", str(out),
                       "--reference-spread")
    rows = {r["model"]: r for r in json.loads(out.read_text())["results"]}
    for spread in ("pytorch float64 (same model)", "pytorch batch 1 (same model)"):  # the same model, computed otherwise
        assert rows[spread]["images"] == 512 and rows[spread]["max_abs_logit_diff"] < 0.05
    ort_row = rows["onnxruntime int8"]
    assert ort_row["onnx_mode"] == "int8" and ort_row["ops_after_optimization"]["QLinearAdd"] == 3
    assert ort_row["images"] == 512 and ort_row["top1_agreement"] >= 0.999
    assert rows["load_packed"]["max_abs_logit_diff"] == 0.0


def test_bn_reestimate_measures_a_grids_final_checkpoints_and_resumes(tmp_path, monkeypatch):
    import bn_reestimate

    from apprentice.run.loop import fit

    from tiny_runs import tiny

    runs = tmp_path / "runs"
    summary = fit(tiny(runs / "2w8a-B-s0", "quant.precision=2W/8A", "data.holdout=32"))
    row = {"name": "2w8a-B-s0", "role": "student", "precision": "2W/8A", "scheme": "B", "seed": 0,
           "final_top1": summary["final_top1"], "test_top1_per_epoch": [80.0, 81.0, 81.2, summary["final_top1"]]}
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"rows": [row, {**row, "name": "teacher", "role": "teacher"}]}))  # no folder: skipped
    monkeypatch.setattr(bn_reestimate, "REPO", tmp_path)
    argv = ["--grid", "grid.json", "--runs-dir", "runs", "--batches", "2", "--out", "bn.json"]
    assert bn_reestimate.main(argv) == 0
    result = json.loads((tmp_path / "bn.json").read_text())
    (measured,) = result["rows"]
    assert measured["final_top1"] == round(summary["final_top1"], 2) and measured["images"] == 128  # its 128 train images
    assert measured["fell_in_last_epoch"] == (round(81.2 - summary["final_top1"], 2)
                                              if 81.2 - summary["final_top1"] > 0.3 else None)
    assert "| 2W/8A | B |" in (tmp_path / "bn.md").read_text()
    monkeypatch.setattr(bn_reestimate, "measure", lambda *a: pytest.fail("measured again"))
    assert bn_reestimate.main(argv) == 0  # resumed: nothing to measure
    # another machine: this run's folder is gone and a new run's is there; the earlier row stays
    shutil.copytree(runs / "2w8a-B-s0", runs / "2w8a-B-s1")
    shutil.rmtree(runs / "2w8a-B-s0")
    grid.write_text(json.dumps({"rows": [row, {**row, "name": "2w8a-B-s1", "seed": 1}]}))
    monkeypatch.setattr(bn_reestimate, "measure", lambda folder, top1, b: {"final_top1": top1, "reestimated_top1": 1.0, "images": 7})
    assert bn_reestimate.main(argv) == 0
    kept = json.loads((tmp_path / "bn.json").read_text())["rows"]
    assert [r["name"] for r in kept] == ["2w8a-B-s0", "2w8a-B-s1"] and kept[0] == measured and kept[1]["images"] == 7
    assert kept[1]["seed"] == 1 and kept[1]["reestimated_top1"] == 1.0
    grid.write_text(json.dumps({"rows": [{**row, "name": "2w8a-B-s1", "final_top1": row["final_top1"] - 5}]}))
    monkeypatch.undo()
    monkeypatch.setattr(bn_reestimate, "REPO", tmp_path)
    with pytest.raises(SystemExit, match="not the run's final state"):
        bn_reestimate.main([*argv[:-1], "other.json"])
    assert bn_reestimate.fell([90.0, 90.4, 90.1, 89.9]) == 0.5 and bn_reestimate.fell([90.0, 90.2, 90.1]) is None



def test_the_grids_erasing_reaches_students_twins_and_cache_not_the_teacher(tmp_path):
    args = _args(teacher_cache=True, train_images=0, pad=2, erase=0.5)
    jobs = {j.name: j for j in accuracy.grid_jobs(args, tmp_path)}
    assert jobs["fp-s0"].overrides["data.erase"] == 0.5
    assert all(j.overrides["data.erase"] == 0.5 for j in jobs.values() if j.meta.get("role") == "student")
    assert jobs[accuracy.CACHE].overrides["data.erase"] == 0.5  # the cache holds the erased views
    assert "data.erase" not in accuracy.teacher_overrides(args)
    plain = {j.name: j for j in accuracy.grid_jobs(_args(teacher_cache=True, train_images=0), tmp_path)}
    assert "data.erase" not in plain["fp-s0"].overrides and "data.erase" not in plain[accuracy.CACHE].overrides
