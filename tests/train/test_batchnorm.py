"""apprentice.train.batchnorm: BatchNorm statistics re-estimated with the final weights."""

import pytest
import torch
from torch import nn

import apprentice as ap
from apprentice.errors import ApprenticeError


def _batches(n: int = 3, size: int = 8, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 1, 8, 8, generator=g) * 2 + 1, torch.zeros(size, dtype=torch.long)) for _ in range(n)]


def _net(dropout: float = 0.0) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Dropout(dropout), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def test_statistics_are_the_average_of_the_batch_statistics_and_nothing_else_changes():
    net, batches = _net(), _batches()
    net.eval()
    bn = net[2]
    bn.running_mean.fill_(5.0), bn.running_var.fill_(9.0)  # stale statistics, as after an oscillating last epoch
    params = {k: v.clone() for k, v in net.named_parameters()}
    assert ap.reestimate_batchnorm(net, batches) == 24
    with torch.no_grad():
        feats = [net[0](x) for x, _ in batches]
    mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.transpose(0, 1).reshape(4, -1).var(1) for f in feats]).mean(0)  # unbiased per batch
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)
    assert all(torch.equal(v, params[k]) for k, v in net.named_parameters())
    assert not net.training and bn.momentum == 0.1  # mode and momentum restored


def test_dropout_stays_off_and_max_batches_is_respected():
    plain, dropped = _net(), _net(dropout=0.9)
    assert ap.reestimate_batchnorm(plain, _batches(5), max_batches=2) == 16
    assert ap.reestimate_batchnorm(dropped, _batches(5), max_batches=2) == 16
    torch.testing.assert_close(dropped[2].running_var, plain[2].running_var)  # dropout would inflate it
    assert dropped.training  # a model in training mode stays in it


def test_a_ternary_student_gets_back_the_outputs_of_its_true_statistics():
    torch.manual_seed(1)
    student = ap.build_model("resnet8", num_classes=10, in_channels=1, width=0.25)
    ap.prepare(student, "2W/8A")
    batches = _batches(4, 16)
    ap.reestimate_batchnorm(student, batches)
    student.eval()
    x = batches[0][0]
    with torch.no_grad():
        reference = student(x)
        for m in student.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.mul_(4.0)  # stale: the statistics of weights it no longer has
        assert not torch.allclose(student(x), reference)
        ap.reestimate_batchnorm(student, batches)
        torch.testing.assert_close(student(x), reference)


def test_refuses_what_it_cannot_do_and_leaves_the_model_as_it_was():
    net = _net()
    before = net[2].running_mean.clone()
    with pytest.raises(ApprenticeError, match="max_batches must be at least 1"):
        ap.reestimate_batchnorm(net, _batches(), max_batches=0)
    with pytest.raises(ApprenticeError, match="batches are empty"):
        ap.reestimate_batchnorm(net, [])
    assert torch.equal(net[2].running_mean, before) and net[2].momentum == 0.1
    lsq = ap.build_model("resnet8", num_classes=10, in_channels=1, width=0.25)
    weights, acts = ap.parse_precision("4W/4A", quantizer="lsq")
    ap.prepare(lsq, weights=weights, activations=acts)
    with pytest.raises(ApprenticeError, match="needs a trained model"):
        ap.reestimate_batchnorm(lsq, _batches())
    assert ap.reestimate_batchnorm(nn.Linear(3, 2), [(torch.zeros(2, 3), torch.zeros(2))]) == 0  # no BatchNorm
