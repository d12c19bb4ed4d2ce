"""Running a benchmark's grid of training runs: each run one `apprentice train` subprocess, started
when the runs it needs have finished, ``--workers`` at a time; resumed when the command is rerun
(a run checkpoints on SIGTERM); continued on a fresh machine from the rows committed with the results
and the small snapshots of the runs other cells start from. Used by `accuracy.py` and `frontier.py`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _commit import RowCommitter, check_committable, commit_results
from _stamp import REPO

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


CACHE = "teacher-cache"  # the job that stores the teacher's logits for the B and C cells (--teacher-cache)


def cache_file(runs: Path, name: str = CACHE) -> Path:
    """The teacher cache a cache job (``name``) writes: one teacher's, or an ensemble's under its own name."""
    return runs / name / "teacher.cache"


def is_cache(job: Job) -> bool:
    return job.meta.get("role") == "cache"


# ----------------------------------------------------------------------------------------------
# Continuing on another machine: committed rows and snapshots
# ----------------------------------------------------------------------------------------------

#: what a snapshot keeps of a run other cells start from (the teacher, the FP twins): enough for
#: distill.teacher / distill.student_init and for its own result row; small (a ResNet-14 is 0.7 MB)
SNAPSHOT_FILES = ("config.yaml", "summary.json", "metrics.jsonl", "job.json", "checkpoints/best.pt")
#: what a run stopped half way keeps beside the results (its resume point and best so far), so that a
#: fresh machine resumes it instead of starting it over: a grid's long runs outlast one machine's session
PARTIAL_FILES = ("config.yaml", "metrics.jsonl", "job.json", "checkpoints/last.pt", "checkpoints/best.pt")


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

    def one(v: Any) -> Any:  # a path, or the list of an ensemble's (distill.teacher)
        return tail.sub("{runs}/", v) if isinstance(v, str) else [one(x) for x in v] if isinstance(v, list) else v
    return {k: one(v) for k, v in overrides.items()}


def is_committed(job: Job, rows: dict[str, dict[str, Any]], runs_dir: str = "runs/accuracy") -> bool:
    row = rows.get(job.name)
    return row is not None and portable(row.get("config", {}).get("overrides", {}), runs_dir) == portable(
        job.overrides, runs_dir)


def snapshot_dir(out: Path) -> Path:
    return out.with_name(out.stem + "_runs")


def save_snapshot(folder: Path, snapshots: Path, files: tuple[str, ...] = SNAPSHOT_FILES) -> None:
    """Copy ``files`` of a run folder beside the results, to be committed with them (replacing an older copy)."""
    shutil.rmtree(snapshots / folder.name, ignore_errors=True)  # no stale file of a partial copy stays
    for name in files:
        src = folder / name
        if src.is_file():
            dst = snapshots / folder.name / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.tmp")
            shutil.copyfile(src, tmp)
            tmp.replace(dst)


def _same_bytes(a: Path, b: Path) -> bool:
    return a.is_file() and b.is_file() and a.read_bytes() == b.read_bytes()


def _is_partial(snap: Path) -> bool:
    return (snap / "checkpoints" / "last.pt").is_file() and not (snap / "summary.json").is_file()


class AfterRuns:
    """What a grid does whenever a run finishes (call it): snapshot the runs other cells start from
    (teacher, FP twins) beside the results, drop the partial snapshot of a run that has now finished,
    ``write()`` the results, and with ``commit`` git-commit their new rows. `interrupted` does the same
    for runs stopped half way: their checkpoints go beside the results (and into a commit), so a fresh
    machine resumes them. ``commit`` with results outside the repository is refused here, before any run."""

    def __init__(self, jobs: list[Job], runs: Path, out: Path, write, commit: bool, label: str, repo: Path = REPO,
                 shared: tuple[Path, ...] = ()):
        if commit:
            check_committable(out, repo)
        self.jobs, self.runs, self.out, self.write, self.label = jobs, runs, out, write, label
        self.snapshots = snapshot_dir(out)
        self.shared = tuple(snapshot_dir(p) for p in shared)  # a continued grid's: their snapshots are committed
        self.committer = RowCommitter(out, label, repo) if commit else None

    def __call__(self) -> None:
        for j in self.jobs:
            if state(self.runs / j.name, j) != "done":
                continue
            if j.meta.get("role") in ("teacher", "fp_twin"):
                if not self._snapshotted_elsewhere(j):  # not a second copy of a teacher's megabytes
                    save_snapshot(self.runs / j.name, self.snapshots)
            elif _is_partial(self.snapshots / j.name):  # its row is the result now
                shutil.rmtree(self.snapshots / j.name)
        self.write()
        if self.committer:
            self.committer()

    def _snapshotted_elsewhere(self, job: Job) -> bool:
        """Whether a continued grid's committed snapshots hold this very run, finished (a fresh clone
        restores it from there): the same overrides, or, for a run made outside the grid (a study's
        second teacher: no job.json), the same resolved config."""
        for snap in (snaps / job.name for snaps in self.shared):
            if not (snap / "summary.json").is_file():
                continue
            if (snap / "job.json").is_file():
                if json.loads((snap / "job.json").read_text()) == job.overrides:
                    return True
            elif _same_bytes(snap / "config.yaml", self.runs / job.name / "config.yaml"):
                return True
        return False

    def interrupted(self, names: list[str]) -> None:
        """Keep the checkpoints of the runs ``names`` (stopped half way) beside the results, then write and commit."""
        by_name = {j.name: j for j in self.jobs}
        kept = [n for n in names if (self.runs / n / "checkpoints" / "last.pt").is_file()
                and state(self.runs / n, by_name[n]) == "resume"]  # not one that finished as it was stopped
        for n in kept:
            save_snapshot(self.runs / n, self.snapshots, PARTIAL_FILES)
        self()
        if kept:
            print(f"grid: kept the checkpoints of {', '.join(kept)} in {self.snapshots} to resume on any machine",
                  flush=True)
        if kept and self.committer:
            commit_results(self.out, f"{self.label}: stopped; {', '.join(kept)} kept half way to resume", self.committer.repo)


def continue_from(jobs: list[Job], runs: Path, results: list[Path], runs_dir: str
                  ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """What a grid continues from: the committed rows of ``results`` (the first file's row wins), those
    that match a job of this plan, and the snapshots of each results file put back where missing."""
    committed: dict[str, dict[str, Any]] = {}
    for path in reversed(results):
        committed = {**committed, **committed_rows(path)}
    matching = {j.name: committed[j.name] for j in jobs if is_committed(j, committed, runs_dir)}
    for path in results:
        if restored := restore_snapshots(jobs, runs, snapshot_dir(path), runs_dir):
            print(f"grid: restored {', '.join(restored)} from {snapshot_dir(path)}", flush=True)
    return committed, matching


def restore_snapshots(jobs: list[Job], runs: Path, snapshots: Path, runs_dir: str = "runs/accuracy") -> list[str]:
    """Put back the snapshotted run folders missing here (a fresh machine); returns their names.

    A finished snapshot (teacher, FP twin) replaces a folder without a finished run; a partial one (a run
    stopped half way) only fills a folder with no checkpoint of its own, and only for the same overrides
    written the same way (a checkout elsewhere would store other paths, which its resume refuses). A
    snapshot of the same name made for other overrides (another grid's "fp-s0" at another width) is
    never put back: that run is not this job's."""
    restored = []
    for job in jobs:
        snap, folder = snapshots / job.name, runs / job.name
        if not snap.is_dir() or (folder / "summary.json").exists():
            continue
        stored = json.loads((snap / "job.json").read_text()) if (snap / "job.json").is_file() else None
        if stored is not None and portable(stored, runs_dir) != portable(job.overrides, runs_dir):
            continue
        if _is_partial(snap):
            if (folder / "checkpoints" / "last.pt").exists():
                continue
            if stored != job.overrides:
                if portable(stored, runs_dir) == portable(job.overrides, runs_dir):
                    print(f"grid: {job.name}'s half-way checkpoint names other paths; it starts again", flush=True)
                continue
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
            raise SystemExit(f"grid: {folder} was run with other settings ({', '.join(diff)}); "
                             "use another --runs-dir or delete that folder")
    if is_cache(job):  # cache-teacher resumes its own partial file; the finished file is the result
        return "done" if (folder / "teacher.cache").exists() else "resume"
    summary = folder / "summary.json"
    if summary.exists() and json.loads(summary.read_text()).get("status") == "finished":
        return "done"
    if (folder / "checkpoints" / "last.pt").exists():
        return "resume"
    return "restart" if folder.exists() else "fresh"


def launch(job: Job, runs: Path, threads: int, imports: tuple[str, ...] = ()) -> subprocess.Popen:
    """Start ``job``'s `apprentice` subprocess; ``imports``: files or modules each one runs first (``--import``)."""
    folder = runs / job.name
    how = state(folder, job)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "job.json").write_text(json.dumps(job.overrides, indent=1))
    flag = {"resume": ["--resume"], "restart": ["--overwrite"], "fresh": ["--overwrite"]}[how]
    cmd = [sys.executable, "-m", "apprentice", "train", str(REPO / job.recipe),
           *flag, *_override_args(job.overrides), f"train.out={folder}"]
    if is_cache(job):  # the teachers it needs are the ones it caches (several: an ensemble's mean logits)
        cmd = [sys.executable, "-m", "apprentice", "cache-teacher", *(str(runs / n) for n in job.needs),
               *_override_args(job.overrides), "--out", str(folder / "teacher.cache"), "--device", "cpu",
               *(["--views", str(job.meta["views"])] if job.meta.get("views") else [])]
    cmd[4:4] = [a for f in imports for a in ("--import", f)]  # after the subcommand's name
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
        print(f"grid: report not written: {type(e).__name__}: {e}", flush=True)


def to_run(jobs: list[Job], runs: Path, committed: dict[str, dict[str, Any]], runs_dir: str) -> list[Job]:
    """The jobs to run, in order: rows still to make (neither finished here nor committed), then
    whatever they need (transitively) that is not here: the teacher cache is such a step (no row of
    its own), and so is a committed teacher whose folder is missing."""
    by_name = {j.name: j for j in jobs}
    rows = [j for j in jobs if not is_cache(j) and state(runs / j.name, j) != "done"
            and not is_committed(j, committed, runs_dir)]
    needed, stack = set(), [n for j in rows for n in j.needs]
    while stack:
        n = stack.pop()
        if n not in needed:
            needed.add(n)
            stack += by_name[n].needs
    return [j for j in jobs if j in rows or (j.name in needed and state(runs / j.name, j) != "done")]


def _hm(seconds: float) -> str:
    return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d} h"


