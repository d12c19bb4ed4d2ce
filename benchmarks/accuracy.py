"""Accuracy grid on Fashion-MNIST: FP teacher, FP twin, and 2W/32A, 2W/8A, 4W/8A students trained
without a teacher and with schemes A, B and C, over several seeds; plus a gamma/temperature sweep of
scheme B chosen on held-out training images.

    .venv/bin/python benchmarks/accuracy.py --no-sweep      # the 40-run grid (~90 min on 2 cores)
    .venv/bin/python benchmarks/accuracy.py                 # plus the gamma/temperature sweep (~15 min more)
    .venv/bin/python benchmarks/accuracy.py --report-only   # rebuild json/md/png from finished runs

Precision labels may name the weight quantizer (``lsq:2W/8A``); ``--schemes`` limits the schemes; by
default the B and C cells read the teacher's logits from one teacher cache (``--no-teacher-cache``:
the teacher runs live). Every cell is one `apprentice train` run (a subprocess, so a crash or Ctrl-C loses at most the
current step: runs checkpoint and a rerun of this command resumes them; finished runs are reused).
Results: ``benchmarks/results/accuracy.json`` (one row per run), ``accuracy.md`` (tables) and
``accuracy_epochs.png`` / ``accuracy_size.png`` (plots), written after every finished run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy_report
from _commit import RowCommitter, check_committable
from _stamp import REPO, stamp
from accuracy_report import SCHEMES

from apprentice.config import DistillConfig

PRECISIONS = ("2W/32A", "2W/8A", "4W/8A")
SWEEP_GAMMA = (0.5, 1.0, 2.0)
SWEEP_TEMPERATURE = (1.0, 2.0, 4.0)
SWEEP_C_LR = (0.003, 0.03)  # a scheme-C sweep also tries its fine-tuning lr around the grid's 0.01
SWEEP_CELL = "2W/32A:B"  # the committed grid's sweep: scheme B at 2W/32A, where the gain was least clear
# The paper's loss weights are the library's defaults; the grid runs at them, the sweep around them.
DEFAULT = {"gamma": DistillConfig().gamma, "temperature": DistillConfig().temperature}
#: every run's recipe; the overrides make the teacher, twin and each student of it
RECIPE = "configs/fashion_mnist/student_baseline.yaml"


@dataclass(frozen=True)
class Job:
    """One training run: its folder name, its overrides on the base recipe, the runs it needs."""

    name: str
    overrides: dict[str, Any]
    needs: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)
    recipe: str = RECIPE


def split_label(label: str) -> tuple[str | None, str]:
    """A grid precision label: "2W/8A" (the default quantizers) or "lsq:2W/8A" (weight quantizer named)."""
    quantizer, _, precision = label.rpartition(":")
    return quantizer or None, precision


def _slug(label: str) -> str:
    return label.replace(":", "-").replace("/", "").lower()


def _precision_overrides(label: str) -> dict[str, Any]:
    quantizer, precision = split_label(label)
    return {"quant.precision": precision, **({"quant.quantizer": quantizer} if quantizer else {})}


CACHE = "teacher-cache"  # the job that stores the teacher's logits for the B and C cells (--teacher-cache)


def cache_file(runs: Path) -> Path:
    return runs / CACHE / "teacher.cache"


#: regime options and the override each sets when it differs from the committed 10,000-image grid's
#: (so that grid's rows keep matching their jobs): option -> (default, override key)
# option: (default, override key, students' only: the teacher keeps its own value)
REGIME = {"student_width": (1.0, "model.width", True), "batch_size": (128, "data.batch_size", False),
          "channels_last": (False, "train.channels_last", False), "pad": (None, "data.pad", True)}


def common(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Overrides every run shares: data size, holdout, schedule, seed (the student's own recipe)."""
    o = {
        "model.name": args.student, "data.name": "fashion_mnist", "data.holdout": args.holdout,
        "data.limit": args.train_images or None, "data.batch_size": 128, "optim.name": "sgd",
        "optim.lr": getattr(args, "lr", 0.1), "optim.schedule": "cosine", "optim.weight_decay": 1e-4,
        "optim.warmup_epochs": 0.0, "train.epochs": args.epochs, "train.seed": seed, "train.checkpoint_every": 0,
        "distill.beta": DistillConfig().beta, "distill.gamma": DEFAULT["gamma"], "distill.temperature": DEFAULT["temperature"],
    }
    for option, (default, key, _) in REGIME.items():
        value = getattr(args, option, default)
        if value != default:
            o[key] = value
    return o


