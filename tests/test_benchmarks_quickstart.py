"""benchmarks/quickstart_check.py: what it reads back from a quickstart's run folders and output."""

from __future__ import annotations

import json
import sys

from test_benchmarks import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))


def test_it_reads_epoch_times_from_the_runs_metrics_and_the_table_from_compares_output(tmp_path):
    import quickstart_check

    lines = [{"type": "step", "epoch": 1, "step": 50}, {"type": "epoch", "epoch": 1, "epoch_time_s": 41.26},
             {"type": "activations", "step": 1}, {"type": "epoch", "epoch": 2, "epoch_time_s": 39.04}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert quickstart_check.epoch_seconds(tmp_path) == [41.3, 39.0]
    table = "run      model  final top-1\n-------  -----  -----------\nrun/t    r14          91.02"
    printed = f"apprentice: wrote x\n{table}\n\nquickstart: a 3-epoch sketch"
    assert quickstart_check.summary_table(printed) == table
    assert quickstart_check.summary_table("no table here") == ""