class _Tally:
    """A grid's progress: each finished run's time, how many of this invocation's runs are done, and a
    rough time left (the mean run time so far x the runs left / workers: runs differ, so rough)."""

    def __init__(self, total: int, workers: int):
        self.total, self.workers = total, workers
        self.started: dict[str, float] = {}
        self.times: list[float] = []

    def start(self, name: str) -> None:
        self.started[name] = time.time()

    def done(self, name: str) -> str:
        self.times.append(time.time() - self.started[name])
        left = self.total - len(self.times)
        eta = statistics.fmean(self.times) * left / self.workers
        return (f"done {name} in {_hm(self.times[-1])}: {len(self.times)}/{self.total} runs"
                + (f", about {_hm(eta)} left" if left else ""))


def run_jobs(jobs: list[Job], runs: Path, workers: int, threads: int, on_done,
             committed: dict[str, dict[str, Any]] | None = None, runs_dir: str = "runs/accuracy",
             on_stop=None, imports: tuple[str, ...] = ()) -> list[str]:
    """Run jobs in order as their needs finish, ``workers`` at a time; returns the names that failed.

    A job whose row was committed with the same overrides is done, unless a job still to run needs
    its run folder and that folder is not here (then it runs again).
    SIGINT/SIGTERM are passed on to the running trainings (they checkpoint and stop), ``on_stop`` gets
    their names (else ``on_done`` is called), then this exits.
    """
    pending = to_run(jobs, runs, committed or {}, runs_dir)
    done = {j.name for j in jobs if j not in pending}
    failed: list[str] = []
    running: dict[str, tuple[Job, subprocess.Popen]] = {}
    tally = _Tally(len(pending), workers)
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
                    tally.total -= 1
                    print(f"skip {j.name}: needs a failed run", flush=True)
                elif all(n in done for n in j.needs):
                    pending.remove(j)
                    running[j.name] = (j, launch(j, runs, threads, imports))
                    tally.start(j.name)
            time.sleep(1.0)
            for name, (j, p) in list(running.items()):
                if p.poll() is None:
                    continue
                del running[name]
                if p.returncode == 0 and state(runs / name, j) == "done":
                    done.add(name)
                    print(f"[{time.strftime('%H:%M:%S')}] {tally.done(name)}", flush=True)
                    _safely(on_done)
                elif not stop:
                    failed.append(name)
                    tally.total -= 1
                    print(f"FAILED {name} (exit {p.returncode}); see {runs / 'logs' / (name + '.log')}", flush=True)
        for _, p in running.values():
            p.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if stop:
        stopped = [j.name for j in jobs if j.name in tally.started and j.name not in done]  # ran, stopped half way
        _safely((lambda: on_stop(stopped)) if on_stop else on_done)
        print("grid: interrupted; the runs checkpointed, rerun the same command to resume", flush=True)
        raise SystemExit(128 + stop[0])
    return failed
