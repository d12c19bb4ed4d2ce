"""Tests of apprentice.train.runtime: device names, the collective timeout, one-process collectives,
stopping on a signal, and the message for a lost peer. Real torchrun jobs are in test_faults.py and
test_train.py; fit stopping on a signal is in test_train.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import timedelta

import pytest
import torch

from apprentice.errors import ApprenticeError
from apprentice.train import runtime

ONE = runtime.Runtime(0, 1, torch.device("cpu"), False)


# ---------------------------------------------------------------------------------------------
# Device names


@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_device_names_that_parse(name):
    runtime.check_device(name)


@pytest.mark.parametrize("name", ["gpu", "CPU", "cuda:", "cuda:x", "cuda:-1", " cpu", "mps", ""])
def test_unknown_device_names_list_the_choices(name):
    with pytest.raises(ApprenticeError) as e:
        runtime.check_device(name, "--device")
    assert str(e.value) == f"--device: unknown device {name!r}; choose from auto, cpu, cuda, cuda:N"


def test_devices_resolve_on_a_machine_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.resolve_device("auto") == runtime.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ApprenticeError, match=r"^train.device cuda:1: CUDA is not available; use cpu or auto$"):
        runtime.resolve_device("cuda:1")
    with pytest.raises(ApprenticeError, match=r"^--device: unknown device 'tpu'"):
        runtime.resolve_device("tpu", "--device")


def test_devices_resolve_to_the_gpu_asked_for_or_the_local_rank(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert runtime.resolve_device("auto") == runtime.resolve_device("cuda") == torch.device("cuda", 0)
    assert runtime.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert runtime.resolve_device("cuda:0", local_rank=1) == torch.device("cuda", 1)  # torchrun decides
    assert runtime.resolve_device("cpu", local_rank=1) == torch.device("cpu")
    with pytest.raises(ApprenticeError, match=r"^--device cuda:2: cuda:2 does not exist; there are only 2 GPUs"):
        runtime.resolve_device("cuda:2", "--device")


def test_setup_without_torchrun_is_one_process_on_the_device(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    rt = runtime.setup("cpu")
    assert (rt.rank, rt.world_size, rt.device, rt.owns_group) == (0, 1, torch.device("cpu"), False)
    runtime.teardown(rt)  # owns no group: nothing to leave


# ---------------------------------------------------------------------------------------------
# torchrun's variables

_TORCHRUN = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_MASTER = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def _environment(monkeypatch, **values: str) -> None:
    for name in _TORCHRUN:
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize(("env", "message"), [
    ({"WORLD_SIZE": "2", "RANK": "2", **_MASTER}, "environment variable RANK=2 contradicts WORLD_SIZE=2: ranks run 0..1"),
    ({"WORLD_SIZE": "2", "RANK": "-1", **_MASTER}, "environment variable RANK=-1 contradicts WORLD_SIZE=2"),
    ({"RANK": "1"}, "environment variable RANK=1 contradicts WORLD_SIZE (not set: one process)"),
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "2", **_MASTER}, "environment variable LOCAL_RANK=2 contradicts"),
    ({"WORLD_SIZE": "two"}, "environment variable WORLD_SIZE='two' is not an integer"),
    ({"WORLD_SIZE": "2.0", "RANK": "0", **_MASTER}, "environment variable WORLD_SIZE='2.0' is not an integer"),
    ({"WORLD_SIZE": "2", "RANK": "zero", **_MASTER}, "environment variable RANK='zero' is not an integer"),
    ({"LOCAL_RANK": "x"}, "environment variable LOCAL_RANK='x' is not an integer"),
    ({"WORLD_SIZE": "0"}, "environment variable WORLD_SIZE=0 must be at least 1"),
    ({"WORLD_SIZE": "-2"}, "environment variable WORLD_SIZE=-2 must be at least 1"),
    ({"WORLD_SIZE": "2", **_MASTER}, "environment variable WORLD_SIZE=2 is set but RANK is not"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, "environment variable MASTER_ADDR is not set, but WORLD_SIZE=2"),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "h"}, "environment variable MASTER_PORT is not set"),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "0"}, "environment variable MASTER_PORT='0' is not a port number"),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "p"}, "environment variable MASTER_PORT='p' is not an integer"),
])
def test_torchrun_variables_that_contradict_each_other_get_one_line(monkeypatch, env, message):
    """Before any rendezvous: a bad RANK would otherwise wait for a peer until the socket times out."""
    _environment(monkeypatch, **env)
    with pytest.raises(ApprenticeError) as e:
        runtime.setup("cpu")
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_torchrun_variables_that_agree_are_read(monkeypatch):
    _environment(monkeypatch)
    assert runtime.torchrun_env() == (1, 0, 0)
    _environment(monkeypatch, WORLD_SIZE="1", RANK="0", LOCAL_RANK="0")
    assert runtime.torchrun_env() == (1, 0, 0)
    _environment(monkeypatch, WORLD_SIZE=" 4", RANK="3", LOCAL_RANK="1", **_MASTER)
    assert runtime.torchrun_env() == (4, 3, 1)


def test_train_with_a_contradicting_rank_exits_2_before_making_the_run_folder(monkeypatch, tmp_path, capsys):
    from apprentice.cli import main

    from tiny_runs import recipe

    _environment(monkeypatch, WORLD_SIZE="2", RANK="5", **_MASTER)
    code = main(["train", str(recipe(tmp_path / "r.yaml")), f"train.out={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0] == ("apprentice: error: environment variable RANK=5 contradicts WORLD_SIZE=2: ranks run 0..1; "
                      "start the processes with torchrun, which sets both")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# Collectives of a single process


def test_agree_and_raise_from_rank0_with_one_process():
    assert runtime.agree(True, ONE) is True and runtime.agree(False, ONE) is False
    runtime.raise_from_rank0(None, ONE)
    with pytest.raises(ApprenticeError, match="^train.out is a file$"):
        runtime.raise_from_rank0("train.out is a file", ONE)


# ---------------------------------------------------------------------------------------------
# Signals


def test_stop_signals_set_a_flag_first_and_stop_at_the_same_signal_again():
    before = signal.getsignal(signal.SIGTERM)
    with runtime.StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.signum == signal.SIGTERM  # the first: a flag the loop checks after the step
        os.kill(os.getpid(), signal.SIGINT)  # a different one does not cut the checkpoint short
        assert signals.signum == signal.SIGTERM
        with pytest.raises(runtime.TrainingInterrupted, match="SIGTERM twice") as e:
            os.kill(os.getpid(), signal.SIGTERM)
    assert e.value.exit_code == runtime.EXIT_SIGTERM == 143 and isinstance(e.value, KeyboardInterrupt)
    assert signal.getsignal(signal.SIGTERM) == before  # the previous handler is back


# ---------------------------------------------------------------------------------------------
# Timeouts and lost peers


def test_the_collective_timeout_is_finite_and_configurable(monkeypatch):
    monkeypatch.delenv(runtime.TIMEOUT_ENV, raising=False)
    assert runtime.collective_timeout() == runtime.DEFAULT_TIMEOUT == timedelta(minutes=10)
    monkeypatch.setenv(runtime.TIMEOUT_ENV, "2.5")
    assert runtime.collective_timeout() == timedelta(seconds=2.5)
    for bad in ("0", "-1", "soon", "inf", "nan"):
        monkeypatch.setenv(runtime.TIMEOUT_ENV, bad)
        with pytest.raises(ApprenticeError, match=runtime.TIMEOUT_ENV):
            runtime.collective_timeout()


def test_peer_lost_names_a_dead_local_rank():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # gone
    import socket

    rt = runtime.Runtime(0, 3, torch.device("cpu"), True,
                         ((socket.gethostname(), os.getpid()), (socket.gethostname(), child.pid), ("elsewhere", 1)))
    e = runtime.peer_lost(rt, RuntimeError("[../gloo/pair.cc:534] Connection closed by peer [127.0.0.1]:1234"))
    assert e.dead == (1,) and e.exit_code == 1
    assert str(e).startswith(f"rank 0 stops: rank 1 (pid {child.pid}) of 3 died (Connection closed by peer")
    assert runtime.is_collective_failure(RuntimeError("gloo: Timed out")) and not runtime.is_collective_failure(ValueError("x"))


def test_peer_lost_says_timeout_or_unreachable_when_no_local_rank_died():
    rt = runtime.Runtime(1, 2, torch.device("cpu"), True, (("elsewhere", 1), ("here", os.getpid())))
    timeout = runtime.peer_lost(rt, RuntimeError("[c10d] Timed out waiting 3000ms for recv. Details"))
    assert str(timeout).startswith("rank 1 stops: no answer from rank 0 within the collective timeout (")
    assert timeout.dead == () and "--resume" in str(timeout)
    reset = runtime.peer_lost(rt, RuntimeError("Connection reset by peer"))
    assert str(reset).startswith("rank 1 stops: rank 0 died or cannot be reached (Connection reset by peer)")
