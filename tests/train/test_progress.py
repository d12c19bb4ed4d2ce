"""Tests of apprentice.train.progress: the console progress, metrics.jsonl (and TensorBoard), meters."""

from __future__ import annotations

import io
import json
import sys

import torch

from apprentice.train.progress import (
    MetricsWriter,
    Progress,
    bar_text,
    trim_metrics,
)
from apprentice.train.state import Meter


def test_progress_bar_on_a_tty_and_lines_elsewhere():
    text = bar_text(epoch=2, epochs=5, step=3, steps=6, loss=1.23456, images_per_s=99.6, width=4)
    assert text == "epoch 2/5 [##..] 3/6 loss 1.235 100 img/s"
    tty = io.StringIO()
    p = Progress(tty, tty=True, min_interval=0)
    p.step("first step", log=False)
    p.step("second", log=False)
    p.line("epoch done")
    p.close()
    assert tty.getvalue().startswith("\rfirst step\rsecond    ") and tty.getvalue().count("\n") == 1
    plain = io.StringIO()
    p = Progress(plain, tty=False)
    p.step("not logged", log=False)
    p.step("logged", log=True)
    assert plain.getvalue() == "logged\n"
    quiet = io.StringIO()
    Progress(quiet, enabled=False).line("rank 1 says nothing")
    assert quiet.getvalue() == ""


def test_trim_metrics_drops_steps_after_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"type": "step", "step": s}) + "\n" for s in (2, 4, 6)) + '{"type": "st')
    trim_metrics(path, 4)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [2, 4]


def test_metrics_without_tensorboard_print_one_notice(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    notices: list[str] = []
    writer = MetricsWriter(tmp_path, notice=notices.append)
    writer.write({"type": "step", "step": 1, "loss": float("nan"), "lr": 0.1})
    writer.close()
    assert len(notices) == 1 and "tensorboard" in notices[0] and not (tmp_path / "tb").exists()
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"type": "step", "step": 1, "loss": None, "lr": 0.1}


def test_meter_means_and_its_state_round_trip():
    meter = Meter()
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]]), torch.tensor([0, 0, 0])
    meter.add({"loss": torch.tensor(1.0), "kd": torch.tensor(0.5)}, logits[:2], labels[:2])
    meter.add({"loss": torch.tensor(3.0), "kd": torch.tensor(1.5)}, logits[2:], labels[2:])
    meter.seconds = 1.5
    means = meter.means("train_")
    assert means == {"train_loss": 2.0, "train_kd": 1.0, "train_top1": 100 * 2 / 3}
    state = json.loads(json.dumps(meter.state_dict()))  # plain numbers: fits a checkpoint and JSON
    back = Meter.from_state_dict(state)
    assert back.means("train_") == means and (back.steps, back.images, back.seconds) == (2, 3, 1.5)
    back.add({"loss": torch.tensor(5.0), "kd": torch.tensor(0.0)}, logits[:1], labels[:1])
    assert back.means()["loss"] == 3.0 and back.means()["top1"] == 75.0
    assert Meter().means() == {}
