"""Tests of apprentice.train.state: what a checkpoint holds, written and read back."""

from __future__ import annotations

import io

import pytest
import torch

from apprentice.errors import ApprenticeError
from apprentice.train.state import FORMAT, MODEL_KEYS, Counters, Meter, TrainState


def _state(**extra) -> TrainState:
    meter = Meter()
    meter.add({"loss": torch.tensor(2.0)}, torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    counters = Counters(epoch=2, step=17, skipped=1, elapsed=3.5, best={"top1": 50.0, "top5": 90.0, "epoch": 1},
                        top1=48.0, results={"test": {"top1": 48.0}}, meter=meter)
    return TrainState(config={"model": {"name": "resnet8"}}, arch={"name": "resnet8"}, plan={},
                      model={"w": torch.arange(3.0)}, optimizer={"state": {}, "param_groups": []},
                      scheduler={"schedule": "step", "step": 17}, data={"epoch": 2, "step": 0}, rng={"torch": torch.ones(2)},
                      counters=counters, world_size=2, **extra)


def test_round_trip_through_torch_save_with_weights_only():
    buf = io.BytesIO()
    torch.save(_state(teacher={"t": torch.zeros(1)}, teacher_arch={"name": "resnet14"}).to_dict(), buf)
    buf.seek(0)
    d = torch.load(buf, weights_only=True)
    assert d["format"] == FORMAT and all(k in d for k in MODEL_KEYS)
    assert d["best_top1"] == 50.0 and d["meter"]["steps"] == 1 and "scaler" not in d
    back = TrainState.from_dict(d, "checkpoint 'x'")
    assert back.counters.step == 17 and back.counters.best == {"top1": 50.0, "top5": 90.0, "epoch": 1}
    assert back.counters.meter.means()["loss"] == 2.0 and back.world_size == 2
    torch.testing.assert_close(back.teacher["t"], torch.zeros(1))
    assert back.to_dict().keys() == d.keys()


@pytest.mark.parametrize("key", ["optimizer", "rng", "meter", "elapsed", "world_size"])
def test_a_missing_field_is_one_error_naming_it(key):
    d = _state().to_dict()
    del d[key]
    with pytest.raises(ApprenticeError, match=rf"checkpoint 'x' cannot be resumed \(missing '{key}'\)"):
        TrainState.from_dict(d, "checkpoint 'x'")
