"""The processes a training run lives in: device, torchrun process group, and stopping on a signal.

`setup` resolves the device and, under ``torchrun`` (``WORLD_SIZE > 1``), joins the process
group; `teardown` leaves it again. `agree` and `raise_from_rank0` keep every process deciding alike.
`StopSignals` turns SIGTERM/SIGINT into a flag that the loop checks after every step, so the
current step can be checkpointed before the run ends with `TrainingInterrupted`.

Exit codes (`apprentice.cli`): `TrainingInterrupted` subclasses KeyboardInterrupt (a stop request,
not an error; ``except Exception`` does not swallow it) and carries ``exit_code`` 143 (SIGTERM) or
130 (SIGINT), the shell's 128 + signal.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from apprentice.errors import ApprenticeError

__all__ = ["EXIT_SIGINT", "EXIT_SIGTERM", "Runtime", "StopSignals", "TrainingInterrupted", "agree",
           "raise_from_rank0", "setup", "teardown"]

EXIT_SIGTERM = 128 + signal.SIGTERM  # 143
EXIT_SIGINT = 128 + signal.SIGINT  # 130
# A dead peer should end the job, not hold the machines: 30 min covers the longest thing one
# process does alone (rank 0 writing a large checkpoint).
GROUP_TIMEOUT = timedelta(minutes=30)


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


def setup(device_name: str) -> Runtime:
    """Resolve ``device_name`` ("auto", "cpu", "cuda", "cuda:N") and, under torchrun, join the process group."""
    world, local_rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device("cpu")
    if device_name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ApprenticeError(f"train.device={device_name} but CUDA is not available; use train.device=cpu or auto")
        # Under torchrun every process takes the GPU of its local rank, whatever cuda:N says.
        index = local_rank if world > 1 else (int(device_name.split(":")[1]) if ":" in device_name else 0)
        if index >= torch.cuda.device_count():
            raise ApprenticeError(f"train.device: cuda:{index} does not exist ({torch.cuda.device_count()} GPUs)")
        torch.cuda.set_device(index)
        device = torch.device("cuda", index)
    if world <= 1:
        return Runtime(0, 1, device, False)
    if dist.is_initialized():
        return Runtime(dist.get_rank(), dist.get_world_size(), device, False)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=GROUP_TIMEOUT)
    return Runtime(dist.get_rank(), dist.get_world_size(), device, True)


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
                                      exit_code=128 + signum)
        self.signum = self.signum or signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
