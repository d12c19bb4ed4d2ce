"""Interruptions and failures during training lose nothing: SIGKILL at random moments (also inside
checkpoint writes), a full disk, non-finite gradients, and a process of a torchrun job dying or hanging.

Faults that need a real process are injected by ``tests/fault_hooks.py`` (a wrapper around the
command line; the library itself has no test hooks). Everything runs on the CPU with the synthetic
data set and resnet8 at width 0.25.
"""

from __future__ import annotations

import errno
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from apprentice.cli import main
from apprentice.run.loop import fit
from apprentice.train import checkpoint as ck
from apprentice.train.step import NonFiniteLossError

from tiny_runs import recipe, records, tiny

ROOT = Path(__file__).resolve().parents[1]
HOOKS = ROOT / "tests" / "fault_hooks.py"


def env(**extra: str) -> dict[str, str]:
    e = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        e.pop(key, None)
    return e


def temps(folder: Path) -> set[str]:
    return {p.name for p in folder.glob(".*.tmp")} if folder.is_dir() else set()


# ---------------------------------------------------------------------------------------------
# SIGKILL at random moments


def test_sigkill_at_random_moments_then_resume_finishes_like_an_uninterrupted_run(tmp_path):
    """12 kills drawn from a seeded RNG: inside a checkpoint's write window (the hook holds the temp
    file half-written), at a random moment after a checkpoint, or while the process starts. After
    each, the newest checkpoint loads with weights_only=True; ``--resume`` goes on from it, removes
    the temp files the kill left, and the finished run equals an uninterrupted one bit for bit."""
    settings = ["data.limit=1024", "data.batch_size=16", "train.epochs=2", "train.checkpoint_every=4",
                "train.log_every=8", "quant.precision=2W/8A", "optim.schedule=cosine"]
    cfg = recipe(tmp_path / "r.yaml", *settings)
    out, ckdir = tmp_path / "cut", tmp_path / "cut" / "checkpoints"
    last = ckdir / "last.pt"
    cmd = [sys.executable, str(HOOKS), "train", str(cfg), f"train.out={out}", "--resume"]
    rng = random.Random(20240601)
    modes = ["write", "after-checkpoint", "write", "startup"] * 3
    steps, kills, left_behind = [], 0, set()

    def mtime() -> int:
        return last.stat().st_mtime_ns if last.is_file() else 0

    def writing(before: set[str]) -> set[str]:
        return {name for name in temps(ckdir) - before if name.startswith(".last.pt.")}

    for mode in modes:
        before_step = ck.read_checkpoint(last)["step"] if last.is_file() else None
        before_temps, t0 = temps(ckdir), mtime()
        log = (tmp_path / f"kill{kills}.err").open("w+")
        proc = subprocess.Popen(cmd, env=env(APPRENTICE_TEST_SLOW_WRITE="0.05"), stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 60
        if mode == "startup":
            time.sleep(rng.uniform(0.3, 4.0))
        elif mode == "write":  # a new temp file of last.pt: this process's write is under way
            while proc.poll() is None and time.monotonic() < deadline and not writing(before_temps):
                time.sleep(0.002)
        else:
            while proc.poll() is None and time.monotonic() < deadline and mtime() == t0:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        log.seek(0)
        err = log.read()
        assert proc.returncode == -signal.SIGKILL, f"finished before kill {kills} ({mode}): {err}"
        kills += 1
        if mode == "write":
            assert writing(before_temps), "the kill was meant to land inside a checkpoint write"
        if mode != "startup" or "training resnet8" in err:  # a kill during start-up may land before the clean-up
            assert not (left_behind & temps(ckdir)), "the temp files of an earlier kill were not removed"
        left_behind = temps(ckdir)
        if "training resnet8" in err and before_step is not None:
            assert f"resuming at step {before_step}" in err  # went on from the newest checkpoint
        if last.is_file():  # the newest checkpoint is whole and safe to load
            state = torch.load(last, map_location="cpu", weights_only=True)
            ck.check_checkpoint(state, last)
            steps.append(state["step"])
        assert not (out / "summary.json").exists()
    assert kills >= 10 and steps == sorted(steps) and steps[-1] > 0

    done = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert not temps(ckdir) and not temps(out)
    ref = tmp_path / "ref"
    fit(tiny(ref, *settings))
    a, b = (ck.read_checkpoint(p / "checkpoints" / "last.pt") for p in (ref, out))
    assert a["step"] == b["step"] == 128
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert [r["step"] for r in records(out, "step")] == [r["step"] for r in records(ref, "step")]
    assert [r["test_top1"] for r in records(out, "epoch")] == [r["test_top1"] for r in records(ref, "epoch")]


def test_a_run_killed_before_its_first_checkpoint_starts_clean(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "metrics.jsonl").write_text('{"type": "step", "step": 2, "loss": 9.0}\n{"type": "st')  # torn line
    (out / "checkpoints" / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    (out / ".summary.json.xyz.tmp").write_text("{")
    fit(tiny(out), resume=True)  # "nothing to resume": a new run in the same folder
    assert not temps(out / "checkpoints") and not temps(out)
    assert [r["step"] for r in records(out, "step")] == [2, 4] and records(out, "step")[0]["loss"] != 9.0


# ---------------------------------------------------------------------------------------------
# A full disk


def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    last = out / "checkpoints" / "last.pt"
    real_fdopen, opened, kept = os.fdopen, [0], {}

    class FullDisk:
        """The temp file of the third checkpoint: the disk fills up half way through it."""

        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 20000:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        if ".last.pt." in os.readlink(f"/proc/self/fd/{fd}"):
            opened[0] += 1
            if opened[0] == 3:
                kept["bytes"] = last.read_bytes()
                return FullDisk(f)
        return f

    monkeypatch.setattr(os, "fdopen", fdopen)
    argv = ["train", str(recipe(tmp_path / "r.yaml", "train.checkpoint_every=1")), f"train.out={out}"]
    assert main(argv) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == (f"apprentice: error: no space left on device while writing checkpoint '{last}'; "
                    f"the previous checkpoint is kept")
    assert last.read_bytes() == kept["bytes"] and ck.read_checkpoint(last)["step"] == 2
    assert not temps(out / "checkpoints") and not (out / "summary.json").exists()
    monkeypatch.setattr(os, "fdopen", real_fdopen)
    assert main([*argv, "--resume"]) == 0 and ck.read_checkpoint(last)["step"] == 4


# ---------------------------------------------------------------------------------------------
# Numerical faults


def test_nonfinite_gradient_stops_at_its_step_and_keeps_the_last_good_checkpoint(nan_grad_at, tmp_path):
    out = tmp_path / "nan"
    nan_grad_at(3)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss or gradient at step 3 .*gradient norm nan") as e:
        fit(tiny(out, "train.checkpoint_every=2"))
    assert e.value.step == 3 and e.value.checkpoint == str(out / "checkpoints" / "last.pt")
    state = ck.read_checkpoint(out / "checkpoints" / "last.pt")
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert records(out, "nonfinite")[0]["step"] == 3


def test_nonfinite_gradient_skipped_and_counted(nan_grad_at, tmp_path):
    nan_grad_at(2)
    summary = fit(tiny(tmp_path / "skip", "train.on_nonfinite=skip"))
    assert summary["skipped_steps"] == 1 and summary["steps"] == 4
    assert records(tmp_path / "skip", "epoch")[-1]["skipped"] == 1


# ---------------------------------------------------------------------------------------------
# Several processes: a dead or hung rank ends the job within a bounded time


def torchrun(tmp_path: Path, out: Path, timeout: float, **faults: str) -> tuple[subprocess.CompletedProcess, float]:
    cfg = recipe(tmp_path / "r.yaml", "data.limit=512", "train.checkpoint_every=2")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(HOOKS),
           "train", str(cfg), f"train.out={out}"]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env(**faults), capture_output=True, text=True, timeout=timeout, check=False)
    return proc, time.monotonic() - t0


