"""Tests of apprentice.train.step: evaluation and the mode tables (`train_step` runs inside every fit in test_train)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from apprentice.errors import ApprenticeError
from apprentice.train.step import AMP_MODES, autocast, evaluate


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


@pytest.mark.parametrize("mode", AMP_MODES)
def test_every_amp_mode_autocasts_to_its_dtype(mode):
    a, b = torch.randn(2, 3), torch.randn(3, 2)
    with autocast(torch.device("cpu"), mode):
        product = a @ b
    assert product.dtype == (AMP_MODES[mode] or torch.float32)


def test_an_unknown_amp_mode_lists_the_table():
    with pytest.raises(ApprenticeError, match=r"unknown amp mode 'fp8'; choose from \['bf16', 'fp16', 'off'\]"):
        autocast(torch.device("cpu"), "fp8")
