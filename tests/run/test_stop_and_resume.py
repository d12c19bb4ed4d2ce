"""Stopping a run and resuming it (apprentice.run.loop.fit with apprentice.train.runtime's signals):
SIGTERM then --resume is bit-identical to an uninterrupted run; a signal in process checkpoints the
step and carries its exit code; the same signal twice stops at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from apprentice.errors import EXIT_SIGTERM
from apprentice.run import loop
from apprentice.run.loop import fit
from apprentice.train import checkpoint as ck
from apprentice.train.runtime import TrainingInterrupted

from tiny_runs import recipe, records, subprocess_env, tiny


def test_sigterm_then_resume_is_bit_identical(tmp_path):
    recipe_file = recipe(tmp_path / "r.yaml", "data.limit=1024", "data.batch_size=16", "train.epochs=2",
                         "train.checkpoint_every=5", "train.log_every=10", "quant.precision=2W/8A",
                         "optim.schedule=cosine", "optim.warmup_epochs=0.5", "data.holdout=64")
    cli = [sys.executable, "-m", "apprentice", "train", str(recipe_file)]
    env = subprocess_env()
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    subprocess.run([*cli, f"train.out={ref}"], env=env, check=True, capture_output=True, timeout=300)

    proc = subprocess.Popen([*cli, f"train.out={cut}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    last, deadline = cut / "checkpoints" / "last.pt", time.monotonic() + 120
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == EXIT_SIGTERM == 143, err
    assert "Traceback" not in err and "stopped by SIGTERM at step" in err
    stopped = ck.read_checkpoint(last)["step"]
    assert 5 <= stopped < 124 and not (cut / "summary.json").exists()

    done = subprocess.run([*cli, f"train.out={cut}", "--resume"], check=False, env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    a, b = ck.read_checkpoint(ref / "checkpoints/last.pt"), ck.read_checkpoint(last)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    ra, rb = records(ref, "epoch"), records(cut, "epoch")
    assert [(r["train_loss"], r["test_top1"], r["holdout_top1"]) for r in ra] == \
        [(r["train_loss"], r["test_top1"], r["holdout_top1"]) for r in rb]
    assert [r["step"] for r in records(cut, "step")] == [r["step"] for r in records(ref, "step")]
    holdout = [r["holdout_top1"] for r in ra]
    summary = json.loads((ref / "summary.json").read_text())
    assert (summary["best_epoch"], summary["best_on"]) == (holdout.index(max(holdout)) + 1, "holdout")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_in_process_checkpoints_the_step_and_carries_the_exit_code(tmp_path, monkeypatch, sig, code):
    out = tmp_path / "sig"
    original = loop.train_step

    def signalling_step(*args, **kwargs):
        result = original(*args, **kwargs)
        os.kill(os.getpid(), sig)  # a real signal, delivered to fit's handler
        return result

    monkeypatch.setattr(loop, "train_step", signalling_step)
    before = signal.getsignal(sig)
    with pytest.raises(TrainingInterrupted) as e:
        fit(tiny(out))
    assert e.value.exit_code == code and e.value.step == 1 and isinstance(e.value, KeyboardInterrupt)
    assert ck.read_checkpoint(out / "checkpoints/last.pt")["data"] == {"epoch": 0, "step": 1}
    assert records(out, "stopped")[0]["signal"] == sig.name
    assert signal.getsignal(sig) is before  # fit's handler is gone again


def test_the_same_signal_twice_stops_at_once(tmp_path, monkeypatch):
    original = loop.train_step

    def impatient_step(*args, **kwargs):
        result = original(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(loop, "train_step", impatient_step)
    with pytest.raises(TrainingInterrupted, match="twice") as e:
        fit(tiny(tmp_path / "x"))
    assert e.value.checkpoint is None and not (tmp_path / "x" / "checkpoints" / "last.pt").exists()
