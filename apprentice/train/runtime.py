"""The processes a training run lives in: device, torchrun process group, and stopping on a signal.

`setup` resolves the device and, under ``torchrun`` (``WORLD_SIZE > 1``), joins the process
group; `teardown` leaves it again. `agree` and `raise_from_rank0` keep every process deciding alike.
`StopSignals` turns SIGTERM/SIGINT into a flag that the loop checks after every step, so the
current step can be checkpointed before the run ends with `TrainingInterrupted`.

A process that dies or hangs must not hold the others forever: every collective waits at most
`collective_timeout` (10 minutes; ``APPRENTICE_COLLECTIVE_TIMEOUT=<seconds>`` changes it), and a
failed collective becomes `PeerLostError`, which names the ranks found dead on this machine (each
process's host and pid are exchanged at `setup`). torchrun itself stops the remaining processes of
a node once one has failed and prints which rank that was. (NCCL honours the timeout only with its
asynchronous error handling, the default since torch 2.2.)

Exit codes (`apprentice.cli`): `TrainingInterrupted` subclasses KeyboardInterrupt (a stop request,
not an error; ``except Exception`` does not swallow it) and carries ``exit_code`` 143 (SIGTERM) or
130 (SIGINT), the shell's 128 + signal; `PeerLostError` carries 1.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from apprentice.errors import EXIT_RUNTIME, EXIT_SIGTERM, ApprenticeError, signal_exit

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEVICE_NAMES",
    "EXIT_SIGTERM",
    "TIMEOUT_ENV",
    "PeerLostError",
    "Runtime",
    "StopSignals",
    "TrainingInterrupted",
    "agree",
    "check_device",
    "collective_timeout",
    "compile_step",
    "is_collective_failure",
    "peer_lost",
    "raise_from_rank0",
    "resolve_device",
    "seed_everything",
    "setup",
    "teardown",
    "torchrun_env",
    "wrap_for_processes",
]
# EXIT_SIGTERM is re-exported: the status a run stopped by SIGTERM carries (its owner is apprentice.errors).

# Device names (``train.device``, ``eval --device``): N is a GPU index. A pattern, not a dict: the
# set of names is open-ended, and "auto" is resolved by `resolve_device`.
DEVICE_NAMES = "auto, cpu, cuda, cuda:N"
_DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")
# How long a collective (all-reduce, barrier, broadcast) waits for a process that does not come:
# a hung or unreachable peer ends the job after this instead of holding the machines forever. It
# must cover the longest thing one process does while the others wait (rank 0 writing a large
# checkpoint: seconds to a minute). A peer that dies outright is noticed sooner: torchrun stops the
# others, and gloo sees the closed connection at once.
TIMEOUT_ENV = "APPRENTICE_COLLECTIVE_TIMEOUT"
DEFAULT_TIMEOUT = timedelta(minutes=10)


class TrainingInterrupted(KeyboardInterrupt):
    """SIGTERM/SIGINT stopped training after checkpointing the current step.

    Attributes:
        exit_code: 143 (SIGTERM) or 130 (SIGINT).
        step: the global step the checkpoint holds, None if none was written.
        checkpoint: that checkpoint's path, or None.
    """

    def __init__(self, message: str, *, exit_code: int, step: int | None = None,
                 checkpoint: str | None = None) -> None:
        super().__init__(message)
        self.exit_code, self.step, self.checkpoint = exit_code, step, checkpoint


@dataclass(frozen=True)
class Runtime:
    """This process: its ``rank`` of ``world_size``, its ``device``, and whether `setup` joined the group."""

    rank: int
    world_size: int
    device: torch.device
    owns_group: bool
    peers: tuple[tuple[str, int], ...] = ()  # (host name, pid) of every rank, to name a dead one


class PeerLostError(RuntimeError):
    """A collective operation failed: another training process died, hangs or cannot be reached.

    Attributes:
        exit_code: 1.
        dead: the ranks found dead (same machine only; empty if none could be identified).
    """

    exit_code = EXIT_RUNTIME

    def __init__(self, message: str, *, dead: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.dead = dead


def collective_timeout() -> timedelta:
    """`DEFAULT_TIMEOUT` (10 min), or ``$APPRENTICE_COLLECTIVE_TIMEOUT`` seconds (> 0).

    Raises:
        ApprenticeError: the variable is set to something that is not a positive number.
    """
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ApprenticeError(f"{TIMEOUT_ENV}={text!r}: expected a number of seconds > 0")
    return timedelta(seconds=seconds)


def check_device(name: str, option: str = "train.device") -> None:
    """Raise unless ``name`` is a device name (`DEVICE_NAMES`); says nothing about what this machine has.

    Args:
        name: "auto", "cpu", "cuda" or "cuda:N".
        option: how the error names where the value came from ("train.device", "--device").

    Example:
        >>> check_device("cuda:1")
    """
    if not isinstance(name, str) or not _DEVICE_RE.fullmatch(name):
        raise ApprenticeError(f"{option}: unknown device {name!r}; choose from {DEVICE_NAMES}")


def resolve_device(name: str, option: str = "train.device", *, local_rank: int | None = None) -> torch.device:
    """The `torch.device` that ``name`` means on this machine ("auto" = the GPU if there is one).

    Args:
        name: a device name, see `check_device`.
        option: how errors name where the value came from ("train.device", "--device").
        local_rank: under torchrun, the GPU index every process takes, whatever "cuda:N" says.

    Raises:
        ApprenticeError: a bad name, CUDA asked for but absent, or a GPU index this machine lacks.
    """
    check_device(name, option)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not count:
        raise ApprenticeError(f"{option} {name}: CUDA is not available; use cpu or auto")
    index = local_rank if local_rank is not None else int(name.partition(":")[2] or 0)
    if index >= count:
        raise ApprenticeError(f"{option} {name}: cuda:{index} does not exist; there are only {count} GPUs "
                              f"(cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return int(text.strip())
    except ValueError:
        raise ApprenticeError(f"environment variable {name}={text!r} is not an integer; torchrun sets it "
                              f"(start the processes with torchrun, or unset it)") from None


def torchrun_env() -> tuple[int, int, int]:
    """``(WORLD_SIZE, RANK, LOCAL_RANK)`` of this process as torchrun sets them (1, 0, 0 when unset).

    They must agree with each other: a rank outside ``0..WORLD_SIZE-1`` would otherwise wait for a
    peer that never comes until the rendezvous times out. With ``WORLD_SIZE > 1``, ``MASTER_ADDR``
    and ``MASTER_PORT`` (torchrun's rendezvous) must be set too, unless a process group exists.

    Raises:
        ApprenticeError: one line naming the variable that is not an integer or contradicts another.
    """
    world, rank, local = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    sized = f"WORLD_SIZE={world}" if "WORLD_SIZE" in os.environ else "WORLD_SIZE (not set: one process)"
    if world < 1:
        raise ApprenticeError(f"environment variable WORLD_SIZE={world} must be at least 1 (the number of processes)")
    for name, value in (("RANK", rank), ("LOCAL_RANK", local)):
        if not 0 <= value < world:
            raise ApprenticeError(f"environment variable {name}={value} contradicts {sized}: ranks run "
                                  f"0..{world - 1}; start the processes with torchrun, which sets both")
    if world > 1 and not dist.is_initialized():
        if "RANK" not in os.environ:
            raise ApprenticeError(f"environment variable WORLD_SIZE={world} is set but RANK is not; start the "
                                  f"processes with torchrun, which sets both")
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if not os.environ.get(name, "").strip():
                raise ApprenticeError(f"environment variable {name} is not set, but WORLD_SIZE={world} asks for "
                                      f"{world} processes; start them with torchrun, which sets it")
        if not 0 < _env_int("MASTER_PORT", 0) < 65536:
            raise ApprenticeError(f"environment variable MASTER_PORT={os.environ['MASTER_PORT']!r} is not a port "
                                  f"number (1..65535)")
    return world, rank, local


def setup(device_name: str) -> Runtime:
    """Resolve ``device_name`` (see `resolve_device`) and, under torchrun, join the process group.

    Raises:
        ApprenticeError: a bad device name or torchrun variables that contradict each other
            (`torchrun_env`), before any process group is joined.
    """
    world, _, local_rank = torchrun_env()
    # Under torchrun every process takes the GPU of its local rank.
    device = resolve_device(device_name, local_rank=local_rank if world > 1 else None)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world <= 1:
        return Runtime(0, 1, device, False)
    if dist.is_initialized():
        return Runtime(dist.get_rank(), dist.get_world_size(), device, False)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=collective_timeout())
    peers: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(peers, (socket.gethostname(), os.getpid()))
    return Runtime(dist.get_rank(), dist.get_world_size(), device, True, tuple(map(tuple, peers)))


def _gone(pid: int) -> bool:
    """Whether process ``pid`` of this machine has exited (a zombie awaiting its parent counts)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
    except (OSError, IndexError):  # no /proc (not Linux): ask the kernel instead
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False


def is_collective_failure(e: BaseException) -> bool:
    """Whether ``e`` came from the process group (a peer died, hung or is unreachable)."""
    text = str(e)
    return isinstance(e, getattr(dist, "DistError", ())) or any(
        word in text for word in ("gloo", "NCCL", "ProcessGroup", "Connection reset", "Connection closed"))


def peer_lost(rt: Runtime, e: BaseException) -> PeerLostError:
    """The error to raise for a failed collective ``e``: names the dead ranks on this machine if any."""
    host = socket.gethostname()
    local = [(r, pid) for r, (h, pid) in enumerate(rt.peers) if r != rt.rank and h == host]
    detail = " ".join(str(e).split())
    detail = re.sub(r"^\[[^\]]*\] ?", "", detail).split(". ")[0][:160]  # drop the C++ source location
    timed_out = "timed out" in detail.lower() or "timeout" in detail.lower()
    dead: tuple[int, ...] = ()
    for _ in range(1 if timed_out else 20):  # a killed peer's sockets close a moment before it is gone
        dead = tuple(r for r, pid in local if _gone(pid))
        if dead or timed_out:
            break
        time.sleep(0.1)
    other = f"rank {1 - rt.rank}" if rt.world_size == 2 else "another process"
    if dead:
        what = ", ".join(f"rank {r} (pid {rt.peers[r][1]})" for r in dead) + f" of {rt.world_size} died"
    elif timed_out:
        what = (f"no answer from {other} within the collective timeout "
                f"({collective_timeout().total_seconds():g} s, ${TIMEOUT_ENV})")
    else:
        what = f"{other} died or cannot be reached"
    return PeerLostError(f"rank {rt.rank} stops: {what} ({detail}); the launcher's report names the failed "
                         f"rank; the last checkpoint is kept, continue with --resume", dead=dead)


def teardown(rt: Runtime) -> None:
    """Leave the process group if `setup` joined it (a caller's own group stays)."""
    if rt.owns_group:
        dist.destroy_process_group()


def agree(flag: bool, rt: Runtime) -> bool:
    """True on every process if ``flag`` is true on any (so all stop at the same step)."""
    if rt.world_size == 1:
        return flag
    t = torch.tensor([int(flag)], device=rt.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def raise_from_rank0(message: str | None, rt: Runtime) -> None:
    """Raise rank 0's error ``message`` (if any) on every process, so none goes on alone."""
    if rt.world_size > 1:
        box = [message]
        dist.broadcast_object_list(box, src=0)
        message = box[0]
    if message:
        raise ApprenticeError(message)


class StopSignals:
    """SIGTERM/SIGINT set ``signum``, checked after every step; the same signal again stops at once.

    (torchrun forwards a terminal's Ctrl-C as SIGTERM after the SIGINT itself; a different second
    signal must not cut the checkpoint short.)
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:  # noqa: PYI034 - typing.Self needs Python 3.11
        if threading.current_thread() is threading.main_thread():  # signal.signal only works there
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum == signum:
            raise TrainingInterrupted(f"{signal.Signals(signum).name} twice: stopped without checkpointing this step",
                                      exit_code=signal_exit(signum))
        self.signum = self.signum or signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed every generator alike on every process: the models start identical everywhere."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def wrap_for_processes(distiller: torch.nn.Module, rt: Runtime) -> None:
    """Under torchrun, average the gradients of what trains; a frozen teacher is never wrapped.

    ``distiller`` is an `apprentice.distill.Distiller` (its ``student``, ``teacher`` and ``teacher_trains``).
    """
    if rt.world_size == 1:
        return
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [rt.device.index] if rt.device.type == "cuda" else None
    distiller.student = DDP(distiller.student, device_ids=ids)
    if distiller.teacher_trains:
        distiller.teacher = DDP(distiller.teacher, device_ids=ids)


def compile_step(distiller: torch.nn.Module, *, teacher_runs: bool) -> None:
    """``train.compile``: torch.compile what runs in the step (after the DDP wrap, as torch advises):
    the student, and the teacher when it runs (not when a cache stands in for it).

    Only the training forward is compiled; evaluation and checkpoints use the plain modules.
    """
    distiller.student = torch.compile(distiller.student)
    if distiller.teacher is not None and teacher_runs:
        distiller.teacher = torch.compile(distiller.teacher)