def teacher_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The teacher's run: FP, seed 0, its own depth, width and length (a stronger teacher trains longer)."""
    o = {**common(args, 0), "model.name": args.teacher, "quant.precision": "32W/32A", "distill.scheme": "baseline"}
    for _, key, students_only in REGIME.values():  # e.g. the teacher trains with the data set's own augmentation
        if students_only:
            o.pop(key, None)
    if getattr(args, "teacher_width", 1.0) != 1.0:
        o["model.width"] = args.teacher_width
    if getattr(args, "teacher_epochs", None):
        o["train.epochs"] = args.teacher_epochs
    return o


def grid_jobs(args: argparse.Namespace, runs: Path) -> list[Job]:
    """Teacher first, then seed by seed (so a partial grid is balanced): FP twin, then each precision's
    baseline, A, B, C. B and C need the teacher; C also needs the same seed's FP twin."""
    teacher = Job("teacher", teacher_overrides(args), meta={"role": "teacher", "precision": "32W/32A",
                                                             "scheme": "baseline", "seed": 0})
    jobs = [teacher]
    if args.teacher_cache:  # the students' data: the grid's holdout and limit
        views = {"data.pad": args.pad} if getattr(args, "pad", None) is not None else {}
        jobs.append(Job(CACHE, {"data.holdout": args.holdout, "data.limit": args.train_images or None, **views},
                        ("teacher",), {"role": "cache"}))
    for seed in args.seeds:
        twin = f"fp-s{seed}"
        jobs.append(Job(twin, {**common(args, seed), "quant.precision": "32W/32A", "distill.scheme": "baseline"},
                        meta={"role": "fp_twin", "precision": "32W/32A", "scheme": "baseline", "seed": seed}))
        for precision in args.precisions:
            for scheme in args.schemes:
                o, needs = student_overrides(args, runs, precision, scheme, seed)
                jobs.append(Job(f"{_slug(precision)}-{scheme}-s{seed}", o, needs,
                                {"role": "student", "precision": precision, "scheme": scheme, "seed": seed}))
    return jobs


def student_overrides(args: argparse.Namespace, runs: Path, precision: str, scheme: str,
                      seed: int) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A student cell's overrides and the jobs it needs: B and C the teacher (and its cache), C also
    the same seed's FP twin, which it starts from at ``--c-lr``."""
    o = {**common(args, seed), **_precision_overrides(precision), "distill.scheme": scheme}
    if getattr(args, "deploy", None):  # the deployable graph (quant.deploy) for the students
        o["quant.deploy"] = args.deploy
    needs: tuple[str, ...] = ()
    if scheme in ("A", "B", "C"):
        extra, needs = _teacher(args, runs, scheme)
        o.update(extra)
    if scheme == "C":
        o["distill.student_init"] = str(runs / f"fp-s{seed}")
        o["optim.lr"] = args.c_lr
        needs = (*needs, f"fp-s{seed}")
    return o, needs


def _teacher(args: argparse.Namespace, runs: Path, scheme: str) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A cell's teacher overrides and the jobs it needs: A trains its own (the grid teacher's
    architecture), B and C read the grid's trained teacher, through the cache when there is one."""
    if scheme == "A":
        o = {"distill.teacher_model.name": args.teacher}
        if getattr(args, "teacher_width", 1.0) != 1.0:
            o["distill.teacher_model.width"] = args.teacher_width
        return o, ()
    if not args.teacher_cache:
        return {"distill.teacher": str(runs / "teacher")}, ("teacher",)
    return {"distill.teacher": str(runs / "teacher"), "distill.teacher_cache": str(cache_file(runs))}, ("teacher", CACHE)


