"""Tests of apprentice.data.batches: sharded evaluation batches and the global training batch."""

from __future__ import annotations

import pytest
import torch

from apprentice import data
from apprentice.data import batches
from apprentice.errors import ApprenticeError


def _all(iterable):
    pairs = list(iterable)
    return torch.cat([x for x, _ in pairs]), torch.cat([y for _, y in pairs])


def test_eval_shares_are_disjoint_and_cover_the_split():
    whole_x, whole_y = _all(batches.eval_batches("synthetic", "test", batch_size=100))
    assert len(whole_y) == data.DATASETS["synthetic"].sizes[1]
    shares = [_all(batches.eval_batches("synthetic", "test", batch_size=100, rank=r, world_size=3)) for r in range(3)]
    assert sum(len(y) for _, y in shares) == len(whole_y)  # no padding: summed counts are exact
    for r, (x, y) in enumerate(shares):
        assert torch.equal(x, whole_x[r::3]) and torch.equal(y, whole_y[r::3])


def test_holdout_and_limit_splits():
    held = batches.eval_batches("synthetic", "holdout", batch_size=1000, holdout=200)
    assert sum(len(y) for _, y in held) == 200
    train = batches.eval_batches("synthetic", "train", batch_size=1000, holdout=200, limit=128)
    assert sum(len(y) for _, y in train) == 128  # the limit applies after the holdout is taken out
    with pytest.raises(ApprenticeError, match="held out no training images"):
        batches.eval_batches("synthetic", "holdout", batch_size=10)


def test_train_batches_split_the_global_batch():
    one = batches.train_batches("synthetic", batch_size=32, seed=0, limit=128)
    assert (one.num_classes, one.channels, one.images, len(one.batches)) == (10, 1, 128, 4)
    half = batches.train_batches("synthetic", batch_size=32, seed=0, limit=128, rank=1, world_size=2)
    assert next(iter(half.batches))[0].shape[0] == 16
    with pytest.raises(ApprenticeError, match="must be divisible by the 3 processes"):
        batches.train_batches("synthetic", batch_size=32, seed=0, world_size=3)


def test_folder_data_set_needs_its_folder():
    with pytest.raises(ApprenticeError, match="must name the imagenet folder"):
        batches.eval_batches("imagenet", "test", batch_size=8)
