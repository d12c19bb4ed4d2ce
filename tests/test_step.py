"""Tests of apprentice.train.step: evaluation and the mode tables (`train_step` runs inside every fit in test_train)."""

from __future__ import annotations

import torch
from torch import nn

from apprentice.train.step import evaluate


def test_evaluate_percentages_and_top5_only_from_five_classes():
    x = torch.eye(4)
    model = nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(4))
    batches = [(x, torch.tensor([0, 1, 2, 0]))]
    r = evaluate(model, batches, device="cpu")
    assert r["top1"] == 75.0 and r["images"] == 4 and "top5" not in r and r["loss"] > 0
    model6 = nn.Linear(4, 6)
    r6 = evaluate(model6.train(), batches, device="cpu")
    assert 0 <= r6["top1"] <= r6["top5"] <= 100 and model6.training  # mode restored
