"""The accuracy grid's report from its rows: gap and recovery paired by seed, shares of a gap, the
issue's goals, convergence epochs, the sweep's choice on the holdout. Rows are built by hand here;
the grid that produces them is tested in test_benchmarks.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import accuracy_plots
import accuracy_report


def test_epoch_to_fraction():
    assert accuracy_report.epoch_to_fraction([50.0, 80.0, 89.5, 90.0], 0.99) == 3
    assert accuracy_report.epoch_to_fraction([91.0, 80.0, 90.0], 0.99) == 1
    assert accuracy_report.epoch_to_fraction([], 0.99) is None


def _row(role, precision, scheme, seed, final):
    return {"role": role, "precision": precision, "scheme": scheme, "seed": seed, "final_top1": final,
            "best_top1": final, "epoch_to_99pct": 2, "test_top1_per_epoch": [final - 5, final],
            "final_holdout_top1": None, "gamma": 0.5, "temperature": 1.0}


def test_analysis_gap_and_recovery_are_paired_by_seed():
    rows = [_row("teacher", "32W/32A", "baseline", 0, 92.0)]
    for seed, (fp, base, b) in enumerate([(90.0, 86.0, 89.0), (91.0, 88.0, 89.0)]):
        rows += [_row("fp_twin", "32W/32A", "baseline", seed, fp), _row("student", "2W/32A", "baseline", seed, base),
                 _row("student", "2W/32A", "B", seed, b)]
    an = accuracy_report.analyse(rows, ["2W/32A"])
    p = an["precisions"]["2W/32A"]
    assert p["gap_points"]["mean"] == pytest.approx(3.5)  # (4 + 3) / 2
    assert p["schemes"]["B"]["recovered_points"]["mean"] == pytest.approx(2.0)  # (3 + 1) / 2
    assert p["schemes"]["B"]["recovered_fraction_of_gap"] == pytest.approx(2.0 / 3.5, abs=1e-3)
    assert p["schemes"]["B"]["vs_fp_twin_points"]["mean"] == pytest.approx(-1.5)
    assert p["schemes"]["A"]["final_top1"]["n"] == 0  # missing cells are reported as missing, not zero
    assert an["teacher_top1"] == 92.0


def test_no_share_of_a_gap_that_is_noise_or_negative():
    # seeds' gaps +2 and -1 (mean 0.5, std 2.1: noise); then a twin beaten by its student (gap < 0)
    for pairs in ([(90.0, 88.0), (90.0, 91.0)], [(90.0, 90.5), (90.0, 90.7)]):
        rows = []
        for seed, (fp, base) in enumerate(pairs):
            rows += [_row("fp_twin", "32W/32A", "baseline", seed, fp),
                     _row("student", "2W/32A", "baseline", seed, base), _row("student", "2W/32A", "B", seed, base + 1)]
        an = accuracy_report.analyse(rows, ["2W/32A"])
        b = an["precisions"]["2W/32A"]["schemes"]["B"]
        assert b["recovered_points"]["mean"] == pytest.approx(1.0)  # the gain itself is still reported
        assert b["recovered_fraction_of_gap"] is None
        assert "% of the gap" not in "\n".join(accuracy_report.findings(an))


def test_goals_choose_the_teacher_scheme_on_holdout_and_say_noise():
    import accuracy_goals

    rows = [_row("teacher", "32W/32A", "baseline", 0, 93.0)]
    # (FP twin, no teacher, B test, B holdout, C test, C holdout) per seed: C is better on test, B on holdout.
    for seed, (fp, base, b, bh, c, ch) in enumerate([(92.0, 90.0, 92.4, 93.0, 93.5, 92.0),
                                                     (92.4, 90.2, 92.6, 93.1, 93.7, 92.1)]):
        rows += [_row("fp_twin", "32W/32A", "baseline", seed, fp), _row("student", "4W/8A", "baseline", seed, base),
                 {**_row("student", "4W/8A", "B", seed, b), "final_holdout_top1": bh},
                 {**_row("student", "4W/8A", "C", seed, c), "final_holdout_top1": ch}]
    an = accuracy_report.analyse(rows, ["4W/8A"])
    assert accuracy_goals.chosen_on_holdout(an["precisions"]["4W/8A"]["schemes"]) == "B"
    fp_line, w4 = accuracy_goals.goal_lines(an)  # goals whose cells are absent (LSQ, 2W/32A) are left out
    assert fp_line.startswith("- FP twin ≥ 92 %") and "**met**" in fp_line
    # B − FP twin = +0.4, +0.2: mean +0.30 ≥ 0.3 (C's +1.4 on test does not count), std 0.14: not noise.
    assert "scheme B (chosen on the holdout)" in w4 and "+0.30 ± 0.14 over 2 seeds" in w4 and "**met**" in w4
    assert "noise" not in w4 and accuracy_goals.missed_cells(an) == []  # a met goal is not swept
    rows[-2]["final_top1"] = 91.4  # B − FP twin = +0.4, −1.0: mean −0.30, std 0.99
    an = accuracy_report.analyse(rows, ["4W/8A"])
    w4 = accuracy_goals.goal_lines(an)[1]
    assert "**missed by 0.60 points**" in w4 and "is noise" in w4
    assert accuracy_goals.missed_cells(an) == ["4W/8A:B"]  # at the holdout's scheme, not C (better on test)
    assert accuracy_report._diff({"mean": -0.3, "std": 0.99, "n": 3}) == "-0.30 ± 0.99 noise"
    assert accuracy_report._diff({"mean": 1.2, "std": 0.2, "n": 3}) == "1.20 ± 0.20"


def test_the_patient_goals_judge_the_ensemble_and_the_gain_over_no_teacher(tmp_path):
    import accuracy_goals

    assert accuracy_goals.goal_set({"teacher_recipe": "t.yaml"}) is accuracy_goals.PATIENT_GOALS
    assert accuracy_goals.goal_set({}) is accuracy_goals.GOALS
    rows = [{**_row("teacher", "32W/32A", "baseline", s, 94.7), "name": n} for s, n in ((0, "teacher"), (1, "teacher-s1"))]
    # (FP twin, no teacher, C) per seed: C − no teacher = +0.6, +0.5, +0.7 (clear); C − FP twin −0.4, −0.6, −0.2.
    for seed, (fp, base, c) in enumerate([(92.0, 91.0, 91.6), (92.5, 91.4, 91.9), (92.2, 91.3, 92.0)]):
        rows += [_row("fp_twin", "32W/32A", "baseline", seed, fp), _row("student", "2W/32A", "baseline", seed, base),
                 {**_row("student", "2W/32A", "C", seed, c), "final_holdout_top1": 92.0}]
    an = accuracy_report.analyse(rows, ["2W/32A"])
    settings = {"teacher_seeds": [0, 1]}
    measured = tmp_path / "ensemble_teacher.json"
    measured.write_text(json.dumps({"rows": [{"teacher": "runs/teacher", "test": 94.7}, {"teacher": "x/teacher-s1", "test": 94.6},
                                             {"teacher": "ensemble", "test": 95.0}]}))
    an["ensemble_top1"] = accuracy_report.ensemble_top1(measured, settings, rows)
    assert an["ensemble_top1"] == 95.0
    assert accuracy_report.ensemble_top1(measured, {"teacher_seeds": [0]}, rows) is None  # one teacher: not an ensemble
    assert accuracy_report.ensemble_top1(measured, settings, rows[:1] + rows[2:]) is None  # other members
    teacher, w2, gain = accuracy_goals.goal_lines(an, accuracy_goals.PATIENT_GOALS)
    assert "the ensemble 95.00 %" in teacher and "**met**" in teacher
    assert "-0.40 ± 0.20 over 3 seeds" in w2 and "**missed by 0.40 points**" in w2
    assert "2W/32A C +0.60 ± 0.10 over 3 seeds" in gain and "**met**" in gain
    rows[-1]["final_top1"] = 91.3  # C − no teacher = +0.6, +0.5, 0.0: mean +0.37 < 2 × 0.32
    gain = accuracy_goals.goal_lines(accuracy_report.analyse(rows, ["2W/32A"]), accuracy_goals.PATIENT_GOALS)[-1]
    assert "(not clear)" in gain and "**missed**" in gain
    del an["ensemble_top1"]
    assert "the teacher 94.70 %" in accuracy_goals.goal_lines(an, accuracy_goals.PATIENT_GOALS)[0]
    assert accuracy_goals.missed_cells(an, accuracy_goals.PATIENT_GOALS) == ["2W/32A:C"]


def test_a_goal_is_judged_on_the_variant_of_its_precision_that_the_holdout_chooses():
    import accuracy_goals

    rows = []
    # (FP twin, default no teacher, default C, variant no teacher, variant C) per seed; the variant's C cell is
    # higher on the holdout (92.6 against 92.0), so it stands for 4W/8A, and the default's cells do not count.
    for seed, (fp, base, c, vbase, vc) in enumerate([(92.0, 91.3, 91.4, 91.6, 92.4), (92.4, 91.5, 91.6, 91.9, 92.6)]):
        rows += [_row("fp_twin", "32W/32A", "baseline", seed, fp), _row("student", "4W/8A", "baseline", seed, base),
                 {**_row("student", "4W/8A", "C", seed, c), "final_holdout_top1": 92.0},
                 _row("student", "pc:4W/8A@asym", "baseline", seed, vbase),
                 {**_row("student", "pc:4W/8A@asym", "C", seed, vc), "final_holdout_top1": 92.6},
                 {**_row("student", "lsq+pc:4W/8A", "C", seed, 99.0), "final_holdout_top1": 99.0}]  # another quantizer
    an = accuracy_report.analyse(rows, ["4W/8A", "pc:4W/8A@asym", "lsq+pc:4W/8A"])
    assert accuracy_goals.variant("4W/8A", an) == "pc:4W/8A@asym"
    assert accuracy_goals.variant("lsq:4W/8A", an) == "lsq+pc:4W/8A" and accuracy_goals.variant("2W/32A", an) is None
    w4, gain = accuracy_goals.goal_lines(an, accuracy_goals.PATIENT_GOALS)
    # variant C − FP twin = +0.4, +0.2; variant C − its own no teacher = +0.8, +0.7
    assert "pc:4W/8A@asym scheme C (chosen on the holdout) − FP twin = +0.30 ± 0.14 over 2 seeds" in w4 and "**met**" in w4
    assert gain.startswith("- at every precision") and "pc:4W/8A@asym C +0.75 ± 0.07 over 2 seeds" in gain
    assert "4W/8A C +0.15" not in gain and "**met**" in gain
    rows = [r for r in rows if r["precision"] != "pc:4W/8A@asym" or r["scheme"] != "C"]
    an = accuracy_report.analyse(rows, ["4W/8A", "pc:4W/8A@asym"])  # no teacher cell of the variant: the default
    assert accuracy_goals.variant("4W/8A", an) == "4W/8A"
    assert accuracy_goals.missed_cells(an, accuracy_goals.PATIENT_GOALS) == ["4W/8A:C"]


def test_convergence_sentence_pairs_b_with_a_by_seed():
    import accuracy_goals

    conv = [{"scheme": s, "seed": seed, "epoch_to_99pct": e}
            for s, seed, e in [("A", 0, 6), ("A", 1, 7), ("A", 2, 7), ("B", 0, 5), ("B", 1, 6), ("B", 2, None)]]
    text = accuracy_goals.convergence_sentence(conv)
    assert "paired by seed over 2: -1, -1 epochs (mean -1.00 ± 0.00): B converges 15 % sooner than A" in text
    assert "fell" not in text
    assert accuracy_goals.convergence_sentence([{"scheme": "A", "seed": 0, "epoch_to_99pct": 3}]) is None
    # a last epoch that falls lowers the 99 % target: said, and the pairing repeated without that seed
    curves = {("A", 0): [80, 88, 90, 90.5], ("A", 1): [70, 85, 90, 90.4], ("A", 2): [80, 89, 90, 90.2],
              ("B", 0): [80, 88, 90, 90.6], ("B", 1): [75, 87, 90, 90.3], ("B", 2): [80, 87, 90, 86.0]}
    conv = [{"scheme": s, "seed": seed, "test_top1_per_epoch": c, "epoch_to_99pct": accuracy_goals.epoch_to_fraction(c, 0.99)}
            for (s, seed), c in curves.items()]
    text = accuracy_goals.convergence_sentence(conv)
    assert "over 3: +0, +0, -1 epochs (mean -0.33 ± 0.58, noise): B converges 11 % sooner than A" in text
    assert "(B seed 2 -4.00 points) reach 99 % of that lower final early; the seeds without one: +0, +0 epochs" in text


def test_convergence_section_gives_each_phase_end_paired_by_seed():
    import accuracy_report

    curves = {("A", 0): [50, 60, 70, 80], ("A", 1): [52, 61, 72, 81], ("B", 0): [55, 63, 71, 80], ("B", 1): [55, 66, 73, 82]}
    conv = [{"role": "convergence", "scheme": s, "seed": seed, "test_top1_per_epoch": c, "final_top1": c[-1],
             "epoch_to_99pct": accuracy_report.epoch_to_fraction(c, 0.99)} for (s, seed), c in curves.items()]
    text = "\n".join(accuracy_report.regime_section(conv, {"epochs": 4, "milestones": [0.5, 0.75]}))
    assert accuracy_report.phase_ends({"epochs": 16, "milestones": [0.5, 0.75]}) == [8, 12]
    assert "| top-1 % at epoch 2 | top-1 % at epoch 3 |" in text
    assert "| A | 80.50 ± 0.71 (n=2) | 4.0 ± 0.0 (n=2) | 60.50 ± 0.71 (n=2) | 71.00 ± 1.41 (n=2) | 2 |" in text
    # B − A at epoch 2: +3, +5 (mean 4 ± 1.41); at epoch 3: +1, +1 (std 0: not noise)
    assert "epoch 2: 4.00 ± 1.41 (n=2); epoch 3: 1.00 ± 0.00 (n=2)." in text
    only_b = "\n".join(accuracy_report.regime_section(conv[2:], {"epochs": 4, "milestones": [0.5, 0.75]}))
    assert "| B |" in only_b and "B − A" not in only_b  # nothing to pair yet


def test_convergence_plot_only_when_the_grid_has_convergence_runs(tmp_path):
    pytest.importorskip("matplotlib")
    conv = [{**_row("convergence", "2W/32A", s, seed, 90.0), "test_top1_per_epoch": [80.0, 88.0, 89.5, 90.0]}
            for s in ("A", "B") for seed in (0, 1)]
    out = tmp_path / "grid.json"
    assert accuracy_plots.convergence_plot(out, [_row("fp_twin", "32W/32A", "baseline", 0, 90.0)]) is None
    assert accuracy_plots.convergence_plot(out, conv) == "grid_convergence.png"
    assert (tmp_path / "grid_convergence.png").read_bytes()[:4] == b"\x89PNG"


def test_sweep_chooses_on_holdout_never_on_test():
    def run(role, scheme, gamma, tau, holdout, test, seed=0):
        return {**_row(role, "2W/32A", scheme, seed, test), "name": f"{scheme}-{gamma}-{tau}", "gamma": gamma,
                "temperature": tau, "final_holdout_top1": holdout}
    grid = [run("student", "B", 0.5, 1.0, 85.0, 85.0), run("student", "baseline", 0.5, 1.0, 84.0, 83.0),
            run("student", "B", 0.5, 1.0, 99.0, 99.0, seed=1)]  # another seed is not part of the sweep
    assert accuracy_report.sweep_table(grid) == ([], None)  # the grid's own cell alone is no sweep
    rows = grid + [run("sweep", "B", 1.0, 2.0, 86.5, 84.0), run("sweep", "B", 2.0, 1.0, 86.0, 90.0)]
    table, chosen = accuracy_report.sweep_table(rows)
    assert [(r["gamma"], r["temperature"]) for r in table] == [(0.5, 1.0), (1.0, 2.0), (2.0, 1.0)]
    assert (chosen["gamma"], chosen["temperature"], chosen["test_top1"]) == (1.0, 2.0, 84.0)  # best test is 2.0/1.0
    assert (chosen["baseline_holdout_top1"], chosen["baseline_test_top1"]) == (84.0, 83.0)
    assert accuracy_report.sweep_rows(table, chosen)[-1] == ["no teacher", "-", "84.00", "83.00"]


def test_a_loss_table_sweep_names_each_row_and_the_choice():
    def run(role, scheme, loss, holdout, test):
        return {**_row(role, "4W/8A", scheme, 0, test), "name": f"{scheme}-{loss}", "gamma": 0.5, "temperature": 1.0,
                "final_holdout_top1": holdout, "lr": 0.01, **({"loss": loss} if loss else {})}
    rows = [run("student", "C", None, 90.0, 90.5), run("student", "baseline", None, 89.0, 89.2),
            run("sweep", "C", "mse", 91.0, 90.1), run("sweep", "C", "soft-t4", 90.5, 91.0)]
    table, chosen = accuracy_report.sweep_table(rows)
    assert chosen["loss"] == "mse"  # on the holdout, not the test's soft-t4
    assert [r[0] for r in accuracy_report.sweep_rows(table, chosen)] == ["paper", "mse", "soft-t4", "no teacher"]
    assert "distill.loss=mse, γ=0.5" in accuracy_report.sweep_sentence(chosen)


def test_row_machine_comes_from_the_run_else_says_it_is_the_reports():
    stamp = {"hostname": "here", "cpu_model": "CPU X", "cpu_count": 2}
    assert accuracy_report._machine({"host": "here", "threads": 1}, stamp) == {
        "host": "here", "threads": 1, "cpu_model": "CPU X", "cpu_count": 2, "recorded_by": "run"}
    assert accuracy_report._machine({"host": "elsewhere", "threads": 4}, stamp) == {
        "host": "elsewhere", "threads": 4, "recorded_by": "run"}  # this report's CPU is not that host's
    assert accuracy_report._machine({}, stamp)["recorded_by"].startswith("report")


def test_a_scheme_c_sweep_table_has_lr_and_chooses_per_cell_on_holdout():
    # lr is a column, the holdout chooses among every point, the grid's own run included.
    def row(name, lr, gamma, holdout, test, role="sweep", scheme="C"):
        return {**_row(role, "lsq:4W/4A", scheme, 0, test), "name": name, "gamma": gamma, "lr": lr,
                "final_holdout_top1": holdout}
    rows = [row("own", 0.01, 0.5, 86.0, 86.5, role="student"), row("lr", 0.03, 0.5, 86.4, 85.0),
            row("g1", 0.01, 1.0, 86.2, 87.0), row("base", 0.1, 0.5, 85.0, 85.1, role="student", scheme="baseline"),
            {**row("fp", 0.1, 0.5, 86.9, 86.0, role="fp_twin"), "precision": "32W/32A"},
            {**row("fp1", 0.1, 0.5, 99.0, 99.0, role="fp_twin"), "precision": "32W/32A", "seed": 1}]
    table, chosen = accuracy_report.sweep_table(rows)
    assert (chosen["run"], chosen["lr"], chosen["cell"]["scheme"]) == ("lr", 0.03, "C")
    assert accuracy_report.sweep_rows(table, chosen, lrs=True)[-2:] == [
        ["no teacher", "-", "-", "85.00", "85.10"], ["FP twin", "-", "-", "86.90", "86.00"]]  # the same seed's twin
    sentence = accuracy_report.sweep_sentence(chosen)
    assert "lr=0.03" in sentence and "test 86.00 % (chosen − twin: -1.00 points on test)" in sentence
    # Two cells swept in one grid: a table each, each choosing among its own cell's points only.
    other = [row("b-own", 0.1, 0.5, 84.0, 84.0, role="student", scheme="B"), row("b-g1", 0.1, 1.0, 99.0, 80.0, scheme="B")]
    both = accuracy_report.sweeps(rows + other)
    assert [(c["cell"]["scheme"], c["run"]) for _, c in both] == [("B", "b-g1"), ("C", "lr")]


def test_the_report_names_the_teacher_by_its_recipe_when_one_trained_it():
    assert accuracy_report._teacher_name({"teacher": "resnet14"}) == "`resnet14`"
    assert accuracy_report._teacher_name({"teacher": "resnet14", "teacher_recipe": "configs/t.yaml"}) == (
        "from `configs/t.yaml`")


def test_the_report_names_an_ensemble_teacher_and_each_precisions_chosen_loss():
    settings = {"teacher_recipe": "configs/fashion_mnist/teacher_strong.yaml", "teacher_seeds": [0, 1]}
    text = accuracy_report._teacher_text(settings, {"teacher_top1": 94.71, "teachers_top1": {0: 94.71}})
    assert text.startswith("the ensemble of 2 runs from `configs/fashion_mnist/teacher_strong.yaml`")
    assert "seed 0: 94.71 %, seed 1: not yet finished" in text
    one = accuracy_report._teacher_text({"teacher": "resnet14"}, {"teacher_top1": 93.1})
    assert one == "`resnet14` (FP, trained once, seed 0: 93.1 % test top-1)"
    rows = [{"role": "student", "precision": "4W/8A", "loss": "gamma-rise"}, {"role": "student", "precision": "2W/32A"},
            {"role": "sweep", "precision": "2W/32A", "loss": "mse"}]  # a sweep's loss is not the grid's
    assert accuracy_report._losses_text(rows) == "; the distilled cells at the loss their precision's pilot chose on the holdout: 4W/8A `gamma-rise`"
    assert accuracy_report._losses_text(rows[1:]) == ""


def test_a_loss_sweep_row_shows_the_named_losss_own_gamma_and_temperature():
    row = {"gamma": 0.5, "temperature": 1.0, "lr": 0.01, "holdout_top1": 92.0, "test_top1": 91.0}
    rows = accuracy_report.sweep_rows([row, {**row, "loss": "soft-t4"}, {**row, "loss": "gamma-rise"},
                                       {**row, "loss": "mse"}], {})
    assert [r[:3] for r in rows] == [["paper", "0.5", "1"], ["soft-t4", "0.9", "4"], ["gamma-rise", "1 (rise)", "1"],
                                     ["mse", "0.5 (mse)", "1"]]
