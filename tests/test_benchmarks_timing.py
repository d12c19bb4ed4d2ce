"""benchmarks/_timing.py: waiting for a quiet machine, and the latency benchmarks' thread pinning."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from test_benchmarks import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))


def test_quiet_wait_counts_running_training_processes_but_not_stopped_ones():
    import signal

    import _timing

    probe = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "apprentice-busy-probe"])
    try:
        for _ in range(100):  # the child's command line shows once it has exec'd
            if any(line.startswith(f"{probe.pid}:") for line in _timing.busy_processes()):
                break
            time.sleep(0.05)
        assert any(line.startswith(f"{probe.pid}:") for line in _timing.busy_processes())
        probe.send_signal(signal.SIGSTOP)
        for _ in range(100):  # the state changes asynchronously
            if _timing._stopped(str(probe.pid)):
                break
            time.sleep(0.02)
        assert not any(line.startswith(f"{probe.pid}:") for line in _timing.busy_processes())
    finally:
        probe.send_signal(signal.SIGCONT)
        probe.kill()
        probe.wait()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning needs two cores to place threads on")
def test_pinned_threads_places_the_caller_and_the_pool_on_different_cores_and_restores_them():
    import threading

    import _timing

    cores = sorted(os.sched_getaffinity(0))
    started, stop, seen = threading.Event(), threading.Event(), {}

    def worker():  # a pool thread that exists before the pinning (as after a runtime's warm-up)
        seen["tid"] = threading.get_native_id()
        started.set()
        stop.wait(10)

    t = threading.Thread(target=worker)
    t.start()
    started.wait(10)
    try:
        with _timing.pinned_threads(2) as pinning:
            assert os.sched_getaffinity(0) == {cores[0]}
            assert os.sched_getaffinity(seen["tid"]) == {cores[1]}
            assert pinning["calling_thread_core"] == cores[0] and pinning["other_threads_cores"] == [cores[1]]
        assert os.sched_getaffinity(0) == set(cores) and os.sched_getaffinity(seen["tid"]) == set(cores)
        for threads, enabled in ((1, True), (len(cores) + 1, True), (2, False)):  # nothing to pin: placement untouched
            with _timing.pinned_threads(threads, enabled) as pinning:
                assert pinning is None and os.sched_getaffinity(0) == set(cores)
    finally:
        stop.set()
        t.join()