def regime_jobs(args: argparse.Namespace, runs: Path) -> list[Job]:
    """The converged regime's extra runs: the seed-0 FP twin trained twice as long (``--plateau``: is
    the grid's length within reach of the plateau?), and schemes A and B at 2W/32A under the paper's
    step schedule (``--convergence``: which reaches 99 % of its final accuracy sooner?)."""
    jobs = []
    if getattr(args, "plateau", False):
        o = {**common(args, 0), "quant.precision": "32W/32A", "distill.scheme": "baseline", "train.epochs": 2 * args.epochs}
        jobs.append(Job("fp-long-s0", o, meta={"role": "plateau", "precision": "32W/32A", "scheme": "baseline",
                                                "seed": 0, "epochs": 2 * args.epochs}))
    for seed in args.seeds if getattr(args, "convergence", False) else ():
        for scheme in ("A", "B"):
            o = {**common(args, seed), "quant.precision": "2W/32A", "distill.scheme": scheme, "optim.schedule": "step",
                 "optim.milestones": list(args.milestones), "optim.lr_decay": 0.1}
            extra, needs = _teacher(args, runs, scheme)
            jobs.append(Job(f"conv-{scheme}-s{seed}", {**o, **extra}, needs,
                            {"role": "convergence", "precision": "2W/32A", "scheme": scheme, "seed": seed}))
    return jobs


def ordered(grid: list[Job], regime: list[Job]) -> list[Job]:
    """The grid, then the regime's runs; the plateau run right after the FP twin it doubles, since it
    says whether the grid's schedule is long enough (better known before most of the grid is spent)."""
    plateau = [j for j in regime if j.meta.get("role") == "plateau"]
    at = next((i + 1 for i, j in enumerate(grid) if j.name == "fp-s0"), len(grid))
    return grid[:at] + plateau + grid[at:] + [j for j in regime if j not in plateau]


def sweep_cell(cell: str) -> tuple[str, str]:
    """A ``--sweep-cell`` "PRECISION:SCHEME" (a teacher's scheme), e.g. "lsq:4W/4A:C", split and checked."""
    label, _, scheme = cell.rpartition(":")
    if scheme not in ("A", "B", "C") or not label:
        raise SystemExit(f"accuracy: --sweep-cell {cell!r}: expected PRECISION:SCHEME with a teacher's scheme "
                         "(A, B or C), e.g. 4W/8A:C")
    return label, scheme


def sweep_jobs(args: argparse.Namespace, runs: Path) -> list[Job]:
    """Each ``--sweep-cell``, seed 0, over gamma x temperature, and for scheme C also its learning
    rate at the default gamma and temperature; each cell's default point is the grid's own run."""
    cells = getattr(args, "sweep_cell", [SWEEP_CELL])
    return [j for cell in ([cells] if isinstance(cells, str) else cells) for j in _sweep_of(args, runs, *sweep_cell(cell))]


def _sweep_of(args: argparse.Namespace, runs: Path, precision: str, scheme: str) -> list[Job]:
    base, needs = student_overrides(args, runs, precision, scheme, 0)
    prefix = "sweep" if f"{precision}:{scheme}" == SWEEP_CELL else f"sweep-{_slug(precision)}-{scheme}"
    meta = {"role": "sweep", "precision": precision, "scheme": scheme, "seed": 0}
    points = [({"distill.gamma": g, "distill.temperature": t}, f"g{g:g}-t{t:g}")
              for g in SWEEP_GAMMA for t in SWEEP_TEMPERATURE if {"gamma": g, "temperature": t} != DEFAULT]
    points += [({"optim.lr": lr}, f"lr{lr:g}") for lr in (SWEEP_C_LR if scheme == "C" else ())]
    return [Job(f"{prefix}-{tag}", {**base, **change}, needs,
                {**meta, "gamma": change.get("distill.gamma", DEFAULT["gamma"]),
                 "temperature": change.get("distill.temperature", DEFAULT["temperature"]),
                 "lr": change.get("optim.lr", base["optim.lr"])})
            for change, tag in points]


# ----------------------------------------------------------------------------------------------
# Continuing on another machine: committed rows and snapshots
# ----------------------------------------------------------------------------------------------

#: what a snapshot keeps of a run other cells start from (the teacher, the FP twins): enough for
#: distill.teacher / distill.student_init and for its own result row; small (a ResNet-14 is 0.7 MB)
SNAPSHOT_FILES = ("config.yaml", "summary.json", "metrics.jsonl", "job.json", "checkpoints/best.pt")


