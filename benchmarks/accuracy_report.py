"""Rows, analysis and markdown of the accuracy grid (`accuracy.py`), from its run folders (the plots:
`accuracy_plots`).

Everything here reads finished runs only (``summary.json`` with status "finished") and can be
rebuilt at any time with ``accuracy.py --report-only``.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from _labels import parse_label, split_label
from _stamp import markdown_table, stamp_markdown, write_results
from accuracy_goals import (
    GOALS,
    convergence_sentence,
    epoch_to_fraction,
    goal_lines,
    goal_set,
    is_noise,
    relative_epochs,
)
from accuracy_plots import convergence_plot, plots

from apprentice.config import DistillConfig
from apprentice.distill import SCHEMES as _LIBRARY_SCHEMES
from apprentice.losses import LOSSES

SCHEMES = tuple(_LIBRARY_SCHEMES)  # baseline, A, B, C: every scheme the library has is a grid column
# The paper's ImageNet ResNet-18 top-1 error (Mishra & Marr 2018; ../shared/design/method.md §4).
PAPER_RESNET18 = {"FP": 30.4, "2W/32A": {"baseline": 33.4, "teacher": 31.5},
                  "2W/8A": {"baseline": None, "teacher": 32.0}, "4W/8A": {"baseline": None, "teacher": 29.6}}


def _epochs(folder: Path) -> list[dict[str, Any]]:
    """Epoch records of a run's metrics.jsonl, the last one for each epoch (a resumed run may repeat one)."""
    by_epoch: dict[int, dict[str, Any]] = {}
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line) if line.strip() else {}
        if rec.get("type") == "epoch":
            by_epoch[rec["epoch"]] = rec
    return [by_epoch[e] for e in sorted(by_epoch)]


