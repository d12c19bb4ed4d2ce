"""Does re-estimating BatchNorm statistics change an accuracy grid's final numbers?

    .venv/bin/python benchmarks/bn_reestimate.py --grid benchmarks/results/accuracy_converged.json \\
        --runs-dir runs/converged16 --out benchmarks/results/bn_reestimate_converged.json

For every finished run of the grid whose folder is on this machine, the final checkpoint
(``checkpoints/last.pt``: the model the row's final-epoch top-1 measured; checked by evaluating it
again) gets its BatchNorm statistics recomputed with `apprentice.reestimate_batchnorm` on the first
``--batches`` batches of its training split (no augmentation; never the holdout or test images),
then is evaluated on the test and holdout splits. Reported per cell: the final top-1 before and
after, the change paired by seed ("noise" where |mean| ≤ std), and each run whose last epoch fell
below its previous epochs. Resumable: each run's result is written as it ends (atomically), and a
rerun skips the runs already measured with the same settings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stamp import REPO, markdown_table, stamp, stamp_markdown, write_results
from accuracy_goals import last_epoch_drop
from accuracy_report import _diff, _fmt, _ms

import apprentice as ap
from apprentice.run.build import eval_data

ROLES = ("fp_twin", "plateau", "student", "convergence")  # rows with a trained student (not the teacher)
DROP = 0.3  # points: a final epoch this far below the best of the three before it "fell"


def measure(folder: Path, final_top1: float, batches: int) -> dict[str, Any]:
    """Final test top-1 of ``folder``'s last checkpoint, again after BatchNorm re-estimation (and holdout)."""
    run = ap.load_run(folder / "checkpoints" / "last.pt")
    model, cfg = run.model, run.config

    def top1(split: str) -> float:
        return round(ap.evaluate(model, eval_data(cfg, split), device="cpu")["top1"], 2)

    before = top1("test")
    if abs(before - final_top1) > 0.005:
        raise SystemExit(f"bn_reestimate: {folder}: its last checkpoint scores {before} % on test, its row "
                         f"{final_top1} %: not the run's final state (was it resumed or retrained?)")
    holdout_before = top1("holdout") if cfg.data.holdout else None
    images = ap.reestimate_batchnorm(model, eval_data(cfg, "train", batch_size=128), max_batches=batches)
    return {"final_top1": before, "reestimated_top1": top1("test"), "final_holdout_top1": holdout_before,
            "reestimated_holdout_top1": top1("holdout") if cfg.data.holdout else None, "images": images}


def fell(curve: list[float | None]) -> float | None:
    """How far the final epoch fell below the best of the three before it (points), if more than DROP."""
    drop = last_epoch_drop(curve or [None], before=3, more_than=DROP)
    return round(drop, 2) if drop is not None else None


def cells(rows: list[dict[str, Any]]) -> list[list[Any]]:
    """One table row per (role, precision, scheme): before, after, paired change."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["role"], r["precision"], r["scheme"]), []).append(r)
    out = []
    for (role, precision, scheme), rs in groups.items():
        label = {"fp_twin": "FP twin", "plateau": "FP twin, 2× epochs"}.get(role, "no teacher" if scheme == "baseline" else scheme)
        if role == "convergence":
            label += ", step schedule"
        out.append([precision, label, _fmt(_ms([r["final_top1"] for r in rs])),
                    _fmt(_ms([r["reestimated_top1"] for r in rs])),
                    _diff(_ms([r["reestimated_top1"] - r["final_top1"] for r in rs]))])
    return out


def report(result: dict[str, Any]) -> str:
    rows = result["rows"]
    falls = [r for r in rows if r["fell_in_last_epoch"]]
    text = ["# BatchNorm re-estimation of the final models", "", stamp_markdown(result["stamp"]), "",
            (f"Grid: `{result['settings']['grid']}`, {len(rows)} runs. Each run's last checkpoint, BatchNorm "
             f"statistics recomputed from the first {result['settings']['batches']} batches of 128 training images "
             "(no augmentation; Nagel et al. 2022, §3.2), then evaluated on the 10,000 test images. Mean ± std over "
             "seeds; the change is paired by seed, 'noise' where |mean| ≤ std."), "",
            markdown_table(["precision", "scheme", "final test top-1 %", "after re-estimation %", "change (pts)"],
                           cells(rows)), ""]
    if falls:
        text += [f"Runs whose last epoch fell more than {DROP} points below the best of the three before it:", "",
                 markdown_table(["run", "fell (pts)", "final %", "after re-estimation %"],
                                [[r["name"], r["fell_in_last_epoch"], r["final_top1"], r["reestimated_top1"]]
                                 for r in falls]), ""]
    return "\n".join(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", default="benchmarks/results/accuracy_converged.json", help="an accuracy grid's JSON")
    p.add_argument("--runs-dir", default="runs/converged16", help="that grid's run folders")
    p.add_argument("--batches", type=int, default=200, help="training batches of 128 for the statistics")
    p.add_argument("--out", default="benchmarks/results/bn_reestimate_converged.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    try:
        grid = json.loads((REPO / args.grid).read_text())["rows"]
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"bn_reestimate: --grid {args.grid}: not an accuracy grid's results ({e})") from None
    runs, out = REPO / args.runs_dir, REPO / args.out
    todo = [r for r in grid if r.get("role") in ROLES and (runs / r["name"] / "checkpoints" / "last.pt").is_file()]
    if not todo:
        raise SystemExit(f"bn_reestimate: no finished run of {args.grid} has its folder in {args.runs_dir}")
    settings = {"grid": args.grid, "runs_dir": args.runs_dir, "batches": args.batches}
    done: dict[str, dict[str, Any]] = {}
    if out.is_file() and (old := json.loads(out.read_text())).get("settings") == settings:
        done = {r["name"]: r for r in old["rows"]}  # resumed: same grid, folders and batches
    t0, fresh = time.monotonic(), 0
    for i, row in enumerate(todo, 1):
        if row["name"] not in done:
            keys = ("name", "role", "precision", "scheme", "seed")
            done[row["name"]] = {**{k: row.get(k) for k in keys}, **measure(runs / row["name"], row["final_top1"], args.batches),
                                 "fell_in_last_epoch": fell(row["test_top1_per_epoch"])}
            fresh += 1
            eta = (time.monotonic() - t0) / fresh * sum(1 for r in todo[i:] if r["name"] not in done)
            m = done[row["name"]]
            print(f"[{i}/{len(todo)}] {row['name']}: {m['final_top1']} -> {m['reestimated_top1']} % "
                  f"(ETA {eta / 60:.0f} min)", flush=True)
        result = {"benchmark": "bn_reestimate", "stamp": stamp(argv), "settings": settings,
                  "rows": [done[r["name"]] for r in grid if r["name"] in done]}  # with rows of folders not here
        write_results(out, result, report(result))
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
