"""Accuracy versus packed file size: students over precision x width (WRPN's wider low-precision
networks, Mishra et al. 2018), scheme C, in the accuracy grid's regime.

    .venv/bin/python benchmarks/frontier.py --runs-dir runs/converged [the grid's regime options]
    .venv/bin/python benchmarks/frontier.py --report-only

Each cell is one scheme-C run starting from the FP twin of the same width and seed, taught by the
grid's teacher through its cache; the FP twins are the FP points. Given the same ``--runs-dir`` and
regime options as `accuracy.py`, the two share the teacher, its cache and every width-1 run, so
nothing is trained twice. Finished rows are committed with the results and count as done on a
fresh machine (the teacher and the FP twins travel as small snapshots), as in `accuracy.py`.
Results: ``frontier.json`` (rows), ``frontier.md`` (table, Pareto-optimal points, the winner at
each size budget) and ``frontier.png`` (top-1 with error bars against bytes, log scale).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _runner
import accuracy
import accuracy_plots
import accuracy_report
from _stamp import REPO, markdown_table, stamp, stamp_markdown, write_results

PRECISIONS = ("2W/8A", "4W/8A", "8W/8A")  # ternary, 4-bit and 8-bit weights; FP is the twins
WIDTHS = (1.0, 2.0)
#: the plot's legend names (2-bit weights are TWN's ternary levels)
NAMES = {"2W/8A": "ternary (2W/8A)", "4W/8A": "4-bit (4W/8A)", "8W/8A": "8-bit (8W/8A)", "32W/32A": "FP (32W/32A)"}


def _name(stem: str, multiplier: float, seed: int) -> str:
    return f"{stem}-s{seed}" if multiplier == 1 else f"{stem}-x{multiplier:g}-s{seed}"


def frontier_jobs(args: argparse.Namespace, runs: Path) -> list[_runner.Job]:
    """Teacher (and cache), then per width and seed: the FP twin, then each precision's scheme-C cell.
    Width-1 jobs have the names and overrides of the grid's, so a shared runs folder holds them once."""
    jobs = [j for j in accuracy.grid_jobs(_with(args, precisions=[], seeds=[]), runs)]  # teacher, cache
    for multiplier in args.widths:
        wargs = _with(args, student_width=args.student_width * multiplier)
        for seed in args.seeds:
            twin = _name("fp", multiplier, seed)
            meta = {"precision": "32W/32A", "width": wargs.student_width, "multiplier": multiplier, "seed": seed}
            jobs.append(_runner.Job(twin, {**accuracy.common(wargs, seed), "quant.precision": "32W/32A",
                                           "distill.scheme": "baseline"}, meta={"role": "fp_twin", "scheme": "baseline", **meta}))
            for p in args.precisions:
                extra, needs = accuracy._teacher(args, runs, "C")
                o = {**accuracy.common(wargs, seed), **accuracy._precision_overrides(p), "distill.scheme": "C", **extra,
                     "distill.student_init": str(runs / twin), "optim.lr": args.c_lr}
                jobs.append(_runner.Job(_name(f"{accuracy._slug(p)}-C", multiplier, seed), o, (*needs, twin),
                                        {**meta, "role": "student", "precision": p, "scheme": "C"}))
    return jobs


def _with(args: argparse.Namespace, **changes: Any) -> argparse.Namespace:
    out = copy.copy(args)
    vars(out).update(changes)
    return out


def packed_bytes(student: str, width: float, precision: str) -> int:
    """Bytes of the packed file of ``student`` at ``width`` and ``precision`` (base-3 ternary)."""
    return accuracy_report.model_sizes(student, student, [precision], width)[precision]


def points(rows: list[dict[str, Any]], student: str) -> list[dict[str, Any]]:
    """One point per (precision, width): packed bytes and final top-1 mean ± std over seeds."""
    cells: dict[tuple[str, float], list[float]] = {}
    for r in rows:
        if r.get("role") in ("fp_twin", "student") and r.get("final_top1") is not None:
            cells.setdefault((r["precision"], r["width"]), []).append(r["final_top1"])
    out = [{"precision": p, "width": w, "bytes": packed_bytes(student, w, p), **accuracy_report._ms(v)}
           for (p, w), v in cells.items()]
    for pt in out:  # Pareto-optimal: no other point is at most as large and more accurate
        pt["pareto"] = not any(o is not pt and o["bytes"] <= pt["bytes"] and o["mean"] > pt["mean"] for o in out)
    return sorted(out, key=lambda pt: pt["bytes"])


def winners(pts: list[dict[str, Any]]) -> list[str]:
    """For each size budget (each point's size), the most accurate point that fits in it, and what the
    extra bytes buy over the smaller budget's winner: the difference of means with its std
    (√(s₁² + s₂²), unpaired), "noise" where |difference| ≤ std."""
    lines, last = [], None
    for budget in sorted({pt["bytes"] for pt in pts}):
        best = max((pt for pt in pts if pt["bytes"] <= budget), key=lambda pt: pt["mean"])
        line = (f"- up to {budget / 1024:,.1f} KiB: {best['precision']} at width {best['width']:g} "
                f"({best['mean']:.2f} %" + (f" ± {best['std']:.2f}" if best["std"] is not None else "") + ")")
        if last is not None and best is not last:
            d = best["mean"] - last["mean"]
            sd = (best["std"] ** 2 + last["std"] ** 2) ** 0.5 if None not in (best["std"], last["std"]) else None
            line += (f": {d:+.2f}" + (f" ± {sd:.2f}" if sd is not None else "") + " points over the smaller budget's "
                     + ("winner, noise" if sd is not None and abs(d) <= sd else "winner"))
        lines.append(line)
        last = best
    return lines


