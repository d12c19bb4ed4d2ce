"""Is a two-thread latency bimodal because of where the OS puts the threads? ExecuTorch files of
ResNet-18 (FP32, the PT2E int8 anchor, the deployable 4W/8A student and its ends8 variant), 2 threads,
calls alternating with 50 ms idle before each, first with the OS placing the threads, then with the
calling thread pinned to one core and every other thread of the process to the other
(`_timing.pinned_threads`); for each, the share of calls under ``--fast-ms`` (the fast mode).

    .venv/bin/python benchmarks/thread_placement.py build --dir /tmp/placement      # the files (minutes)
    .venv/bin/python benchmarks/thread_placement.py time --dir /tmp/placement --modes unpinned pinned unpinned pinned

Run the timing on a quiet machine (trainings paused). Prints one line per mode and file; writes nothing.
The numbers in benchmarks/README.md ("Pinned threads") came from this probe's first version (the same
logic, before it was committed here).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _phone_runtimes as phone
import phone_speed
from onnx_speed import time_alternating


def build(folder: str) -> None:
    float_model, paths, _ = phone_speed.float_files("resnet18", ["et-fp32", "et-anchor"], folder, 0)
    _, student, _ = phone_speed.student_files(float_model, "resnet18", "4W/8A", ["et-int8", "et-int8e"], folder, 0)
    (Path(folder) / "paths.json").write_text(json.dumps({**paths, **student}))


def time_modes(folder: str, modes: list[str], calls: int, fast_ms: float) -> None:
    paths = json.loads((Path(folder) / "paths.json").read_text())
    torch.set_num_threads(2)
    phone.executorch_threads(2)
    x = torch.randn(1, 3, 224, 224).numpy()
    run = {k: phone.executorch_runner(p) for k, p in paths.items()}
    for mode in modes:  # the latency benchmarks' own loop: warm-up (the pools exist), then pinned or not
        timings = time_alternating({k: (lambda f=f: f(x)) for k, f in run.items()}, warmup=5, runs=calls,
                                   pause_ms=50.0, pin=2 if mode == "pinned" else 1)
        for k, t in timings.items():
            fast = "" if "fp32" in k else f" fast {sum(v < fast_ms for v in t['times_ms']) / len(t['times_ms']):.0%}"
            print(f"{mode:8s} {k:10s} median {t['median_ms']:6.2f} p10 {t['p10_ms']:6.2f} p90 {t['p90_ms']:6.2f}{fast}",
                  flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("step", choices=["build", "time"])
    p.add_argument("--modes", nargs="+", choices=["unpinned", "pinned"], default=["unpinned", "pinned"],
                   help="placements to time, in order")
    p.add_argument("--dir", required=True, help="folder for the .pte files")
    p.add_argument("--calls", type=int, default=60)
    p.add_argument("--fast-ms", type=float, default=8.5, help="a call under this is in the fast mode")
    args = p.parse_args(argv)
    os.makedirs(args.dir, exist_ok=True)
    if args.step == "build":
        build(args.dir)
    else:
        time_modes(args.dir, args.modes, args.calls, args.fast_ms)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
