"""Test-only entry point: ``python tests/fault_hooks.py ARGS`` is ``apprentice ARGS`` with faults injected.

The library has no test hooks; this script patches it from outside, chosen by environment variables,
and then runs the ordinary command line (also under torchrun):

    APPRENTICE_TEST_SLOW_WRITE=S   every checkpoint write stops for S seconds halfway through its
                                   temp file (flushed and fsynced), so a test can SIGKILL inside it
    APPRENTICE_TEST_DIE_AT=R:K     the process of rank R kills itself with SIGKILL right after
                                   training step K (counted from this process's start)
    APPRENTICE_TEST_HANG_AT=R:K    the process of rank R stops answering after step K, as one stuck
                                   in a kernel or a driver call (SIGTERM then ends it at once)
    APPRENTICE_TEST_DUMP=DIR       when training ends, every process writes DIR/rank<R>.json: the hash
                                   of its final parameters and its first epoch's sample indices
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from apprentice import cli
from apprentice.run import loop
from apprentice.train import checkpoint


def _slow_write(seconds: float) -> None:
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        time.sleep(seconds)
        f.write(data[len(data) // 2:])

    checkpoint.torch.save = save  # the module attribute checkpoint.save_checkpoint calls


def _fail_at(rank: int, step: int, how: str) -> None:
    if int(os.environ.get("RANK", "0")) != rank:
        return
    real_step, count = loop.train_step, [0]

    def step_then_fail(*args, **kwargs):
        result = real_step(*args, **kwargs)
        count[0] += 1
        if count[0] == step:
            print(f"fault_hooks: rank {rank} {how}s after step {step}", file=sys.stderr, flush=True)
            if how == "die":
                os.kill(os.getpid(), signal.SIGKILL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            time.sleep(3600)
        return result

    loop.train_step = step_then_fail


def _dump_at_finish(folder: Path) -> None:
    real_finish = loop._finish

    def finish_then_dump(run):
        h = hashlib.sha256()
        for name, p in run.training.student.named_parameters():
            h.update(name.encode() + p.detach().cpu().contiguous().numpy().tobytes())
        batches = run.training.data.batches
        batches = getattr(batches, "loader", batches)  # a teacher cache wraps the TensorLoader
        indices = batches.indices(0).tolist() if hasattr(batches, "indices") else []
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"rank{run.rt.rank}.json").write_text(json.dumps(
            {"rank": run.rt.rank, "world_size": run.rt.world_size, "params_sha256": h.hexdigest(),
             "epoch0_indices": indices}))
        return real_finish(run)

    loop._finish = finish_then_dump


if __name__ == "__main__":
    if os.environ.get("APPRENTICE_TEST_DUMP"):
        _dump_at_finish(Path(os.environ["APPRENTICE_TEST_DUMP"]))
    if os.environ.get("APPRENTICE_TEST_SLOW_WRITE"):
        _slow_write(float(os.environ["APPRENTICE_TEST_SLOW_WRITE"]))
    for how in ("die", "hang"):
        if os.environ.get(f"APPRENTICE_TEST_{how.upper()}_AT"):
            r, k = os.environ[f"APPRENTICE_TEST_{how.upper()}_AT"].split(":")
            _fail_at(int(r), int(k), how)
    sys.exit(cli.main(sys.argv[1:]))
