"""benchmarks/cache_check.py: what it reads back from a teacher cache it prices."""

from __future__ import annotations

import sys

import torch
from test_benchmarks import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))


def test_the_estimate_times_the_batch_size_the_build_recorded(tmp_path):
    import cache_check

    import apprentice as ap
    from apprentice.data import cache_teacher

    teacher = ap.build_model("resnet8", num_classes=10, in_channels=1, width=0.25)
    for batch in (7, 128):
        path = tmp_path / f"{batch}.cache"
        torch.manual_seed(0)
        cache_teacher(str(path), teacher, "synthetic", limit=16, views=2, batch_size=batch)
        assert cache_check.build_batch(path) == batch