def committed_rows(out: Path) -> dict[str, dict[str, Any]]:
    """The rows of an earlier result file (``--out``), by run name: finished runs, possibly of another
    machine, whose run folders may be gone. A job whose row is there with the same overrides is done."""
    try:
        rows = json.loads(out.read_text()).get("rows", [])
    except (OSError, ValueError):
        return {}
    return {r["name"]: r for r in rows if isinstance(r, dict) and "name" in r}


def portable(overrides: dict[str, Any], runs_dir: str) -> dict[str, Any]:
    """Overrides with the run folders' absolute paths written relative to ``runs_dir`` ("{runs}/teacher"),
    so a row committed on one machine matches the same job in another checkout."""
    tail = re.compile(r"^.*/" + re.escape(runs_dir.strip("/")) + "/")
    return {k: tail.sub("{runs}/", v) if isinstance(v, str) else v for k, v in overrides.items()}


def is_committed(job: Job, rows: dict[str, dict[str, Any]], runs_dir: str = "runs/accuracy") -> bool:
    row = rows.get(job.name)
    return row is not None and portable(row.get("config", {}).get("overrides", {}), runs_dir) == portable(
        job.overrides, runs_dir)


def snapshot_dir(out: Path) -> Path:
    return out.with_name(out.stem + "_runs")


def save_snapshot(folder: Path, snapshots: Path) -> None:
    """Copy what `SNAPSHOT_FILES` names of a finished run beside the results, to be committed with them."""
    for name in SNAPSHOT_FILES:
        src = folder / name
        if src.is_file():
            dst = snapshots / folder.name / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)


def after_each_run(jobs: list[Job], runs: Path, out: Path, write, commit: bool, label: str):
    """What a grid does whenever a run finishes: snapshot the runs other cells start from (teacher,
    FP twins) beside the results, ``write()`` the results, and with ``commit`` git-commit their new
    rows. ``--commit`` with results outside the repository is refused here, before any run."""
    if commit:
        check_committable(out)
    committer = RowCommitter(out, label) if commit else None

    def hook() -> None:
        for j in jobs:
            if j.meta.get("role") in ("teacher", "fp_twin") and state(runs / j.name, j) == "done":
                save_snapshot(runs / j.name, snapshot_dir(out))
        write()
        if committer:
            committer()
    return hook


def restore_snapshots(jobs: list[Job], runs: Path, snapshots: Path) -> list[str]:
    """Put back the run folders of snapshotted runs that are missing here (a fresh machine); returns their names."""
    restored = []
    for job in jobs:
        snap, folder = snapshots / job.name, runs / job.name
        if snap.is_dir() and not (folder / "summary.json").exists():
            shutil.copytree(snap, folder, dirs_exist_ok=True)
            restored.append(job.name)
    return restored


# ----------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------


def _override_args(o: dict[str, Any]) -> list[str]:
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in o.items()]


def state(folder: Path, job: Job) -> str:
    """'done', 'resume', 'fresh' (no folder) or 'restart' (a folder without a checkpoint).

    A folder made for other overrides is an error rather than silently reused or replaced.
    """
    spec = folder / "job.json"
    if spec.exists():
        old = json.loads(spec.read_text())
        if old != job.overrides:
            diff = sorted(k for k in set(old) | set(job.overrides) if old.get(k) != job.overrides.get(k))
            raise SystemExit(f"accuracy: {folder} was run with other settings ({', '.join(diff)}); "
                             "use another --runs-dir or delete that folder")
    if job.name == CACHE:  # cache-teacher resumes its own partial file; the finished file is the result
        return "done" if (folder / "teacher.cache").exists() else "resume"
    summary = folder / "summary.json"
    if summary.exists() and json.loads(summary.read_text()).get("status") == "finished":
        return "done"
    if (folder / "checkpoints" / "last.pt").exists():
        return "resume"
    return "restart" if folder.exists() else "fresh"


