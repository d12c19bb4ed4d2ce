"""The accuracy grids' precision labels (benchmarks/_labels.py) and the grid jobs they make."""

from __future__ import annotations

from test_benchmarks import _args, accuracy  # benchmarks/ on the path


def test_a_pc_label_asks_for_per_channel_weight_scales_alone_or_beside_a_quantizer(tmp_path):
    labels = ["pc:2W/32A", "uniform+pc:4W/8A@asym", "4W/8A"]
    jobs = {j.name: j for j in accuracy.grid_jobs(_args(precisions=labels, schemes=["baseline"]), tmp_path)}
    a, b, c = (jobs[n].overrides for n in ("pc-2w32a-baseline-s0", "uniform-pc-4w8a-asym-baseline-s0", "4w8a-baseline-s0"))
    assert a["quant.per_channel"] is True and "quant.quantizer" not in a and a["quant.precision"] == "2W/32A"
    assert (b["quant.per_channel"], b["quant.quantizer"], b["quant.act_quantizer"]) == (True, "uniform", "asym")
    assert "quant.per_channel" not in c
    assert accuracy.split_label("uniform+pc:4W/8A@asym") == ("uniform", "4W/8A")
    assert [accuracy.accuracy_goals.base_label(x) for x in ("pc:4W/8A@asym", "lsq+pc:2W/2A", "2W/32A")] == ["4W/8A", "lsq:2W/2A", "2W/32A"]
    assert accuracy.parse_label("pc:2W/32A")[0].per_channel and not accuracy.parse_label("2W/32A")[0].per_channel