def test_a_dead_rank_ends_the_job_and_is_named(tmp_path):
    out = tmp_path / "ddp"
    proc, seconds = torchrun(tmp_path, out, 90, APPRENTICE_TEST_DIE_AT="1:3", APPRENTICE_COLLECTIVE_TIMEOUT="60")
    assert proc.returncode != 0 and seconds < 60, proc.stderr[-3000:]
    # torchrun's summary names the rank that failed first; rank 0's own line (if torchrun did not
    # stop it first) names it too.
    assert re.search(r"Root Cause.*?rank\s*:\s*1 \(local_rank: 1\)", proc.stderr, re.DOTALL), proc.stderr[-3000:]
    ours = [line for line in proc.stderr.splitlines() if line.startswith("apprentice: error:")]
    assert all("rank 1" in line and "--resume" in line for line in ours), ours
    assert "Traceback" not in "\n".join(line for line in proc.stderr.splitlines() if "apprentice" in line)
    assert ck.read_checkpoint(out / "checkpoints" / "last.pt")["step"] == 2
    assert fit(tiny(out, "data.limit=512", "train.checkpoint_every=2"), resume=True)["steps"] == 16


def test_a_hung_rank_ends_the_job_after_the_collective_timeout(tmp_path):
    proc, seconds = torchrun(tmp_path, tmp_path / "ddp", 90, APPRENTICE_TEST_HANG_AT="1:3", APPRENTICE_COLLECTIVE_TIMEOUT="3")
    assert proc.returncode != 0 and seconds < 45, proc.stderr[-3000:]
    line = next(x for x in proc.stderr.splitlines() if x.startswith("apprentice: error:"))
    assert "rank 0 stops: no answer from rank 1 within the collective timeout (3 s" in line, line
