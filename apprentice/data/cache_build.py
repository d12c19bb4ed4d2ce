"""Building a teacher cache: the resumable chunk-by-chunk fill, the teacher's batched forward and the
checks on what it gives. Shared by the exact cache of tensor data sets (`apprentice.data.teacher_cache`)
and the sampled crop cache of image folders (`apprentice.data.crop_cache`).

The fill writes to a partial file beside the target (`apprentice.data.cache_file.PartialFile`) and marks
each finished chunk, so an interrupted build resumes where it stopped and the same teacher and settings
give the same bytes either way; it reports the size and the work first, a time estimate after the first
chunk, then progress with an ETA.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from apprentice.data.cache_file import Layout, PartialFile
from apprentice.errors import ApprenticeError

__all__ = ["CACHE_BATCH", "cache_batch", "check_logits", "fill_chunks", "run_teacher", "teacher_device"]

#: A cache build's default images a teacher forward. On a CPU a batch of 500 ResNet-20x2 activations
#: (50 MB a tensor) outgrows glibc's reusable blocks (32 MiB, `apprentice.train.keep_freed_memory`), so
#: every forward faults its pages in afresh: 1.5 of 11 s in the kernel at 500 against none at 125 (2,000
#: images, one thread, a one-off timing beside two trainings). A GPU takes the larger batch.
CACHE_BATCH = {"cpu": 128, "gpu": 500}


def _duration(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600} h {s % 3600 // 60:02d} min" if s >= 3600 else f"{s // 60} min {s % 60:02d} s"


def _megabytes(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def fill_chunks(path: Path, layout: Layout, *, items: int, chunk: int, work: int,
                compute: Callable[[int, int], dict[str, np.ndarray]], report: Callable[[str], None] | None,
                every: float = 10.0) -> None:
    """Fill ``layout``'s tensors (first dimension: ``items``) chunk by chunk in a resumable partial file.

    ``compute(start, stop)`` returns the rows ``start:stop`` of every tensor but ``done``; ``work``
    counts teacher forwards in all (for the rate and the ETA). Reports the size and the work before
    it starts, a time estimate after the first chunk, then progress at most every ``every`` seconds.
    """
    say = report or (lambda _line: None)
    partial = PartialFile(path, layout)
    try:
        chunks = -(-items // chunk)
        todo = [c for c in range(chunks) if not partial.done[c]]
        per_chunk = work / chunks
        say(f"teacher cache {path}: {work:,} teacher forwards, file {_megabytes(layout.size)}"
            + (f"; resuming, {chunks - len(todo)}/{chunks} chunks already done" if partial.resumed else ""))
        t0 = last = time.monotonic()
        for n, c in enumerate(todo, 1):
            start, stop = c * chunk, min(items, (c + 1) * chunk)
            for name, rows in compute(start, stop).items():
                partial.write_rows(name, start, rows)
            partial.mark_done(c)
            now = time.monotonic()
            rate = n * per_chunk / max(now - t0, 1e-9)
            left = (len(todo) - n) * per_chunk / rate
            if n == 1 and len(todo) > 1:
                say(f"teacher cache: about {_duration(left + now - t0)} in all at {rate:,.0f} forwards/s")
            elif now - last >= every or n == len(todo):
                done = chunks - len(todo) + n
                say(f"teacher cache: {done}/{chunks} chunks ({100 * done / chunks:.1f} %), {rate:,.0f} forwards/s, "
                    f"{_duration(now - t0)} so far, ETA {_duration(left)}")
                last = now
        partial.finish()
    except BaseException:
        partial.close()  # keep the work done so far for the next call
        raise


def cache_batch(teacher: nn.Module, batch_size: int | None = None) -> int:
    """``batch_size``, or the default for the device ``teacher`` is on (`CACHE_BATCH`)."""
    return batch_size or CACHE_BATCH["cpu" if teacher_device(teacher).type == "cpu" else "gpu"]


def teacher_device(teacher: nn.Module) -> torch.device:
    return next(iter(teacher.parameters()), torch.empty(0)).device


def run_teacher(teacher: nn.Module, images: Tensor, batch_size: int) -> Tensor:
    """Float32 logits of ``images`` (normalised, any device) in batches of ``batch_size``, eval mode, no grad."""
    modes = [(m, m.training) for m in teacher.modules()]  # restored one by one: modes may be mixed
    teacher.eval()
    try:
        with torch.no_grad():
            dev = teacher_device(teacher)
            return torch.cat([teacher(images[i:i + batch_size].to(dev)).float().cpu()
                              for i in range(0, len(images), batch_size)])
    finally:
        for m, mode in modes:
            m.training = mode


def check_logits(logits: Tensor, stored: np.ndarray, dtype: str, where: Callable[[int], str]) -> None:
    """Refuse non-finite teacher logits (or ones float16 cannot hold), naming the first image and view."""
    for values, why in ((logits.numpy(), "the teacher gave NaN or inf"),
                        (stored, f"|logit| above {np.finfo(np.float16).max:.0f} does not fit {dtype}; use float32")):
        bad = ~np.isfinite(values)
        if bad.any():
            raise ApprenticeError(f"teacher cache: {why} for {where(int(np.argwhere(bad)[0][0]))}")
