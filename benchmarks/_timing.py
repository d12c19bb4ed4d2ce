"""Timing helpers shared by the speed benchmarks: summary statistics and waiting for a quiet machine.

Timings on a shared 2-core machine are only worth recording when nothing else runs: a parallel
test suite or training run doubles step times. `wait_quiet` waits for that and says how it went.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _stamp import load_average


def percentile(xs: list[float], q: float) -> float:
    """The q-th percentile (linear interpolation, as numpy's default)."""
    s = sorted(xs)
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summarize(times_ms: list[float]) -> dict[str, Any]:
    """Median, p10, p90, mean, min, max (ms) and the raw times of one timed series."""
    r = lambda v: round(v, 3)
    return {"median_ms": r(statistics.median(times_ms)), "p10_ms": r(percentile(times_ms, 10)),
            "p90_ms": r(percentile(times_ms, 90)), "mean_ms": r(statistics.fmean(times_ms)),
            "min_ms": r(min(times_ms)), "max_ms": r(max(times_ms)), "runs": len(times_ms),
            "times_ms": [r(t) for t in times_ms], "load_average_after": load_average()}


def busy_processes(words: tuple[str, ...] = ("pytest", "apprentice")) -> list[str]:
    """Command lines of other visible processes that look like test suites or training runs
    (this benchmark's own processes, named by its script, are not counted, nor stopped ones: a run
    paused with SIGSTOP for a quiet timing uses no CPU)."""
    # this benchmark's own script by name; not a bare "-c" or "" (an interpreter started with -c, as
    # pytest-xdist's workers are, would otherwise exclude every process)
    me, script, found = os.getpid(), Path(sys.argv[0]).name if sys.argv[0].endswith(".py") else None, []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == me:
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if _stopped(pid):
            continue
        if any(w in cmd for w in words) and (script is None or script not in cmd):
            found.append(f"{pid}: {cmd[:120]}")
    return found


def _stopped(pid: str) -> bool:
    """Whether the process is stopped (state T or t in /proc/PID/stat, after the parenthesised name)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:][:1] in ("T", "t")


def wait_quiet(threshold: float, max_wait: float) -> dict[str, Any]:
    """Sleep until the 1-minute load average is below ``threshold`` and no test/training process runs."""
    t0 = time.monotonic()
    while True:
        load, busy = os.getloadavg()[0], busy_processes()
        quiet = load < threshold and not busy
        waited = time.monotonic() - t0
        if quiet or waited >= max_wait:
            return {"threshold": threshold, "waited_s": round(waited), "quiet": quiet,
                    "load_1min": round(load, 2), "busy_processes": busy}
        print(f"waiting for a quiet machine: load {load:.2f}, {len(busy)} busy processes "
              f"({waited:.0f}/{max_wait:.0f} s)", flush=True)
        time.sleep(15)


def quiet_sentence(quiet: dict[str, Any] | None) -> str:
    """The results' line on `wait_quiet`'s outcome ("" when the run did not wait)."""
    if not quiet:
        return ""
    return (f" Waited {quiet['waited_s']} s for load < {quiet['threshold']} "
            f"({'reached' if quiet['quiet'] else 'NOT reached: numbers contaminated by other work'}).")


def timing_arguments(p: Any) -> None:
    """The alternating-timing options the latency benchmarks share (onnx_speed.py, phone_speed.py)."""
    p.add_argument("--runs", type=int, default=30, help="timed runs per cell (median reported)")
    p.add_argument("--warmup", type=int, default=5, help="discarded runs per variant before timing")
    p.add_argument("--pause-ms", type=float, default=50.0,
                   help="idle time before each timed call, so the previous variant's thread pool has stopped spinning")
    p.add_argument("--no-pin", dest="pin", action="store_false",
                   help="leave thread placement to the OS (default: with several threads, the calling thread on one "
                        "core and every other thread of the process on the others; see `pinned_threads`)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wait-load", type=float, default=None, metavar="LOAD",
                   help="before timing, wait until the 1-minute load average is below LOAD and no pytest/apprentice "
                        "process runs (at most --wait-max seconds; the outcome is recorded)")
    p.add_argument("--wait-max", type=float, default=1200)


@contextlib.contextmanager
def pinned_threads(threads: int, enabled: bool = True) -> Iterator[dict[str, Any] | None]:
    """Pin the calling thread to core 0 and every other thread of this process to cores 1..threads-1
    while the block runs (nothing at one thread, or with more threads than cores, or when not ``enabled``);
    yields what it did, for the record. Back to every core afterwards, so that thread pools made later
    are not born pinned (a new thread inherits its creator's affinity).

    Why: on this project's 2-vCPU VM a runtime's pool worker, woken for a call, was often placed on
    the core of the thread that woke it and the call ran at one-thread speed: ExecuTorch's two-thread
    ResNet-18 calls were either ~6 ms or ~11 ms, the fast share 25-65 % by file, so a median landed on
    either mode. With the pools' threads pinned, 93-100 % of calls ran fast for every file
    (benchmarks/README.md, phone_speed.py's "Pinned threads"). Call after the runtimes' pools exist (warm-up).
    """
    cores = sorted(os.sched_getaffinity(0))
    if not enabled or threads < 2 or threads > len(cores):
        yield None
        return
    me, tasks = threading.get_native_id(), [int(t) for t in os.listdir("/proc/self/task")]
    others = set(cores[1:threads])
    placed = []
    for tid in tasks:
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(tid, {cores[0]} if tid == me else others)
            placed.append(tid)
    try:
        yield {"calling_thread_core": cores[0], "other_threads_cores": sorted(others), "threads_pinned": len(placed)}
    finally:
        for tid in placed:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, set(cores))
