"""Training cost on this CPU: median wall time of one training step of the same student in full
precision, fake-quantized (ternary weights; ternary + 8-bit activations), with a frozen teacher's
forward (scheme B), with that teacher's logits read from a teacher cache instead (scheme B, cached),
and with the teacher trained alongside (scheme A); the 2W/8A student compiled (``train.compile``) and
in channels-last memory format (``train.channels_last``); the same network quantized with Brevitas
and with torch.ao.quantization fake-quant as peer references; and the fake-quant steps of an earlier
commit (``--before``), to record what the optimisation of that path bought.

    .venv/bin/python benchmarks/speed.py --before COMMIT --wait-load 0.5

(The committed results were made with ``--before 91f2ef2`` before the package was split into
subpackages; ``--before`` now needs a commit that has ``apprentice/run/build.py``.)

One step = `apprentice.train.step.train_step` (zero_grad, forward of student and teacher, the Apprentice
loss, backward, gradient norm, SGD update), the loop `apprentice train` runs, on one fixed random
batch (data loading is not part of the step). Every case runs in a fresh subprocess per round
(``--rounds``), the rounds interleave the cases so slow drift of the machine hits all alike; in each, ``--warmup`` steps are discarded and ``--steps`` are timed; the
median over all rounds' timed steps is reported. ``--before`` adds one subprocess that loads both
codes and calls them alternately, call by call (steps, then each fake-quant op alone).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stamp import REPO, _git, markdown_table, stamp, stamp_markdown, write_results
from _timing import summarize, wait_quiet

#: case -> (student precision, scheme); "fp" is the reference every ratio is taken against.
CASES: dict[str, tuple[str, str]] = {
    "fp": ("32W/32A", "baseline"),
    "ternary": ("2W/32A", "baseline"),
    "ternary_8a": ("2W/8A", "baseline"),
    "ternary_B": ("2W/32A", "B"),
    "ternary_8a_B": ("2W/8A", "B"),
    "ternary_A": ("2W/32A", "A"),
    "ternary_8a_A": ("2W/8A", "A"),
    "ternary_B_cached": ("2W/32A", "B"),
    "ternary_8a_B_cached": ("2W/8A", "B"),
    "ternary_8a_compiled": ("2W/8A", "baseline"),
    "ternary_8a_channels_last": ("2W/8A", "baseline"),
    "fp_channels_last": ("32W/32A", "baseline"),
    "ternary_channels_last": ("2W/32A", "baseline"),
    "4w8a": ("4W/8A", "baseline"),
    "4w8a_channels_last": ("4W/8A", "baseline"),
}
#: case -> how it differs from the plain case of its (precision, scheme): the teacher's logits read from a
#: teacher cache (distill.teacher_cache), torch.compile of the student (train.compile), or channels-last
#: memory format (train.channels_last)
VARIANTS: dict[str, str] = {"ternary_B_cached": "cached", "ternary_8a_B_cached": "cached",
                            "ternary_8a_compiled": "compiled", "ternary_8a_channels_last": "channels_last",
                            "fp_channels_last": "channels_last", "ternary_channels_last": "channels_last",
                            "4w8a_channels_last": "channels_last"}
#: peer -> (library, precision): the same network and layers, quantized by another library.
PEERS: dict[str, tuple[str, str]] = {
    "brevitas_ternary": ("brevitas", "2W/32A"),
    "brevitas_ternary_8a": ("brevitas", "2W/8A"),
    "torch_ao_ternary_8a": ("torch.ao", "2W/8A"),
}
#: the cases timed again with the ``--before`` code
BEFORE_CASES = ("ternary", "ternary_8a", "ternary_B", "ternary_8a_B", "ternary_8a_channels_last", "4w8a_channels_last")


# ----------------------------------------------------------------------------------------------
# Inside one subprocess: build a case, time its steps
# ----------------------------------------------------------------------------------------------


def _quantized_names(model, precision: str) -> list[str]:
    """Names of the layers apprentice quantizes by default (first conv and classifier excluded)."""
    import copy

    from apprentice import prepare
    return list(prepare(copy.deepcopy(model), precision))


def brevitas_student(model, precision: str):
    """Swap the same layers for Brevitas QuantConv2d: 2-bit narrow-range weights ({-1, 0, 1}·scale, a
    per-tensor float scale), and for 8A an unsigned 8-bit input quantizer (per-tensor, learned scale)."""
    from brevitas.nn import QuantConv2d
    from brevitas.quant import Int8WeightPerTensorFloat, Uint8ActPerTensorFloat

    from apprentice.quant import replace_module
    act8 = precision.endswith("/8A")
    for name in _quantized_names(model, precision):
        m = model.get_submodule(name)
        q = QuantConv2d(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
                        bias=m.bias is not None, weight_quant=Int8WeightPerTensorFloat, weight_bit_width=2,
                        input_quant=Uint8ActPerTensorFloat if act8 else None,
                        **({"input_bit_width": 8} if act8 else {}))
        q.weight.data.copy_(m.weight.data)
        replace_module(model, name, q)
    return model


def torch_ao_student(model, precision: str):
    """torch.ao.quantization eager QAT on the same layers: per-tensor symmetric weight fake-quant with
    quant range [-1, 1] (ternary levels), and 8-bit (quint8, moving-average min/max) fake-quant of the
    layer's output where apprentice quantizes its input: one activation quantizer per layer either way."""
    import torch
    from torch.ao import quantization as tq
    weight = tq.FakeQuantize.with_args(observer=tq.MovingAverageMinMaxObserver, quant_min=-1, quant_max=1,
                                       dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    act = tq.FakeQuantize.with_args(observer=tq.MovingAverageMinMaxObserver, quant_min=0, quant_max=255,
                                    dtype=torch.quint8)
    names = set(_quantized_names(model, precision))
    for name, m in model.named_modules():
        m.qconfig = tq.QConfig(activation=act, weight=weight) if name in names else None
    tq.prepare_qat(model, inplace=True)
    return model


def build_case(name: str, args: argparse.Namespace, pkg=None):
    """(distiller, optimizer, teacher_or_None) of one case, in train mode, built by the library's own
    `apprentice.run.build` from the case's config (``pkg``: the `apprentice` package, or the ``--before``
    commit's copy of it). The teacher has random weights: only its cost is measured here."""
    import importlib

    import torch
    pkg = pkg or importlib.import_module("apprentice")
    try:  # the run layer's package since the layout issue; a --before commit may predate it
        build = importlib.import_module(pkg.__name__ + ".run.build")
    except ModuleNotFoundError:
        build = importlib.import_module(pkg.__name__ + ".build")
    config = importlib.import_module(pkg.__name__ + ".config")
    precision, scheme = CASES.get(name, ("32W/32A", "baseline"))  # a peer quantizes a float student itself
    teacher_model = {"teacher_model": {"name": args.teacher}} if scheme != "baseline" else {}
    cfg = config.config_from_dict({"model": {"name": args.model}, "quant": {"precision": precision},
                                   "distill": {"scheme": scheme, **teacher_model}}, check=False)
    shape = {"num_classes": args.classes, "in_channels": args.input[0]}
    torch.manual_seed(0)
    student = build.build_student(cfg, **shape)
    if name in PEERS:
        lib, peer_precision = PEERS[name]
        student = (brevitas_student if lib == "brevitas" else torch_ao_student)(student, peer_precision)
    teacher = build.build_from_config(cfg.distill.teacher_model, **shape) if teacher_model else None
    d = build.build_distiller(cfg, student, teacher)
    d.train()
    opt = build.build_optimizer(cfg, d)
    if VARIANTS.get(name) == "compiled":
        d.student = torch.compile(d.student)
    if VARIANTS.get(name) == "channels_last":  # as the package's training lays it out (older ones: no layout module)
        try:
            importlib.import_module(pkg.__name__ + ".train.layout").to_memory_format(d, torch.device("cpu"), True)
        except ModuleNotFoundError:
            d.to(memory_format=torch.channels_last)
    return d, opt, teacher


def cache_lookup(teacher, args: argparse.Namespace):
    """A real teacher cache over the step's own images (every pad-2 crop and flip, float16, memory-mapped)
    and a function that looks up one random view of each image: what a cached step adds to the step."""
    import torch

    from apprentice.data import (
        TensorData,
        build_teacher_cache,
        open_teacher_cache,
        teacher_hash,
        tensor_source,
        view_count,
    )
    g = torch.Generator().manual_seed(2)
    c, h, w = args.input
    data = TensorData(torch.randint(0, 256, (args.batch, c, h, w), dtype=torch.uint8, generator=g),
                      torch.randint(0, args.classes, (args.batch,), generator=g), args.classes, (0.5,) * c,
                      (0.25,) * c, "speed", pad=2, flip=True)
    path = Path(tempfile.mkdtemp(prefix="apprentice-speed-")) / "teacher.cache"
    build_teacher_cache(path, teacher, data)
    cache = open_teacher_cache(path, tensor_source(data, teacher=teacher_hash(teacher)))
    index, views = torch.arange(args.batch), view_count(2, True)
    return lambda: cache.lookup(index, torch.randint(0, views, (args.batch,), generator=g))


def time_case(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Per-step wall times (ms) of one case; for B also the frozen teacher's forward alone."""
    import torch

    from apprentice.train.step import train_step
    torch.set_num_threads(args.threads)
    d, opt, teacher = build_case(name, args)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, *args.input, generator=g)
    y = torch.randint(0, args.classes, (args.batch,), generator=g)
    out: dict[str, Any] = {}
    variant = VARIANTS.get(name)
    if variant == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    lookup = cache_lookup(teacher, args) if variant == "cached" else None

    def step() -> None:  # a cached step looks its teacher logits up (inside the timing) instead of running the teacher
        train_step(d, opt, x, y, lr=0.1, teacher_logits=lookup() if lookup is not None else None)

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    out["step_ms"] = times
    if teacher is not None and CASES.get(name, ("", ""))[1] == "B" and variant is None:
        tt = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            d.teacher_logits(x)
            tt.append((time.perf_counter() - t0) * 1e3)
        out["teacher_forward_ms"] = tt
    return out


def child(args: argparse.Namespace) -> int:
    warnings.filterwarnings("ignore")
    results = {}
    for name in args.cases:
        try:
            results[name] = time_case(name, args)
        except ImportError as e:
            results[name] = {"error": f"{type(e).__name__}: {e}"}
    print("SPEED-JSON " + json.dumps(results), flush=True)
    return 0


def _profile(step, steps: int = 5) -> list[dict[str, Any]]:
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as p:
        for _ in range(steps):
            step()
    ops = sorted(p.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    return [{"op": e.key, "self_ms_per_step": round(e.self_cpu_time_total / (steps * 1e3), 2),
             "calls_per_step": e.count // steps} for e in ops]


def _alternate(fns: dict[str, Any], n: int) -> dict[str, list[float]]:
    """Time each of ``fns`` ``n`` times, alternating them call by call (and their order pair by
    pair), so the machine's drift hits both sides alike."""
    keys, times = list(fns), {k: [] for k in fns}
    for i in range(n):
        for k in (keys if i % 2 == 0 else keys[::-1]):
            t0 = time.perf_counter()
            fns[k]()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return times


def pair_child(args: argparse.Namespace) -> int:
    """Before/after in one process: the current package and the ``--before`` copy
    (``apprentice_before``), step by step alternately; plus the activation and weight fake-quant
    ops alone (forward + backward) and a profile of the 2W/8A step for each."""
    import importlib

    import torch
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    sys.path.insert(0, args.before_path)
    pkgs = {"after": importlib.import_module("apprentice"), "before": importlib.import_module("apprentice_before")}
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, *args.input, generator=g)
    y = torch.randint(0, args.classes, (args.batch,), generator=g)
    out: dict[str, Any] = {"steps": {}, "ops": {}, "profiles": {}}
    for name in BEFORE_CASES:
        if name not in args.cases:
            continue
        fns = {}
        xs = x.contiguous(memory_format=torch.channels_last) if VARIANTS.get(name) == "channels_last" else x
        for label, pkg in pkgs.items():
            d, opt, _ = build_case(name, args, pkg)
            train_step = importlib.import_module(pkg.__name__ + ".train.step").train_step
            fns[label] = (lambda d=d, opt=opt, ts=train_step, xs=xs: ts(d, opt, xs, y, lr=0.1))
            for _ in range(args.warmup):
                fns[label]()
            if name == "ternary_8a":
                out["profiles"][label] = _profile(fns[label])
        out["steps"][name] = _alternate(fns, args.steps)
    # The ops alone, at the student's largest quantized activation and a 3x3 weight of its last stage.
    a = torch.randn(args.batch, 16, *args.input[1:], generator=g).requires_grad_()
    w = torch.randn(64, 64, 3, 3, generator=g).requires_grad_()
    ops: dict[str, dict[str, Any]] = {"activation_8bit": {}, "weight_ternary": {}}
    for label, pkg in pkgs.items():
        qz = importlib.import_module(pkg.__name__ + ".quant.quantizers")
        spec = qz.WeightQuant("ternary", 2)
        ops["activation_8bit"][label] = lambda qz=qz: qz.fake_quant_activation(a, 8, 1.0).sum().backward()
        ops["weight_ternary"][label] = lambda qz=qz, spec=spec: qz.fake_quant_weight(w, spec).sum().backward()
    # One op at a time, its two versions alternating: a small op timed right after a large one pays
    # for the large one's cache and allocator traffic, which would bias whichever version follows it.
    for op, fns in ops.items():
        for fn in fns.values():  # first call outside the timing
            fn()
        out["ops"][op] = _alternate(fns, max(args.steps, 200))
    print("SPEED-JSON " + json.dumps(out), flush=True)
    return 0


def same_layout_pairs(cases: list[str]) -> dict[str, str]:
    """Each quantized no-teacher case (plain or channels-last) -> the FP case of the same layout."""
    fp = {None: "fp", "channels_last": "fp_channels_last"}
    return {c: fp[VARIANTS.get(c)] for c in cases if c in CASES and CASES[c][1] == "baseline"
            and CASES[c][0] != "32W/32A" and VARIANTS.get(c) in fp}


def layout_child(args: argparse.Namespace) -> int:
    """Each quantized case and its FP step of the same memory layout, step by step alternately in one
    process (`_alternate`): the fake-quant cost as a ratio the machine's drift cannot tilt."""
    import torch

    from apprentice.train.step import train_step
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, *args.input, generator=g)
    y = torch.randint(0, args.classes, (args.batch,), generator=g)
    out: dict[str, Any] = {}
    for case, fp in same_layout_pairs(args.cases).items():
        xs = x.contiguous(memory_format=torch.channels_last) if VARIANTS.get(case) == "channels_last" else x
        fns = {}
        for label, name in (("fp", fp), ("case", case)):
            d, opt, _ = build_case(name, args)
            fns[label] = (lambda d=d, opt=opt, xs=xs: train_step(d, opt, xs, y, lr=0.1))
            for _ in range(args.warmup):
                fns[label]()
        out[case] = _alternate(fns, args.steps)
    print("SPEED-JSON " + json.dumps(out), flush=True)
    return 0


# ----------------------------------------------------------------------------------------------
# The parent: rounds of subprocesses, then the tables
# ----------------------------------------------------------------------------------------------


def run_child(cases: list[str], args: argparse.Namespace, before_path: str | None = None,
              child_flag: str = "--child", system_malloc: bool | None = None) -> dict[str, Any]:
    mode = ["--pair-child", "--before-path", before_path] if before_path else [child_flag]
    cmd = [sys.executable, str(Path(__file__).resolve()), *mode, "--cases", *cases,
           "--model", args.model, "--teacher", args.teacher, "--input", *map(str, args.input),
           "--classes", str(args.classes), "--batch", str(args.batch), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--threads", str(args.threads)]
    if args.system_malloc if system_malloc is None else system_malloc:
        cmd.append("--system-malloc")
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this tree's apprentice, whatever is installed
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("SPEED-JSON ")), None)
    if out.returncode != 0 or line is None:
        raise SystemExit(f"speed: the timing subprocess failed:\n{out.stderr[-3000:]}")
    return json.loads(line[len("SPEED-JSON "):])


@contextlib.contextmanager
def package_at(ref: str):
    """The ``apprentice`` package of commit ``ref``, copied to a temporary folder as
    ``apprentice_before`` (absolute imports rewritten) so both codes load in one process."""
    commit = _git("rev-parse", "--verify", f"{ref}^{{commit}}")
    if commit is None:
        raise SystemExit(f"speed: --before {ref!r} is not a commit of this repository")
    with tempfile.TemporaryDirectory(prefix="apprentice-before-") as tmp:
        archive = subprocess.run(["git", "archive", commit, "apprentice"], cwd=REPO, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        pkg = Path(tmp) / "apprentice_before"
        (Path(tmp) / "apprentice").rename(pkg)
        for f in pkg.rglob("*.py"):
            text = re.sub(r"^(\s*)(from|import) apprentice\b", r"\1\2 apprentice_before", f.read_text(), flags=re.MULTILINE)
            f.write_text(text)
        yield tmp, commit


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results/speed.json")
    ap.add_argument("--model", default="resnet8", help="the student (the accuracy grid's)")
    ap.add_argument("--teacher", default="resnet14")
    ap.add_argument("--input", type=int, nargs=3, default=[1, 28, 28], metavar=("C", "H", "W"))
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per case and round (>= 30)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cases", nargs="+", default=[*CASES, *PEERS])
    ap.add_argument("--before", default=None, metavar="COMMIT",
                    help="also time the fake-quant cases at this commit (one with apprentice/run/build.py)")
    ap.add_argument("--wait-load", type=float, default=None, metavar="LOAD",
                    help="first wait until the 1-minute load average is below LOAD and no pytest/apprentice runs")
    ap.add_argument("--wait-max", type=float, default=1800)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--pair-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--layout-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--system-malloc", action="store_true",
                    help="leave glibc malloc at its defaults (train.keep_freed_memory: false) in every timing process")
    ap.add_argument("--before-path", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    unknown = [c for c in args.cases if c not in CASES and c not in PEERS]
    if unknown:
        ap.error(f"unknown cases {unknown}; choose from {[*CASES, *PEERS]}")
    if (args.child or args.pair_child or args.layout_child) and not args.system_malloc:
        from apprentice.train.allocator import keep_freed_memory
        keep_freed_memory()  # what `apprentice train` does by default (train.keep_freed_memory)
    if args.child:
        return child(args)
    if args.pair_child:
        return pair_child(args)
    if args.layout_child:
        return layout_child(args)
    if args.steps < 30:
        ap.error("--steps must be at least 30")
    quiet = wait_quiet(args.wait_load, args.wait_max) if args.wait_load is not None else None
    st = stamp(argv)
    raw: dict[str, dict[str, Any]] = {}
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}: {len(args.cases)} cases", flush=True)
        for case, v in run_child(args.cases, args).items():
            if "error" in v:
                raw.setdefault(case, {"error": v["error"]})
                continue
            for k in ("step_ms", "teacher_forward_ms"):
                if k in v:
                    raw.setdefault(case, {}).setdefault(k, []).extend(v[k])
    layout = None
    if same_layout_pairs(args.cases):
        print("each quantized case against the FP step of its layout, step by step", flush=True)
        layout = {"kept": run_child(args.cases, args, child_flag="--layout-child")}
        if not args.system_malloc:  # the default's gain: the same pairs with glibc's own settings
            layout["system"] = run_child(args.cases, args, child_flag="--layout-child", system_malloc=True)
    pair, before_commit = None, None
    if args.before:
        with package_at(args.before) as (path, before_commit):
            print(f"before/after: {before_commit[:10]} against this tree, step by step", flush=True)
            pair = run_child(args.cases, args, before_path=path)
    result = analyse(raw, pair, layout)
    out = {"benchmark": "speed", "stamp": st, "quiet_wait": quiet,
           "settings": {k: v for k, v in vars(args).items() if k not in ("child", "pair_child", "layout_child", "before_path", "out")},
           "before_commit": before_commit, **result}
    md, table = markdown(out)
    write_results(REPO / args.out, out, md, table)
    return 0


def _no_teacher_case(case: str) -> str | None:
    """For a scheme-A case, the case of the same student without a teacher (its step minus the teacher)."""
    if case not in CASES or CASES[case][1] != "A":
        return None
    return next((c for c, (p, s) in CASES.items() if p == CASES[case][0] and s == "baseline"), None)


def analyse(raw: dict[str, Any], pair: dict[str, Any] | None, layout: dict[str, Any] | None = None) -> dict[str, Any]:
    med = {c: summarize(v["step_ms"]) for c, v in raw.items() if "step_ms" in v}
    fp = med.get("fp", {}).get("median_ms")
    cases = {}
    for c, s in med.items():
        entry = {**s, "ratio_to_fp": round(s["median_ms"] / fp, 3) if fp else None}
        if c in CASES:
            entry["precision"], entry["scheme"] = CASES[c]
            if c in VARIANTS:
                entry["variant"] = VARIANTS[c]
        else:
            entry["library"], entry["precision"] = PEERS[c]
        if "teacher_forward_ms" in raw[c]:
            tf = summarize(raw[c]["teacher_forward_ms"])
            entry["teacher_forward"] = tf
            entry["teacher_share"] = round(tf["median_ms"] / s["median_ms"], 3)
        base = _no_teacher_case(c)
        if base in med:  # A: the step minus the same student's step without a teacher
            entry["teacher_share"] = round(1 - med[base]["median_ms"] / s["median_ms"], 3)
        cases[c] = entry
    errors = {c: v["error"] for c, v in raw.items() if "error" in v}
    before_after: dict[str, Any] = {}
    for group in ("steps", "ops"):
        for name, times in (pair or {}).get(group, {}).items():
            b, a = times["before"], times["after"]
            ratios = [x / y for x, y in zip(b, a)]  # pairwise: neighbours in time share the drift
            before_after[name] = {"kind": "training step" if group == "steps" else "op, forward + backward",
                                  "before": summarize(b), "after": summarize(a),
                                  "speedup_median_of_pairs": round(statistics.median(ratios), 3)}
    same_layout = {malloc: {c: {"fp_median_ms": summarize(t["fp"])["median_ms"],
                                "median_ms": summarize(t["case"])["median_ms"],
                                "ratio_median_of_pairs": round(statistics.median(q / f for q, f in zip(t["case"], t["fp"])), 3)}
                            for c, t in pairs.items()}
                   for malloc, pairs in (layout or {}).items()}
    return {"cases": cases, "peer_errors": errors, "before_after": before_after, "vs_fp_same_layout": same_layout,
            "profile_ternary_8a": (pair or {}).get("profiles", {})}


def markdown(out: dict[str, Any]) -> tuple[str, str]:
    s = out["settings"]
    rows = []
    for c, e in out["cases"].items():
        what = f"{e['precision']} {e['scheme']}" if "scheme" in e else f"{e['precision']} ({e['library']})"
        what += f" ({e['variant'].replace('_', '-')})" if "variant" in e else ""
        rows.append([c, what, e["median_ms"], e["p10_ms"], e["p90_ms"], e["ratio_to_fp"],
                     None if "teacher_share" not in e else f"{100 * e['teacher_share']:.0f} %"])
    table = markdown_table(["case", "student / scheme", "median ms", "p10", "p90", "× FP step", "teacher share"], rows)
    text = ["# Training step cost on this CPU", "", stamp_markdown(out["stamp"]), "",
            (f"Student `{s['model']}` ({'×'.join(map(str, s['input']))} inputs, {s['classes']} classes), teacher "
             f"`{s['teacher']}`, batch {s['batch']}, {s['threads']} torch threads; per case {s['rounds']} rounds × "
             f"{s['steps']} timed steps after {s['warmup']} warm-up steps, each round a fresh process. Teacher share: "
             "scheme B, the frozen teacher's forward alone over the step; scheme A, 1 − (the step without teacher) / "
             "(the step)."), ""]
    if out.get("quiet_wait"):
        q = out["quiet_wait"]
        text += [f"Waited {q['waited_s']} s for a quiet machine (load {q['load_1min']}, quiet: {q['quiet']}).", ""]
    text += [table, ""]
    for malloc, pairs in out.get("vs_fp_same_layout", {}).items():
        how = ("freed memory kept (`train.keep_freed_memory`, the default)" if malloc == "kept"
               else "glibc malloc's own settings (`train.keep_freed_memory: false`)")
        text += [f"## The fake-quant step against the FP step of the same layout: {how}", "",
                 ("Each quantized case and its FP twin (same layout) built in one process and stepped "
                  "alternately; ratio = median over pairs of case / FP."), "",
                 markdown_table(["case", "FP median ms", "case median ms", "× FP step, same layout"],
                                [[c, v["fp_median_ms"], v["median_ms"], v["ratio_median_of_pairs"]]
                                 for c, v in pairs.items()]), ""]
    if out["peer_errors"]:
        text += ["Peers not measured: " + "; ".join(f"{c}: {e}" for c, e in out["peer_errors"].items()), ""]
    if out["before_after"]:
        text += [f"## Fake-quant path: before (commit `{out['before_commit'][:10]}`) and after", "",
                 "Both codes in one process, called alternately; speed-up = median over pairs of before/after.", "",
                 markdown_table(["what", "kind", "before median ms", "after median ms", "speed-up"],
                                [[c, v["kind"], v["before"]["median_ms"], v["after"]["median_ms"],
                                  v["speedup_median_of_pairs"]] for c, v in out["before_after"].items()]), ""]
    for label, ops in out.get("profile_ternary_8a", {}).items():
        text += [f"Profile of `ternary_8a`, {label} (self CPU ms per step, top ops):", "",
                 markdown_table(["op", "self ms / step", "calls / step"],
                                [[o["op"], o["self_ms_per_step"], o["calls_per_step"]] for o in ops]), ""]
    return "\n".join(text), table


if __name__ == "__main__":
    sys.exit(main())
