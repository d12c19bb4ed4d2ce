"""Tests of the patient study's plan (issue 29; benchmarks/patient_study.sh, accuracy.py's loss table, teacher
ensemble and reuse of a pilot's rows) and of the recipes it ships; the helpers are test_benchmarks.py's."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from test_benchmarks import ROOT, _args, _runner, accuracy  # benchmarks/ on the path


def test_a_losses_sweep_runs_each_other_row_of_the_loss_table(tmp_path):
    from apprentice.losses import LOSSES

    jobs = accuracy.sweep_jobs(_args(sweep_cell=["4W/8A:C"], sweep_points="losses"), tmp_path)
    assert sorted(j.overrides["distill.loss"] for j in jobs) == sorted(n for n in LOSSES if n != "paper")
    assert all(j.meta["loss"] == j.overrides["distill.loss"] and j.name.endswith("loss-" + j.meta["loss"]) for j in jobs)
    assert all(j.overrides["distill.gamma"] == 0.5 for j in jobs)  # the defaults the named loss allows beside it
    from apprentice.config import load_config
    for j in jobs:  # each job's overrides make a valid recipe (the loss's weights are not given twice)
        load_config(None, [f"{k}={v}" for k, v in j.overrides.items() if k.startswith("distill.") and "teacher" not in k
                           and k != "distill.scheme" and "student_init" not in k])


def test_the_patient_study_script_plans_its_steps_and_checks_names_first(tmp_path):
    script = ROOT / "benchmarks" / "patient_study.sh"
    runs, snapshot = tmp_path / "runs", tmp_path / "snapshot"
    env = {**os.environ, "DRY_RUN": "1", "RUNS_DIR": str(runs), "TEACHER2_SNAPSHOT": str(snapshot)}
    bad = subprocess.run([str(script), "pilot", "bogus"], check=False, capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "unknown step 'bogus'" in bad.stderr and bad.stdout == ""
    dry = subprocess.run([str(script)], capture_output=True, text=True, check=True, env=env).stdout.splitlines()
    assert len(dry) == 4 and "--teacher-recipe configs/fashion_mnist/teacher_strong.yaml" in dry[0]
    assert "train.seed=1" in dry[1] and "--overwrite" in dry[1] and "--sweep-points losses" in dry[2]
    assert "--out benchmarks/results/accuracy_patient_grid.json" in dry[3] and "--loss-from" in dry[3]
    grid = accuracy.parser().parse_args(dry[3].split()[2:])
    assert grid.teacher_seeds == [0, 1] and grid.continue_from == ["benchmarks/results/accuracy_patient.json"]
    for line in (dry[0], dry[2], dry[3]):  # the accuracy grid's own parser takes every option
        accuracy.parser().parse_args(line.split()[2:])
    levers = subprocess.run([str(script), "levers"], capture_output=True, text=True, check=True, env=env).stdout
    first, four = (accuracy.parser().parse_args(line.split()[2:]) for line in levers.splitlines())
    assert first.precisions == ["pc:2W/32A", "pc:4W/8A@asym"] and first.seeds == [0]
    assert four.precisions == ["4W/8A", "pc:4W/8A@asym"] and four.seeds == [0, 1, 2]
    assert four.continue_from == ["benchmarks/results/accuracy_levers.json", "benchmarks/results/accuracy_patient_grid.json"]
    lsq = subprocess.run([str(script), "levers-lsq"], capture_output=True, text=True, check=True, env=env).stdout
    lsq, lsq3 = (accuracy.parser().parse_args(line.split()[2:]) for line in lsq.splitlines())
    assert lsq.precisions == ["lsq:2W/32A", "lsq+pc:2W/2A"] and lsq.out.endswith("accuracy_levers_lsq.json")
    assert lsq3.precisions == ["lsq:2W/2A", "lsq+pc:2W/2A"] and lsq3.seeds == [0, 1, 2]
    assert lsq3.continue_from == ["benchmarks/results/accuracy_levers_lsq.json",
                                  "benchmarks/results/accuracy_patient_grid.json"]
    width = subprocess.run([str(script), "width"], capture_output=True, text=True, check=True, env=env).stdout
    wide, four = (accuracy.parser().parse_args(line.split()[2:]) for line in width.splitlines())
    assert four.precisions == ["pc:4W/8A@asym"] and four.runs_dir == wide.runs_dir and four.out.endswith("_4w8a.json")
    assert wide.student_width == 1.0 and wide.runs_dir == f"{runs}-w1" and wide.seeds == [0]
    assert wide.precisions == ["2W/32A", "lsq:2W/2A"] and wide.out.endswith("accuracy_width1.json")
    assert not wide.continue_from  # the grid's rows are width 0.5's: none is this step's run
    line = subprocess.run([str(script), "grid-w1"], capture_output=True, text=True, check=True, env=env).stdout
    grid1 = accuracy.parser().parse_args(line.split()[2:])
    assert grid1.seeds == [0, 1, 2] and grid1.runs_dir == wide.runs_dir and grid1.student_width == 1.0
    assert grid1.continue_from == [wide.out, four.out, "benchmarks/results/accuracy_patient_grid.json"]
    assert "32W/32A" in grid1.precisions  # the teachers come from the width-0.5 grid's snapshots (same runs)
    line = subprocess.run([str(script), "erase"], capture_output=True, text=True, check=True,
                          env={**env, "SEEDS": "1 2"}).stdout
    erase = accuracy.parser().parse_args(line.split()[2:])  # the regime's options, replaced by the step's last ones
    assert (erase.pad, erase.erase, erase.cache_views, erase.student_width) == (2, 0.5, 4, 1.0)
    assert erase.runs_dir == "runs/erase-w1" and erase.seeds == [1, 2] and erase.out.endswith("accuracy_erase_w1.json")
    assert "32W/32A" not in erase.precisions and erase.teacher_seeds == [0, 1]
    (snapshot / "checkpoints").mkdir(parents=True)  # the committed second teacher, finished: nothing to train
    (snapshot / "summary.json").write_text('{"status": "finished"}')
    plan = subprocess.run([str(script), "teacher2"], capture_output=True, text=True, check=True, env=env).stdout
    assert plan == "# teacher2: finished, nothing to run\n" and not runs.exists()  # a dry run copies nothing


def test_the_grid_takes_each_precisions_loss_as_the_pilot_chose_it_on_the_holdout(tmp_path):
    def row(precision, role, holdout, loss=None, scheme="C", seed=0):
        return {"precision": precision, "role": role, "scheme": scheme, "seed": seed, "final_holdout_top1": holdout,
                **({"loss": loss} if loss else {})}
    pilot = tmp_path / "pilot.json"
    pilot.write_text(json.dumps({"rows": [
        row("2W/32A", "student", 90.0), row("2W/32A", "sweep", 91.0, "soft-t4"), row("2W/32A", "sweep", 89.0, "mse"),
        row("2W/32A", "sweep", 99.0, scheme="C", seed=1, loss="mse"),  # another seed: not the pilot's choice
        row("2W/32A", "student", 99.0, scheme="baseline"),           # no teacher: not a loss
        row("4W/8A", "student", 92.0), row("4W/8A", "sweep", 91.5, "function-matching")]}))
    args = _args(schemes=["baseline", "C"], precisions=["2W/32A", "4W/8A", "32W/32A"], loss_from=str(pilot))
    jobs = {j.name: j for j in accuracy.grid_jobs(args, tmp_path)}
    assert jobs["2w32a-C-soft-t4-s1"].overrides["distill.loss"] == "soft-t4" and jobs["2w32a-C-soft-t4-s1"].meta["loss"] == "soft-t4"
    assert "distill.loss" not in jobs["4w8a-C-s0"].overrides  # the paper's loss won there
    assert "distill.loss" not in jobs["2w32a-baseline-s0"].overrides  # no teacher, no loss
    assert "32w32a-C-s0" in jobs and "32w32a-baseline-s0" not in jobs  # the FP twin is that cell
    explicit = {j.name for j in accuracy.grid_jobs(_args(schemes=["C"], loss=["2W/32A=mse"], loss_from=str(pilot)), tmp_path)}
    assert "2w32a-C-mse-s0" in explicit  # a loss given outright wins over the pilot's choice
    with pytest.raises(SystemExit, match="expected PRECISION=NAME"):
        accuracy.grid_jobs(_args(schemes=["C"], loss=["2W/32A=nope"]), tmp_path)


def test_a_regime_of_its_own_is_set_on_students_and_twins_never_on_the_teacher(tmp_path):
    sets = ["optim.name=adamw", "optim.lr=0.002", "optim.quant_domain=log"]
    jobs = {j.name: j for j in accuracy.grid_jobs(_args(schemes=["baseline", "C"], set=sets), tmp_path)}
    for name in ("fp-s0", "2w32a-baseline-s1", "4w8a-C-s0"):
        o = jobs[name].overrides
        assert o["optim.name"] == "adamw" and o["optim.quant_domain"] == "log"
    assert jobs["fp-s0"].overrides["optim.lr"] == 0.002 and jobs["4w8a-C-s0"].overrides["optim.lr"] == 0.01  # --c-lr
    assert jobs["teacher"].overrides["optim.name"] == "sgd" and "optim.quant_domain" not in jobs["teacher"].overrides
    for bad in ("quant.precision=4W/8A", "train.seed=3", "optim.lr"):
        with pytest.raises(SystemExit, match="--set"):
            accuracy.grid_jobs(_args(set=[bad]), tmp_path)
    import accuracy_report  # benchmarks/ is on the path once test_benchmarks is imported

    text = accuracy_report._optimizer_text(accuracy.common(_args(set=sets), 0))
    assert text == "AdamW (β1 0.9, β2 0.999, quant_domain log)"


def test_an_ensemble_teacher_trains_each_member_and_caches_their_mean_once(tmp_path, monkeypatch):
    args = _args(teacher_cache=True, teacher_seeds=[0, 1], precisions=["2W/32A"], schemes=["baseline", "C"], seeds=[0])
    jobs = {j.name: j for j in accuracy.grid_jobs(args, tmp_path)}
    cache = accuracy.cache_name(args)
    assert cache != accuracy.CACHE and list(jobs)[:3] == ["teacher", "teacher-s1", cache]  # not one teacher's file
    assert jobs["teacher-s1"].overrides["train.seed"] == 1 and jobs["teacher"].overrides["train.seed"] == 0
    assert jobs[cache].needs == ("teacher", "teacher-s1")
    c = jobs["2w32a-C-s0"]
    assert c.overrides["distill.teacher"] == [str(tmp_path / "teacher"), str(tmp_path / "teacher-s1")]
    assert c.overrides["distill.teacher_cache"] == str(accuracy.cache_file(tmp_path, cache))
    assert c.needs == ("teacher", "teacher-s1", cache, "fp-s0")
    (tmp_path / "logs").mkdir()
    started = []
    monkeypatch.setattr(_runner.subprocess, "Popen", lambda cmd, **kw: started.append(cmd))
    _runner.launch(jobs[cache], tmp_path, 1)  # cache-teacher gets every member, in order
    cmd = started[0]
    at = cmd.index("cache-teacher")
    assert cmd[at + 1:at + 3] == [str(tmp_path / "teacher"), str(tmp_path / "teacher-s1")]
    assert cmd[cmd.index("--out") + 1] == str(accuracy.cache_file(tmp_path, cache))
    with pytest.raises(SystemExit, match="--teacher-seeds"):
        accuracy.main(["--teacher-seeds", "0", "0", "--runs-dir", str(tmp_path / "r"), "--report-only"])


def test_a_grid_reuses_a_pilots_rows_where_its_jobs_are_the_same_runs(tmp_path):
    args = _args(teacher_cache=True, teacher_seeds=[0, 1], precisions=["2W/32A"], schemes=["baseline", "C"], seeds=[0])
    jobs = accuracy.grid_jobs(args, tmp_path)
    by = {j.name: j for j in jobs}
    pilot_c = {**by["2w32a-C-s0"].overrides, "distill.teacher": str(tmp_path / "teacher")}  # one teacher, not two
    rows = [{"name": n, "config": {"overrides": o}} for n, o in
            (("fp-s0", by["fp-s0"].overrides), ("2w32a-baseline-s0", by["2w32a-baseline-s0"].overrides),
             ("2w32a-C-s0", pilot_c))]
    pilot = tmp_path / "pilot.json"
    pilot.write_text(json.dumps({"rows": rows}))
    _, matching = _runner.continue_from(jobs, tmp_path, [tmp_path / "grid.json", pilot], str(tmp_path))
    assert set(matching) == {"fp-s0", "2w32a-baseline-s0"}  # the distilled cell had another teacher: it runs
    assert accuracy.parser().parse_args(["--continue-from", "a.json", "b.json"]).continue_from == ["a.json", "b.json"]


def test_the_patient_recipes_in_configs_are_the_grids_fp_twin_and_distilled_cell(tmp_path):
    import dataclasses

    from apprentice.config import load_config
    dry = subprocess.run([str(ROOT / "benchmarks" / "patient_study.sh"), "grid-w1"], capture_output=True, text=True,
                         check=True, env={**os.environ, "DRY_RUN": "1"}).stdout
    args = accuracy.parser().parse_args(dry.split()[2:])
    args.precisions, args.seeds = ["2W/32A"], [0]
    jobs = {j.name: j for j in accuracy.grid_jobs(args, tmp_path)}
    paths = ("distill.teacher", "distill.teacher_cache", "distill.student_init", "train.out")  # folders differ

    def flat(config) -> dict:
        return {f"{k}.{k2}": v2 for k, v in dataclasses.asdict(config).items() if isinstance(v, dict)
                for k2, v2 in v.items() if f"{k}.{k2}" not in paths}
    cell = next(n for n in jobs if n.startswith("2w32a-C-"))  # at the loss the pilot chose
    for job, recipe in (("fp-s0", "student_patient_fp.yaml"), (cell, "student_patient.yaml")):
        grid = load_config(str(ROOT / _runner.RECIPE), _runner._override_args(jobs[job].overrides))
        assert flat(grid) == flat(load_config(str(ROOT / "configs" / "fashion_mnist" / recipe), [])), recipe
    # the 4W/8A the recipe's header names (the width-1 grid's cell): the recipe with those overrides
    args.precisions = ["pc:4W/8A@asym"]
    lever = next(j for j in accuracy.grid_jobs(args, tmp_path) if j.name.startswith("pc-4w8a-asym-C-"))
    header = (ROOT / "configs" / "fashion_mnist" / "student_patient.yaml").read_text()
    documented = "quant.precision=4W/8A quant.per_channel=true quant.act_quantizer=asym"
    assert documented in header
    grid = load_config(str(ROOT / _runner.RECIPE), _runner._override_args(lever.overrides))
    recipe = load_config(str(ROOT / "configs" / "fashion_mnist" / "student_patient.yaml"), documented.split())
    assert flat(grid) == flat(recipe)


def test_the_reports_sizes_build_students_as_the_runs_do_a_stock_one_without_a_width():
    """A stock constructor takes any keyword, and timm's refuses ``width`` inside: the report builds
    the student with ``model.width`` only where the grid's runs set it (not 1)."""
    pytest.importorskip("timm")
    import accuracy_report  # benchmarks/ is on the path once test_benchmarks is imported

    sizes = accuracy_report.model_sizes("timm:mobilenetv3_small_050", "resnet8", ["4W/8A@asym"])
    assert 0 < sizes["4W/8A@asym"] < sizes["32W/32A"] and sizes["teacher"] > 0
    half = accuracy_report.model_sizes("resnet8", "resnet8", ["2W/32A"], width=0.5)
    assert half["32W/32A"] < sizes["teacher"] / 3  # width 0.5 passed on: a quarter of the weights