def collect(jobs: list, runs: Path, stamp: dict[str, Any],
            committed: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per finished run: the job's settings, per-epoch and final accuracies, times, commit and
    machine. The machine is the host the run's summary names (runs record it since session 3); for
    an older run without one, the machine of this report (``stamp``), marked as such. A run whose
    folder is not here keeps its committed row (``committed``, same overrides), made elsewhere."""
    rows = []
    for job in jobs:
        folder = runs / job.name
        try:
            summary = json.loads((folder / "summary.json").read_text())
        except (OSError, ValueError):
            old = (committed or {}).get(job.name)  # the caller passes only rows that match their job
            if old is not None:
                rows.append(old)
            continue
        if summary.get("status") != "finished":
            continue
        epochs = _epochs(folder)
        rows.append({
            "name": job.name, **job.meta,
            "gamma": job.overrides.get("distill.gamma"), "temperature": job.overrides.get("distill.temperature"),
            "config": {"recipe": job.recipe, "overrides": job.overrides},
            "test_top1_per_epoch": [e.get("test_top1") for e in epochs],
            "holdout_top1_per_epoch": [e.get("holdout_top1") for e in epochs],
            "final_top1": summary.get("final_top1"), "best_top1": summary.get("best_top1"),
            "best_epoch": summary.get("best_epoch"), "final_holdout_top1": epochs[-1].get("holdout_top1") if epochs else None,
            "epoch_to_99pct": epoch_to_fraction([e.get("test_top1") for e in epochs], 0.99),
            "wall_time_s": summary.get("wall_time_s"),
            "train_time_s": sum(e.get("epoch_time_s", 0.0) for e in epochs),
            "commit": summary.get("git_commit"), "torch": summary.get("torch"), "device": summary.get("device"),
            "machine": _machine(summary, stamp),
            "parameters": summary.get("parameters"), "train_images": summary.get("train_images"),
        })
    return rows


def _machine(summary: dict[str, Any], stamp: dict[str, Any]) -> dict[str, Any]:
    here = {"cpu_model": stamp.get("cpu_model"), "cpu_count": stamp.get("cpu_count")}
    if summary.get("host"):
        same = summary["host"] == stamp.get("hostname")  # the CPU is known only for this report's host
        return {"host": summary["host"], "threads": summary.get("threads"), **(here if same else {}),
                "recorded_by": "run"}
    return {"host": stamp.get("hostname"), **here, "recorded_by": "report (the run predates host records)"}


def _ms(values: list[float]) -> dict[str, Any]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": round(statistics.fmean(vals), 3), "std": round(statistics.stdev(vals), 3) if len(vals) > 1 else None,
            "n": len(vals)}


def _fmt(ms: dict[str, Any], digits: int = 2) -> str | None:
    if ms["mean"] is None:
        return None
    return f"{ms['mean']:.{digits}f}" + (f" ± {ms['std']:.{digits}f}" if ms["std"] is not None else "") + \
        (f" (n={ms['n']})" if ms["n"] != 3 else "")


def _diff(ms: dict[str, Any] | None) -> str | None:
    """A paired difference, with the word "noise" where |mean| ≤ its std over seeds."""
    text = _fmt(ms) if ms else None
    return text and text + (" noise" if is_noise(ms) else "")


def _real_gap(gap: dict[str, Any]) -> bool:
    """A gap a share can be taken of: positive and, with several seeds, beyond seed noise. A share of
    a gap that is noise (0.58 ± 0.92) or negative (the student beat its twin) says nothing."""
    return gap["mean"] is not None and gap["mean"] > 0 and not is_noise(gap)


def analyse(rows: list[dict[str, Any]], precisions: list[str]) -> dict[str, Any]:
    """Per precision: quantization gap, each scheme's recovery (paired by seed), convergence epochs."""
    grid = [r for r in rows if r["role"] in ("fp_twin", "student")]
    fp = {r["seed"]: r for r in grid if r["role"] == "fp_twin"}
    teachers = [r for r in rows if r["role"] == "teacher"]
    teacher = teachers[0] if teachers else None
    out: dict[str, Any] = {"teacher_top1": teacher and teacher["final_top1"],
                           "teachers_top1": {r["seed"]: r["final_top1"] for r in teachers},
                           "fp_twin": _ms([r["final_top1"] for r in fp.values()]),
                           "fp_twin_epoch_to_99pct": _ms([r["epoch_to_99pct"] for r in fp.values()]),
                           "precisions": {}}
    for p in precisions:
        cells = {s: {r["seed"]: r for r in grid if r["role"] == "student" and r["precision"] == p and r["scheme"] == s}
                 for s in SCHEMES}
        base = cells["baseline"]
        gap = [fp[s]["final_top1"] - base[s]["final_top1"] for s in base if s in fp]
        entry: dict[str, Any] = {"gap_points": _ms(gap), "schemes": {}}
        for s in SCHEMES:
            runs = cells[s]
            rec = [runs[k]["final_top1"] - base[k]["final_top1"] for k in runs if k in base]
            entry["schemes"][s] = {
                "final_top1": _ms([r["final_top1"] for r in runs.values()]),
                "best_top1": _ms([r["best_top1"] for r in runs.values()]),
                "final_holdout_top1": _ms([r.get("final_holdout_top1") for r in runs.values()]),
                "recovered_points": _ms(rec) if s != "baseline" else None,
                "recovered_fraction_of_gap": (round(statistics.fmean(rec) / entry["gap_points"]["mean"], 3)
                                              if s != "baseline" and rec and _real_gap(entry["gap_points"]) else None),
                "epoch_to_99pct": _ms([r["epoch_to_99pct"] for r in runs.values()]),
                "vs_fp_twin_points": _ms([runs[k]["final_top1"] - fp[k]["final_top1"] for k in runs if k in fp]),
            }
        out["precisions"][p] = entry
    return out


def sweep_table(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The gamma/temperature sweep, chosen on the holdout split: one dict per setting (the grid's own
    run of the sweep's cell is its default point), and the choice with the same seed's no-teacher run
    beside it as the yardstick, since the sweep asks where distillation helps. The cell (precision,
    scheme, seed) is read from the sweep's rows."""
    sweep = [r for r in rows if r["role"] == "sweep" and r["final_holdout_top1"] is not None]
    if not sweep:  # the grid's own cell alone is no sweep
        return [], None
    cell = {(r["precision"], r["scheme"], r["seed"]) for r in sweep}
    grid = [r for r in rows if r["role"] == "student" and r["final_holdout_top1"] is not None]
    cand = sweep + [r for r in grid if (r["precision"], r["scheme"], r["seed"]) in cell]
    table = [{"gamma": r["gamma"], "temperature": r["temperature"], **({"loss": r["loss"]} if r.get("loss") else {}),
              "lr": r.get("lr", r.get("config", {}).get("overrides", {}).get("optim.lr")),
              "holdout_top1": r["final_holdout_top1"], "test_top1": r["final_top1"], "run": r["name"]} for r in cand]
    table.sort(key=lambda r: (r.get("loss", ""), r["gamma"], r["temperature"], r["lr"] or 0))
    chosen = dict(max(table, key=lambda r: r["holdout_top1"]))
    (precision, scheme, seed), *more = sorted(cell)
    if more:
        raise ValueError(f"the sweep's runs are of more than one cell: {sorted(cell)}")
    chosen["cell"] = {"precision": precision, "scheme": scheme, "seed": seed}
    base = [r for r in grid if r["scheme"] == "baseline" and (r["precision"], r["seed"]) == (precision, seed)]
    if base:
        chosen["baseline_holdout_top1"] = base[0]["final_holdout_top1"]
        chosen["baseline_test_top1"] = base[0]["final_top1"]
    twin = [r for r in rows if r["role"] == "fp_twin" and r["seed"] == seed and r["final_holdout_top1"] is not None]
    if twin:  # the goals are stated against the FP twin: the same seed's is the sweep's measure of them
        chosen["fp_twin_holdout_top1"] = twin[0]["final_holdout_top1"]
        chosen["fp_twin_test_top1"] = twin[0]["final_top1"]
    return table, chosen


def sweeps(rows: list[dict[str, Any]]) -> list[tuple[list[dict[str, Any]], dict[str, Any]]]:
    """`sweep_table` of each swept cell (precision, scheme, seed), in cell order."""
    cell = lambda r: (r["precision"], r["scheme"], r["seed"])
    cells = sorted({cell(r) for r in rows if r["role"] == "sweep" and r["final_holdout_top1"] is not None})
    return [sweep_table([r for r in rows if r["role"] != "sweep" or cell(r) == c]) for c in cells]


def markdown(info: dict[str, Any], rows: list[dict[str, Any]], an: dict[str, Any],
             swept: list[tuple[list[dict[str, Any]], dict[str, Any]]]) -> tuple[str, str]:
    """The full markdown report and the main table alone."""
    st = info["settings"]
    o = st["shared_overrides"]
    fp = an["fp_twin"]
    head = ["precision", "scheme", "test top-1 %", "vs no teacher (pts)", "share of gap", "epoch to 99 %",
            "vs FP twin (pts)"]
    table = [["32W/32A", "FP twin", _fmt(fp), None, None, _fmt(an["fp_twin_epoch_to_99pct"], 1), None]]
    ran = st.get("schemes", SCHEMES)  # a grid without scheme A has no empty A rows
    for p, e in an["precisions"].items():
        for s, v in e["schemes"].items():
            if s not in ran:
                continue
            share = v["recovered_fraction_of_gap"]
            table.append([p, "no teacher" if s == "baseline" else s, _fmt(v["final_top1"]),
                          _diff(v["recovered_points"]), None if share is None else f"{100 * share:.0f} %",
                          _fmt(v["epoch_to_99pct"], 1), _diff(v["vs_fp_twin_points"])])
    main = markdown_table(head, table)
    gaps = markdown_table(["precision", "quantization gap: FP twin − no teacher (pts)"],
                          [[p, _diff(e["gap_points"])] for p, e in an["precisions"].items()])
    paper = markdown_table(
        ["ImageNet ResNet-18 (paper)", "no teacher", "with teacher", "FP"],
        [[p, None if PAPER_RESNET18[p]["baseline"] is None else f"{100 - PAPER_RESNET18[p]['baseline']:.1f}",
          f"{100 - PAPER_RESNET18[p]['teacher']:.1f}", f"{100 - PAPER_RESNET18['FP']:.1f}"]
         for p in ("2W/32A", "2W/8A", "4W/8A")])
    text = [
        "# Accuracy grid: Fashion-MNIST (not ImageNet)", "",
        stamp_markdown(info["stamp"]), "",
        (f"Student `{st['student']}` (1×28×28 inputs{_shortcut_text(st['student'])}), teacher {_teacher_text(st, an)}. "
        f"Training images: "
        f"{'all' if not st['train_images'] else 'the first ' + format(st['train_images'], ',')} "
        f"after setting aside {st['holdout']:,} for the sweep's choice; test: the 10,000 test images. "
        f"{st['epochs']} epochs, batch {o['data.batch_size']}, {_optimizer_text(o)}, "
        f"lr {o['optim.lr']:g} {o['optim.schedule']} (scheme C {st['c_lr']:g}, starting from the "
        f"same seed's FP twin), weight decay {o['optim.weight_decay']:g}, loss weights α={DistillConfig().alpha:g}, "
        f"β={o['distill.beta']:g}, γ={o['distill.gamma']:g}, τ={o['distill.temperature']:g} (the paper's){_losses_text(rows)}. "
        f"Seeds {st['seeds']}; {st['workers']} runs at a time, {st['threads']} torch thread each. "
        "Final-epoch test top-1 (never the best epoch, which would select on the test set), mean ± std over seeds; "
        "'vs no teacher' and 'vs FP twin' are paired by seed; 'noise' marks a difference whose |mean| is at "
        "most its std over seeds."), "",
        main, "", gaps, "",
        ("For comparison only (a different data set, network and schedule): the paper's ImageNet ResNet-18 top-1 "
         "accuracy (100 − its error):"), "", paper, "",
    ]
    for sweep, chosen in swept:
        c = chosen["cell"]
        lrs = len({r["lr"] for r in sweep}) > 1  # a scheme-C sweep tries C's learning rate too
        losses = any("loss" in r for r in sweep)  # a sweep of the loss table's rows
        what = "loss table" if losses else "γ / τ / lr" if lrs else "γ / τ"
        text += [(f"## {what} sweep (scheme {c['scheme']}, {c['precision']}, "
                  f"seed {c['seed']}), chosen on the holdout split"), "",
                 markdown_table([*(["distill.loss"] if losses else []), "γ", "τ", *(["lr"] if lrs else []),
                                 "holdout top-1 %", "test top-1 %"], sweep_rows(sweep, chosen, lrs)), "",
                 sweep_sentence(chosen), ""]
    text += regime_section(rows, st)
    table = goal_set(st)
    if not st.get("train_images") and (goals := goal_lines(an, table)):  # the converged regime (all training images)
        study = "accuracy-at-convergence" if table is GOALS else "patient"
        text += [f"## Goals of the {study} study (generated from the rows above)", "",
                 ("'With a teacher' is the scheme with the highest mean final holdout top-1 (chosen on the "
                  "holdout split, never on test)."), "", *goals, ""]
    text += ["## Findings (generated from the rows above)", "", *findings(an), "",
             "Per-run rows (per-epoch curves, times, commits) are in the JSON file next to this one.", ""]
    return "\n".join(text), main


def regime_section(rows: list[dict[str, Any]], settings: dict[str, Any]) -> list[str]:
    """Is the grid converged (the FP twin at twice the length), and does B converge sooner than A
    under the paper's step schedule (epoch reaching 99 % of the final accuracy, mean over seeds)?"""
    text = []
    long = next((r for r in rows if r.get("role") == "plateau"), None)
    twin = next((r for r in rows if r.get("role") == "fp_twin" and r.get("seed") == 0), None)
    if long and twin:
        d = long["final_top1"] - twin["final_top1"]
        text += ["## Is the schedule long enough?", "",
                 (f"The seed-0 FP twin: {twin['final_top1']:.2f} % after {settings['epochs']} epochs, "
                  f"{long['final_top1']:.2f} % after {long.get('epochs', 2 * settings['epochs'])} (same seed and recipe): "
                  f"{d:+.2f} points, {'within' if abs(d) <= 0.5 else 'not within'} 0.5 points of its plateau."), ""]
    conv = [r for r in rows if r.get("role") == "convergence"]
    if conv:
        ends = phase_ends(settings)
        table = []
        for scheme in ("A", "B"):
            cell = [r for r in conv if r["scheme"] == scheme]
            table.append([scheme, _fmt(_ms([r["final_top1"] for r in cell])),
                          _fmt(_ms([r["epoch_to_99pct"] for r in cell]), 1),
                          *[_fmt(_ms([_at(r, e) for r in cell])) for e in ends], len(cell)])
        text += [(f"## Convergence: schemes A and B at 2W/32A, step schedule (lr ÷10 at {settings.get('milestones')} "
                  "of the run)"), "", markdown_table(["scheme", "final test top-1 %", "epoch reaching 99 % of final",
                                                    *[f"top-1 % at epoch {e}" for e in ends], "seeds"], table), ""]
        if sentence := convergence_sentence(conv):
            text += [sentence, ""]
        paired = [(e, _paired_at(conv, e)) for e in ends]  # a step schedule jumps at each ÷10: each phase's end
        if paired and all(d["n"] for _, d in paired):
            text += ["B − A, test top-1 at the end of each learning-rate phase, paired by seed (points): " + "; ".join(
                f"epoch {e}: {_diff(d)}" for e, d in paired) + ".", ""]
    return text


def phase_ends(settings: dict[str, Any]) -> list[int]:
    """The last epoch before each ÷10 of the step schedule (milestones are fractions of the run)."""
    return [round(m * settings["epochs"]) for m in settings.get("milestones") or ()]


def _at(row: dict[str, Any], epoch: int) -> float | None:
    curve = row.get("test_top1_per_epoch") or []
    return curve[epoch - 1] if 0 < epoch <= len(curve) else None


def _paired_at(conv: list[dict[str, Any]], epoch: int) -> dict[str, Any]:
    """B − A test top-1 at ``epoch``, paired by seed."""
    at = {(r["scheme"], r["seed"]): _at(r, epoch) for r in conv}
    seeds = sorted({s for sch, s in at if sch == "A"} & {s for sch, s in at if sch == "B"})
    return _ms([at["B", s] - at["A", s] for s in seeds if at["A", s] is not None and at["B", s] is not None])


def _shortcut_text(student: str) -> str:
    """The built-in CIFAR ResNets' shortcut (option A, the paper's); a stock or user network has its own."""
    from apprentice.models import CIFAR_DEPTHS

    return ", option-A shortcuts" if student in {f"resnet{d}" for d in CIFAR_DEPTHS} else ""


def _optimizer_text(o: dict[str, Any]) -> str:
    """The students' optimizer as the shared overrides say (``--set`` included), e.g. "SGD (Nesterov momentum 0.9)"."""
    name = "AdamW (β1 0.9, β2 0.999" if o["optim.name"] == "adamw" else "SGD (Nesterov momentum 0.9, the recipe's"
    extra = [f"{k.removeprefix('optim.')} {v:g}" if isinstance(v, float) else f"{k.removeprefix('optim.')} {v}"
             for k, v in o.items() if k.startswith("optim.") and k not in ("optim.name", "optim.lr", "optim.schedule",
                                                                          "optim.weight_decay")
             and not (k == "optim.warmup_epochs" and not v)]
    return name + "".join(f", {e}" for e in extra) + ")"


def _teacher_text(settings: dict[str, Any], an: dict[str, Any]) -> str:
    """The teacher, or the ensemble of ``--teacher-seeds``, with each member's test top-1."""
    seeds = settings.get("teacher_seeds") or [0]
    tops = an.get("teachers_top1") or {0: an["teacher_top1"]}
    scores = ", ".join(f"seed {s}: {'not yet finished' if tops.get(s) is None else f'{tops[s]} %'}" for s in seeds)
    if len(seeds) == 1:
        return f"{_teacher_name(settings)} (FP, trained once, {scores} test top-1)"
    return (f"the ensemble of {len(seeds)} runs {_teacher_name(settings)} (FP, their mean logits, cached once; "
            f"test top-1 {scores})")


def _losses_text(rows: list[dict[str, Any]]) -> str:
    """The distilled cells' named losses (`apprentice.losses.LOSSES`), where a precision's differ from the paper's."""
    named = sorted({(r["precision"], r["loss"]) for r in rows if r.get("role") == "student" and r.get("loss")})
    return ("; the distilled cells at the loss their precision's pilot chose on the holdout: "
            + ", ".join(f"{p} `{loss}`" for p, loss in named)) if named else ""


def _teacher_name(settings: dict[str, Any]) -> str:
    """The teacher as the command named it: its recipe file (``--teacher-recipe``), else its architecture."""
    recipe = settings.get("teacher_recipe")
    return f"from `{recipe}`" if recipe else f"`{settings['teacher']}`"


def sweep_rows(sweep: list[dict[str, Any]], chosen: dict[str, Any], lrs: bool = False) -> list[list[Any]]:
    """The sweep's table rows; a loss-table sweep starts each row with its `distill.loss` (the grid's: paper)."""
    losses = any("loss" in r for r in sweep)
    table = [[*([r.get("loss", "paper")] if losses else []), *_gamma_tau(r),
              *([f"{r['lr']:g}"] if lrs else []), f"{r['holdout_top1']:.2f}", f"{r['test_top1']:.2f}"] for r in sweep]
    for key, label in (("baseline", "no teacher"), ("fp_twin", "FP twin")):
        if f"{key}_holdout_top1" in chosen:
            table.append([label, *(["-"] if losses else []), "-", *(["-"] if lrs else []),
                          f"{chosen[f'{key}_holdout_top1']:.2f}", f"{chosen[f'{key}_test_top1']:.2f}"])
    return table


def _gamma_tau(row: dict[str, Any]) -> tuple[str, str]:
    """γ and τ a row trained with: a named loss's own (`apprentice.losses.LOSSES`, its γ schedule and
    distillation term named), else the row's."""
    if not row.get("loss"):
        return f"{row['gamma']:g}", f"{row['temperature']:g}"
    rec = LOSSES[row["loss"]]
    extra = ", ".join(x for x, default in ((rec.gamma_schedule, "constant"), (rec.kd, "soft-ce")) if x != default)
    return (f"{rec.gamma:g} ({extra})" if extra else f"{rec.gamma:g}"), f"{rec.temperature:g}"


def sweep_sentence(chosen: dict[str, Any]) -> str:
    """Which setting the holdout picks, and its margins, from the rows (so no number is typed by hand)."""
    lr = f", lr={chosen['lr']:g}" if chosen.get("cell", {}).get("scheme") == "C" else ""  # only C's sweep moves it
    named = f"distill.loss={chosen['loss']}, " if chosen.get("loss") else ""
    gamma, tau = _gamma_tau(chosen)
    text = (f"Chosen on holdout: {named}γ={gamma}, τ={tau}{lr} "
            f"(holdout {chosen['holdout_top1']:.2f} %, test {chosen['test_top1']:.2f} %).")
    if "baseline_holdout_top1" in chosen:
        text += (f" The same seed without a teacher: holdout {chosen['baseline_holdout_top1']:.2f} %, "
                 f"test {chosen['baseline_test_top1']:.2f} %.")
    if "fp_twin_holdout_top1" in chosen:
        text += (f" Its FP twin: holdout {chosen['fp_twin_holdout_top1']:.2f} %, test {chosen['fp_twin_test_top1']:.2f} % "
                 f"(chosen − twin: {chosen['test_top1'] - chosen['fp_twin_test_top1']:+.2f} points on test).")
    return text + " One seed per setting: differences below the grid's seed-to-seed spread are not findings."


def findings(an: dict[str, Any]) -> list[str]:
    """Plain sentences answering the issue's questions, from the analysis (so no number is typed by hand)."""
    out = []
    for p, e in an["precisions"].items():
        sch, gap = e["schemes"], e["gap_points"]["mean"]
        if gap is None:
            continue
        gains = {s: v["recovered_points"]["mean"] for s, v in sch.items() if v["recovered_points"] and v["recovered_points"]["mean"] is not None}
        helped = [s for s, g in gains.items() if g > 0]
        clear = [s for s in helped if not is_noise(sch[s]["recovered_points"])]
        best = max(gains, key=gains.get) if gains else None
        line = f"- **{p}**: quantization gap {gap:+.2f} points (FP twin − no teacher). "
        if best is not None:
            verdict = "helps" if clear else "helps only within seed noise" if helped else "does not help"
            line += (f"Distillation {verdict} at the paper's defaults: "
                     f"schemes with a mean gain: {', '.join(helped) or 'none'}; largest gain {best}, "
                     f"{_diff(sch[best]['recovered_points'])} points over the baseline")
            share = sch[best]["recovered_fraction_of_gap"]
            line += f" ({100 * share:.0f} % of the gap). " if share is not None else ". "
        ea, eb = sch["A"]["epoch_to_99pct"]["mean"], sch["B"]["epoch_to_99pct"]["mean"]
        ec = sch["C"]["epoch_to_99pct"]["mean"]
        if ea and eb:
            when = relative_epochs(100 * (eb / ea - 1))
            line += (f"Epoch reaching 99 % of final: A {ea:.1f}, B {eb:.1f}"
                     + (f", C {ec:.1f}" if ec else "") + f" (B {when}).")
        out.append(line)
    return out


def model_sizes(student: str, teacher: str, precisions: list[str], width: float = 1.0) -> dict[str, int]:
    """Bytes of each student's packed file (base-3 ternary) and of the FP32 teacher/twin, from the size report."""
    from apprentice import build_model, prepare
    from apprentice.export import size_report, size_totals

    out = {}
    # as the runs are built: model.width only where --student-width is not 1 (a stock model takes none)
    shape = {"num_classes": 10, "in_channels": 1, **({"width": width} if width != 1.0 else {})}
    for label in ["32W/32A", *precisions]:
        m = build_model(student, **shape)
        if split_label(label)[1] != "32W/32A":
            weights, acts = parse_label(label)
            prepare(m, weights=weights, activations=acts)  # in place
        out[label] = int(size_totals(size_report(m))["packed_bytes"])
    out["teacher"] = int(size_totals(size_report(build_model(teacher, num_classes=10, in_channels=1)))["packed_bytes"])
    return out


def ensemble_top1(path: Path, settings: dict[str, Any], rows: list[dict[str, Any]]) -> float | None:
    """The ensemble teacher's test top-1 as `ensemble_teacher.py` measured it (``path``), where the
    grid's teacher is an ensemble of the same runs (their folder names); None otherwise."""
    if len(settings.get("teacher_seeds") or [0]) < 2 or not path.is_file():
        return None
    measured = json.loads(path.read_text())
    members = sorted(Path(r["teacher"]).name for r in measured.get("rows", [])[:-1])
    ours = sorted(r["name"] for r in rows if r.get("role") == "teacher")
    return measured["rows"][-1].get("test") if members == ours else None


def write(out: Path, jobs: list, runs: Path, info: dict[str, Any],
          committed: dict[str, dict[str, Any]] | None = None) -> None:
    """Collect finished runs (and committed rows of runs made elsewhere) and write ``out`` (JSON),
    ``out.md`` and the PNG plots, atomically."""
    precisions = info["settings"]["precisions"]
    rows = collect(jobs, runs, info["stamp"], committed)
    an = analyse(rows, precisions)
    an["ensemble_top1"] = ensemble_top1(out.parent / "ensemble_teacher.json", info["settings"], rows)
    swept = sweeps(rows)
    sizes = model_sizes(info["settings"]["student"], info["settings"]["teacher"], precisions,
                        info["settings"].get("student_width", 1.0))
    text, _ = markdown(info, rows, an, swept)
    figs = plots(out, rows, an, precisions, sizes)
    if figs and (conv := convergence_plot(out, rows)):  # figs: matplotlib is there
        figs.append(conv)
    planned = [j for j in jobs if j.meta.get("role") != "cache"]  # the teacher cache is a step, not a result row
    result = {**info, "finished_runs": len(rows), "planned_runs": len(planned), "model_bytes": sizes,
              "analysis": an, "sweep": [{"rows": t, "chosen_on_holdout": c} for t, c in swept],
              "plots": figs, "rows": rows}
    write_results(out, result, text)