def launch(job: Job, runs: Path, threads: int) -> subprocess.Popen:
    folder = runs / job.name
    how = state(folder, job)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "job.json").write_text(json.dumps(job.overrides, indent=1))
    flag = {"resume": ["--resume"], "restart": ["--overwrite"], "fresh": ["--overwrite"]}[how]
    cmd = [sys.executable, "-m", "apprentice", "train", str(REPO / job.recipe),
           *flag, *_override_args(job.overrides), f"train.out={folder}"]
    if job.name == CACHE:
        cmd = [sys.executable, "-m", "apprentice", "cache-teacher", str(runs / "teacher"),
               *_override_args(job.overrides), "--out", str(folder / "teacher.cache"), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with open(runs / "logs" / f"{job.name}.log", "a") as log:  # the child keeps its own descriptor
        log.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} {how}: {' '.join(cmd)}\n")
        log.flush()
        print(f"[{time.strftime('%H:%M:%S')}] start {job.name} ({how})", flush=True)
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                start_new_session=True)


def _safely(fn) -> None:
    """A report that fails (a plotting bug, a full disk) must not orphan the running trainings."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - reported, and the grid goes on
        print(f"accuracy: report not written: {type(e).__name__}: {e}", flush=True)


def run_jobs(jobs: list[Job], runs: Path, workers: int, threads: int, on_done,
             committed: dict[str, dict[str, Any]] | None = None, runs_dir: str = "runs/accuracy") -> list[str]:
    """Run jobs in order as their needs finish, ``workers`` at a time; returns the names that failed.

    A job whose row was committed with the same overrides is done, unless a job still to run needs
    its run folder and that folder is not here (then it runs again).
    SIGINT/SIGTERM are passed on to the running trainings (they checkpoint and stop), then this exits.
    """
    committed, by_name = committed or {}, {j.name: j for j in jobs}
    # Rows still to make; then whatever they need (transitively) that is not here: the teacher cache
    # is such a step (no row of its own), and so is a committed teacher whose folder is missing.
    pending = [j for j in jobs if j.meta.get("role") != "cache" and state(runs / j.name, j) != "done"
               and not is_committed(j, committed, runs_dir)]
    needed, stack = set(), [n for j in pending for n in j.needs]
    while stack:
        n = stack.pop()
        if n not in needed:
            needed.add(n)
            stack += by_name[n].needs
    pending = [j for j in jobs if j in pending or (j.name in needed and state(runs / j.name, j) != "done")]
    done = {j.name for j in jobs if j not in pending}
    failed: list[str] = []
    running: dict[str, tuple[Job, subprocess.Popen]] = {}
    stop: list[int] = []

    def handler(signum, _frame):
        stop.append(signum)
        for _, p in running.values():
            p.send_signal(signal.SIGTERM)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while (pending or running) and not stop:
            for j in list(pending):
                if len(running) >= workers:
                    break
                if any(n in failed for n in j.needs):
                    pending.remove(j)
                    failed.append(j.name)
                    print(f"skip {j.name}: needs a failed run", flush=True)
                elif all(n in done for n in j.needs):
                    pending.remove(j)
                    running[j.name] = (j, launch(j, runs, threads))
            time.sleep(1.0)
            for name, (j, p) in list(running.items()):
                if p.poll() is None:
                    continue
                del running[name]
                if p.returncode == 0 and state(runs / name, j) == "done":
                    done.add(name)
                    print(f"[{time.strftime('%H:%M:%S')}] done {name}", flush=True)
                    _safely(on_done)
                elif not stop:
                    failed.append(name)
                    print(f"FAILED {name} (exit {p.returncode}); see {runs / 'logs' / (name + '.log')}", flush=True)
        for _, p in running.values():
            p.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if stop:
        _safely(on_done)
        print("accuracy: interrupted; the runs checkpointed, rerun the same command to resume", flush=True)
        raise SystemExit(128 + stop[0])
    return failed


def regime_arguments(ap: argparse.ArgumentParser) -> None:
    """The options that make the runs' regime (shared with frontier.py, which must match the grid's)."""
    ap.add_argument("--student", default="resnet8")
    ap.add_argument("--teacher", default="resnet14")
    ap.add_argument("--teacher-cache", action=argparse.BooleanOptionalAction, default=True,
                    help="B and C cells read the teacher's logits from one cache (apprentice cache-teacher); "
                         "--no-teacher-cache runs the teacher live, as the committed 40-run grid did")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--train-images", type=int, default=10000, help="training images after the holdout (0: all)")
    ap.add_argument("--student-width", type=float, default=1.0, help="the students' and FP twins' width multiplier")
    ap.add_argument("--teacher-width", type=float, default=1.0, help="the teacher's width multiplier")
    ap.add_argument("--teacher-epochs", type=int, default=None, help="the teacher's epochs (default --epochs)")
    ap.add_argument("--lr", type=float, default=0.1, help="learning rate of every run but scheme C's")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--channels-last", action="store_true", help="train.channels_last for every run")
    ap.add_argument("--pad", type=int, default=None,
                    help="the students' crop padding (data.pad; 0 = flips only: 2 views an image, a cache 25x "
                         "smaller and cheaper than pad 2's 50); the teacher keeps the data set's own")
    ap.add_argument("--milestones", nargs="+", type=float, default=[0.5, 0.75],
                    help="fractions of the run where the step schedule divides lr by 10")
    ap.add_argument("--holdout", type=int, default=5000, help="training images held out for the sweep")
    ap.add_argument("--c-lr", type=float, default=0.01, help="scheme C's (fine-tuning) learning rate")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results/accuracy.json")
    ap.add_argument("--runs-dir", default="runs/accuracy", help="run folders (resumed when rerun)")
    ap.add_argument("--precisions", nargs="+", default=list(PRECISIONS),
                    help="precision labels: 2W/8A (default quantizers) or lsq:2W/8A (a weight quantizer named)")
    ap.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=list(SCHEMES), help="schemes per precision")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--plateau", action="store_true", help="also the seed-0 FP twin trained twice as long")
    ap.add_argument("--convergence", action="store_true",
                    help="also schemes A and B at 2W/32A with the step schedule (lr x0.1 at --milestones), per seed")
    regime_arguments(ap)
    ap.add_argument("--workers", type=int, default=2, help="trainings at once")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per training")
    ap.add_argument("--no-sweep", action="store_true", help="skip the gamma/temperature sweep")
    ap.add_argument("--sweep-cell", nargs="+", default=[SWEEP_CELL], metavar="PRECISION:SCHEME",
                    help="the cells the sweep tunes on the holdout, seed 0 (scheme C: its lr too), e.g. 4W/8A:C")
    ap.add_argument("--deploy", default=None, help="train the students' deployable graph (quant.deploy, e.g. int8; "
                                                   "8-bit activations only): what it costs in accuracy")
    ap.add_argument("--report-only", action="store_true", help="only rebuild the results from finished runs")
    ap.add_argument("--commit", action="store_true", help="git-commit the results (only their files) as each run "
                                                          "finishes, so a fresh clone continues from there")
    args = ap.parse_args(argv)
    out = REPO / args.out
    runs = (REPO / args.runs_dir).resolve()
    (runs / "logs").mkdir(parents=True, exist_ok=True)
    jobs = ordered(grid_jobs(args, runs), regime_jobs(args, runs)) + ([] if args.no_sweep else sweep_jobs(args, runs))
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "report_only", "commit")}
    settings["shared_overrides"] = {k: v for k, v in common(args, 0).items() if k != "train.seed"}
    info = {"stamp": stamp(argv), "settings": settings}

    committed = committed_rows(out)
    matching = {j.name: committed[j.name] for j in jobs if is_committed(j, committed, args.runs_dir)}
    restored = restore_snapshots(jobs, runs, snapshot_dir(out))
    if restored:
        print(f"accuracy: restored {', '.join(restored)} from {snapshot_dir(out)}", flush=True)

    report = after_each_run(jobs, runs, out, lambda: accuracy_report.write(out, jobs, runs, info, matching),
                            args.commit, f"accuracy grid {out.stem}")

    if args.report_only:
        report()
        return 0
    t0 = time.time()
    failed = run_jobs(jobs, runs, args.workers, args.threads, report, committed, args.runs_dir)
    report()
    print(f"accuracy: {len(jobs) - len(failed)}/{len(jobs)} runs finished, {(time.time() - t0) / 60:.1f} min "
          f"this invocation; results in {args.out}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
