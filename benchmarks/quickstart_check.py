"""The README's first command on a fresh clone: wall time and what it prints, committed.

Clones this repository's HEAD into a temporary folder (so nothing of this checkout's venv or runs
is reused), runs ``./quickstart.sh`` there exactly as the README says (venv set-up included), and
records the wall time, each training's epoch times (from its run folder) and the summary table that
``apprentice compare`` printed. The README's and docs/quickstart.md's quickstart figures come from
this file's output.

    .venv/bin/python benchmarks/quickstart_check.py --out benchmarks/results/quickstart.json

Time it on a quiet machine (other trainings paused): the wall time is the point.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _stamp

RUNS = ("teacher", "baseline", "student")


def clone(into: Path) -> str:
    """A fresh clone of HEAD (committed files only); returns its commit."""
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(_stamp.REPO), str(into)], check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=into, capture_output=True, text=True,
                          check=True).stdout.strip()


def epoch_seconds(run: Path) -> list[float]:
    """Each epoch's wall seconds from the run's metrics.jsonl (its "epoch" records)."""
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("type") == "epoch" and "epoch_time_s" in rec:
            out.append(round(float(rec["epoch_time_s"]), 1))
    return out


def summary_table(stdout: str) -> str:
    """The table ``apprentice compare`` printed: from its header line (``run ... top-1 ...``) to the
    first blank line."""
    lines = stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("run ") and "top-1" in line), None)
    if start is None:
        return ""
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return "\n".join(lines[start:end])


def run_quickstart(root: Path) -> dict[str, Any]:
    env = {**os.environ, "OUT": str(root / "runs" / "qs")}
    t0 = time.monotonic()
    proc = subprocess.run(["bash", "quickstart.sh"], cwd=root, env=env, capture_output=True, text=True, check=False)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"quickstart_check: ./quickstart.sh failed with exit status {proc.returncode}")
    runs = root / "runs" / "qs"
    return {"wall_seconds": round(wall, 1), "table": summary_table(proc.stdout),
            "epoch_seconds": {r: epoch_seconds(runs / r) for r in RUNS},
            "packed_bytes": (runs / "student.safetensors").stat().st_size,
            "top1": {r: json.loads((runs / r / "summary.json").read_text()).get("final_top1") for r in RUNS}}


def markdown(result: dict[str, Any]) -> str:
    m, s = divmod(round(result["wall_seconds"]), 60)
    epochs = "; ".join(f"{r} {', '.join(f'{x:g}' for x in e)} s" for r, e in result["epoch_seconds"].items())
    return (f"# The README's first command on a fresh clone\n\n{_stamp.stamp_markdown(result['stamp'])}\n\n"
            f"Clone of commit `{result['clone_commit']}`; `./quickstart.sh` in it, venv set-up included: "
            f"**{m} min {s:02d} s** of wall time. Epochs: {epochs}. Packed student: "
            f"{result['packed_bytes']:,} bytes.\n\nWhat it printed (`apprentice compare`):\n\n    "
            + result["table"].replace("\n", "\n    ") + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results/quickstart.json")
    ap.add_argument("--keep", action="store_true", help="keep the temporary clone (its path is printed)")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="apprentice-quickstart-")) / "repo"
    try:
        result = {"stamp": _stamp.stamp(argv), "clone_commit": clone(root), **run_quickstart(root)}
    finally:
        if args.keep:
            print(f"quickstart_check: the clone is {root}")
        else:
            shutil.rmtree(root.parent, ignore_errors=True)
    _stamp.write_results(args.out, result, markdown(result), table=markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
