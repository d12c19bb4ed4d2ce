"""A teacher ensemble against its members: holdout and test top-1 of each run and of their mean logits.

The patient study's goal is a teacher (or ensemble) of >= 95.0 % Fashion-MNIST test top-1; an
ensemble of independently trained teachers averages their logits (`apprentice.ensemble.Ensemble`, the
mean a teacher cache stores). Each member is loaded from its run folder as ``distill.teacher`` loads
it (best.pt, chosen on the run's holdout, when the run has one; else last.pt), evaluated on the run's own holdout and on the test set, and the
ensemble (equal weights, or ``--weights``) on the same images:

    .venv/bin/python benchmarks/ensemble_teacher.py runs/patient/teacher runs/patient/teacher-s1 \
        --out benchmarks/results/ensemble_teacher.json          # ~2 min on 2 cores
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stamp import markdown_table, stamp, stamp_markdown, write_results

from apprentice.ensemble import Ensemble
from apprentice.run.build import eval_data
from apprentice.run.runs import load_run
from apprentice.train import evaluate


def _scores(model: torch.nn.Module, config: Any) -> dict[str, float]:
    return {split: evaluate(model, eval_data(config, split), device="cpu")["top1"] for split in ("holdout", "test")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="the members' run folders (two or more)")
    p.add_argument("--weights", type=float, nargs="+", help="one weight per member (default equal)")
    p.add_argument("--out", default="benchmarks/results/ensemble_teacher.json")
    args = p.parse_args(argv)
    start = time.time()
    loaded = [load_run(r) for r in args.runs]
    rows = [{"teacher": r, **_scores(m.model.eval(), m.config)} for r, m in zip(args.runs, loaded)]
    ensemble = Ensemble([m.model for m in loaded], args.weights).eval()
    rows.append({"teacher": "ensemble of " + " + ".join(Path(r).name for r in args.runs), **_scores(ensemble, loaded[0].config)})
    result = {**stamp(), "weights": args.weights, "rows": rows, "seconds": round(time.time() - start, 1)}
    table = markdown_table(["teacher", "holdout top-1 %", "test top-1 %"],
                           [[r["teacher"], f"{r['holdout']:.2f}", f"{r['test']:.2f}"] for r in rows])
    md = ("# A teacher ensemble against its members (Fashion-MNIST)\n\n" + stamp_markdown(result) + "\n\n"
          "Each run's checkpoint as distill.teacher loads it (best.pt, chosen on the holdout, else last.pt); the ensemble averages the members' logits "
          f"({'weights ' + str(args.weights) if args.weights else 'equal weights'}), as a teacher cache stores them.\n\n"
          + table + "\n")
    write_results(args.out, result, md, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