def plot(out: Path, pts: list[dict[str, Any]]) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for p in sorted({pt["precision"] for pt in pts}):
        mine = [pt for pt in pts if pt["precision"] == p]
        ax.errorbar([pt["bytes"] / 1024 for pt in mine], [pt["mean"] for pt in mine],
                    yerr=[pt["std"] or 0 for pt in mine], fmt="o", capsize=3, label=NAMES.get(p, p))
        for pt in mine:  # one colour a precision: the width is written beside its point
            ax.annotate(f"width {pt['width']:g}", (pt["bytes"] / 1024, pt["mean"]), textcoords="offset points",
                        xytext=(5, -10), fontsize=7)
    front = [pt for pt in pts if pt["pareto"]]
    ax.plot([pt["bytes"] / 1024 for pt in front], [pt["mean"] for pt in front], "k--", lw=1, label="Pareto front")
    ax.scatter([pt["bytes"] / 1024 for pt in front], [pt["mean"] for pt in front], s=160, facecolors="none",
               edgecolors="k", label="Pareto-optimal")
    ax.set_xscale("log")
    ax.set_xlabel("packed file (KiB, log scale)")
    ax.set_ylabel("test top-1 % (mean ± std over seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return accuracy_plots.savefig(fig, out.with_suffix(".png"))


def report(out: Path, jobs: list, runs: Path, info: dict[str, Any], committed: dict[str, Any]) -> None:
    rows = accuracy_report.collect(jobs, runs, info["stamp"], committed)
    pts = points(rows, info["settings"]["student"])
    table = markdown_table(["precision", "width", "packed KiB", "test top-1 %", "seeds", "Pareto-optimal"],
                           [[p["precision"], f"{p['width']:g}", f"{p['bytes'] / 1024:,.1f}",
                             accuracy_report._fmt(p), p["n"], "yes" if p["pareto"] else ""] for p in pts])
    text = ["# Accuracy vs packed size: precision x width, scheme C", "", stamp_markdown(info["stamp"]), "",
            (f"Student `{info['settings']['student']}`, regime as in the accuracy grid (settings in the JSON file); "
             "each low-precision cell starts from the FP twin of its width and seed (scheme C). Width is the channel "
             f"multiplier of the network: {info['settings']['student_width']:g} × {info['settings']['widths']} "
             "(WRPN's wider low-precision networks). "
             "Final-epoch test top-1, mean ± std over seeds."), "", table, "",
            "## The most accurate choice at each size budget", "", *winners(pts), ""]
    figure = plot(out, pts)
    write_results(out, {**info, "points": pts, "plot": figure, "rows": rows}, "\n".join(text))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: the grid's regime options, precisions, width multipliers and seeds."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results/frontier.json")
    ap.add_argument("--runs-dir", default="runs/accuracy")
    ap.add_argument("--precisions", nargs="+", default=list(PRECISIONS))
    ap.add_argument("--widths", nargs="+", type=float, default=list(WIDTHS), help="multipliers of --student-width")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    accuracy.regime_arguments(ap)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shared-results", nargs="+", default=[], metavar="JSON",
                    help="results of the grid that shares --runs-dir (benchmarks/results/accuracy_converged.json): "
                         "its committed rows and run snapshots count here, so a fresh clone trains none of them again")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--commit", action="store_true", help="git-commit the results (only their files) as each run finishes")
    args = ap.parse_args(argv)
    args.schemes, args.plateau, args.convergence = ["C"], False, False
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out = REPO / args.out
    runs = (REPO / args.runs_dir).resolve()
    (runs / "logs").mkdir(parents=True, exist_ok=True)
    jobs = frontier_jobs(args, runs)
    info = {"stamp": stamp(argv),
            "settings": {k: v for k, v in vars(args).items() if k not in ("out", "report_only", "commit")}}
    # this frontier's own rows win over a shared one
    committed, matching = _runner.continue_from(jobs, runs, [out, *(REPO / s for s in args.shared_results)],
                                                args.runs_dir)
    # A shared row keeps its numbers and takes this job's labels (the grid's rows have no width).
    matching = {j.name: {**matching[j.name], **j.meta} for j in jobs if j.name in matching}

    on_done = _runner.AfterRuns(jobs, runs, out, lambda: report(out, jobs, runs, info, matching), args.commit,
                                f"frontier {out.stem}", shared=tuple(REPO / s for s in args.shared_results))

    if not args.report_only:
        t0 = time.time()
        failed = _runner.run_jobs(jobs, runs, args.workers, args.threads, on_done, committed, args.runs_dir,
                                  on_stop=on_done.interrupted)
        print(f"frontier: {len(failed)} failed, {(time.time() - t0) / 60:.1f} min", flush=True)
    on_done()
    return 0


if __name__ == "__main__":
    sys.exit(main())
