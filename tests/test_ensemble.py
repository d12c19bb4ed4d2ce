"""Teacher ensembles (`apprentice.ensemble`): the weighted mean of the members' logits, bad ensembles
refused, members that do not fit the data named."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from apprentice.ensemble import Ensemble, check_members
from apprentice.errors import ApprenticeError


def test_an_ensemble_is_the_weighted_mean_of_its_members_logits():
    torch.manual_seed(0)
    members, x = [nn.Linear(4, 3) for _ in range(3)], torch.randn(5, 4)
    torch.testing.assert_close(Ensemble(members)(x), sum(m(x) for m in members) / 3)
    torch.testing.assert_close(Ensemble(members, [2, 1, 1])(x), (2 * members[0](x) + members[1](x) + members[2](x)) / 4)


@pytest.mark.parametrize("members, weights, message", [
    (1, None, "two or more"), (2, [1.0], "2 finite numbers"), (2, [1.0, 0.0], "> 0"),
    (2, [1.0, float("nan")], "> 0"),
])
def test_bad_ensembles_are_refused(members, weights, message):
    with pytest.raises(ApprenticeError, match=message):
        Ensemble([nn.Linear(2, 2) for _ in range(members)], weights)


def test_members_that_do_not_fit_the_data_are_named():
    def net(channels: int, classes: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(channels, 2, 3), nn.Flatten(), nn.LazyLinear(classes))

    good = net(1, 10)
    check_members([good, net(1, 10)], channels=1, image_size=8, num_classes=10, names=["a", "b"])
    with pytest.raises(ApprenticeError, match="teacher 'b' gives outputs of shape \\(5,\\) but the data set has 10"):
        check_members([good, net(1, 5)], channels=1, image_size=8, num_classes=10, names=["a", "b"])
    with pytest.raises(ApprenticeError, match="teacher 'c' cannot take the data's 1x8x8 images"):
        check_members([good, net(3, 10)], channels=1, image_size=8, num_classes=10, names=["a", "c"])
