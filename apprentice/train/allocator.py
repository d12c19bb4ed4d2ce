"""Keep the memory a training step frees for the next step (glibc malloc on Linux).

A CPU training step allocates and frees the same large activation tensors every step. With glibc's
default settings a freed block of a few MiB is handed back to the system (``M_TRIM_THRESHOLD``
grows with the largest block freed, and the top of the heap is trimmed past it) and the next step
faults its pages in afresh: the kernel zeroes every 4 KiB page again. Fake quantization allocates
more such tensors than the float step (the levels of every quantized input), so it pays more: on
this project's CPUs a 4W/8A ResNet-8 step took 1.23× the FP step with the defaults and 1.10× with
freed memory kept (benchmarks/results/speed_layout.md). Setting both thresholds once, as the
glibc manual describes (mallopt(3)), keeps blocks under 32 MiB in the heap and the heap untrimmed:
the process's memory stays at its peak, which a training loop reaches on its first step anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["MMAP_THRESHOLD", "keep_freed_memory"]

# mallopt(3) parameter numbers (glibc's malloc.h); the mmap threshold's largest allowed value on
# 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX = 4 MiB · sizeof(long)).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 2**20
_INT_MAX = 2**31 - 1


def keep_freed_memory() -> bool:
    """Ask glibc malloc to keep freed blocks (< `MMAP_THRESHOLD`) for reuse instead of returning them.

    Returns True when both settings took effect; False where there is no glibc (macOS, Windows, musl)
    or it refused, in which case nothing changed. Idempotent; affects the whole process.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # no C library by that name, or one without mallopt (musl)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # The mmap threshold first: fixing the trim threshold alone stops glibc's dynamic mmap threshold
    # at its 128 KiB start, and every large tensor would then be a fresh mapping (slower still).
    return mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, _INT_MAX) == 1
